"""The `runner` command's job, as Hydra calls it: check the config, train (a trial of a sweep reports to its study),
and turn a user's mistake into a one-line error. The glue above the engine and the sweeps."""

import contextlib
import os
import re
import shutil
import sys
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from runner.config import ConfigError, UserError, validate


def run_job(cfg) -> float | None:
    """Returns the best validation accuracy (what a sweeper maximizes), or None when the run did not complete."""
    try:
        validate(cfg)
        from runner.engine.components import SweepReport
        from runner.engine.train import fit  # torch is imported from here on
        from runner.sweeps.study import trial_reporter

        hydra_cfg = HydraConfig.get()
        report = trial_reporter()  # None unless this run is a trial of an Optuna sweep
        try:
            metrics = fit(cfg, Path(hydra_cfg.runtime.output_dir), dict(hydra_cfg.runtime.choices),
                          [SweepReport(report)] if report is not None else [])
        finally:
            if "WORLD_SIZE" in os.environ:  # a torchrun rank: leave the process group cleanly
                from runner.engine.distributed import close

                close()
    except UserError as err:
        if HydraConfig.get().mode == RunMode.RUN:
            remove_if_empty(Path(HydraConfig.get().runtime.output_dir))
        # In a multirun the sweeper records the error as this trial's failure and goes on; an exit would end the
        # whole sweep.
        if os.environ.get("HYDRA_FULL_ERROR") == "1" or HydraConfig.get().mode == RunMode.MULTIRUN:
            raise
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2 if isinstance(err, ConfigError) else 1)
    return metrics["best_val_acc"] if metrics["status"] == "completed" else None


# What Hydra writes into a run directory before runner's code runs: the log, and .hydra/ holding these files.
_HYDRA_FILES = {"config.yaml", "hydra.yaml", "overrides.yaml"}


def remove_if_empty(run_dir: Path) -> None:
    """Remove a run directory that a failed start left holding nothing but Hydra's record and the log, and its date
    folder (outputs/<date>) when that is left empty. A directory holding anything else (a resumed run's checkpoints,
    a file of the user's) stays, and so do the working directory and those above it (hydra.run.dir=.)."""
    run_dir, record = run_dir.resolve(), run_dir.resolve() / ".hydra"
    if not run_dir.is_dir() or Path.cwd().resolve().is_relative_to(run_dir):
        return
    if {p.name for p in run_dir.iterdir()} - {".hydra", "runner.log"}:
        return
    if record.exists() and (not record.is_dir() or {p.name for p in record.iterdir()} - _HYDRA_FILES):
        return
    shutil.rmtree(run_dir, ignore_errors=True)  # best effort: the error message is what matters
    with contextlib.suppress(OSError):  # another run may have just started in the same date folder
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", run_dir.parent.name) and not any(run_dir.parent.iterdir()):
            run_dir.parent.rmdir()
