"""Faults played as a user meets them: signals sent to a running `python -m runner`, two processes on one run
directory, starting afresh where a run already wrote, divergence of three kinds, a full disk, an unexpected error.
Each ends in a recorded status (metrics.json), one line and a documented exit code; nothing saved is lost."""

import errno
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import TINY, choices_of, compose_config, run_cli
from runner.data import checkpoint
from runner.engine import run as run_module
from runner.engine import train
from runner.engine.components import Component

FAST = ["model.widths=[8,16]", "diagnostics.every_steps=0"]


def _fit(path, overrides=(), extra=()):
    overrides = [*FAST, *overrides]
    return train.fit(compose_config(overrides), path, choices_of(overrides), extra)


def _metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def _env() -> dict:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    return env


def _start(args, cwd: Path, out: Path) -> subprocess.Popen:
    with open(out, "w") as f:
        return subprocess.Popen([sys.executable, "-m", "runner", *args], cwd=cwd, env=_env(), stdout=f, stderr=f)


def _wait_for(path: Path, text: str, proc: subprocess.Popen, timeout=120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if path.is_file() and text in path.read_text():
            return
        time.sleep(0.05)
    raise AssertionError(f"{text!r} never appeared in {path} (process ended: {proc.poll()})")


# Long enough (20 epochs of ~1 s) that a signal sent after the first epoch lands in the middle of a later one.
LONG = [*TINY, *FAST, "trainer.epochs=20", "trainer.batch_size=20"]


# ---------------------------------------------------------------------------------------------------------------
# Signals

class _SignalAt(Component):
    """Sends this process `signum` in the middle of the second epoch (after its third step)."""

    def __init__(self, signum):
        self.signum = signum

    def after_step(self, run, x, outputs, y):
        if run.step == run.steps_per_epoch + 3:
            os.kill(os.getpid(), self.signum)


def test_sigterm_finishes_the_step_keeps_last_checkpoint_and_restores_the_handlers(tmp_path):
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    saved = {}

    class Remember(Component):
        def epoch_start(self, run, epoch):
            if epoch == 1:
                saved["last"] = (run.run_dir / train.LAST).read_bytes()

    metrics = _fit(tmp_path, ["trainer.epochs=3"], [Remember(), _SignalAt(signal.SIGTERM)])
    assert metrics["status"] == "interrupted" and metrics["signal"] == "SIGTERM"
    assert metrics["steps"] == 10 + 4  # the step in progress when the signal came was finished, no further
    assert metrics["epochs_completed"] == 1
    assert (tmp_path / train.LAST).read_bytes() == saved["last"]  # epoch 1's checkpoint, untouched
    assert f"hydra.run.dir={tmp_path}" in metrics["message"] and "To resume" in metrics["message"]
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


@pytest.mark.slow  # over 2 s on 2 idle cores: `make test-all` and CI run it
def test_sigterm_to_the_command_exits_143_with_status_and_resume_command(tmp_path):
    run_dir, out = tmp_path / "run", tmp_path / "out.txt"
    proc = _start([*LONG, f"hydra.run.dir={run_dir}"], tmp_path, out)
    _wait_for(run_dir / "runner.log", "epoch 1/20", proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 143
    metrics = _metrics(run_dir)
    assert (metrics["status"], metrics["signal"]) == ("interrupted", "SIGTERM")
    assert checkpoint.load(run_dir / train.LAST)["epoch"] == metrics["epochs_completed"] >= 1
    last_line = (run_dir / "runner.log").read_text().strip().splitlines()[-1]
    assert "To resume: python -m runner" in last_line and f"hydra.run.dir={run_dir}" in last_line
    assert "data.train_examples=1200" in last_line  # the same overrides
    assert "Traceback" not in out.read_text()


@pytest.mark.slow
def test_sigint_exits_130_and_the_printed_command_resumes_the_run(tmp_path):
    run_dir, out = tmp_path / "run", tmp_path / "out.txt"
    args = [*TINY, *FAST, "trainer.epochs=4", "trainer.batch_size=20", f"hydra.run.dir={run_dir}"]
    proc = _start(args, tmp_path, out)
    _wait_for(run_dir / "runner.log", "epoch 1/4", proc)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 130
    interrupted = _metrics(run_dir)
    assert (interrupted["status"], interrupted["signal"]) == ("interrupted", "SIGINT")
    command = shlex.split(interrupted["message"].split("To resume: ")[1].split(" (without")[0])
    assert command[:3] == ["python", "-m", "runner"]
    run_cli(command[3:], cwd=tmp_path)
    resumed = _metrics(run_dir)
    assert resumed["status"] == "completed" and resumed["epochs_completed"] == 4 and resumed["steps"] == 4 * 50


# ---------------------------------------------------------------------------------------------------------------
# One process per run directory

_HOLD_LOCK = "import sys, time; from pathlib import Path; from runner.engine.run import lock_run_dir; " \
             "lock_run_dir(Path(sys.argv[1])); print('locked', flush=True); time.sleep(120)"


def _hold_lock(run_dir: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(run_dir)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


@pytest.mark.slow  # over 2 s on 2 idle cores: `make test-all` and CI run it
def test_a_second_process_on_a_run_directory_is_refused_naming_the_owner(tmp_path):
    run_dir = tmp_path / "run"
    owner = _hold_lock(run_dir)
    try:
        proc = run_cli([*TINY, *FAST, f"hydra.run.dir={run_dir}"], cwd=tmp_path, check=False)
    finally:
        owner.kill()
        owner.wait()
    assert proc.returncode == 1
    assert proc.stderr.strip().count("\n") == 0
    assert f"another process (pid {owner.pid}) is using the run directory" in proc.stderr
    assert not (run_dir / "checkpoints").exists() and not (run_dir / "metrics.json").exists()
    assert run_dir.is_dir()  # the owner's directory is never cleaned up as a failed start's


def test_a_killed_owner_never_blocks_the_run_directory(tmp_path):
    owner = _hold_lock(tmp_path)
    with pytest.raises(run_module.RunDirBusy, match=f"pid {owner.pid}"):
        run_module.lock_run_dir(tmp_path)
    owner.send_signal(signal.SIGKILL)
    owner.wait()
    fd = run_module.lock_run_dir(tmp_path)  # the kernel released the dead owner's lock
    os.close(fd)


@pytest.mark.slow  # over 2 s on 2 idle cores: `make test-all` and CI run it
def test_starting_afresh_in_a_used_directory_moves_the_old_run_apart(tmp_path):
    first = _fit(tmp_path, ["trainer.epochs=1"])
    old_last = (tmp_path / train.LAST).read_bytes()
    old_events = sorted(p.name for p in tmp_path.glob("events.out.tfevents.*"))
    time.sleep(1.1)  # a new second: the new event file gets another name
    second = _fit(tmp_path, ["trainer.epochs=1", "trainer.resume=never", "seed=1"])
    [previous] = (tmp_path / "previous").iterdir()
    assert (previous / train.LAST).read_bytes() == old_last
    assert json.loads((previous / "metrics.json").read_text())["test_acc"] == first["test_acc"]
    assert sorted(p.name for p in previous.glob("events.out.tfevents.*")) == old_events
    assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 1  # TensorBoard sees one run here
    assert _metrics(tmp_path)["test_acc"] == second["test_acc"] != first["test_acc"]


# ---------------------------------------------------------------------------------------------------------------
# Divergence

@pytest.mark.slow  # over 2 s on 2 idle cores: `make test-all` and CI run it
def test_exploding_loss_with_batch_norm_is_diverged_exit_3_and_a_rerun_says_so_again(tmp_path):
    """lr=1e6 with batch norm: on main the loss reached 6e16 and the run ended `completed`, exit 0."""
    run_dir = tmp_path / "run"
    args = [*TINY, *FAST, "optimizer.lr=1e6", "norm=batch", f"hydra.run.dir={run_dir}"]
    proc = run_cli(args, cwd=tmp_path, check=False)
    assert proc.returncode == 3
    metrics = _metrics(run_dir)
    assert metrics["status"] == "diverged" and "optimizer.lr" in metrics["message"]
    assert "trainer.resume=never" in metrics["message"]
    assert not (run_dir / "checkpoints").exists()  # nothing diverged was saved as best or last
    files = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file() and p.parent.name != ".hydra"
             and p.name != "runner.log"}
    again = run_cli(args, cwd=tmp_path, check=False)
    assert again.returncode == 3 and "diverged already" in (run_dir / "runner.log").read_text()
    assert {p: p.stat().st_mtime_ns for p in files} == files


def test_one_step_per_epoch_divergence_is_caught_at_validation_before_any_checkpoint(tmp_path):
    """One step per epoch: the first window's loss is the initial one, the blow-up shows first in validation.
    On main best.pt and last.pt were saved with it and the test crashed in ECE binning (IndexError)."""
    metrics = _fit(tmp_path, ["optimizer.lr=1e6", "norm=batch", "trainer.batch_size=1000"])
    assert metrics["status"] == "diverged" and "validation loss" in metrics["message"]
    assert metrics["epochs_completed"] == 0 and not (tmp_path / "checkpoints").exists()


class _PoisonWeight(Component):
    """A weight becomes NaN in the last step of the first epoch (the loss of that step is still finite)."""

    def after_step(self, run, x, outputs, y):
        if run.step + 1 == run.steps_per_epoch:
            with torch.no_grad():
                next(run.model.parameters())[0].fill_(float("nan"))


def test_nan_weights_end_the_run_diverged_before_validation_and_saving(tmp_path):
    metrics = _fit(tmp_path, [], [_PoisonWeight()])
    assert metrics["status"] == "diverged" and "NaN or infinite" in metrics["message"]
    assert metrics["steps"] == 10 and metrics["history"] == []
    assert not (tmp_path / train.BEST).exists() and not (tmp_path / train.LAST).exists()


@pytest.mark.slow
def test_the_explosion_criterion_spares_normal_training_including_the_autoencoder(tmp_path):
    """A high but workable lr and the autoencoder's MSE complete: the criterion fires on blow-ups only (the 24
    golden runs, every option of every group, complete too)."""
    assert _fit(tmp_path / "a", ["optimizer.lr=0.5", "trainer.epochs=3"])["status"] == "completed"
    assert _fit(tmp_path / "b", ["objective=autoencoder", "trainer.epochs=3"])["status"] == "completed"


# ---------------------------------------------------------------------------------------------------------------
# Where nothing can be written, and errors nobody expected

def test_a_full_disk_is_one_line_naming_the_path_and_the_checkpoint_stays_intact(tmp_path, monkeypatch):
    real = checkpoint.atomic_write

    def full_after_epoch_1(path, write):
        if Path(path).suffix == ".pt" and (tmp_path / train.LAST).is_file():
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(path, write)

    monkeypatch.setattr(checkpoint, "atomic_write", full_after_epoch_1)
    with pytest.raises(run_module.OutputError) as err:
        _fit(tmp_path, ["trainer.epochs=3"])
    message = str(err.value)
    assert "\n" not in message and str(tmp_path / "checkpoints") in message
    assert "No space left on device" in message and "free space" in message and "resume" in message
    assert checkpoint.load(tmp_path / train.LAST)["epoch"] == 1  # the last good checkpoint, whole
    metrics = _metrics(tmp_path)
    assert metrics["status"] == "failed" and metrics["message"] == message


def test_a_file_where_the_run_directory_should_be_is_one_line(tmp_path):
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(run_module.OutputError, match=r"cannot write .*file.*hydra\.run\.dir="):
        _fit(tmp_path / "file" / "run")


@pytest.mark.slow  # over 2 s on 2 idle cores: `make test-all` and CI run it
def test_an_unexpected_error_is_status_failed_one_line_and_exit_1(tmp_path):
    """An exception inside the run: metrics.json says failed and names it, last.pt stays, the command prints one
    line (the traceback only with HYDRA_FULL_ERROR=1) and exits 1."""
    run_dir = tmp_path / "run"
    code = ("import sys; from runner.engine import train; real = train._validate\n"
            "def broken(run, result):\n"
            "    if run.epoch == 1: raise RuntimeError('boom in validation')\n"
            "    return real(run, result)\n"
            "train._validate = broken\n"
            "from runner.__main__ import cli; sys.argv = ['runner', *sys.argv[1:]]; cli()\n")
    args = [*TINY, *FAST, f"hydra.run.dir={run_dir}"]
    proc = subprocess.run([sys.executable, "-c", code, *args], cwd=tmp_path, env=_env(), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "RuntimeError: boom" in proc.stderr
    metrics = _metrics(run_dir)
    assert metrics["status"] == "failed" and metrics["message"] == "failed: RuntimeError: boom in validation"
    assert checkpoint.load(run_dir / train.LAST)["epoch"] == 1
