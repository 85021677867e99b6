"""The models: every model x activation x norm trains (forward and backward), every model and activation option
composes and builds, parameter counts and FLOPs against their formulas and the papers' figures."""

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from conftest import compose_config
from runner.config import CONFIG_DIR, ConfigError, validate
from runner.engine.build import build_model, option
from runner.nets.layers import Maxout
from runner.nets.models import CNN, MLP, VGG, ResNet, flops_per_image

ACTIVATIONS = sorted(p.stem for p in (CONFIG_DIR / "activation").glob("*.yaml"))
NORMS = sorted(p.stem for p in (CONFIG_DIR / "norm").glob("*.yaml"))
MODELS = sorted(p.stem for p in (CONFIG_DIR / "model").glob("*.yaml"))

# Tiny versions of every model, so the whole activation x norm grid runs in seconds.
TINY = {
    "mlp": lambda **kw: MLP(2, 6, **kw),
    "cnn": lambda **kw: CNN([4, 6], 1, **kw),
    "vgg": lambda **kw: VGG([[4], [4, 6], [6]], [6], **kw),
    "resnet": lambda **kw: ResNet([4, 6], 1, **kw),
}
# The same, from the config files.
TINY_OVERRIDES = {
    "mlp": ["model.depth=2", "model.width=6"],
    "cnn": ["model.widths=[4,6]"],
    "vgg": ["model.stages=[[4],[4,6],[6]]", "model.fc_widths=[6]"],
    "resnet": ["model.widths=[4,6]", "model.blocks_per_stage=1"],
    "resnet18": ["model.widths=[4,6]", "model.blocks_per_stage=1"],
    "airbench": ["model.widths=[4,6,6]", "model.stem_width=8"],
    "torchvision_resnet18": [],  # fixed architecture: torchvision's, with its own ReLU and batch norm
}


def _activation(name: str):
    return option(OmegaConf.load(CONFIG_DIR / "activation" / f"{name}.yaml"))


def _norm(name: str, position: str):
    """The option norm=<name> as the run builds it, at `position`, group norm with 2 groups."""
    node = OmegaConf.merge(OmegaConf.load(CONFIG_DIR / "norm" / f"{name}.yaml"), {"position": position})
    if name == "group":
        node.groups = 2
    return option(node)


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("model", sorted(TINY))
def test_every_model_trains_with_every_activation_and_norm(model, activation):
    torch.manual_seed(0)
    act = _activation(activation)
    for kind in ("none", "batch", "layer", "group"):
        for position in ("before", "after") if kind != "none" else ("before",):
            net = TINY[model](num_classes=10, act=act, norm=_norm(kind, position))
            logits = net(torch.randn(3, 3, 32, 32))
            assert logits.shape == (3, 10) and torch.isfinite(logits).all()
            logits.logsumexp(1).sum().backward()
            unused = [n for n, p in net.named_parameters() if p.grad is None]
            assert not unused, f"{model}/{activation}/{kind}-{position}: no gradient reaches {unused}"


@pytest.mark.parametrize("model", MODELS)
def test_every_model_option_composes_and_builds(model):
    cfg = compose_config([f"model={model}", *TINY_OVERRIDES[model]])
    validate(cfg)
    net = build_model(cfg, 10)
    target = cfg.model._target_.rsplit(".", 1)[-1]
    assert type(net).__name__ == target or target.startswith("torchvision_")  # a factory of torchvision's class
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_every_activation_option_composes_and_is_used_by_the_model(activation):
    cfg = compose_config([f"activation={activation}", "model.widths=[4,6]"])
    net = build_model(cfg, 10)
    target = cfg.activation._target_.rsplit(".", 1)[-1]
    assert sum(type(m).__name__ == target for m in net.modules()) == 2  # one per conv block


@pytest.mark.parametrize("norm", NORMS)
def test_every_norm_option_composes_and_is_used_by_the_model(norm):
    cfg = compose_config([f"norm={norm}", "model.widths=[4,8]"])
    net = build_model(cfg, 10)
    expected = {"none": (), "batch": nn.BatchNorm2d, "layer": nn.GroupNorm, "group": nn.GroupNorm}[norm]
    found = [m for m in net.modules() if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm))]
    assert len(found) == (0 if norm == "none" else 2) and all(isinstance(m, expected) for m in found)
    if norm == "layer":
        assert all(m.num_groups == 1 for m in found)  # over all of C, H, W


def _count(net):
    return sum(p.numel() for p in net.parameters())


def test_resnet_options_are_resnet20_and_resnet18_with_the_papers_sizes():
    r20 = build_model(compose_config(["model=resnet"]), 10)
    r18 = build_model(compose_config(["model=resnet18"]), 10)
    # He et al. 2016, table 6: ResNet-20 has 0.27M parameters; the CIFAR ResNet-18 has 11.17M.
    assert _count(r20) == pytest.approx(0.27e6, rel=0.02)
    assert _count(r18) == pytest.approx(11.17e6, rel=0.01)

    def depth(net):  # weighted layers on the main path: 3x3 convs and the classifier, not 1x1 shortcuts
        return sum(isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3))
                   for m in net.modules())

    assert depth(r20) == 20 and depth(r18) == 18
    assert depth(build_model(compose_config(["model=resnet", "model.blocks_per_stage=5"]), 10)) == 32


def test_mlp_parameter_count_follows_depth_and_width():
    for depth, width in [(0, 7), (1, 7), (3, 20)]:
        net = MLP(depth, width, num_classes=10, act=nn.ReLU, norm=_norm("none", "before"))
        hidden = (3072 * width + width) + (depth - 1) * (width * width + width) if depth else 0
        head = (width if depth else 3072) * 10 + 10
        assert _count(net) == hidden + head


def test_maxout_doubles_the_parameters_of_every_layer_in_front_of_it():
    relu = MLP(2, 16, num_classes=10, act=nn.ReLU, norm=_norm("none", "before"))
    maxout = MLP(2, 16, num_classes=10, act=Maxout, norm=_norm("none", "before"))
    hidden = lambda net: sum(p.numel() for p in net.hidden.parameters())  # noqa: E731
    assert hidden(maxout) == 2 * hidden(relu)
    assert _count(maxout.head) == _count(relu.head)


def test_flops_per_image_matches_the_formula():
    net = CNN([4, 8], 1, num_classes=10, act=nn.ReLU, norm=_norm("batch", "before"))
    # 2 FLOPs per multiply-add: conv = 2 * k*k * c_in * c_out * H_out * W_out; linear = 2 * in * out
    expected = 2 * (9 * 3 * 4 * 32 * 32 + 9 * 4 * 8 * 16 * 16 + 8 * 10)
    assert flops_per_image(net) == expected
    assert net.training  # measured in eval mode, put back


@pytest.mark.parametrize("overrides, key", [
    (["model=mlp", "model.depth=-1"], "model.depth"),
    (["model=mlp", "model.width=0"], "model.width"),
    (["model=cnn", "model.widths=[]"], "model.widths"),
    (["model=vgg", "model.stages=[[8],[8],[8],[8],[8],[8]]"], "model.stages"),
    (["model=resnet", "model.blocks_per_stage=0"], "model.blocks_per_stage"),
    (["activation=maxout", "activation.pieces=1"], "activation.pieces"),
    (["norm=group", "norm.groups=0"], "norm.groups"),
    (["norm.position=middle"], "norm.position"),
])
def test_bad_network_values_are_rejected_at_start_up(overrides, key):
    with pytest.raises(ConfigError, match=key):
        validate(compose_config(overrides, checked=False))


def test_airbench_has_its_widths_resolutions_and_head_scale():
    cfg = compose_config(["model=airbench", "activation=gelu"])
    net = build_model(cfg, 10)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [24, 64, 64, 256, 256, 256, 256]
    assert convs[0].kernel_size == (2, 2) and convs[0].padding == (0, 0)
    x = torch.randn(2, 3, 32, 32)
    assert net.stages(net.stem(x)).shape == (2, 256, 3, 3)  # 31 -> 15 -> 7 -> 3
    assert sum(p.numel() for p in net.parameters()) == 1_972_792
    unscaled = net.head(net.pool(net.stages(net.stem(x))).flatten(1))
    assert torch.allclose(net(x), cfg.model.head_scale * unscaled)
