"""Norm layers, Maxout, the block builder, and the in-network regularizers of regularization=: dropout family,
DropConnect, stochastic depth, max-norm."""

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from conftest import compose_config
from runner.config import CONFIG_DIR, ConfigError, validate
from runner.engine.build import build_model, build_optimizer, option
from runner.nets import layers
from runner.nets.layers import (
    Drop,
    DropConnectLinear,
    GaussianDropout,
    Maxout,
    StochasticDepth,
    block,
    enable_dropout,
    group_count,
)
from runner.nets.models import MLP, BasicBlock, ResNet


def _norm(name="none", position="before"):
    """The option norm=<name> as the run builds it, at `position`, group norm with 4 groups."""
    node = OmegaConf.merge(OmegaConf.load(CONFIG_DIR / "norm" / f"{name}.yaml"), {"position": position})
    if name == "group":
        node.groups = 4
    return option(node)


# ---------------------------------------------------------------------------------------------------------------
# Normalization

@pytest.mark.parametrize("spatial", [True, False])
def test_each_norm_normalizes_over_its_own_axes(spatial):
    torch.manual_seed(0)
    c = 8 if spatial else 32
    x = 3.0 + 2.0 * torch.randn(16, c, 5, 5) if spatial else 3.0 + 2.0 * torch.randn(16, c)
    # The axes each norm averages over: batch over (B, H, W) per channel; layer over (C, H, W) per example;
    # group over (C/groups, H, W) per example and group.
    batch = _norm("batch")(c, spatial).train()(x)
    per_channel = batch.transpose(0, 1).reshape(c, -1)
    assert torch.allclose(per_channel.mean(1), torch.zeros(c), atol=1e-5)
    assert torch.allclose(per_channel.var(1, unbiased=False), torch.ones(c), atol=1e-3)
    layer = _norm("layer")(c, spatial)(x).reshape(16, -1)
    assert torch.allclose(layer.mean(1), torch.zeros(16), atol=1e-5)
    assert torch.allclose(layer.var(1, unbiased=False), torch.ones(16), atol=1e-3)
    group = _norm("group")(c, spatial)(x).reshape(16, 4, -1)  # groups=4
    assert torch.allclose(group.mean(2), torch.zeros(16, 4), atol=1e-5)
    assert torch.allclose(group.var(2, unbiased=False), torch.ones(16, 4), atol=1e-3)
    assert isinstance(_norm("none")(c, spatial), nn.Identity)


def test_batch_norm_evaluates_with_running_statistics():
    bn = _norm("batch")(3, spatial=False)
    x = 5.0 + torch.randn(64, 3)
    bn.train()(x)
    expected_mean = 0.1 * x.mean(0)  # momentum 0.1 from 0
    assert torch.allclose(bn.running_mean, expected_mean, atol=1e-5)
    out = bn.eval()(x)
    assert torch.allclose(out, (x - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps), atol=1e-5)


def test_group_count_is_the_largest_divisor_not_above_groups():
    assert group_count(64, 8) == 8
    assert group_count(500, 8) == 5
    assert group_count(3, 8) == 3
    assert group_count(7, 4) == 1


@pytest.mark.parametrize("position", ["before", "after"])
def test_block_puts_norm_before_or_after_the_activation(position):
    b = block(3, 6, nn.ReLU, _norm("batch", position), spatial=True)
    assert list(b._modules) == (["conv", "norm", "act"] if position == "before" else ["conv", "act", "norm"])
    assert (b.conv.bias is None) == (position == "before")  # the norm's shift replaces the bias


# ---------------------------------------------------------------------------------------------------------------
# Maxout

def test_maxout_linear_matches_the_max_over_its_pieces():
    torch.manual_seed(0)
    b = block(5, 3, lambda: Maxout(pieces=3), _norm(), spatial=False)
    x = torch.randn(7, 5)
    w, bias = b.linear.weight, b.linear.bias  # (3 units * 3 pieces, 5): unit c has rows 3c, 3c+1, 3c+2
    direct = torch.stack([torch.stack([x @ w[3 * c + j] + bias[3 * c + j] for j in range(3)]).amax(0)
                          for c in range(3)], dim=1)
    assert torch.allclose(b(x), direct, atol=1e-6)


def test_maxout_conv_matches_the_max_over_two_convolutions():
    torch.manual_seed(0)
    b = block(2, 4, Maxout, _norm(), spatial=True)  # pieces=2 by default
    x = torch.randn(3, 2, 6, 6)
    w, bias = b.conv.weight, b.conv.bias
    piece = [nn.functional.conv2d(x, w[j::2], bias[j::2], padding=1) for j in range(2)]
    assert torch.allclose(b(x), torch.maximum(*piece), atol=1e-6)


def test_maxout_with_two_pieces_doubles_the_parameters_of_its_layer():
    relu = block(10, 6, nn.ReLU, _norm(), spatial=False)
    maxout = block(10, 6, Maxout, _norm(), spatial=False)
    assert sum(p.numel() for p in maxout.parameters()) == 2 * sum(p.numel() for p in relu.parameters())
    assert maxout(torch.randn(4, 10)).shape == (4, 6)


# ---------------------------------------------------------------------------------------------------------------
# Dropout family

@pytest.mark.parametrize("module", [nn.Dropout(0.3), GaussianDropout(0.3)], ids=["dropout", "gaussian_dropout"])
def test_dropout_keeps_the_expectation_between_train_and_eval(module):
    torch.manual_seed(0)
    x = torch.rand(400, 500) + 0.5
    train = module.train()(x)
    assert not torch.equal(train, x)
    assert torch.equal(module.eval()(x), x)
    # E[train output] = x: the mean over 200k units, relative to the mean, within a few standard errors.
    assert abs(train.mean() / x.mean() - 1) < 0.01
    # Both have multiplicative noise of variance p / (1 - p).
    assert (train / x).var().item() == pytest.approx(0.3 / 0.7, rel=0.03)


def test_dropout_zeroes_a_fraction_p_of_units():
    torch.manual_seed(0)
    out = nn.Dropout(0.3).train()(torch.ones(1000, 100))
    assert (out == 0).float().mean().item() == pytest.approx(0.3, abs=0.01)
    assert torch.allclose(out[out != 0], torch.full_like(out[out != 0], 1 / 0.7))


def test_alpha_dropout_keeps_mean_zero_and_variance_one_for_selu_output():
    torch.manual_seed(0)
    x = torch.randn(400, 500)
    out = nn.AlphaDropout(0.2).train()(x)
    assert abs(out.mean().item()) < 0.01 and out.var().item() == pytest.approx(1.0, abs=0.02)
    assert (out == x).float().mean().item() < 0.9  # some were dropped


def test_dropconnect_zeroes_weights_not_activations():
    torch.manual_seed(0)
    layer = DropConnectLinear(200, 300, p=0.5)
    nn.init.zeros_(layer.bias)
    layer.train()
    # The identity as input reads the effective weight out: output[i, j] = W_eff[j, i].
    w_eff = layer(torch.eye(200)).T
    dropped = w_eff == 0
    assert dropped.float().mean().item() == pytest.approx(0.5, abs=0.01)
    assert torch.allclose(w_eff[~dropped], layer.weight[~dropped] / 0.5)
    # A dense input: every output unit still sums many kept weights, so no activation is zeroed ...
    x = torch.randn(64, 200)
    assert (layer(x) != 0).all()
    # ... whereas dropout of the activations zeroes whole units.
    assert (nn.Dropout(0.5).train()(nn.functional.linear(x, layer.weight)) == 0).float().mean() > 0.4
    # In expectation the weights are W; eval uses W.
    mean = torch.stack([layer(torch.eye(200)).T for _ in range(400)]).mean(0)
    assert (mean - layer.weight).abs().mean() < 0.1 * layer.weight.abs().mean()
    assert torch.equal(layer.eval()(x), nn.functional.linear(x, layer.weight, layer.bias))


def test_stochastic_depth_drops_whole_examples_in_train_and_keeps_them_in_eval():
    torch.manual_seed(0)
    sd = StochasticDepth(0.25)
    x = torch.rand(4000, 3, 2, 2) + 0.5
    out = sd.train()(x)
    dropped = (out == 0).flatten(1).all(1)
    kept = ~dropped
    assert dropped.float().mean().item() == pytest.approx(0.25, abs=0.02)
    assert torch.allclose(out[kept], x[kept] / 0.75)
    assert torch.equal(sd.eval()(x), x)


def test_residual_block_with_stochastic_depth_drops_the_branch_not_the_shortcut():
    torch.manual_seed(0)
    blk = BasicBlock(4, 4, 1, nn.ReLU, _norm(), Drop(), drop_path=0.5)
    x = torch.randn(300, 4, 5, 5)
    with torch.no_grad():
        branch, short = blk.branch(x), blk.shortcut(x)
        out = blk.train()(x)
        without = torch.relu(short)
        with_branch = torch.relu(branch / 0.5 + short)
        dropped = torch.isclose(out, without).flatten(1).all(1)
        assert dropped.float().mean().item() == pytest.approx(0.5, abs=0.1)
        assert torch.allclose(out[~dropped], with_branch[~dropped], atol=1e-5)
        assert torch.allclose(blk.eval()(x), torch.relu(branch + short), atol=1e-6)


def test_stochastic_depth_rate_rises_linearly_to_p_over_the_blocks():
    model = ResNet([4, 8], 2, num_classes=10, act=nn.ReLU, norm=_norm(), drop=Drop(stochastic_depth_p=0.4))
    rates = [b.drop_path.p for b in model.blocks]
    assert rates == pytest.approx([0.1, 0.2, 0.3, 0.4])


def test_enable_dropout_switches_only_the_dropout_modules_to_training():
    model = MLP(2, 8, num_classes=3, act=nn.ReLU, norm=_norm("batch"), drop=Drop(kind="dropout", p=0.5))
    model.eval()
    assert enable_dropout(model) == 2
    assert all(m.training for m in model.modules() if isinstance(m, nn.Dropout))
    assert not any(m.training for m in model.modules() if isinstance(m, nn.BatchNorm1d))
    x = torch.ones(2, 3, 32, 32)
    assert not torch.equal(model(x), model(x))  # stochastic passes


def test_max_norm_holds_after_a_step_and_leaves_short_units_alone():
    cfg = compose_config(["model=mlp", "model.depth=1", "model.width=16", "regularization=[max_norm]",
                          "regularization.max_norm.value=0.5", "optimizer=sgd", "optimizer.lr=1.0", "norm=none"])
    model = build_model(cfg, 10)
    optimizer = build_optimizer(cfg, model)
    torch.manual_seed(0)
    loss = nn.functional.cross_entropy(model(torch.randn(8, 3, 32, 32)), torch.arange(8))
    loss.backward()
    plain = {n: (p - p.grad).detach() for n, p in model.named_parameters()}  # what SGD alone gives
    optimizer.step()
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            norms = module.weight.norm(dim=1)
            assert (norms <= 0.5 + 1e-6).all()
            unconstrained = plain[f"{name}.weight"]
            short = unconstrained.norm(dim=1) <= 0.5
            assert torch.allclose(module.weight[short], unconstrained[short])
            long = ~short
            assert long.any()
            assert torch.allclose(module.weight[long], unconstrained[long] * 0.5
                                  / unconstrained[long].norm(dim=1, keepdim=True), atol=1e-6)


def test_max_norm_leaves_frozen_weights_alone():
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    with torch.no_grad():
        for layer in model:
            layer.weight.fill_(2.0)  # every row far above the max norm
    model[0].weight.requires_grad_(False)
    layers.apply_max_norm(model, 0.5)
    assert (model[0].weight == 2.0).all()
    assert torch.allclose(model[1].weight.norm(dim=1), torch.full((2,), 0.5))


# ---------------------------------------------------------------------------------------------------------------
# Every in-network regularization option, composed and built

REGULARIZERS = {
    "dropout": nn.Dropout, "gaussian_dropout": GaussianDropout, "alpha_dropout": nn.AlphaDropout,
    "dropconnect": DropConnectLinear, "stochastic_depth": StochasticDepth,
}


@pytest.mark.parametrize("name", [*REGULARIZERS, "max_norm"])
def test_every_regularization_option_of_mine_composes_and_builds(name):
    model_args = (["model=resnet", "model.widths=[4,8]", "model.blocks_per_stage=1"] if name == "stochastic_depth"
                  else ["model=mlp", "model.depth=2", "model.width=8"])
    cfg = compose_config([*model_args, f"regularization=[l2,{name}]"])
    validate(cfg)
    model = build_model(cfg, 10)
    optimizer = build_optimizer(cfg, model)
    if name == "max_norm":
        assert optimizer._optimizer_step_post_hooks  # the constraint runs after each step
    else:
        found = [m for m in model.modules() if isinstance(m, REGULARIZERS[name])]
        assert found and all(m.p == cfg.regularization[name].p for m in found[-1:])
    model(torch.zeros(2, 3, 32, 32)).sum().backward()


@pytest.mark.parametrize("overrides, key", [
    (["regularization=[dropout,gaussian_dropout]"], "kinds of dropout"),
    (["regularization=[dropout]", "regularization.dropout.p=1.0"], "regularization.dropout.p"),
    (["regularization=[dropout]", "regularization.dropout.conv_p=-0.1"], "regularization.dropout.conv_p"),
    (["regularization=[stochastic_depth]"], "residual network"),
    (["regularization=[max_norm]", "regularization.max_norm.value=0"], "regularization.max_norm.value"),
])
def test_bad_regularization_values_are_rejected_at_start_up(overrides, key):
    with pytest.raises(ConfigError, match=key.replace("[", r"\[")):
        validate(compose_config(overrides, checked=False))


def test_drop_from_config_reads_each_regularizer():
    cfg = compose_config(["regularization=[gaussian_dropout,dropconnect]", "regularization.gaussian_dropout.conv_p=0.1"])
    drop = layers.Drop.from_config(cfg.regularization)
    assert (drop.kind, drop.p, drop.conv_p, drop.dropconnect_p) == ("gaussian_dropout", 0.5, 0.1, 0.5)


@pytest.mark.parametrize("kind", ["batch", "layer", "group"])
def test_a_fixed_norm_scale_stays_one_while_the_shift_trains(kind):
    cfg = compose_config([f"norm={kind}", "norm.learn_scale=false", "norm.eps=1e-12", "model.widths=[4,8]",
                          "regularization=[]"])
    validate(cfg)
    model = build_model(cfg, 10)
    norms = [m for m in model.modules() if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm))]
    assert norms and all(m.eps == 1e-12 and not m.weight.requires_grad and m.bias.requires_grad for m in norms)
    optimizer = build_optimizer(cfg, model)
    assert not any(p is m.weight for g in optimizer.param_groups for p in g["params"] for m in norms)
    shifts = [m.bias.detach().clone() for m in norms]
    torch.nn.functional.cross_entropy(model(torch.randn(8, 3, 32, 32)), torch.arange(8)).backward()
    optimizer.step()
    assert all(torch.equal(m.weight, torch.ones_like(m.weight)) for m in norms)
    assert any(not torch.equal(m.bias, s) for m, s in zip(norms, shifts, strict=True))
    with pytest.raises(ConfigError, match="norm.learn_scale"):
        validate(compose_config(["norm.learn_scale=sometimes"], checked=False))
    with pytest.raises(ConfigError, match="norm.eps"):
        validate(compose_config(["norm.eps=0"], checked=False))
