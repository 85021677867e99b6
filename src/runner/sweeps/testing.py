"""A sweep's deferred test pass (hydra.sweeper.test_trials=best): its trials skip the test split, and once they have
all run, the best ones are tested once each, from their last checkpoint, exactly as their own run would have tested
at its end. Two sweep processes on one study test the same best trials: the one that finds a trial's run directory
held waits for the other to let go, then takes its scores. Imported by the sweeper only, after its trials (torch is
imported here). run_test_pass is the sweeper's end: the chosen trials tested, their scores recorded in the study."""

import json
import logging
import time
from pathlib import Path

import yaml

from runner.data import checkpoint
from runner.engine import recorded, records, train
from runner.engine.run import Run
from runner.engine.rundir import LAST, LOCK, RunDirBusy
from runner.sweeps import study as glue

log = logging.getLogger("runner")

# How long a sweep waits for another process to let go of a trial's run directory (another sweep process on the same
# study, testing the same trial: a test pass takes seconds to a few minutes), and how often it looks.
BUSY_WAIT_S = 600
BUSY_POLL_S = 0.5


def needs_test(job_dir: Path) -> bool:
    """Whether a trial left its test pass to the sweep and has not had it yet."""
    try:
        metrics = json.loads((Path(job_dir) / "metrics.json").read_text())
    except (OSError, ValueError):
        return False
    return bool(metrics.get("test_deferred")) and "test_acc" not in metrics and "test_loss" not in metrics


def _choices(job_dir: Path) -> dict[str, str]:
    """The group options the trial's job ran with (Hydra's record of it), for its HPARAMS values: read as plain,
    bounded data (the file may come from someone else), short names only; {} where it cannot be read so."""
    path = job_dir / ".hydra" / "hydra.yaml"
    try:
        text = path.read_text(encoding="utf-8") if path.stat().st_size <= recorded.MAX_RECORD_BYTES else ""
        if any(isinstance(t, (yaml.AnchorToken, yaml.AliasToken, yaml.TagToken)) for t in yaml.scan(text)):
            return {}
        choices = yaml.safe_load(text)["hydra"]["runtime"]["choices"]
    except (OSError, UnicodeDecodeError, yaml.YAMLError, KeyError, TypeError, RecursionError):
        return {}
    if type(choices) is not dict:
        return {}
    return {k: v for k, v in choices.items() if type(k) is str and type(v) is str and recorded.NAME.fullmatch(k)
            and len(v) <= 100 and not k.startswith("hydra")}


def test_trial(job_dir: Path) -> dict:
    """Test a completed trial whose test pass was deferred: its last checkpoint (the final model, its weight average
    and snapshots) is loaded into the run its config builds, and scored on the test split as `train.fit` would have
    at the end. The scores go into its metrics.json (test_*, and test_checkpoint saying from what) and its TensorBoard
    run (test/ scalars, at its last step). Returns the updated metrics."""
    job_dir = Path(job_dir)
    metrics = json.loads((job_dir / "metrics.json").read_text())
    # A sweep directory may come from someone else: its trials' configs are rebuilt from runner's option files.
    cfg, _ = recorded.rebuilt_config(job_dir, f"or test the trial again with a new run in another directory than "
                                              f"{job_dir}.")
    cfg.trainer.resume, cfg.trainer.progress = str(job_dir / LAST), False
    run = Run(cfg, job_dir, _choices(job_dir))
    try:
        run.resume()
        run.accept()
        run.open_tracker()
        test, extra = train.test_scores(run)
        metrics.update({f"test_{k}": v for k, v in test.items()})
        metrics.update({tag.replace("/", "_"): v for tag, v in extra.items()})
        metrics["test_checkpoint"] = LAST
        records.check_metrics(metrics)
        checkpoint.write_json(metrics, job_dir / "metrics.json")
        run.tracker.scalars({**{f"test/{k}": v for k, v in test.items()}, **extra}, run.step)
    finally:
        run.tracker.close()
        run.release()
    return metrics


def holder(job_dir: Path) -> str:
    """The pid of the process holding the run directory's lock, as it wrote it there ("?" when unreadable)."""
    try:
        return (Path(job_dir) / LOCK).read_text()[:32].strip() or "?"
    except OSError:
        return "?"


def test_when_free(job_dir: Path, on_busy=None) -> tuple[dict, bool]:
    """test_trial, unless another process holds the trial's run directory: then wait for it to let go (up to
    BUSY_WAIT_S, calling on_busy() once when the wait begins) and test the trial only if it is still untested.
    Returns (its metrics with the test scores, whether this process ran the test). Raises RunDirBusy when the
    directory is still held after the wait."""
    deadline, told = time.monotonic() + BUSY_WAIT_S, False
    while True:
        if told and not needs_test(job_dir):  # the other process tested it
            return json.loads((Path(job_dir) / "metrics.json").read_text()), False
        try:
            return test_trial(job_dir), True
        except RunDirBusy:
            if time.monotonic() > deadline:
                raise
            if not told and on_busy is not None:
                on_busy()
            told = True
            time.sleep(BUSY_POLL_S)


def run_test_pass(study, sweep_dir: Path, chosen: list, which: str) -> None:
    """Test the chosen trials of a study (the best ones, or the Pareto front: `which` says so in the log) that left
    their test pass to the sweep, once each: a trial tested by an earlier run of the sweep is not tested again; one
    that another sweep process on this study is testing is waited for, and its scores taken. The scores are recorded
    in the study (trials.csv)."""
    todo = [t for t in chosen if needs_test(Path(sweep_dir) / t.user_attrs["job_dir"])]
    if todo:
        log.info("testing the %d %s once, from their last checkpoint: %s", len(todo), which,
                 ", ".join(str(t.number) for t in todo))
    for trial in todo:
        job_dir = Path(sweep_dir) / trial.user_attrs["job_dir"]

        def waiting(number=trial.number, job_dir=job_dir) -> None:
            log.info("trial %d: another process (pid %s) holds its run directory, most likely another sweep "
                     "process testing it: waiting for it to let go (up to %d s)", number, holder(job_dir), BUSY_WAIT_S)

        try:
            metrics, here = test_when_free(job_dir, waiting)
        except RunDirBusy:
            log.warning("trial %d: not tested by this process: another process (pid %s) still holds its run "
                        "directory %s after %d s; run the sweep's command again to test it once it has let go",
                        trial.number, holder(job_dir), job_dir, BUSY_WAIT_S)
            continue
        except Exception as err:  # one trial's test failing (a damaged checkpoint) leaves the others
            log.error("trial %d: its test pass failed: %s: %s", trial.number, type(err).__name__, err)
            continue
        glue.record_test(study, trial.number, metrics)
        log.info("trial %d tested%s: test_acc %s  [%s]", trial.number, "" if here else " by another process",
                 metrics.get("test_acc"), job_dir.name)
