"""Transfer learning: loading by name and shape with its report, refusing hostile checkpoints, freezing (parameters
and batch-norm statistics), the lr multiplier in the optimizer's groups, gradual unfreezing, torchvision weights from
a local file or a faked download, the transfer/objective option files, and the autoencoder pretraining."""

import json
import os
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from conftest import compose_config, run_cli
from runner.config import CONFIG_DIR, CheckpointError, ConfigError, validate
from runner.data import checkpoint
from runner.engine.build import build_freezer, build_model, build_optimizer, build_pretrained, build_schedule
from runner.engine.objectives import AutoEncoder
from runner.engine.train import fit as pretrain
from runner.nets import transfer

SMALL = ["model.widths=[4,8]", "trainer.batch_size=16"]


def run_cli_module(module: str, args, cwd: Path):
    """`python -m <module> ARGS` in cwd, as a user would run it."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def small_model(overrides=(), num_classes=5):
    return build_model(compose_config([*SMALL, *overrides]), num_classes)


@pytest.fixture
def source(tmp_path) -> Path:
    """A runner checkpoint of the small CNN (10 classes), as a run directory holds it."""
    torch.manual_seed(1)
    path = tmp_path / "pretrain" / "checkpoints" / "last.pt"
    path.parent.mkdir(parents=True)
    torch.save({"model": small_model(num_classes=10).state_dict(), "epoch": 3}, path)
    return path


# ---------------------------------------------------------------------------------------------------------------
# Loading and its report

def test_loading_reports_loaded_skipped_and_new(tmp_path):
    torch.manual_seed(0)
    state = small_model(num_classes=10).state_dict()
    state["extra.weight"] = torch.ones(3)  # a layer this model does not have
    path = tmp_path / "weights.pt"
    torch.save(state, path)  # a plain state dict
    target = small_model(["model.widths=[4,16]"])  # second conv: 16 channels instead of 8
    before = {k: v.clone() for k, v in target.state_dict().items()}
    report = transfer.load_pretrained(target, str(path))

    assert set(report.loaded) == {k for k in state if k.startswith("features.0.")}
    assert report.skipped["extra.weight"] == "no layer of that name in this model"
    assert "shape (8, 4, 3, 3) does not fit this model's (16, 4, 3, 3)" in report.skipped["features.2.conv.weight"]
    assert report.skipped["head.weight"] == "the output layer is replaced by a new one"
    assert report.skipped["features.2.norm.num_batches_tracked"] == "another tensor of its layer does not fit this model"
    assert set(report.new) == {k for k in before if not k.startswith("features.0.")}
    after = target.state_dict()
    for k in report.loaded:
        assert torch.equal(after[k], state[k])
    for k in report.new:
        assert torch.equal(after[k], before[k])


def test_the_output_layer_is_replaced_even_when_its_shape_fits(source):
    target = small_model(num_classes=10)
    head = target.head.weight.clone()
    report = transfer.load_pretrained(target, str(source.parents[1]))  # the run directory
    assert {"head.weight", "head.bias"} <= set(report.new)
    assert torch.equal(target.head.weight, head)
    assert torch.equal(target.features[0].conv.weight, torch.load(source)["model"]["features.0.conv.weight"])


def test_wrapper_prefixes_of_compiled_and_ddp_models_are_stripped(tmp_path):
    state = small_model().state_dict()
    path = tmp_path / "w.pt"
    torch.save({f"module._orig_mod.{k}": v for k, v in state.items()}, path)
    report = transfer.load_pretrained(small_model(), str(path))
    assert len(report.loaded) == len(state) - 2  # all but the head's weight and bias


def test_weights_of_another_architecture_are_an_error(tmp_path):
    path = tmp_path / "w.pt"
    torch.save({"fc1.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(ConfigError, match="no tensor matches this model"):
        transfer.load_pretrained(small_model(), str(path))


class _Payload:
    """Unpickling this calls os.system: what a hostile checkpoint does."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_malicious_checkpoint_is_refused_without_running(tmp_path):
    marker, path = tmp_path / "pwned", tmp_path / "evil.pt"
    torch.save({"model": {"head.weight": torch.zeros(1)}, "payload": _Payload(marker)}, path)
    with pytest.raises(CheckpointError, match=r"evil.pt is refused: loading it would run code \(posix.system\)"):
        transfer.load_pretrained(small_model(), str(path))
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------------------------
# Freezing, batch norm, the lr multiplier

def setup(source, overrides):
    """Model, optimizer and freezer as fit builds them, for epoch 0."""
    cfg = compose_config([*SMALL, f"model.pretrained={source}", *overrides])
    validate(cfg)
    model = build_model(cfg, 5)
    reused = build_pretrained(cfg, model)
    optimizer = build_optimizer(cfg, model, reused)
    freezer = build_freezer(cfg, model)
    if freezer is not None:  # transfer=none: nothing to freeze
        freezer.set_epoch(0)
    return cfg, model, optimizer, freezer


def one_step(model, optimizer):
    model.train()
    x, y = torch.randn(16, 3, 32, 32) * 3 + 1, torch.randint(0, 5, (16,))
    optimizer.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()


@pytest.mark.parametrize("regularization", ["[l2]", "[weight_decay]", "[l1]"])
def test_frozen_parameters_do_not_change_while_the_head_does(source, regularization):
    _, model, optimizer, freezer = setup(source, ["transfer=linear_probe", f"regularization={regularization}"])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    one_step(model, optimizer)
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]) != name.startswith("head."), name
    assert freezer.trainable() == model.head.weight.numel() + model.head.bias.numel()


def test_frozen_batch_norm_keeps_eval_mode_and_its_statistics(source):
    _, model, optimizer, _ = setup(source, ["transfer=linear_probe"])
    bn = model.features[0].norm
    stats = bn.running_mean.clone(), bn.running_var.clone()
    one_step(model, optimizer)  # calls model.train() and a training forward pass
    assert not bn.training and model.head.training
    assert torch.equal(bn.running_mean, stats[0]) and torch.equal(bn.running_var, stats[1])


def test_unfrozen_batch_norm_trains_again(source):
    _, model, optimizer, freezer = setup(source, ["transfer=gradual_unfreeze"])
    bn = model.features[2].norm  # layer 2 of 3: unfrozen in epoch 1
    freezer.set_epoch(1)
    model.train()
    stats = bn.running_mean.clone()
    one_step(model, optimizer)
    assert bn.training and not torch.equal(bn.running_mean, stats)
    assert not model.features[0].norm.training


def test_gradual_unfreezing_adds_one_layer_from_the_top_per_period(source):
    _, model, _, freezer = setup(source, ["transfer=gradual_unfreeze", "transfer.unfreeze_every_epochs=2"])
    names = [n for n, _ in transfer.units(model)]
    assert names == ["features.0", "features.2", "head"]
    for epoch, trainable in [(0, ["head"]), (1, ["head"]), (2, ["features.2", "head"]), (4, names), (9, names)]:
        freezer.set_epoch(epoch)
        assert [n for n, m in transfer.units(model) if all(p.requires_grad for p in m.parameters())] == trainable


def test_freeze_until_freezes_up_to_and_including_the_layer(source):
    _, model, _, _ = setup(source, ["transfer=freeze_until", "transfer.freeze_until=features.0"])
    assert not any(p.requires_grad for p in model.features[0].parameters())
    assert all(p.requires_grad for p in model.features[2].parameters())
    with pytest.raises(ConfigError, match="allowed: features.0, features.2"):
        setup(source, ["transfer=freeze_until", "transfer.freeze_until=features.7"])


def test_lr_multiplier_reaches_the_optimizers_parameter_groups(source):
    cfg, model, optimizer, _ = setup(source, ["transfer=finetune", "transfer.lr_mult=0.1", "optimizer.lr=0.2"])
    lrs = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    for name, p in model.named_parameters():
        assert lrs[id(p)] == pytest.approx(0.2 if name.startswith("head.") else 0.02), name
    assert optimizer.param_groups[0]["name"] == "decay" and optimizer.param_groups[0]["lr"] == 0.2
    # the schedule scales each group from its own lr: the ratio holds at every step
    scheduler = build_schedule(cfg, optimizer, 10, 5)
    for _ in range(4):
        optimizer.step()
        scheduler.step()
        by_name = {g["name"]: g["lr"] for g in optimizer.param_groups}
        assert by_name["decay_reused"] == pytest.approx(0.1 * by_name["decay"])


# ---------------------------------------------------------------------------------------------------------------
# torchvision weights: local file and (faked) download

@pytest.fixture(scope="module")
def imagenet_state():
    """A state dict shaped like torchvision's ImageNet ResNet-18 (1000 classes), random."""
    from torchvision.models import resnet18

    return resnet18(num_classes=1000).state_dict()


def test_torchvision_weights_from_a_local_file(tmp_path, imagenet_state):
    path = tmp_path / "resnet18-f37072fd.pth"
    torch.save(imagenet_state, path)
    model = build_model(compose_config(["model=torchvision_resnet18"]), 5)
    report = transfer.load_pretrained(model, str(path))
    assert set(report.skipped) == {"fc.weight", "fc.bias"} and set(report.new) == {"fc.weight", "fc.bias"}
    assert torch.equal(model.conv1.weight, imagenet_state["conv1.weight"])
    assert model.conv1.stride == (1, 1) and model(torch.zeros(2, 3, 32, 32)).shape == (2, 5)


@pytest.fixture
def empty_hub(monkeypatch, tmp_path):
    """torch's hub cache, empty: the machine's own may hold the real weights, which runner would read instead."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))


def test_torchvision_weights_by_name_download_weights_only(monkeypatch, imagenet_state, empty_hub):
    calls = []

    def fake_download(url, **kwargs):
        calls.append((url, kwargs))
        return imagenet_state

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fake_download)
    model = build_model(compose_config(["model=torchvision_resnet18"]), 5)
    report = transfer.load_pretrained(model, "torchvision:ResNet18_Weights.IMAGENET1K_V1")
    assert len(report.loaded) == len(imagenet_state) - 2
    assert calls[0][0] == "https://download.pytorch.org/models/resnet18-f37072fd.pth"
    assert calls[0][1]["weights_only"] is True and calls[0][1]["check_hash"] is True


def test_no_network_gives_the_offline_instructions(monkeypatch, empty_hub):
    def offline(url, **kwargs):
        raise OSError("Name or service not known")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(ConfigError, match="Offline, copy resnet18-f37072fd.pth into"):
        transfer.torchvision_state_dict("ResNet18_Weights.IMAGENET1K_V1")


# ---------------------------------------------------------------------------------------------------------------
# The option files, and the start-up checks

@pytest.mark.parametrize("option", sorted(p.stem for p in (CONFIG_DIR / "transfer").glob("*.yaml")))
def test_every_transfer_option_composes_and_builds(source, option):
    extra = ["transfer.freeze_until=features.0"] if option == "freeze_until" else []
    _, model, _, freezer = setup(source, [f"transfer={option}", *extra])
    if option == "none":
        assert freezer is None and all(p.requires_grad for p in model.parameters())
        return
    expected = { "finetune": 3, "linear_probe": 1, "gradual_unfreeze": 1, "freeze_until": 2}[option]
    assert freezer.trainable_units == expected
    assert freezer.trainable() == sum(p.numel() for _, m in transfer.units(model)[-expected:] for p in m.parameters())


@pytest.mark.parametrize("option", sorted(p.stem for p in (CONFIG_DIR / "objective").glob("*.yaml")))
def test_every_objective_option_composes_and_validates(option):
    cfg = compose_config([f"objective={option}"])
    validate(cfg)
    assert cfg.objective.name == option


@pytest.mark.parametrize("overrides, message", [
    (["transfer=finetune"], "model.pretrained is null"),
    (["model.pretrained=/nonexistent/run"], "no such file or directory"),
    (["model.pretrained=torchvision:resnet18"], "torchvision:ResNet18_Weights.IMAGENET1K_V1"),
    (["transfer=freeze_until", "model.pretrained=."], "transfer.freeze_until has no value"),
    (["transfer=finetune", "model.pretrained=.", "transfer.lr_mult=0"], "transfer.lr_mult=0"),
    (["transfer=gradual_unfreeze", "model.pretrained=.", "transfer.unfreeze_every_epochs=0"], "unfreeze_every"),
    (["data.classes=[1,1]"], "data.classes"),
    (["data.classes=[0,10]"], "data.classes"),
    (["data.per_class=0"], "data.per_class"),
    (["data.train_half=third"], "data.train_half"),
    (["model=torchvision_resnet18", "norm=layer"], "use activation=relu norm=batch"),
    (["objective=autoencoder", "transfer=linear_probe", "model.pretrained=."], "use transfer=none here"),
])
def test_bad_transfer_settings_are_refused_at_startup(overrides, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("[", r"\[")):
        validate(compose_config(overrides, checked=False))


# ---------------------------------------------------------------------------------------------------------------
# Autoencoder pretraining

@pytest.mark.slow  # over 2 s on 2 idle cores: `make test-all` and CI run it
def test_autoencoder_reconstructs_and_its_encoder_transfers(tmp_path):
    # A 32-number code (widths [16,32]) of low-noise synthetic images: learnable in a few epochs.
    cfg = compose_config(["model.widths=[16,32]", "objective=autoencoder", "data.train_examples=400", "data.noise=5",
                          "data.val_size=80", "trainer.epochs=4", "trainer.batch_size=40", "optimizer=adam",
                          "optimizer.lr=0.003", "schedule=constant", "augmentation=none", "objective.decoder_width=32"])
    validate(cfg)
    metrics = pretrain(cfg, tmp_path, {})
    losses = [h["val_loss"] for h in metrics["history"]]
    assert losses[-1] < 0.9 * losses[0]  # it learns to reconstruct (standardized pixels: 1.0 at the start)
    assert json.loads((tmp_path / "metrics.json").read_text())["final_val_loss"] == losses[-1]
    target = small_model(["model.widths=[16,32]"])
    report = transfer.load_pretrained(target, str(tmp_path))
    assert set(report.new) == {"head.weight", "head.bias"} and not any("decoder" in k for k in report.loaded)


@pytest.mark.slow  # over 2 s on 2 idle cores: `make test-all` and CI run it
def test_autoencoder_run_resumes_where_a_crash_left_it(tmp_path, monkeypatch):
    """A crash after epoch 1's checkpoint, then the same command again: the same history as an uninterrupted run."""
    from runner.engine import rundir

    overrides = ["model.widths=[4,8]", "objective=autoencoder", "data.train_examples=200", "data.val_size=40",
                 "trainer.epochs=2", "trainer.batch_size=40", "schedule=constant", "objective.decoder_width=8"]
    whole = pretrain(compose_config(overrides), tmp_path / "whole", {})
    save = checkpoint.save

    def crash_after_first_save(state, path):
        save(state, path)
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(rundir.checkpoint, "save", crash_after_first_save)
    with pytest.raises(RuntimeError, match="simulated crash"):
        pretrain(compose_config(overrides), tmp_path / "crashed", {})
    saved_epochs = []

    def record(state, path):
        saved_epochs.append(state["epoch"])
        save(state, path)

    monkeypatch.setattr(rundir.checkpoint, "save", record)
    resumed = pretrain(compose_config(overrides), tmp_path / "crashed", {})
    assert saved_epochs == [2]  # epoch 1 was not trained again
    untimed = [[{k: v for k, v in h.items() if k not in ("epoch_s", "img_per_s", "val_s")} for h in m["history"]]
               for m in (resumed, whole)]
    assert untimed[0] == untimed[1] and resumed["steps"] == whole["steps"]


def test_autoencoder_output_has_the_image_shape():
    net = AutoEncoder(small_model(), 16)
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 3, 32, 32)


# ---------------------------------------------------------------------------------------------------------------
# End to end

@pytest.mark.slow  # over 2 s on 2 idle cores: `make test-all` and CI run it
def test_cli_linear_probe_reports_and_logs_trainable_parameters(tmp_path, source):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_cli(["data=synthetic", "data.train_examples=600", "data.val_size=100", "device=cpu", "trainer.epochs=1",
             "trainer.batch_size=50", "trainer.progress=false", *SMALL[:1], "data.classes=[0,1,2,3,4]",
             "data.per_class=10", f"model.pretrained={source}", "transfer=linear_probe",
             "hydra.run.dir=run"], cwd=tmp_path)
    report = json.loads((tmp_path / "run" / "pretrained.json").read_text())
    assert report["new"] == ["head.weight", "head.bias"] and len(report["loaded"]) == 12
    events = EventAccumulator(str(tmp_path / "run")).Reload()
    assert events.Scalars("model/trainable_params")[0].value == 8 * 5 + 5
    config = OmegaConf.load(tmp_path / "run" / "config.yaml")
    assert config.transfer.name == "linear_probe"
    assert "50 train" in (tmp_path / "run" / "runner.log").read_text()  # 10 labelled images x 5 classes


# ---------------------------------------------------------------------------------------------------------------
# The 2x2 grid (runner.transfer_grid)

def test_grid_plan_pretrains_once_then_every_setting_in_every_cell(tmp_path):
    from runner.commands.transfer_grid import plan

    grid = OmegaConf.load(CONFIG_DIR / "transfer_grid.yaml")
    runs = plan(grid, tmp_path / "pretrain")
    assert runs[0]["name"] == "pretrain" and "data.train_half=first" in runs[0]["overrides"]
    assert len(runs) == 1 + 4 * len(grid.settings)
    by_name = {r["name"]: r["overrides"] for r in runs}
    assert "data.classes=[5,6,7,8,9]" in by_name["different_little_linear_probe"]
    assert "data.classes=[0,1,2,3,4]" in by_name["similar_much_finetune"]
    assert f"model.pretrained={tmp_path / 'pretrain'}" in by_name["similar_much_finetune"]
    assert not any(o.startswith("model.pretrained") for o in by_name["different_much_scratch"])
    assert all("data.train_half=second" in r["overrides"] for r in runs[1:])
    assert "objective=autoencoder" in plan(OmegaConf.merge(grid, {"pretrain": "autoencoder"}), tmp_path)[0]["overrides"]


def test_grid_transfer_runs_never_reuse_the_pretraining_seed(tmp_path):
    """A transfer run with the pretraining run's seed would start from the pretraining run's initial head."""
    from runner.commands.transfer_grid import plan

    grid = OmegaConf.merge(OmegaConf.load(CONFIG_DIR / "transfer_grid.yaml"), {"seed": 7})
    runs = plan(grid, tmp_path / "pretrain")
    seeds = [[o for o in r["overrides"] if o.startswith("seed=")] for r in runs]
    assert seeds[0] == ["seed=7"] and all(s == ["seed=8"] for s in seeds[1:])
    with pytest.raises(ConfigError, match="overrides has seed=3"):
        plan(OmegaConf.merge(grid, {"overrides": ["seed=3"]}), tmp_path)


@pytest.mark.slow
def test_grid_one_command_writes_the_results_table(tmp_path):
    """The whole grid on tiny synthetic data (1 epoch each): a table with every cell and setting."""
    proc = run_cli_module("runner.transfer_grid", [
        'overrides=["data=synthetic","data.train_examples=1000","data.val_size=100","device=cpu",'
        '"model.widths=[4,8]","trainer.batch_size=50","diagnostics.every_steps=0","trainer.progress=false"]',
        "little_per_class=5", "much_per_class=25", "epochs=1", "little_epochs=1", "pretrain_epochs=1",
        "settings=[scratch,linear_probe]", "hydra.run.dir=grid"], tmp_path)
    table = (tmp_path / "grid" / "results.md").read_text()
    assert table.count("| little (5/class) |") == 2 and table.count("| much (25/class) |") == 2, proc.stdout
    rows = (tmp_path / "grid" / "results.csv").read_text().splitlines()
    assert len(rows) == 1 + 1 + 4 * 2
    assert (tmp_path / "grid" / "different_much_linear_probe" / "pretrained.json").is_file()



@pytest.mark.slow  # over 2 s on 2 idle cores: `make test-all` and CI run it
def test_transfer_none_leaves_a_frozen_layer_frozen(tmp_path):
    """transfer=none must not touch requires_grad: the fast preset's whitened stem is frozen by its init
    (init.first_layer_trainable=false) and stays so through training, whatever the learning rate."""
    from conftest import choices_of
    from runner.engine import train

    overrides = ["model=airbench", "model.widths=[8,16,16]", "init=dirac", "init.first_layer=whiten",
                 "init.first_layer_trainable=false", "init.whiten_images=200", "trainer.epochs=1",
                 "diagnostics.every_steps=0"]
    cfg = compose_config(overrides)
    assert build_freezer(cfg, build_model(cfg, 10)) is None
    stems = []
    for lr in (0.01, 0.5):
        run_overrides = [*overrides, f"optimizer.lr={lr}"]
        train.fit(compose_config(run_overrides), tmp_path / str(lr), choices_of(run_overrides))
        weights = checkpoint.load(tmp_path / str(lr) / train.LAST)["model"]
        stems.append(next(v for k, v in weights.items() if k.endswith("weight")))
        last = [v for k, v in weights.items() if k.endswith("weight")][-1]
    assert torch.equal(stems[0], stems[1])  # frozen: the whitening init, untouched by either run
    assert last.abs().sum() > 0


def test_unfreezing_keeps_the_parameters_the_model_fixed(source):
    """Gradual unfreezing reaches every layer, but a norm scale fixed by norm.learn_scale=false stays fixed."""
    _, model, _, freezer = setup(source, ["transfer=gradual_unfreeze", "norm.learn_scale=false"])
    freezer.set_epoch(99)  # every layer unfrozen
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and not any(m.weight.requires_grad for m in norms)
    assert all(m.bias.requires_grad for m in norms) and model.head.weight.requires_grad
