"""One job, as Hydra calls it: check the config, train, and turn a user's mistake into a one-line error."""

import os
import sys
from pathlib import Path

from hydra.core.hydra_config import HydraConfig

from runner.config import ConfigError, UserError, validate


def run_job(cfg) -> float | None:
    """Returns the best validation accuracy (what a sweeper maximizes), or None when the run did not complete."""
    try:
        validate(cfg)
        from runner.train import fit  # torch is imported from here on

        hydra_cfg = HydraConfig.get()
        metrics = fit(cfg, Path(hydra_cfg.runtime.output_dir), dict(hydra_cfg.runtime.choices))
    except UserError as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2 if isinstance(err, ConfigError) else 1)
    return metrics["best_val_acc"] if metrics["status"] == "completed" else None
