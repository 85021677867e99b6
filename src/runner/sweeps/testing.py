"""A sweep's deferred test pass (hydra.sweeper.test_trials=best): its trials skip the test split, and once they have
all run, the best ones are tested once each, from their last checkpoint, exactly as their own run would have tested
at its end. Imported by the sweeper only, after its trials (torch is imported here)."""

import json
import logging
from pathlib import Path

from omegaconf import OmegaConf

from runner.data import checkpoint
from runner.engine import records, train
from runner.engine.run import LAST, Run

log = logging.getLogger("runner")


def needs_test(job_dir: Path) -> bool:
    """Whether a trial left its test pass to the sweep and has not had it yet."""
    try:
        metrics = json.loads((Path(job_dir) / "metrics.json").read_text())
    except (OSError, ValueError):
        return False
    return bool(metrics.get("test_deferred")) and "test_acc" not in metrics and "test_loss" not in metrics


def _choices(job_dir: Path) -> dict[str, str]:
    """The group options the trial's job ran with (Hydra's record of it), for its HPARAMS values."""
    try:
        choices = OmegaConf.load(job_dir / ".hydra" / "hydra.yaml").hydra.runtime.choices
    except (OSError, AttributeError, ValueError):
        return {}
    return {k: str(v) for k, v in choices.items() if not k.startswith("hydra")}


def test_trial(job_dir: Path) -> dict:
    """Test a completed trial whose test pass was deferred: its last checkpoint (the final model, its weight average
    and snapshots) is loaded into the run its config builds, and scored on the test split as `train.fit` would have
    at the end. The scores go into its metrics.json (test_*, and test_checkpoint saying from what) and its TensorBoard
    run (test/ scalars, at its last step). Returns the updated metrics."""
    job_dir = Path(job_dir)
    metrics = json.loads((job_dir / "metrics.json").read_text())
    cfg = OmegaConf.load(job_dir / "config.yaml")  # resolved and completed by the trial itself
    cfg.trainer.resume, cfg.trainer.progress = str(job_dir / LAST), False
    run = Run(cfg, job_dir, _choices(job_dir))
    try:
        run.resume()
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
