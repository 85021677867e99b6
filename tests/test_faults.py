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
from runner.engine import rundir, train
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
        if run.state.step == run.steps_per_epoch + 3:
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


def test_an_interrupted_run_counts_the_images_it_trained_on(tmp_path):
    """On main metrics.json said images_seen 0 after Ctrl-C in the first epoch: only finished epochs counted."""

    class SigintInFirstEpoch(Component):
        def after_step(self, run, x, outputs, y):
            if run.state.step == 3:  # the fourth step, which finishes
                os.kill(os.getpid(), signal.SIGINT)

    metrics = _fit(tmp_path, ["trainer.epochs=2"], [SigintInFirstEpoch()])
    assert (metrics["status"], metrics["signal"], metrics["epochs_completed"]) == ("interrupted", "SIGINT", 0)
    assert metrics["steps"] == 4 and metrics["images_seen"] == 4 * 100  # TINY: batches of 100


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

_HOLD_LOCK = "import sys, time; from pathlib import Path; from runner.engine.rundir import lock_run_dir; " \
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
    with pytest.raises(rundir.RunDirBusy, match=f"pid {owner.pid}"):
        rundir.lock_run_dir(tmp_path)
    owner.send_signal(signal.SIGKILL)
    owner.wait()
    fd = rundir.lock_run_dir(tmp_path)  # the kernel released the dead owner's lock
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
    files = _tree(run_dir)
    again = run_cli(args, cwd=tmp_path, check=False)
    assert again.returncode == 3 and "diverged already" in again.stdout
    assert _tree(run_dir) == files  # not even Hydra's record or the log


def test_one_step_per_epoch_divergence_is_caught_at_validation_before_any_checkpoint(tmp_path):
    """One step per epoch: the first window's loss is the initial one, the blow-up shows first in validation.
    On main best.pt and last.pt were saved with it and the test crashed in ECE binning (IndexError)."""
    metrics = _fit(tmp_path, ["optimizer.lr=1e6", "norm=batch", "trainer.batch_size=1000"])
    assert metrics["status"] == "diverged" and "validation loss" in metrics["message"]
    assert metrics["epochs_completed"] == 0 and not (tmp_path / "checkpoints").exists()


class _PoisonWeight(Component):
    """A weight becomes NaN in the last step of the first epoch (the loss of that step is still finite)."""

    def after_step(self, run, x, outputs, y):
        if run.state.step + 1 == run.steps_per_epoch:
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
    with pytest.raises(rundir.OutputError) as err:
        _fit(tmp_path, ["trainer.epochs=3"])
    message = str(err.value)
    assert "\n" not in message and str(tmp_path / "checkpoints") in message
    assert "No space left on device" in message and "free space" in message and "resume" in message
    assert checkpoint.load(tmp_path / train.LAST)["epoch"] == 1  # the last good checkpoint, whole
    metrics = _metrics(tmp_path)
    assert metrics["status"] == "failed" and metrics["message"] == message


def test_a_file_where_the_run_directory_should_be_is_one_line(tmp_path):
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(rundir.OutputError, match=r"cannot write .*file.*hydra\.run\.dir="):
        _fit(tmp_path / "file" / "run")


@pytest.mark.slow  # over 2 s on 2 idle cores: `make test-all` and CI run it
def test_an_unexpected_error_is_status_failed_one_line_and_exit_1(tmp_path):
    """An exception inside the run: metrics.json says failed and names it, last.pt stays, the command prints one
    line (the traceback only with HYDRA_FULL_ERROR=1) and exits 1."""
    run_dir = tmp_path / "run"
    code = ("import sys; from runner.engine import train; real = train._validate\n"
            "def broken(run, result):\n"
            "    if run.state.epoch == 1: raise RuntimeError('boom in validation')\n"
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


# ---------------------------------------------------------------------------------------------------------------
# Resuming under an allowed change, and a resume that fails

@pytest.mark.slow  # over 2 s on 2 idle cores: `make test-all` and CI run it
def test_an_optimizer_change_allowed_on_resume_starts_that_optimizer_afresh_and_the_run_goes_on(tmp_path, caplog):
    """On main SGD with momentum resumed under optimizer=adam with trainer.resume_allow=[optimizer] crashed in torch
    (KeyError: 'step') and replaced the completed run's metrics.json with a failed one without history."""
    first = _fit(tmp_path, ["trainer.epochs=1"])  # nesterov: SGD with momentum buffers
    resumed = _fit(tmp_path, ["trainer.epochs=2", "optimizer=adam", "trainer.resume_allow=[optimizer]"])
    assert resumed["status"] == "completed" and resumed["epochs_completed"] == 2 and resumed["steps"] == 20
    assert resumed["history"][0] == first["history"][0]  # the weights, history and schedule position continue
    [record] = resumed["resumes"]
    assert (record["epoch"], record["step"], record["optimizer"]) == (1, 10, "fresh")
    assert "optimizer._target_: torch.optim.SGD -> torch.optim.Adam" in record["changes"]
    state = checkpoint.load(tmp_path / train.LAST)
    assert {"exp_avg", "exp_avg_sq"} <= set(next(iter(state["optimizer"]["state"].values())))
    # Adam's own lr (1e-3) at the schedule's place, not nesterov's 0.4 carried over in the schedule's state
    assert resumed["history"][1]["lr"] < 2e-3 and state["scheduler"]["base_lrs"][0] == pytest.approx(1e-3)
    assert any("optimizer starts afresh" in r.getMessage() for r in caplog.records)


@pytest.mark.slow  # over 2 s on 2 idle cores: `make test-all` and CI run it
def test_a_changed_optimizer_setting_allowed_on_resume_is_used_not_the_checkpoints(tmp_path):
    """The same optimizer with another momentum and lr keeps its state (the momentum buffers) but takes the new
    values: loading the checkpoint used to put the old ones back silently."""
    _fit(tmp_path, ["trainer.epochs=1", "optimizer=momentum", "optimizer.lr=0.1", "schedule=constant"])
    resumed = _fit(tmp_path, ["trainer.epochs=2", "optimizer=momentum", "optimizer.lr=0.05", "schedule=constant",
                              "optimizer.momentum=0.5", "trainer.resume_allow=[optimizer]"])
    assert resumed["history"][1]["lr"] == pytest.approx(0.05) and resumed["resumes"][0]["optimizer"] == "kept"
    group = checkpoint.load(tmp_path / train.LAST)["optimizer"]["param_groups"][0]
    assert group["momentum"] == 0.5 and group["lr"] == pytest.approx(0.05)


class _FailAt(Component):
    """Raises in its `hook` (an unexpected error of the resumed process)."""

    def __init__(self, hook):
        setattr(self, hook, self._fail)

    def _fail(self, *args):
        raise RuntimeError("boom")


@pytest.mark.slow  # over 2 s on 2 idle cores: `make test-all` and CI run it
@pytest.mark.parametrize("where", ["loading the checkpoint", "start", "epoch_start"])
def test_a_failed_resume_never_writes_over_the_earlier_runs_metrics(tmp_path, monkeypatch, where):
    """On main a resumed attempt that failed replaced a completed run's metrics.json (test scores, history) with a
    failed one, without history when it failed before the checkpoint had loaded."""
    _fit(tmp_path, ["trainer.epochs=1"])
    earlier = (tmp_path / "metrics.json").read_bytes()
    extra = []
    if where == "loading the checkpoint":
        monkeypatch.setattr(run_module.Run, "load_state_dict", lambda *args, **kwargs: _FailAt("x")._fail())
    else:
        extra = [_FailAt(where)]
    with pytest.raises(RuntimeError, match="boom"):
        _fit(tmp_path, ["trainer.epochs=2"], extra)
    assert (tmp_path / "metrics.json").read_bytes() == earlier
    assert checkpoint.load(tmp_path / train.LAST)["epoch"] == 1


def test_resume_allow_names_only_groups_and_keys_of_the_config(tmp_path):
    """On main trainer.resume_allow=[nonexistent_group] was accepted (and allowed nothing)."""
    from runner.config import ConfigError

    with pytest.raises(ConfigError) as err:
        compose_config(["trainer.resume_allow=[optimizer,nonexistent_group]"])
    message = str(err.value)
    assert "\n" not in message and "trainer.resume_allow" in message and "nonexistent_group" in message
    assert "optimizer" in message.split("allowed:")[1]  # the groups are listed
    with pytest.raises(ConfigError, match="optimizer.moment"):
        compose_config(["trainer.resume_allow=[optimizer.moment]"])
    compose_config(["trainer.resume_allow=[optimizer,schedule.warmup_epochs,model.widths,seed,data]"])


# ---------------------------------------------------------------------------------------------------------------
# A refused command writes nothing; Ctrl-C at any moment is one line

RUN_ARGS = [*TINY, *FAST, "trainer.epochs=1"]


@pytest.fixture(scope="module")
def completed_run(tmp_path_factory):
    """A completed 1-epoch run made by the command (copied by each test that uses it)."""
    root = tmp_path_factory.mktemp("completed")
    run_cli([*RUN_ARGS, f"hydra.run.dir={root / 'run'}"], cwd=root)
    return root / "run"


def _copy_run(completed_run: Path, tmp_path: Path) -> Path:
    import shutil

    shutil.copytree(completed_run, tmp_path / "run")  # with the files' times
    (tmp_path / "cwd").mkdir()
    return tmp_path / "run"


def _tree(root: Path) -> dict:
    """Every file and folder under `root`: a file's bytes and modification time, a folder's name."""
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns) if p.is_file() else "folder"
            for p in sorted(root.rglob("*"))}


@pytest.mark.slow  # several commands: `make test-all` and CI run it
def test_a_refused_command_writes_nothing_anywhere(completed_run, tmp_path):
    """On main a command refused in a run directory rewrote its .hydra/*.yaml and appended to its runner.log (and
    its lock file's pid); one refused in a new directory left that directory or its parents behind."""
    run_dir = _copy_run(completed_run, tmp_path)
    (tmp_path / "cwd" / "outputs").mkdir()
    (tmp_path / "cwd" / "outputs" / "notes.txt").write_text("mine")
    before = _tree(tmp_path)
    here = [*RUN_ARGS, f"hydra.run.dir={run_dir}"]
    refused = {
        "another config": ([*here, "optimizer.lr=0.05"], 2, "was made with another config"),
        "an unknown resume_allow": ([*here, "trainer.epochs=2", "trainer.resume_allow=[nonexistent_group]"], 2,
                                    "trainer.resume_allow"),
        "a bad value": ([*here, "optimizer.lr=-1"], 2, "optimizer.lr=-1 is invalid"),
        "no checkpoint to resume": ([*here, f"trainer.resume={tmp_path / 'nowhere'}"], 2, "no checkpoint at"),
        "a bad value in a new directory": ([*RUN_ARGS, "optimizer.lr=-1"], 2, "optimizer.lr=-1 is invalid"),
        "no checkpoint, in a new directory": ([*RUN_ARGS, f"trainer.resume={tmp_path / 'nowhere'}"], 2,
                                              "no checkpoint at"),
        "no checkpoint, in a new named directory": ([*RUN_ARGS, f"trainer.resume={tmp_path / 'nowhere'}",
                                                     f"hydra.run.dir={tmp_path / 'new' / 'run'}"], 2,
                                                    "no checkpoint at"),
    }
    for what, (args, code, message) in refused.items():
        proc = run_cli(args, cwd=tmp_path / "cwd", check=False)
        assert proc.returncode == code, (what, proc.stderr)
        assert proc.stderr.count("\n") == 1 and message in proc.stderr, (what, proc.stderr)
        assert _tree(tmp_path) == before, what
    owner = _hold_lock(run_dir)
    before = _tree(tmp_path)
    try:
        proc = run_cli([*here, "trainer.epochs=2"], cwd=tmp_path / "cwd", check=False)
    finally:
        owner.kill()
        owner.wait()
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and "another process" in proc.stderr
    assert _tree(tmp_path) == before


# Runs `python -m runner ARGS` as runpy does for `-m`, paused at one moment of its start until a signal comes:
# argv: the moment (a module's first import, "composing", "loading data"), the file to create once paused, ARGS.
_PAUSED = """
import importlib.abc, runpy, sys, time
where, marker = sys.argv[1], sys.argv[2]

def pause():
    open(marker, "w").close()
    time.sleep(120)

if where == "loading data":
    from runner.data import loading
    real_load = loading.load_splits
    def load_splits(*args, **kwargs):
        pause()
        return real_load(*args, **kwargs)
    loading.load_splits = load_splits
elif where == "composing":
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    real_compose = ConfigLoaderImpl.load_configuration
    def load_configuration(self, *args, **kwargs):
        pause()
        return real_compose(self, *args, **kwargs)
    ConfigLoaderImpl.load_configuration = load_configuration
else:
    class Pause(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name == where:
                sys.meta_path.remove(self)
                pause()
            return None
    sys.meta_path.insert(0, Pause())
sys.argv = ["runner", *sys.argv[3:]]
runpy.run_module("runner", run_name="__main__", alter_sys=True)
"""


def _interrupt_at(where: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    marker = cwd.parent / "paused"
    proc = subprocess.Popen([sys.executable, "-c", _PAUSED, where, str(marker), *args], cwd=cwd, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert marker.exists(), proc.communicate()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.mark.parametrize("where", [
    "hydra",  # Python imports runner's libraries
    "composing",  # Hydra composes the config
    pytest.param("torch", marks=pytest.mark.slow),  # the job starts: torch is imported
    pytest.param("loading data", marks=pytest.mark.slow),
])
def test_ctrl_c_while_starting_is_one_line_exit_130_and_leaves_nothing(tmp_path, where):
    """On main Ctrl-C during start-up printed a traceback of up to 91 lines (and exited 1)."""
    (tmp_path / "cwd").mkdir()
    proc = _interrupt_at(where, [*RUN_ARGS, f"hydra.run.dir={tmp_path / 'cwd' / 'run'}"], tmp_path / "cwd")
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("interrupted"), proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert list((tmp_path / "cwd").iterdir()) == []  # no run directory began


@pytest.mark.slow  # over 2 s on 2 idle cores: `make test-all` and CI run it
def test_ctrl_c_while_a_resumed_run_loads_its_data_is_one_line_with_the_resume_command(completed_run, tmp_path):
    run_dir = _copy_run(completed_run, tmp_path)
    before = _tree(tmp_path)
    args = [*RUN_ARGS, "trainer.epochs=2", f"hydra.run.dir={run_dir}"]
    proc = _interrupt_at("loading data", args, tmp_path / "cwd")
    (tmp_path / "paused").unlink()
    assert proc.returncode == 130 and proc.stderr.count("\n") == 1 and proc.stderr.startswith("interrupted")
    assert "To resume: python -m runner" in proc.stderr and f"hydra.run.dir={run_dir}" in proc.stderr
    assert "trainer.epochs=2" in proc.stderr
    assert _tree(tmp_path) == before
