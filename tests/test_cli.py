"""The installed CLI as a user runs it: a whole run and its directory, config errors, and instant --cfg."""

import json
import subprocess
import sys

import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import TINY, run_cli


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("cli")
    run_cli([*TINY, "optimizer=adam"], cwd=cwd)
    (day,) = (cwd / "outputs").iterdir()
    (run,) = day.iterdir()
    return run


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
    expected = {"train/loss", "train/acc", "val/loss", "val/acc", "lr", "perf/img_per_s", "perf/epoch_s",
                "test/acc", "test/loss"}
    assert expected <= tags
    assert len(events.Scalars("lr")) == 20  # every step: 2 epochs x 10 steps
    assert len(events.Scalars("val/acc")) == 2
    plugins = events.PluginTagToContent("hparams")
    assert {"_hparams_/experiment", "_hparams_/session_start_info", "_hparams_/session_end_info"} <= plugins.keys()
    start = plugins["_hparams_/session_start_info"]
    assert b"optimizer" in start and b"adam" in start and b"optimizer.lr" in start
    assert [p.name for p in run_dir.iterdir() if p.is_dir()] != [] and not any(
        p.is_dir() and p.name[0].isdigit() for p in run_dir.iterdir())  # no timestamped hparams sub-run


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
])
def test_bad_values_give_one_line_errors_before_torch_is_imported(tmp_path, override, message):
    proc = run_cli([*TINY, override], cwd=tmp_path, env=_fake_torch(tmp_path), check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {message}") and "Change it with" in lines[0]
    assert not (tmp_path / "outputs").exists() or not list((tmp_path / "outputs").rglob("metrics.json"))


def test_absent_device_is_refused_before_data_loads(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    proc = run_cli([*TINY, "device=cuda"], cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "device='cuda' is not present" in proc.stderr
    assert "data=synthetic" not in proc.stdout + proc.stderr  # the data-loaded log line never came


def test_unknown_option_lists_the_choices(tmp_path):
    proc = run_cli(["optimizer=adma"], cwd=tmp_path, env=_fake_torch(tmp_path), check=False)
    assert proc.returncode != 0
    assert "Could not find 'optimizer/adma'" in proc.stderr and "momentum" in proc.stderr


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
