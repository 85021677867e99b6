"""Initializers against their formulas (measured std of large layers), the activation-matched gain, biases, the
consistency warnings, and the lecture's initialization study (experiment=init_study)."""

import math

import pytest
import torch
from torch import nn

from conftest import compose_config
from runner.config import CONFIG_DIR, ConfigError, validate
from runner.engine.build import build_model, option
from runner.nets.init import activation_gain, consistency_warnings, initialize

INITS = sorted(p.stem for p in (CONFIG_DIR / "init").glob("*.yaml"))
RELU_GAIN = math.sqrt(2.0)


def _expected_std(scheme: str, fan_in: int, fan_out: int, units: int, gain: float = RELU_GAIN) -> float:
    """Each scheme's weight std, written from the papers' formulas (uniform U(-b, b) has std b / sqrt(3))."""
    return {
        "normal": 0.01,
        "uniform": 0.05 / math.sqrt(3),
        "lecun_normal": math.sqrt(1 / fan_in),
        "lecun_uniform": math.sqrt(3 / fan_in) / math.sqrt(3),
        "xavier_normal": math.sqrt(2 / (fan_in + fan_out)),
        "xavier_uniform": math.sqrt(6 / (fan_in + fan_out)) / math.sqrt(3),
        "he_normal": gain / math.sqrt(fan_in),
        "he_uniform": gain * math.sqrt(3 / fan_in) / math.sqrt(3),
        # A semi-orthogonal (units, fan_in) matrix has min(units, fan_in) unit singular values: its squared entries
        # sum to min(units, fan_in), so each has variance 1 / max(units, fan_in).
        "orthogonal": 1 / math.sqrt(max(units, fan_in)),
    }[scheme]


@pytest.mark.parametrize("init", INITS)
def test_every_init_option_composes_and_gives_its_formula(init):
    torch.manual_seed(0)
    # A large Linear (3072 -> 800) and a conv (3 -> 256 channels, 3x3): fan_in 3072 / 27, fan_out 800 / 2304.
    mlp = build_model(compose_config([f"init={init}", "model=mlp", "model.depth=1", "model.width=800",
                                      "norm=none"]), 10)
    cnn = build_model(compose_config([f"init={init}", "model.widths=[256]", "norm=none"]), 10)
    linear, conv = mlp.hidden[0].linear, cnn.features[0].conv
    if init == "default":  # PyTorch's own: Kaiming-uniform with a=sqrt(5), std 1 / sqrt(3 fan_in); bias not 0
        assert linear.weight.std().item() == pytest.approx(1 / math.sqrt(3 * 3072), rel=0.02)
        assert linear.bias.abs().sum() > 0
        return
    if init == "dirac":  # convs: the identity on the first in_channels outputs; Linear layers keep PyTorch's init
        assert torch.equal(conv.weight[:3], nn.init.dirac_(torch.empty(3, 3, 3, 3)))
        assert linear.bias.abs().sum() > 0
        return
    assert torch.equal(linear.bias, torch.zeros_like(linear.bias))  # biases zero unless configured
    if init in ("zeros", "constant"):
        value = 0.0 if init == "zeros" else 0.01
        assert (linear.weight == value).all() and (conv.weight == value).all()
        return
    for layer, fan_in, fan_out, rel in [(linear, 3072, 800, 0.01), (conv, 27, 2304, 0.04)]:
        units = layer.weight.shape[0]
        assert layer.weight.mean().item() == pytest.approx(0.0, abs=0.05 * layer.weight.std().item())
        assert layer.weight.std().item() == pytest.approx(_expected_std(init, fan_in, fan_out, units), rel=rel)


def test_orthogonal_rows_are_orthonormal():
    layer = nn.Linear(500, 300)
    initialize(layer, option(compose_config(["init=orthogonal"]).init), {"_target_": "torch.nn.ReLU"})
    assert torch.allclose(layer.weight @ layer.weight.T, torch.eye(300), atol=1e-4)


def test_he_gain_follows_the_activation_and_fan_out_mode():
    torch.manual_seed(0)
    cfg = compose_config(["init=he_normal", "init.mode=fan_out", "activation=leaky_relu",
                          "activation.negative_slope=0.2"])
    layer = nn.Linear(2000, 1000)
    initialize(layer, option(cfg.init), cfg.activation)
    gain = math.sqrt(2 / (1 + 0.2 ** 2))
    assert layer.weight.std().item() == pytest.approx(gain / math.sqrt(1000), rel=0.01)
    # The same as torch's own Kaiming-normal, the reference.
    ref = nn.Linear(2000, 1000)
    nn.init.kaiming_normal_(ref.weight, a=0.2, mode="fan_out", nonlinearity="leaky_relu")
    assert layer.weight.std().item() == pytest.approx(ref.weight.std().item(), rel=0.01)


@pytest.mark.parametrize("activation, gain", [
    ("relu", math.sqrt(2)), ("tanh", 5 / 3), ("sigmoid", 1.0), ("selu", 3 / 4), ("elu", math.sqrt(2)),
    ("leaky_relu", math.sqrt(2 / (1 + 0.01 ** 2))), ("prelu", math.sqrt(2 / (1 + 0.25 ** 2))), ("maxout", 1.0),
])
def test_activation_gain_matches_calculate_gain(activation, gain):
    assert activation_gain(compose_config([f"activation={activation}"]).activation) == pytest.approx(gain)


def test_numeric_gain_and_configured_bias_are_used():
    cfg = compose_config(["init=he_uniform", "init.gain=3.0", "init.bias=0.1"])
    layer = nn.Conv2d(64, 64, 3)
    initialize(layer, option(cfg.init), cfg.activation)
    assert layer.weight.abs().max().item() <= 3.0 * math.sqrt(3 / (64 * 9)) + 1e-6
    assert (layer.bias == 0.1).all()


@pytest.mark.parametrize("overrides, expected", [
    (["activation=selu", "init=he_normal", "norm=none"], ["init=lecun_normal"]),
    (["activation=selu", "init=lecun_normal", "norm=batch"], ["norm=none"]),
    (["activation=selu", "init=lecun_normal", "norm=none", "regularization=[dropout]"], ["alpha_dropout"]),
    (["activation=relu", "regularization=[alpha_dropout]"], ["made for activation=selu"]),
    (["activation=tanh", "init=he_uniform"], ["derived for ReLU"]),
    (["activation=sigmoid", "init=he_normal"], ["derived for ReLU"]),
    (["init=zeros"], ["symmetry"]),
    (["init=constant"], ["symmetry"]),
    (["activation=selu", "init=lecun_normal", "norm=none", "regularization=[alpha_dropout]"], []),
    (["activation=relu", "init=he_normal", "norm=batch", "regularization=[dropout]"], []),
    (["activation=tanh", "init=xavier_normal"], []),
])
def test_consistency_warnings_for_the_combinations_the_lectures_warn_about(overrides, expected, caplog):
    cfg = compose_config(overrides)
    messages = consistency_warnings(cfg.activation, cfg.init, cfg.norm, cfg.regularization)
    assert len(messages) == len(expected)
    for message, text in zip(messages, expected, strict=True):
        assert text in message
        assert message in caplog.text  # logged as a warning too


@pytest.mark.parametrize("overrides, key", [
    (["init=normal", "init.std=0"], "init.std"),
    (["init=uniform", "init.bound=-1"], "init.bound"),
    (["init=he_normal", "init.mode=fan_avg"], "init.mode"),
    (["init=xavier_normal", "init.gain=big"], "init.gain"),
    (["init.name=glorot"], "init.name"),
])
def test_bad_init_values_are_rejected_at_start_up(overrides, key):
    with pytest.raises(ConfigError, match=key):
        validate(compose_config(overrides, checked=False))


# ---------------------------------------------------------------------------------------------------------------
# The lecture's initialization study

def _layer_stds(case: str) -> list[float]:
    """The std of each of the 10 hidden layers' activations on a standardized batch, for one study case."""
    torch.manual_seed(0)
    model = build_model(compose_config(["+experiment=init_study", f"+experiment/init_study={case}"]), 10)
    assert len(model.hidden) == 10 and model.hidden[0].linear.out_features == 500
    h, stds = torch.randn(256, 3, 32, 32).flatten(1), []
    with torch.no_grad():
        for layer in model.hidden:
            h = layer(h)
            stds.append(h.std().item())
    return stds


def test_init_study_shows_the_lectures_four_behaviours_over_depth():
    tanh_small = _layer_stds("tanh_normal")
    tanh_xavier = _layer_stds("tanh_xavier")
    relu_xavier = _layer_stds("relu_xavier")
    relu_he = _layer_stds("relu_he")
    # normal(0.01): each layer multiplies the spread by about 0.01 * sqrt(500) = 0.22: collapse towards zero.
    assert tanh_small[-1] < 1e-5 and all(b < 0.3 * a for a, b in zip(tanh_small[1:], tanh_small[2:], strict=False))
    # Xavier + tanh: the spread stays of the same order over all ten layers.
    assert 0.2 < tanh_xavier[-1] / tanh_xavier[0] <= 1.0 and tanh_xavier[-1] > 0.1
    # Xavier + ReLU: half the variance lost per layer (std x 0.71): shrinking layer after layer.
    assert all(b < a for a, b in zip(relu_xavier, relu_xavier[1:], strict=False))
    assert relu_xavier[-1] / relu_xavier[0] < 0.1
    # He + ReLU: the gain sqrt(2) makes up for it: roughly constant.
    assert 0.7 < relu_he[-1] / relu_he[0] < 1.4


def test_init_study_is_one_multirun_over_the_four_cases():
    from omegaconf import OmegaConf

    study = OmegaConf.load(CONFIG_DIR / "experiment" / "init_study.yaml")
    assert study.hydra.mode == "MULTIRUN"
    cases = study.hydra.sweeper.params["+experiment/init_study"].split(",")
    assert cases == ["tanh_normal", "tanh_xavier", "relu_xavier", "relu_he"]
    pairs = [(c.activation._target_, c.init.name) for c in
             (compose_config(["+experiment=init_study", f"+experiment/init_study={case}"]) for case in cases)]
    assert pairs == [("torch.nn.Tanh", "normal"), ("torch.nn.Tanh", "xavier_normal"),
                     ("torch.nn.ReLU", "xavier_normal"), ("torch.nn.ReLU", "he_normal")]


# ---------------------------------------------------------------------------------------------------------------
# Dirac init and the whitened first layer (the fast preset's init)

def test_dirac_init_makes_a_conv_the_identity():
    conv = nn.Conv2d(8, 8, 3, padding=1, bias=False)
    initialize(nn.Sequential(conv), option(compose_config(["init=dirac"]).init), {"_target_": "torch.nn.ReLU"})
    x = torch.randn(2, 8, 6, 6)
    assert torch.equal(conv(x), x)


def test_dirac_init_keeps_the_extra_output_channels_and_linear_layers():
    net = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.Flatten(), nn.Linear(8, 3))
    head = net[2].weight.detach().clone()
    initialize(net, option(compose_config(["init=dirac"]).init), {"_target_": "torch.nn.ReLU"})
    x = torch.randn(2, 4, 5, 5)
    assert torch.allclose(net[0](x)[:, :4], x)
    assert torch.equal(net[2].weight, head)


def test_whitened_first_layer_whitens_the_training_patches():
    """On the patches it was fitted on, the covariance of the first n outputs is diag(l / (l + eps)) ~ I."""
    from runner.nets.init import patch_covariance, whiten_conv_

    torch.manual_seed(0)
    mix = torch.randn(12, 12)  # correlated patches: images made of a random linear mix of noise
    x = torch.nn.functional.fold((torch.randn(300, 961, 12) @ mix).transpose(1, 2), (32, 32), 2) * 3.0 + 1.0
    x = x[:, :, :32, :32]
    conv = nn.Conv2d(3, 24, 2)
    n = whiten_conv_(conv, x, epsilon=1e-6)
    assert n == 12
    out = conv(x)[:, :n].permute(1, 0, 2, 3).reshape(n, -1)
    cov = torch.cov(out, correction=0)
    assert torch.allclose(cov, torch.eye(n), atol=1e-3)
    assert out.mean(1).abs().max() < 1e-3  # the bias centres each output
    assert torch.allclose(conv.weight[n:], -conv.weight[:n])
    mean, patch_cov = patch_covariance(x, 2)
    assert torch.allclose(patch_cov, torch.cov(torch.nn.functional.unfold(x, 2).transpose(1, 2).reshape(-1, 12).T.double(),
                                               correction=0), atol=1e-8)


def test_fast_preset_whitens_the_stem_from_the_training_images():
    from runner.data.preprocess import Preprocess
    from runner.engine.build import init_inputs

    cfg = compose_config(["+experiment=fast", "model.widths=[8,8,8]", "init.whiten_images=64"])
    validate(cfg)
    x = torch.randint(0, 256, (80, 3, 32, 32), dtype=torch.uint8)
    pre = Preprocess(torch.full((1, 3, 1, 1), 0.5), torch.full((1, 3, 1, 1), 0.25))
    inputs = init_inputs(cfg, pre, x)
    assert inputs.shape == (64, 3, 32, 32)
    model = build_model(cfg, 10, inputs)
    stem = model.stem.conv
    assert not stem.weight.requires_grad  # init.first_layer_trainable=false
    out = stem(inputs)[:, :12].permute(1, 0, 2, 3).reshape(12, -1)
    assert torch.allclose(torch.cov(out), torch.eye(12), atol=0.05)


def test_whitening_needs_its_keys():
    with pytest.raises(ConfigError, match="whiten_epsilon"):
        validate(compose_config(["init=he_normal", "+init.first_layer=whiten"], checked=False))
    with pytest.raises(ConfigError, match="init.first_layer"):
        validate(compose_config(["init=dirac", "init.first_layer=pca"], checked=False))


@pytest.mark.slow  # over 2 s on 2 idle cores: `make test-all` and CI run it
def test_whitening_bias_trains_for_first_layer_bias_epochs_then_stays(tmp_path):
    """init.first_layer_bias_epochs=N: the stem's bias moves in the first N epochs only (held by optim.hold, which
    drops its gradient, so momentum and decay cannot move it either)."""
    from conftest import choices_of
    from runner.data import checkpoint
    from runner.engine import train

    base = ["model=airbench", "model.widths=[8,16,16]", "init=dirac", "init.first_layer=whiten",
            "init.first_layer_trainable=false", "init.whiten_images=200", "diagnostics.every_steps=0",
            "optimizer=nesterov", "regularization=[l2]", "regularization.l2.decay_norm_and_bias=true"]

    def stem_bias(bias_epochs, epochs):
        overrides = [*base, f"init.first_layer_bias_epochs={bias_epochs}", f"trainer.epochs={epochs}"]
        run_dir = tmp_path / f"{bias_epochs}_{epochs}"
        train.fit(compose_config(overrides), run_dir, choices_of(overrides))
        return checkpoint.load(run_dir / train.LAST)["model"]["stem.conv.bias"]

    held = stem_bias(0, 1)
    assert torch.equal(held, stem_bias(0, 2))  # held from the start: the whitening init, after 1 or 2 epochs
    trained_one = stem_bias(1, 2)
    assert not torch.equal(trained_one, held)  # trained in epoch 1 of 2
    assert not torch.equal(stem_bias("null", 1), stem_bias("null", 2))  # null: trained all run
    with pytest.raises(ConfigError, match="init.first_layer=whiten"):
        validate(compose_config(["init=dirac", "init.first_layer_bias_epochs=3"], checked=False))
    with pytest.raises(ConfigError, match="init.first_layer_bias_epochs"):
        validate(compose_config(["init=dirac", "init.first_layer=whiten", "init.first_layer_bias_epochs=-1"],
                                checked=False))
