"""The lessons' laboratory: real runner runs (the same config composition, checks and engine as `python -m runner`),
each in its own run directory under the lesson's directory, so `tensorboard --logdir <lesson dir>` shows every run
of the comparison side by side; plus the small things lessons share (a model built from a config, a batch of its
data, a bar chart with error bars)."""

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from runner.lessons.verdict import Stat

log = logging.getLogger("runner")


@dataclass
class Lab:
    """lesson: its config; out: the lesson's directory; size: quick, full or test; user: runner overrides from the
    command line, applied to every run (data.root=..., device=...)."""

    lesson: DictConfig
    out: Path
    size: str = "quick"
    user: list[str] = field(default_factory=list)
    name: str = "lesson"
    verbose: bool = False  # every run's own log lines; otherwise one line per run
    runs_done: int = 0

    def overrides(self, arm: str | None = None, seed: int | None = None, extra=()) -> list[str]:
        """The runner overrides of one run: the size's, the arm's, the seed, the lesson's extra ones, the user's."""
        words = [*self.lesson.sizes.get(self.size, [])]
        if arm is not None:
            words += list(self.lesson.arms[arm])
        if seed is not None:
            words.append(f"seed={seed}")
        return [*words, *extra, *self.user]

    def config(self, arm: str | None = None, seed: int | None = None, extra=()) -> tuple[DictConfig, dict]:
        """The composed, checked runner config of one run and its group choices (nothing runs)."""
        import hydra

        from runner.config import CONFIG_DIR, register_resolvers, validate

        register_resolvers()
        overrides = self.overrides(arm, seed, extra)
        with hydra.initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = hydra.compose("config", overrides=overrides, return_hydra_config=True)
        choices = {k: v for k, v in cfg.hydra.runtime.choices.items() if not k.startswith("hydra")}
        cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
        validate(cfg)
        return cfg, choices

    def run(self, arm: str | None, seed: int, extra=(), components=(), name: str | None = None,
            at_end=None) -> dict:
        """Train one run of `arm` with `seed` (and `extra` overrides) in <lesson dir>/<name or arm>_seed<seed>;
        returns its metrics (metrics.json) with run_dir added. components: extra engine components (what a lesson
        measures inside the run: runner.engine.components protocol). at_end(run) -> value: measured on the
        trained run (run.model, run.splits, ...) before its test, returned as metrics["at_end"]."""
        from runner.engine.train import fit

        if at_end is not None:
            components = [*components, _AtEnd(at_end)]
        cfg, choices = self.config(arm, seed, extra)
        run_dir = self.out / f"{name or arm or 'run'}_seed{seed}"
        run_dir.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        level = log.level
        if not self.verbose:
            log.setLevel(logging.WARNING)
        try:
            metrics = fit(cfg, run_dir, choices, list(components))
        finally:
            log.setLevel(level)
        self.runs_done += 1
        scores = ", ".join(f"{k} {metrics[k]:.4g}" for k in ("test_acc", "best_val_acc", "final_train_loss")
                           if isinstance(metrics.get(k), float))
        print(f"  run {run_dir.name}: {metrics['status']}, {scores} ({time.perf_counter() - started:.0f} s)",
              flush=True)
        found = {"at_end": components[-1].value} if at_end is not None else {}
        return {**metrics, **found, "run_dir": str(run_dir), "lesson_wall_s": time.perf_counter() - started}

    def model(self, arm: str | None = None, seed: int = 0, extra=()):
        """The network a run of this arm would train (initialized with `seed`), on the CPU, and its config: for
        lessons that look at a network before any training."""
        import torch

        from runner.engine.build import build_model

        cfg, _ = self.config(arm, seed, extra)
        torch.manual_seed(seed)
        return build_model(cfg, int(cfg.data.num_classes)), cfg

    def batch(self, arm: str | None = None, seed: int = 0, n: int = 256, extra=()):
        """n preprocessed training images and their labels, as a run of this arm would see them (CPU)."""
        import torch

        from runner.data.loading import load_splits
        from runner.engine.build import build_preprocess

        cfg, _ = self.config(arm, seed, extra)
        splits = load_splits(cfg.data, torch.device("cpu"))
        preprocess = build_preprocess(cfg, splits.train_x)
        with torch.no_grad():
            return preprocess(splits.train_x[:n]), splits.train_y[:n]

    def figure_path(self) -> Path:
        return self.out / f"{self.name}.png"


class _AtEnd:
    """A component (runner.engine.components protocol) that measures the trained run once, after its last epoch."""

    name = ""

    def __init__(self, measure):
        self.measure, self.value = measure, None

    def finish(self, run) -> None:
        self.value = self.measure(run)

    def state_dict(self):
        return None

    def load_state_dict(self, state) -> None:
        pass


def weight_zero_fraction(run) -> float:
    """The fraction of conv/linear weights that are exactly 0."""
    from runner.optimization import optimizers, regularizers

    return regularizers.sparsity(optimizers.split_decay(run.model)[0])["weights/zero_fraction"]


def save_figure(fig, path: Path) -> str:
    """Every lesson figure's ending: laid out, written as a PNG (110 dpi), closed; returns the path."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def bar_figure(path: Path, stats: dict[str, Stat], ylabel: str, title: str, log_y: bool = False) -> str:
    """Each arm's mean with its spread over seeds (error bar: one standard deviation; dots: the seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(5.5, 1.6 + 1.1 * len(stats)), 3.8))
    for i, (name, s) in enumerate(stats.items()):
        ax.bar(i, s.mean, yerr=s.std if s.n > 1 else None, capsize=4, color=f"C{i}", alpha=0.75,
               label=f"{name}: {s.text()}")
        ax.plot([i] * s.n, s.values, "k.", markersize=5)
    ax.set_xticks(range(len(stats)), list(stats), rotation=20, ha="right")
    ax.set_ylabel(ylabel)
    if log_y:
        ax.set_yscale("log")
    n = max(s.n for s in stats.values())
    ax.set_title(f"{title}\n(bars: mean over {n} seeds, error bar: 1 std, dots: each seed)", fontsize=9)
    ax.legend(fontsize=7, loc="best")
    return save_figure(fig, path)
