"""Sweeps under faults, played as a user meets them: parallel workers sharing one study, a sweep process killed
with SIGKILL while its joblib workers train, and the same command run again."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from omegaconf import OmegaConf
from optuna.storages.journal._storage import JournalOperation

from conftest import TINY, run_cli
from hydra_plugins.runner_optuna_sweeper.optuna_sweeper import OptunaSweeper, parse_space
from test_sweep import FAST, _hydra_node, read_table

optuna.logging.set_verbosity(optuna.logging.WARNING)

LR = "optimizer.lr=tag(log, interval(1e-6, 10))"


# ---------------------------------------------------------------------------------------------------------------
# Parallel workers on one study

def _worker(sampler: str, sweep_dir: Path):
    """What one sweep process does before its first trial: open the shared study (a journal in sweep_dir) with
    the configured sampler."""
    cfg, _ = _hydra_node([f"hydra/sweeper/sampler={sampler}"], None)
    sweeper = OptunaSweeper(sampler=None, pruner=None, n_trials=4)
    sweeper.config = cfg
    return sweeper._open_study(sweep_dir, parse_space([LR]))


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_two_workers_opening_one_study_together_draw_distinct_points(tmp_path, sampler):
    # Both open the study before either draws: each sampler seeded 0 + len(trials) drew the same points.
    first, second = _worker(sampler, tmp_path), _worker(sampler, tmp_path)
    distributions = {"optimizer.lr": parse_space([LR]).params["optimizer.lr"].distribution}
    drawn = [study.ask(distributions).params["optimizer.lr"] for _ in range(3) for study in (first, second)]
    assert len(set(drawn)) == 6, drawn
    if sampler == "random":  # trial N's point depends on the seed and N only, not on which worker drew it
        alone = _worker(sampler, tmp_path / "alone")
        assert [alone.ask(distributions).params["optimizer.lr"] for _ in range(6)] == drawn


@pytest.mark.slow
def test_two_sweep_processes_on_one_sweep_dir_draw_distinct_points(tmp_path):
    sweep_dir = tmp_path / "sweep"
    args = [sys.executable, "-m", "runner", "+sweep=lr_wd", *FAST, "hydra.sweeper.n_trials=4",
            f"hydra.sweep.dir={sweep_dir}"]
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    procs = [subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    rows = read_table(sweep_dir)
    assert len(rows) >= 4 and {r["status"] for r in rows} == {"completed"}
    assert len({r["optimizer.lr"] for r in rows}) == len(rows), rows


# ---------------------------------------------------------------------------------------------------------------
# A sweep killed with SIGKILL, then run again

def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def _wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.2)


WORKER = """
import os, sys, time
from runner.sweeps.study import watch_sweep_process
watch_sweep_process(os.getppid())
print(os.getpid(), flush=True)
time.sleep(120)
"""
SWEEP = f"""
import subprocess, sys, time
subprocess.Popen([sys.executable, "-c", {WORKER!r}])
time.sleep(120)
"""


def test_a_worker_ends_when_its_sweep_process_is_killed():
    sweep = subprocess.Popen([sys.executable, "-c", SWEEP], stdout=subprocess.PIPE, text=True)
    worker = None
    try:
        worker = int(sweep.stdout.readline())  # printed once it watches
        sweep.send_signal(signal.SIGKILL)
        sweep.wait()
        _wait_for(lambda: not _running(worker), 3, f"the worker {worker} to end")
    finally:
        sweep.kill()
        if worker is not None and _running(worker):
            os.kill(worker, signal.SIGKILL)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table in /proc")
def test_a_killed_joblib_sweep_leaves_no_worker_and_its_rerun_resumes_the_trials(tmp_path):
    sweep_dir = tmp_path / "sweep"
    epochs = 20  # about 15 s a trial on 2 CPU cores: killed after its first epoch, it is still training
    args = ["-m", *TINY, "data.train_examples=1000", "model.widths=[8,16]", "diagnostics.every_steps=0",
            f"trainer.epochs={epochs}", "seed=0,1", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
            f"hydra.sweep.dir={sweep_dir}"]
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    workers = []
    with (tmp_path / "killed.log").open("w") as out:
        sweep = subprocess.Popen([sys.executable, "-m", "runner", *args], cwd=tmp_path, env=env, stdout=out,
                                 stderr=subprocess.STDOUT)
        try:
            _wait_for(lambda: len(list(sweep_dir.glob("*/checkpoints/last.pt"))) == 2, 180,
                      "both trials to checkpoint an epoch")
            workers = [pid for pid in _children(sweep.pid) if "loky" in Path(f"/proc/{pid}/cmdline").read_text()]
            assert workers, "no joblib worker found"
            sweep.send_signal(signal.SIGKILL)
            sweep.wait()
            _wait_for(lambda: not any(_running(pid) for pid in workers), 5, f"the workers {workers} to end")
        finally:
            if sweep.poll() is None:
                sweep.kill()
            for pid in (p for p in workers if _running(p)):  # none, unless this test fails
                os.kill(pid, signal.SIGKILL)
    assert not (sweep_dir / "trials.csv").exists()  # killed during its first batch: both trials stand running
    stopped = {p.parent.name: json.loads(p.read_text()) for p in sweep_dir.glob("*/metrics.json")}
    assert all(m["status"] == "interrupted" and m["epochs_completed"] < epochs for m in stopped.values()), stopped

    again = run_cli(args, cwd=tmp_path)
    out = again.stdout + again.stderr
    assert "resuming 2 trial(s) that a sweep process left unfinished: 0, 1" in out
    assert "2 trials: 2 completed" in out
    rows = read_table(sweep_dir)
    assert [(r["trial"], r["seed"], r["status"]) for r in rows] == [("0", "0", "completed"), ("1", "1", "completed")]
    assert sorted(p.name for p in sweep_dir.iterdir() if p.is_dir()) == sorted(r["job_dir"] for r in rows)
    for row in rows:  # each trial went on in its own job directory, from its checkpoint, with the same config
        job_dir = sweep_dir / row["job_dir"]
        metrics = json.loads((job_dir / "metrics.json").read_text())
        assert metrics["status"] == "completed" and metrics["epochs_completed"] == epochs
        assert float(row["best_val_acc"]) == metrics["best_val_acc"]
        assert "resumed from" in (job_dir / "runner.log").read_text()
        assert OmegaConf.load(job_dir / "config.yaml").seed == int(row["seed"])


@pytest.mark.slow
def test_a_rerun_records_a_trial_that_its_orphaned_worker_completed(tmp_path):
    """A sweep killed before its worker finished (the worker outlived it): the job directory holds a completed
    metrics.json, and the study, run again, records the trial as completed instead of drawing it again."""
    sweep_dir = tmp_path / "sweep"
    args = ["-m", *FAST, "seed=0", f"hydra.sweep.dir={sweep_dir}"]
    run_cli(args, cwd=tmp_path)
    [row] = read_table(sweep_dir)
    # Turn the study back to what a SIGKILL of the sweep leaves while its worker trains on: trial 0 running (the
    # sweep process that owned it has ended), its job directory holding the completed run.
    journal = sweep_dir / "optuna.journal"
    entries = [json.loads(line) for line in journal.read_text().splitlines()]
    told = [e for e in entries if e["op_code"] == JournalOperation.SET_TRIAL_STATE_VALUES and e["state"] != 0]
    assert len(told) == 1
    journal.write_text("".join(json.dumps(e) + "\n" for e in entries if e not in told))
    assert [t.state.name for t in optuna.load_study(study_name="sweep", storage=_journal(journal)).trials] == \
        ["RUNNING"]

    again = run_cli(args, cwd=tmp_path)
    assert "Launching" not in again.stdout + again.stderr
    assert "1 trials: 1 completed" in again.stdout + again.stderr
    assert read_table(sweep_dir)[0]["status"] == "completed"
    [trial] = optuna.load_study(study_name="sweep", storage=_journal(journal)).trials
    assert trial.state.name == "COMPLETE" and trial.value == pytest.approx(float(row["best_val_acc"]))


def _journal(path: Path):
    from runner.sweeps.study import open_storage

    return open_storage(str(path))
