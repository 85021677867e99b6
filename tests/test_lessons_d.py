"""Lessons on optimizers, activations, augmentation and penalties (runner.lessons.claims): each lesson run at --size
test asserts the verdict it computes and a number of its table; the measuring functions are checked on small
networks built here, against formulas and cases whose answer is known."""

import math
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from runner.commands.lesson import run_lesson
from runner.engine.objectives import Classify
from runner.lessons import claims
from runner.lessons import init as init_lessons
from runner.optimization import optimizers


def _row(result, key: str, value: str) -> dict:
    return next(r for r in result.rows if r[key] == value)


def _run(model, x, y=None, preprocess=None):
    """What a measure sees of a trained run: its model, preprocess, splits, objective and config."""
    return SimpleNamespace(model=model, preprocess=preprocess or nn.Identity(),
                           splits=SimpleNamespace(train_x=x, train_y=y, test_y=torch.zeros(7)), objective=Classify(),
                           cfg=OmegaConf.create({"trainer": {"eval_batch_size": 3}}))


class _FirstThree(nn.Module):
    """Logits = the first three inputs: predicts the index of the largest of them."""

    def forward(self, x):
        return x[:, :3]


# ---- measuring functions (fast) ---------------------------------------------------------------------------------

def test_train_accuracy_counts_what_a_fixed_net_gets_right():
    x = torch.eye(4)[[0, 1, 2, 0, 1, 2, 0, 1]]  # each row predicts class 0, 1 or 2 (row 3 never occurs)
    y = torch.tensor([0, 1, 2, 1, 1, 0, 0, 2])  # right at 0, 1, 2, 4, 6: 5 of 8
    assert claims.train_accuracy(_run(_FirstThree(), x, y)) == 5 / 8
    assert claims.train_accuracy(_run(_FirstThree(), x, y), n=4) == 3 / 4  # the first 4 images only
    assert claims._fit_measure(_run(_FirstThree(), x, y)) == {"train_acc": 5 / 8, "train_n": 8, "test_n": 7}


def _two_layers(act) -> nn.Sequential:
    """4 -> 6 -> 4 -> 3; units 0 and 1 of the first layer and unit 2 of the second get a negative input for every
    image (zero weights, bias -5): 3 of the 10 hidden units are never positive."""
    net = nn.Sequential(nn.Linear(4, 6), act(), nn.Linear(6, 4), act(), nn.Linear(4, 3))
    with torch.no_grad():
        for layer, units in ((net[0], [0, 1]), (net[2], [2])):
            layer.bias.fill_(0.0)
            layer.weight[units] = 0.0
            layer.bias[units] = -5.0
    return net


def test_never_positive_and_no_gradient_fractions_on_units_pushed_below_zero():
    torch.manual_seed(0)
    x = torch.randn(256, 4)
    relu, leaky, elu = _two_layers(nn.ReLU), _two_layers(nn.LeakyReLU), _two_layers(nn.ELU)
    for net in (leaky, elu):
        net.load_state_dict(relu.state_dict())
    # ReLU: a unit never positive passes no gradient, and no other unit is dead on 256 Gaussian images
    assert claims.never_positive_fraction(relu, x) == pytest.approx(0.3)
    assert claims.no_gradient_fraction(relu, x) == pytest.approx(0.3)
    # the same count as runner.lessons.init.dead_relu_fraction, which looks at ReLU layers
    assert claims.never_positive_fraction(relu, x) == pytest.approx(init_lessons.dead_relu_fraction(_run(relu, x), 256))
    # leaky ReLU and ELU: the same units stay on the negative side, but their slope there is not 0
    for net in (leaky, elu):
        assert claims.never_positive_fraction(net, x) == pytest.approx(0.3)
        assert claims.no_gradient_fraction(net, x) == 0.0


def test_unit_means_follow_relus_gaussian_formula_and_do_not_cancel():
    torch.manual_seed(0)
    x = 2.0 * torch.randn(20000, 64)  # N(0, s^2), s = 2
    net = nn.Sequential(nn.Linear(64, 64, bias=False), nn.ReLU(), nn.Linear(64, 3))
    with torch.no_grad():
        net[0].weight.copy_(torch.eye(64))
    (mean, centring), = claims.unit_means(net, x)
    assert mean == pytest.approx(2.0 / math.sqrt(2 * math.pi), rel=0.02)  # E[max(z, 0)] = s / sqrt(2 pi)
    assert centring == pytest.approx(1 / math.sqrt(math.pi), rel=0.02)  # / sqrt(E[max(z, 0)^2]) = s / sqrt(2)
    # two units that are constants +1 and -1: the layer's mean is 0, but every unit is far from centred
    flat = nn.Sequential(nn.Linear(2, 2), nn.Hardtanh(-5, 5), nn.Linear(2, 3))
    with torch.no_grad():
        flat[0].weight.zero_()
        flat[0].bias.copy_(torch.tensor([1.0, -1.0]))
    assert claims.unit_means(flat, torch.randn(10, 2)) == [(1.0, 1.0)]


def _lecun_mlp(depth: int, width: int, act) -> nn.Sequential:
    layers = []
    for _ in range(depth):
        linear = nn.Linear(width, width, bias=False)
        nn.init.normal_(linear.weight, 0.0, 1 / math.sqrt(width))  # LeCun normal: N(0, 1 / fan_in)
        layers += [linear, act()]
    return nn.Sequential(*layers, nn.Linear(width, 10))


def test_layer_moments_show_selus_fixed_point_and_relus_halving():
    torch.manual_seed(0)
    x = torch.randn(1024, 512)
    selu = claims.layer_moments(_lecun_mlp(10, 512, nn.SELU), x)
    relu = claims.layer_moments(_lecun_mlp(10, 512, nn.ReLU), x)
    assert len(selu) == 10
    # Klambauer et al.: N(0, 1) in, N(0, 1/fan_in) weights: SELU's (mean 0, variance 1) is the fixed point
    assert all(claims.in_band(m, 0.1, (0.8, 1.5)) for m in selu)
    assert claims.departure(selu) < 0.15
    # ReLU keeps half the second moment per layer: the std shrinks by 1/sqrt(2) per layer
    assert (relu[-1][1] / relu[0][1]) ** (1 / 9) == pytest.approx(1 / math.sqrt(2), abs=0.03)
    assert claims.departure(relu) > 3.0


def test_departure_and_band_formulas():
    assert claims.departure([(0.0, 1.0)]) == 0.0
    assert claims.departure([(0.5, math.e), (-0.1, 1.0)]) == pytest.approx(1.5)  # |0.5| + |ln e|
    assert claims.departure([(0.0, 0.5)]) == pytest.approx(math.log(2))  # a halved std counts as much as doubled
    assert claims.departure([(0.0, 0.0)]) == math.inf
    assert claims.in_band((0.05, 1.2), 0.1, (0.8, 1.5)) and not claims.in_band((0.05, 1.3), 0.1, (0.8, 1.5))
    assert not claims.in_band((-0.2, 1.0), 0.1, (0.8, 1.5))


def test_decayed_weights_are_the_conv_and_linear_weights_only():
    net = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2), nn.Linear(2, 1))
    weights = claims.decayed_weights(net)
    assert weights.shape == (3 * 2 + 2 * 1,)
    assert torch.equal(weights[:6], net[0].weight.detach().flatten())
    assert claims.relative_distance(weights, weights) == 0.0
    assert claims.relative_distance(1.1 * weights, weights) == pytest.approx(0.1, rel=1e-5)


def test_weights_after_keeps_the_weights_of_the_asked_step():
    net = nn.Sequential(nn.Linear(2, 2))
    snapshot, kept = claims.WeightsAfter(3), []
    for step in range(5):  # the loop calls after_step with run.state.step = the steps taken before this one
        with torch.no_grad():
            net[0].weight.fill_(float(step + 1))  # the weights after step number step + 1
        snapshot.after_step(SimpleNamespace(state=SimpleNamespace(step=step), model=net), None, None, None)
        kept.append(snapshot.value)
    assert kept[:2] == [None, None] and torch.equal(snapshot.value, torch.full((4,), 3.0))


def _trained(optimizer_class, regularization: dict, decoupled_native: bool = False, steps: int = 8):
    """A small net after `steps` steps on a fixed batch, with runner's parameter groups and regularization hooks."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(10, 16), nn.Tanh(), nn.Linear(16, 3))
    x, y = torch.randn(32, 10), torch.randint(0, 3, (32,))
    groups = optimizers.param_groups(net, OmegaConf.create(regularization), decoupled_native=decoupled_native)
    opt = optimizer_class(groups, lr=0.05)
    optimizers.register_hooks(opt)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    return claims.decayed_weights(net)


def test_l2_and_decoupled_decay_are_one_update_for_sgd_and_two_for_adam():
    """The lesson's premise on runner's own plumbing: regularization=[l2] goes into the optimizer's weight_decay
    (g + lambda w), regularization=[weight_decay] into the decoupled hook (w <- w (1 - lr lambda)), AdamW's own."""
    l2 = {"l2": {"value": 0.1, "decay_norm_and_bias": False}}
    decay = {"weight_decay": {"value": 0.1, "decay_norm_and_bias": False}}
    plain = _trained(torch.optim.SGD, {})
    sgd_l2, sgd_decay = _trained(torch.optim.SGD, l2), _trained(torch.optim.SGD, decay)
    assert claims.relative_distance(sgd_l2, sgd_decay) < 1e-6 < claims.relative_distance(sgd_l2, plain)
    adam_l2 = _trained(torch.optim.Adam, l2)
    adamw = _trained(torch.optim.AdamW, decay, decoupled_native=True)
    adam_decay = _trained(torch.optim.Adam, decay)  # the decoupled hook on Adam: AdamW's rule
    assert claims.relative_distance(adamw, adam_decay) < 1e-6
    assert claims.relative_distance(adam_l2, adamw) > 1e-3


# ---- the lessons at --size test (each trains a few dozen small runs: slow) -------------------------------------

@pytest.mark.slow
def test_l2_vs_weight_decay(tmp_path):
    result = run_lesson("l2_vs_weight_decay", [], "test", out=tmp_path)
    assert result.verdict.reproduced
    assert max(_row(result, "arm", "sgd_l2")["distance to its pair after 10 steps"].values) < 1e-5
    assert min(_row(result, "arm", "adamw")["distance to its pair after 10 steps"].values) > 1e-3
    adam_l2, adamw = _row(result, "arm", "adam_l2"), _row(result, "arm", "adamw")
    assert adam_l2["weight norm at the end"].mean < adamw["weight norm at the end"].mean
    assert (tmp_path / "l2_vs_weight_decay.png").stat().st_size > 0


@pytest.mark.slow
def test_leaky_relu_elu(tmp_path):
    result = run_lesson("leaky_relu_elu", [], "test", out=tmp_path)
    assert result.verdict.reproduced
    assert _row(result, "arm", "leaky_relu_high_lr")["units without gradient"].values == [0.0, 0.0, 0.0]
    assert _row(result, "arm", "relu_high_lr")["units without gradient"].mean > 0.05
    elu, relu = _row(result, "arm", "elu"), _row(result, "arm", "relu")
    assert elu["mean |unit mean| / RMS"].mean < relu["mean |unit mean| / RMS"].mean


@pytest.mark.slow
def test_selu_self_normalizing(tmp_path):
    result = run_lesson("selu_self_normalizing", [], "test", out=tmp_path)
    assert result.verdict.reproduced
    selu, relu = _row(result, "arm", "selu"), _row(result, "arm", "relu")
    assert selu["layers in band (at init)"].values == [12.0, 12.0, 12.0]
    assert relu["departure (at init)"].mean > 3.0 > 0.3 > selu["departure (at init)"].mean


@pytest.mark.slow
def test_augmentation_overfitting(tmp_path):
    result = run_lesson("augmentation_overfitting", [], "test", out=tmp_path)
    none, augmented = _row(result, "augmentation", "none"), _row(result, "augmentation", "crop_flip")
    assert augmented["train - test"].mean < none["train - test"].mean
    assert result.verdict.reproduced


@pytest.mark.slow
def test_adaptive_generalization(tmp_path):
    result = run_lesson("adaptive_generalization", [], "test", out=tmp_path)
    nesterov = _row(result, "optimizer", "nesterov")
    # each arm runs at one of its tuning factors x its own lr (nesterov's own: 0.05)
    assert any(math.isclose(nesterov["lr (tuned)"], 0.05 * f) for f in (0.25, 0.5, 1, 2, 4))
    assert sum(note.startswith("adam runs at lr") for note in result.notes) == 1
    assert any(note.startswith("every run fits its training set") for note in result.notes)
    assert not result.verdict.reproduced
