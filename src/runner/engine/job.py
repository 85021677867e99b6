"""One job, as Hydra calls it: check the config, train, and turn a user's mistake into a one-line error."""

import os
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
        # In a multirun the sweeper records the error as this trial's failure and goes on; an exit would end the
        # whole sweep.
        if os.environ.get("HYDRA_FULL_ERROR") == "1" or HydraConfig.get().mode == RunMode.MULTIRUN:
            raise
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2 if isinstance(err, ConfigError) else 1)
    return metrics["best_val_acc"] if metrics["status"] == "completed" else None
