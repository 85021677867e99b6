"""The `runner` command's job, as Hydra calls it: check the config, train (a trial of a sweep reports to its study),
and turn a user's mistake into a one-line error. The glue above the engine and the sweeps."""

import contextlib
import os
import re
import shlex
import shutil
import sys
import time
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from runner.config import ConfigError, UserError, validate

# The exit code of each final status, for scripts and schedulers (README, "When things go wrong"); 2 is a bad config.
EXIT_CODES = {"completed": 0, "pruned": 0, "failed": 1, "diverged": 3, "SIGINT": 130, "SIGTERM": 143}


def run_job(cfg) -> float | None:
    """Returns the best validation accuracy (what a sweeper maximizes), or None when the run did not complete. A
    single run exits with its status's code (EXIT_CODES); a job of a multirun returns or raises instead, so that
    the sweep goes on."""
    started_at = time.time()  # the origin of startup_s: this job's start (a sweep runs many in one process)
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        validate(cfg)
        from runner.engine.components import SweepReport
        from runner.engine.train import fit  # torch is imported from here on
        from runner.sweeps.study import trial_context

        hydra_cfg = HydraConfig.get()
        trial = trial_context()  # None unless this run is a trial of an Optuna sweep
        try:
            metrics = fit(cfg, run_dir, dict(hydra_cfg.runtime.choices),
                          [SweepReport(trial.report)] if trial is not None else [],
                          command=None if multirun else resume_command(hydra_cfg, run_dir), started_at=started_at,
                          sweep_trial=trial is not None, test=trial is None or trial.test)
        finally:
            if "WORLD_SIZE" in os.environ:  # a torchrun rank: leave the process group cleanly
                from runner.engine.distributed import close

                close()
    except UserError as err:
        if not multirun and not getattr(err, "owned_by_another", False):  # never remove another process's
            remove_if_empty(run_dir)
        # In a multirun the sweeper records the error as this trial's failure and goes on; an exit would end the
        # whole sweep.
        if os.environ.get("HYDRA_FULL_ERROR") == "1" or multirun:
            raise
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2 if isinstance(err, ConfigError) else 1)
    except Exception as err:  # fit recorded it in metrics.json (status failed); the checkpoints are intact
        if os.environ.get("HYDRA_FULL_ERROR") == "1" or multirun:
            raise
        print(f"error: the run failed with {type(err).__name__}: {' '.join(str(err).split())} (recorded in "
              f"{run_dir / 'metrics.json'}; HYDRA_FULL_ERROR=1 shows the traceback)", file=sys.stderr)
        sys.exit(EXIT_CODES["failed"])
    code = EXIT_CODES.get(metrics.get("signal") or metrics["status"], 1)
    if code and not multirun:
        sys.exit(code)
    return metrics["best_val_acc"] if metrics["status"] == "completed" else None


def resume_command(hydra_cfg, run_dir: Path) -> str:
    """The command that continues this run: the same overrides, in this run directory."""
    hydra_overrides = [o for o in hydra_cfg.overrides.hydra if not o.startswith(("hydra.run.dir=", "hydra.mode="))]
    words = ["python", "-m", "runner", *hydra_cfg.overrides.task, *hydra_overrides, f"hydra.run.dir={run_dir}"]
    return " ".join(shlex.quote(str(w)) for w in words)


# What Hydra writes into a run directory before runner's code runs: the log, and .hydra/ holding these files.
_HYDRA_FILES = {"config.yaml", "hydra.yaml", "overrides.yaml"}


def remove_if_empty(run_dir: Path) -> None:
    """Remove a run directory that a failed start left holding nothing but Hydra's record, the log and the run's
    lock (released by then), and its date folder (outputs/<date>) when that is left empty. A directory holding
    anything else (a resumed run's checkpoints, a file of the user's) stays, and so do the working directory and those
    above it (hydra.run.dir=.)."""
    run_dir, record = run_dir.resolve(), run_dir.resolve() / ".hydra"
    if not run_dir.is_dir() or Path.cwd().resolve().is_relative_to(run_dir):
        return
    if {p.name for p in run_dir.iterdir()} - {".hydra", "runner.log", ".runner.lock"}:
        return
    if record.exists() and (not record.is_dir() or {p.name for p in record.iterdir()} - _HYDRA_FILES):
        return
    shutil.rmtree(run_dir, ignore_errors=True)  # best effort: the error message is what matters
    with contextlib.suppress(OSError):  # another run may have just started in the same date folder
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", run_dir.parent.name) and not any(run_dir.parent.iterdir()):
            run_dir.parent.rmdir()
