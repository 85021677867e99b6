"""The installed CLI as a user runs it: a whole run and its directory, config errors, and instant --cfg."""

import json
import re
import subprocess
import sys

import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import TINY, run_cli


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("cli")
    run_cli([*TINY, "optimizer=adam", "diagnostics.every_steps=10"], cwd=cwd)  # diagnostics' histograms too
    (day,) = (cwd / "outputs").iterdir()
    (run,) = day.iterdir()
    return run


@pytest.mark.slow  # over 2 s on 2 idle cores: `make test-all` and CI run it
def test_run_directory_holds_config_events_metrics_and_checkpoints(run_dir):
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["optimizer"]["_target_"] == "torch.optim.Adam" and config["trainer"]["epochs"] == 2
    assert "${" not in (run_dir / "config.yaml").read_text()  # resolved
    assert (run_dir / ".hydra" / "overrides.yaml").is_file()
    env = json.loads((run_dir / "environment.json").read_text())
    assert env["device"] == "cpu" and "torch" in env and "git_commit" in env
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["epochs_completed"] == 2
    assert 0 <= metrics["test_acc"] <= 1 and metrics["best_epoch"] in (1, 2) and metrics["wall_time_s"] > 0
    assert (run_dir / "checkpoints" / "last.pt").is_file()


def test_tensorboard_reads_the_curves_and_hparams_from_the_run_itself(run_dir):
    events = EventAccumulator(str(run_dir))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    expected = {"lr/decay", "lr/no_decay", "perf/img_per_s", "perf/epoch_s", "test/acc", "test/loss", "val/best_acc"}
    assert expected <= tags
    assert len(events.Scalars("lr/decay")) == 20  # every step: 2 epochs x 10 steps
    assert len(events.Scalars("perf/img_per_s")) == 20
    plugins = events.PluginTagToContent("hparams")
    assert {"_hparams_/experiment", "_hparams_/session_start_info", "_hparams_/session_end_info"} <= plugins.keys()
    start = plugins["_hparams_/session_start_info"]
    assert b"optimizer" in start and b"adam" in start and b"optimizer.lr" in start
    assert [p.name for p in run_dir.iterdir() if p.is_dir()] != [] and not any(
        p.is_dir() and p.name[0].isdigit() for p in run_dir.iterdir())  # no timestamped hparams sub-run


def test_train_and_validation_are_two_runs_with_the_same_curve_tags(run_dir):
    """Keras's convention: <run>/train and <run>/validation write curves/loss and curves/acc, so TensorBoard draws
    train and validation in one chart, each run in its colour. Train has every step, validation every epoch."""
    runs = {}
    for name in ("train", "validation"):
        events = EventAccumulator(str(run_dir / name), size_guidance={"scalars": 0})
        events.Reload()
        runs[name] = events
        assert set(events.Tags()["scalars"]) == {"curves/loss", "curves/acc"}
    assert [e.step for e in runs["train"].Scalars("curves/loss")] == list(range(1, 21))
    assert [e.step for e in runs["validation"].Scalars("curves/acc")] == [10, 20]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    val = [e.value for e in runs["validation"].Scalars("curves/acc")]
    assert val == pytest.approx([h["val_acc"] for h in metrics["history"]])
    train = [e.value for e in runs["train"].Scalars("curves/loss")]  # 10 steps of 100 images an epoch
    assert [sum(train[:10]) / 10, sum(train[10:]) / 10] == pytest.approx([h["train_loss"] for h in metrics["history"]])


def test_the_curves_are_the_first_tag_group_tensorboard_shows(run_dir):
    """Every tag the run wrote, of every kind (scalars, images, histograms), in every run of the directory: the
    group TensorBoard shows first (and opens) is the curves'."""
    from test_view import tensorboard_order

    groups = set()
    for folder in [run_dir, *(p for p in run_dir.iterdir() if p.is_dir())]:
        events = EventAccumulator(str(folder), size_guidance={"images": 0, "histograms": 0, "tensors": 0})
        events.Reload()
        for kind in ("scalars", "images", "histograms"):
            groups |= {tag.split("/", 1)[0] for tag in events.Tags()[kind]}
        if folder == run_dir:
            assert any(tag.startswith("diag/activations/") for tag in events.Tags()["histograms"])
    assert {"curves", "diag", "lr", "inputs"} <= groups
    assert all(tensorboard_order("curves", g) < 0 for g in groups - {"curves"}), sorted(groups)


def _fake_torch(tmp_path):
    """A `torch` that fails on import: proves a code path never imports it."""
    fake = tmp_path / "fake"
    (fake / "torch").mkdir(parents=True)
    (fake / "torch" / "__init__.py").write_text("raise ImportError('torch was imported')\n")
    return {"PYTHONPATH": str(fake)}


@pytest.mark.parametrize("override, message", [
    ("optimizer.lr=-0.1", "optimizer.lr=-0.1 is invalid: must be a positive number"),
    ("trainer.batch_size=0", "trainer.batch_size=0 is invalid"),
    ("trainer.epochs=-2", "trainer.epochs=-2 is invalid"),
    ("data.val_size=1200", "data.val_size=1200 is invalid: must be an integer in [0, 1200)"),
    ("device=tpu", "device='tpu' is invalid: allowed: auto, cpu, cuda, cuda:N, mps"),
    ("data.noise=-1", "data.noise=-1 is invalid: must be a number >= 0"),
    ("optimizer.lr=nan", "optimizer.lr=nan is invalid: must be a positive number"),
])
def test_bad_values_give_one_line_errors_before_torch_is_imported(tmp_path, override, message):
    proc = run_cli([*TINY, override], cwd=tmp_path, env=_fake_torch(tmp_path), check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {message}") and "Change it with" in lines[0]
    assert not (tmp_path / "outputs").exists() or not list((tmp_path / "outputs").rglob("metrics.json"))


@pytest.mark.slow  # over 2 s on 2 idle cores: `make test-all` and CI run it
def test_absent_device_is_refused_before_data_loads(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    proc = run_cli([*TINY, "device=cuda"], cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "device='cuda' is not present" in proc.stderr
    assert "data=synthetic" not in proc.stdout + proc.stderr  # the data-loaded log line never came


@pytest.mark.parametrize("args, message", [
    (["optimizer=adma"], "error: optimizer=adma is not an option: did you mean adamax or adam or nadam? allowed: "),
    (["+experiment=fsat"], "error: experiment=fsat is not an option: did you mean fast?"),
    (["-m", "regularization=[l2],[l2,dropot]"], "error: regularization=dropot is not an option: did you mean dropout"),
])
def test_unknown_option_is_one_line_with_a_did_you_mean(tmp_path, args, message):
    proc = run_cli(args, cwd=tmp_path, env=_fake_torch(tmp_path), check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and proc.stderr.startswith(message)
    assert "allowed: " in proc.stderr  # and the options follow
    assert not (tmp_path / "outputs").exists()  # before Hydra made a run directory


def test_unknown_key_added_with_plus_is_one_line_with_a_did_you_mean(tmp_path):
    proc = run_cli([*TINY, "+trainer.epoch=3"], cwd=tmp_path, env=_fake_torch(tmp_path), check=False)
    assert proc.returncode == 2
    assert proc.stderr == ("error: trainer.epoch is not a config key: did you mean trainer.epochs? Remove or correct "
                           "the override that adds it.\n")


def test_a_config_error_leaves_no_run_directory_but_keeps_one_with_checkpoints(tmp_path):
    env = _fake_torch(tmp_path)
    proc = run_cli([*TINY, "data.noise=-1"], cwd=tmp_path, env=env, check=False)
    assert proc.returncode == 2 and not (tmp_path / "outputs").exists()  # refused before Hydra made a run directory
    resumed = tmp_path / "resumed"
    (resumed / "checkpoints").mkdir(parents=True)
    (resumed / "checkpoints" / "last.pt").write_bytes(b"")
    proc = run_cli([*TINY, "data.noise=-1", f"hydra.run.dir={resumed}"], cwd=tmp_path, env=env, check=False)
    assert proc.returncode == 2 and (resumed / "checkpoints" / "last.pt").is_file()


def test_cfg_job_prints_the_config_without_torch(tmp_path):
    proc = run_cli(["--cfg", "job", "optimizer=adam"], cwd=tmp_path, env=_fake_torch(tmp_path))
    assert yaml.safe_load(proc.stdout)["optimizer"]["_target_"] == "torch.optim.Adam"


def test_two_processes_started_together_get_different_run_directories(tmp_path):
    env = _fake_torch(tmp_path)
    cmd = [sys.executable, "-m", "runner", "--cfg", "hydra", "--resolve"]
    procs = [subprocess.Popen(cmd, cwd=tmp_path, env={**__import__("os").environ, **env}, stdout=subprocess.PIPE,
                              text=True) for _ in range(2)]
    dirs = [yaml.safe_load(p.communicate()[0])["hydra"]["run"]["dir"] for p in procs]
    assert dirs[0] != dirs[1] and all(d.startswith("outputs/") for d in dirs)


@pytest.mark.parametrize("where", ["/proc/runner-test/run", "FILE/run"])
def test_a_run_directory_that_cannot_be_made_is_one_line_before_hydra(tmp_path, where):
    """On main Hydra failed there with a traceback or two lines that said nothing of what to do."""
    (tmp_path / "FILE").write_text("a file where a folder should be")
    proc = run_cli([f"hydra.run.dir={where}", "trainer.epochs=1"], cwd=tmp_path, check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "cannot be used" in lines[0] and where in lines[0]


@pytest.mark.slow  # over 2 s on 2 idle cores: `make test-all` and CI run it
def test_a_run_names_its_directory_first_and_says_how_to_look_at_it_last(tmp_path):
    """On main a single run never said where its results went or how to see them."""
    run = tmp_path / "run"
    proc = run_cli([*TINY, "trainer.epochs=1", f"hydra.run.dir={run}"], cwd=tmp_path)
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if "[runner]" in line]
    assert f"run directory {run} (a new run)" in lines[0]
    assert "completed: metrics.json" in lines[-1] and f"tensorboard --logdir {run}" in lines[-1]


@pytest.mark.parametrize("args, message", [
    # a key of another option, with and without `+`
    (["optimizer=adam", "+optimizer.momentum=0.9"], "optimizer.momentum is not a key of optimizer=adam (its keys: lr, "),
    (["optimizer=adam", "optimizer.momentum=0.9"], "optimizer.momentum is not a key of optimizer=adam (its keys: lr, "),
    (["+activation.negative_slope=0.1"], "activation.negative_slope is not a key of activation=relu (it has no keys); "
                                         "remove it or choose an activation that has it (leaky_relu)."),
    (["activation.negative_slope=0.1"], "activation.negative_slope is not a key of activation=relu (it has no keys)"),
    (["+prune.sparsity=0.5"], "prune.sparsity is not a key of prune=none (it has no keys); remove it or "
                                    "choose a prune that has it (magnitude)."),
    (["+transfer.lr_mult=0.1"], "transfer.lr_mult is not a key of transfer=none (it has no keys)"),
    # Hydra's composition errors, in runner's words
    (["optimzer=adam"], "optimzer is not a config group or key: did you mean optimizer?"),
    (["trainer.epoch=3"], "trainer.epoch is not a config key: did you mean trainer.epochs?"),
    (["+optimizer.lr=0.1"], "optimizer.lr is already in the config (optimizer=nesterov sets it): drop the `+`, "
                            "`optimizer.lr=0.1`"),
    (["init.first_layer=whiten"], "init.first_layer is not in the file of init=default: add it with a `+`, "
                                  "`+init.first_layer=whiten`"),
    (["optimizer=adam", "~optimizer.momentum"], "optimizer.momentum is not a key of optimizer=adam (its keys: "),
    (["regularization.dropout.p=0.2"], "regularization.dropout is not chosen: choose it with "
                                       "`regularization=[l2,dropout]`"),
    (["optimizer.impl=reference", "optimizer._target_=torch.optim.ASGD"], "optimizer.impl=reference: "),
    # a sweep: the first config, then every choice of the space, before any trial
    (["-m", "seed=0,1", "optimizer.momentun=0.9"], "optimizer.momentun is not a config key: did you mean "
                                                   "optimizer.momentum?"),
    (["-m", "optimizer=nesterov,adam", "optimizer.momentum=0.9"], "optimizer.momentum is not a key of optimizer=adam"),
])
def test_a_config_mistake_is_one_line_and_exit_2_and_writes_nothing(tmp_path, args, message):
    """On main the first two examples loaded the data and failed inside torch, leaving a failed run directory; the
    keys without `+`, a misspelled group and the sweep gave Hydra's multi-line errors with exit 1."""
    proc = run_cli([*args, *TINY], cwd=tmp_path, env=_fake_torch(tmp_path), check=False)
    assert (proc.returncode, proc.stderr.count("\n")) == (2, 1), proc.stderr
    assert proc.stderr.startswith(f"error: {message}"), proc.stderr
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "multirun").exists()


@pytest.mark.parametrize("sizes, message", [
    (["model.widths=[1000000000]"], r"the model has [\d,]+ parameters \(at most 200,000,000\)"),
    (["model=mlp", "model.width=300000"], r"the model has [\d,]+ parameters \(at most 200,000,000\)"),
    (["data.train_examples=2000000"], r"data.train_examples \+ data.test_examples is [\d,]+ images"),
], ids=["cnn widths", "mlp width", "synthetic images"])
def test_sizes_no_memory_holds_are_one_line_before_anything_is_allocated(tmp_path, sizes, message):
    """A typo of a few zeros ended in a MemoryError traceback: the sizes are measured on torch's meta device first."""
    run_dir = tmp_path / "run"
    proc = run_cli([*TINY, *sizes, f"hydra.run.dir={run_dir}"], cwd=tmp_path, check=False, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and re.search(message, lines[0]) and "lower the sizes" in lines[0], proc.stderr
    assert not any(run_dir.rglob("*.pt"))
