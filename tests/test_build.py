"""One way from an option to an object: every option file of every group names its `_target_` (and, where the group
names its options, `name:` is the file's name), and `build.option` makes it: runner's own keys left out, a
`_partial_` option called with the run's values or kept as a factory."""

import functools

import pytest
import torch
from hydra.utils import get_object
from omegaconf import OmegaConf

from conftest import compose_config
from runner.config import CONFIG_DIR
from runner.config.schema import complete_and_check
from runner.engine import averaging, build
from runner.nets import init, layers, transfer
from runner.nets.models import CNN

GROUPS = ("model", "activation", "init", "norm", "optimizer", "schedule", "augmentation", "preprocess", "averaging",
          "transfer", "objective", "prune")
NAMED = ("init", "norm", "schedule", "augmentation", "preprocess", "averaging", "transfer", "objective", "prune")
OPTIONS = [(group, p.stem) for group in GROUPS for p in sorted((CONFIG_DIR / group).glob("*.yaml"))]


@pytest.mark.parametrize("group, name", OPTIONS)
def test_every_option_names_its_target_and_itself(group, name):
    node = OmegaConf.load(CONFIG_DIR / group / f"{name}.yaml")
    assert callable(get_object(node._target_))
    assert node.get("name") == (name if group in NAMED else None)
    assert (CONFIG_DIR / group / f"{name}.yaml").read_text().startswith("#")  # the opening comment says what it is


def _built(group: str, name: str):
    """The object the run builds for `group=name`, on a tiny CNN (the keys checked and completed by the schema; the
    rules between keys, e.g. transfer's need for model.pretrained, left out)."""
    cfg = compose_config([f"{group}={name}", "model.widths=[4,8]"], checked=False)
    if name == "freeze_until":
        cfg.transfer.freeze_until = "features.0"
    complete_and_check(cfg)
    model = CNN([4, 8], 1, num_classes=10, act=torch.nn.ReLU, norm=layers.Norm())
    if group == "transfer":
        return build.option(cfg.transfer, model)
    return {"init": lambda: build.option(cfg.init), "norm": lambda: build.option(cfg.norm),
            "averaging": lambda: build.build_averaging(cfg, model, 10)}[group]()


@pytest.mark.parametrize("group, name", [(g, n) for g, n in OPTIONS if g in ("init", "norm", "averaging", "transfer")])
def test_every_init_norm_averaging_and_transfer_option_builds_its_target(group, name):
    made = _built(group, name)
    target = get_object(OmegaConf.load(CONFIG_DIR / group / f"{name}.yaml")._target_)
    if name == "none" and group in ("averaging", "transfer"):
        assert made is None and target in (averaging.none, transfer.none)
        return
    assert type(made) is target
    if group in ("norm", "transfer"):
        assert made.name == name


def test_runner_keys_are_left_out_and_the_rest_reach_the_target():
    node = OmegaConf.create({"_target_": "runner.nets.layers.GroupNorm", "name": "group", "groups": 3, "eps": 0.1})
    assert build.option(node) == layers.GroupNorm(groups=3, eps=0.1)
    assert set(build.RUNNER_KEYS) >= {"name", "impl", "bias_correction", "warmup_epochs", "snapshot_ensemble",
                                      "pretrained"}


def test_a_partial_option_is_called_with_the_runs_values_or_stays_a_factory():
    cfg = compose_config(["init=he_normal", "init.mode=fan_out"])
    assert build.option(cfg.init) == init.HeNormal(mode="fan_out", gain="auto", bias=0.0, first_layer="same",
                                                   first_layer_trainable=True)
    act = build.option(compose_config(["activation=leaky_relu"]).activation)
    assert isinstance(act, functools.partial) and act().negative_slope == 0.01  # a factory: one module per layer
    optimizer = build.option(cfg.optimizer, [torch.nn.Parameter(torch.zeros(1))], lr=0.5)
    assert type(optimizer) is torch.optim.SGD and optimizer.defaults["lr"] == 0.5  # _partial_ honoured
    with pytest.raises(TypeError, match="_partial_"):
        build.option(cfg.norm, 8)


def test_the_autoencoder_trains_at_its_lr_factor_times_the_optimizers_lr():
    """objective=autoencoder: the default recipe's peak lr 0.4 (tuned for cross-entropy) diverges on the squared error,
    so with an SGD-family optimizer the objective scales it by 0.25 (objective.lr_factor=null): 0.1; Adam keeps its
    lr; a number is that factor, 1 leaves optimizer.lr as is."""
    model = torch.nn.Linear(4, 2)

    def lrs(overrides):
        return [g["lr"] for g in build.build_optimizer(compose_config(overrides), model).param_groups]

    def all_equal(values, lr):
        return values == pytest.approx([lr] * len(values))

    assert all_equal(lrs(["objective=autoencoder"]), 0.1)
    assert all_equal(lrs(["objective=autoencoder", "optimizer=sgd"]), 0.025)
    assert all_equal(lrs(["objective=autoencoder", "objective.lr_factor=1"]), 0.4)
    assert all_equal(lrs(["objective=autoencoder", "objective.lr_factor=0.5"]), 0.2)
    assert all_equal(lrs(["objective=autoencoder", "optimizer=adam", "optimizer.lr=0.003"]), 0.003)
    assert all_equal(lrs([]), 0.4)


@pytest.mark.parametrize("objective", ["classify", "autoencoder"])
def test_the_objective_says_what_the_weights_are_and_which_module_is_the_classifier(objective):
    """A model checkpoint holds the classifier's parameters under "model" (an autoencoder's encoder, under the
    classifier's own names, so that a later run transfers it; its decoder under "decoder"); loading it back gives
    the same network. The run asks the objective, never tests the network's type."""
    cfg = compose_config([f"objective={objective}", "model=cnn", "model.widths=[4,8]", "objective.decoder_width=8"]
                         if objective == "autoencoder" else ["model=cnn", "model.widths=[4,8]"])
    made = build.build_objective(cfg)
    model = build.build_model(cfg, 10)
    net = made.network(model)
    assert made.encoder(net) is model
    weights = made.weights(net)
    assert set(weights) == ({"model", "decoder"} if objective == "autoencoder" else {"model"})
    assert weights["model"].keys() == model.state_dict().keys()
    fresh = made.network(build.build_model(cfg, 10))
    made.load_weights(fresh, weights)
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), fresh.state_dict().values(), strict=True))
    pictures = made.pictures(net, torch.nn.Identity(), torch.rand(2, 3, 32, 32))
    assert list(pictures) == (["reconstruction/original_then_reconstructed"] if objective == "autoencoder" else [])
