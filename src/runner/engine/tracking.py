"""What a run leaves for its user: TensorBoard scalars and the HPARAMS entry (in the run's own directory, beside the
curves), the run's environment, and a live progress line on a terminal."""

import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams as hparams_summary

import runner
from runner.data import checkpoint
from runner.engine.records import check_tag


class Tracker:
    """TensorBoard event files in `run_dir`. On resume, purge_step drops the events an earlier, killed process
    wrote past the checkpoint, so the curves do not double back."""

    def __init__(self, run_dir: Path, purge_step: int | None = None, enabled: bool = True, lazy: bool = False):
        """enabled=False: write nothing (the ranks other than 0 of a data-parallel run); writer is then None.
        lazy=True: open the event file only with `open`, once the step to purge from is known (a resumed run)."""
        self.run_dir, self.enabled, self.writer = Path(run_dir), enabled, None
        if not lazy:
            self.open(purge_step)

    def open(self, purge_step: int | None = None) -> None:
        if self.enabled:
            self.writer = SummaryWriter(log_dir=str(self.run_dir), purge_step=purge_step)

    def scalar(self, tag: str, value: float, step: int) -> None:
        if self.writer is not None:
            check_tag(tag)
            self.writer.add_scalar(tag, value, step)

    def scalars(self, values: dict[str, float], step: int) -> None:
        if self.writer is None:
            return
        for tag, value in values.items():
            check_tag(tag)
            self.writer.add_scalar(tag, value, step)

    def hparams(self, hparams: dict, metrics: dict[str, float], step: int) -> None:
        """The HPARAMS tab entry, written into this run (SummaryWriter.add_hparams would open a timestamped
        sub-run apart from the curves). Every metric tag is also a scalar of this run, as TensorBoard requires."""
        if self.writer is None:
            return
        exp, ssi, sei = hparams_summary(hparams, metrics)
        for summary in (exp, ssi, sei):
            self.writer.file_writer.add_summary(summary, step)
        self.scalars(metrics, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def flat_hparams(cfg, choices: dict[str, str]) -> dict:
    """Every chosen group option (`optimizer: adam`) and every numeric or boolean hyperparameter, flattened to
    dotted keys (`optimizer.lr`): what the HPARAMS tab and the sweep table compare runs by."""
    out = {group: str(option) for group, option in choices.items() if not group.startswith("hydra")}

    def walk(node, prefix):
        if isinstance(node, dict):
            for k, v in node.items():
                if not str(k).startswith("_"):
                    walk(v, f"{prefix}{k}.")
        elif isinstance(node, list):
            if node and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in node):
                out[prefix[:-1]] = str(node)
        elif isinstance(node, (bool, int, float)):
            out[prefix[:-1]] = node

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return out


def environment(device: torch.device) -> dict:
    """The code version and machine a run used: enough to reproduce it."""
    root = Path(runner.__file__).resolve().parents[2]

    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=5).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    return {
        "runner_version": runner.__version__,
        "git_commit": git("rev-parse", "HEAD") or None,
        "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        "command": sys.argv,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or device.type,
        "hostname": platform.node(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def record_run(cfg, run_dir: Path, device: torch.device, **extra) -> None:
    """What reproduces a run, beside its events and metrics: config.yaml (resolved) and environment.json."""
    checkpoint.write_json({**environment(device), **extra}, Path(run_dir) / "environment.json")
    checkpoint.write_text(OmegaConf.to_yaml(cfg, resolve=True), Path(run_dir) / "config.yaml")


class Progress:
    """A one-line progress bar on a terminal (rewritten in place); silent otherwise, where per-epoch log lines
    are the record."""

    def __init__(self, enabled: bool, steps: int, epochs: int):
        self.enabled, self.steps, self.epochs = enabled, steps, epochs

    def update(self, epoch: int, step: int, loss: float, img_per_s: float) -> None:
        if not self.enabled:
            return
        done = int(20 * step / self.steps)
        bar = "#" * done + "." * (20 - done)
        sys.stderr.write(f"\repoch {epoch + 1}/{self.epochs} [{bar}] {step}/{self.steps} "
                         f"loss {loss:.4f} {img_per_s:,.0f} img/s ")
        sys.stderr.flush()

    def end_epoch(self) -> None:
        if self.enabled:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()
