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
    # Both open the study before either draws: each sampler seeded 0 + len(trials) drew the same points. Each
    # process's sampler is seeded once, at its first trial: trial 0's process with the seed, the other from
    # (seed, its first trial's number).
    first, second = _worker(sampler, tmp_path), _worker(sampler, tmp_path)
    distributions = {"optimizer.lr": parse_space([LR]).params["optimizer.lr"].distribution}
    drawn = [study.ask(distributions).params["optimizer.lr"] for _ in range(3) for study in (first, second)]
    assert len(set(drawn)) == 6, drawn
    if sampler == "random":  # the worker that drew trial 0 draws what a plain study seeded once draws
        plain = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
        assert drawn[0::2] == [plain.ask(distributions).params["optimizer.lr"] for _ in range(3)]


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
    assert not any("test pass failed" in e for e in errors), errors  # both test the best trials: one waits
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


# ---------------------------------------------------------------------------------------------------------------
# A journal torn by a kill or a full disk

def _study_with_trials(sweep_dir: Path, n: int = 2):
    study = _worker("random", sweep_dir)
    distributions = {"optimizer.lr": parse_space([LR]).params["optimizer.lr"].distribution}
    for i in range(n):
        trial = study.ask(distributions)
        study.tell(trial, 0.1 * (i + 1))
    return study


def test_a_journal_torn_at_its_tail_is_cut_back_and_the_sweep_resumes(tmp_path, caplog):
    _study_with_trials(tmp_path)
    journal = tmp_path / "optuna.journal"
    whole = journal.read_bytes()
    torn = b'{"op_code":5,"worker_id":"a-b","trial_id":2,"param_na'  # a record cut short by a kill
    journal.write_bytes(whole + torn)
    with caplog.at_level("WARNING", logger="runner.sweeps.study"):
        study = _worker("random", tmp_path)  # what every run of the sweep does first
    assert journal.read_bytes().startswith(whole) and (tmp_path / "optuna.journal.torn").read_bytes() == torn
    [line] = [r.getMessage() for r in caplog.records]
    assert str(journal) in line and "torn" in line and "\n" not in line
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    study.tell(study.ask(), 0.5)  # and it goes on: every later run reads the study
    assert [t.value for t in _worker("random", tmp_path).trials] == [0.1, 0.2, 0.5]


def test_a_record_written_onto_a_torn_one_by_an_older_runner_is_separated(tmp_path):
    _study_with_trials(tmp_path)
    journal = tmp_path / "optuna.journal"
    lines = journal.read_bytes().splitlines(keepends=True)
    torn = b'{"op_code":5,"worker_id":"a-b","tri'
    # What a run after the kill appended, onto the torn record: every later run failed with "Expecting ','".
    journal.write_bytes(b"".join([*lines[:-1], torn + lines[-1]]))
    study = _worker("random", tmp_path)
    assert [t.value for t in study.trials] == [0.1, 0.2]
    assert (tmp_path / "optuna.journal.torn").read_bytes() == torn


def test_a_journal_damaged_before_its_tail_is_refused_in_one_line_naming_it_and_the_way_out(tmp_path):
    _study_with_trials(tmp_path)
    journal = tmp_path / "optuna.journal"
    lines = journal.read_bytes().splitlines(keepends=True)
    journal.write_bytes(b"".join([*lines[:2], b"\x00\x00 garbage\n", *lines[2:]]))
    before = journal.read_bytes()
    with pytest.raises(ValueError) as err:
        _worker("random", tmp_path)
    message = str(err.value)
    assert "\n" not in message and str(journal) in message and "line 3" in message
    assert "hydra.sweep.dir=" in message and "head -n 2" in message
    assert journal.read_bytes() == before  # refused: nothing changed


# ---------------------------------------------------------------------------------------------------------------
# Two sweep processes testing their best trials together

def _deferred_trial(sweep_dir: Path):
    """A study with one completed trial whose test pass was left to the sweep (a trial directory as the job leaves
    it, without its checkpoint: the test pass itself is replaced in these tests)."""
    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    trial.set_user_attr("job_dir", "000_seed=0")
    study.tell(trial, 0.5)
    job_dir = sweep_dir / "000_seed=0"
    job_dir.mkdir(parents=True)
    (job_dir / "metrics.json").write_text(json.dumps({"status": "completed", "best_val_acc": 0.5,
                                                      "test_deferred": True}))
    return study, job_dir


def _scored(job_dir: Path, acc: float) -> dict:
    metrics = {**json.loads((job_dir / "metrics.json").read_text()), "test_acc": acc, "test_loss": 1.0}
    (job_dir / "metrics.json").write_text(json.dumps(metrics))
    return metrics


def _hold_then(job_dir: Path, then, after_s: float = 0.6):
    """Hold the trial's run directory as another sweep process testing it does, for after_s seconds; then call
    `then` and let go."""
    import threading

    from runner.engine.rundir import lock_run_dir

    fd = lock_run_dir(job_dir)

    def release():
        time.sleep(after_s)
        then()
        os.close(fd)

    thread = threading.Thread(target=release)
    thread.start()
    return thread


def _test_pass(monkeypatch) -> list:
    """The trial's test pass replaced by one that, as the real one, takes the run directory's lock first, then
    scores 0.7; returns the list of directories it tested."""
    from runner.engine.rundir import lock_run_dir
    from runner.sweeps import testing

    ran = []

    def test_trial(path):
        os.close(lock_run_dir(path))
        ran.append(path)
        return _scored(path, 0.7)

    monkeypatch.setattr(testing, "test_trial", test_trial)
    return ran


@pytest.mark.parametrize("other_tests_it", [True, False])
def test_a_trial_another_sweep_process_is_testing_is_waited_for_not_failed(tmp_path, monkeypatch, caplog,
                                                                          other_tests_it):
    from runner.sweeps import study as glue

    study, job_dir = _deferred_trial(tmp_path)
    ran = _test_pass(monkeypatch)
    holder = _hold_then(job_dir, (lambda: _scored(job_dir, 0.6)) if other_tests_it else (lambda: None))
    sweeper = OptunaSweeper(sampler=None, pruner=None, test_best=1)
    with caplog.at_level("INFO"):
        sweeper._test_best(study, tmp_path)
    holder.join()
    out = "\n".join(r.getMessage() for r in caplog.records)
    assert "failed" not in out and "RunDirBusy" not in out, out
    assert "another process" in out and "waiting" in out
    rows = glue.table_rows(study, [])
    if other_tests_it:  # its scores are taken, and the trial is not tested a second time
        assert ran == [] and rows[0]["test_acc"] == 0.6 and "tested by another process" in out
    else:  # the other let go without testing it: tested here
        assert ran == [job_dir] and rows[0]["test_acc"] == 0.7


def test_a_trial_held_past_the_wait_is_left_with_one_line(tmp_path, monkeypatch, caplog):
    from runner.sweeps import testing

    study, job_dir = _deferred_trial(tmp_path)
    ran = _test_pass(monkeypatch)
    monkeypatch.setattr(testing, "BUSY_WAIT_S", 0.2)
    holder = _hold_then(job_dir, lambda: None, after_s=1.5)
    with caplog.at_level("INFO"):
        OptunaSweeper(sampler=None, pruner=None, test_best=1)._test_best(study, tmp_path)
    holder.join()
    [line] = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert "trial 0" in line and "not tested by this process" in line and "run the sweep's command again" in line
    assert ran == []
