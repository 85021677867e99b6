"""The lessons' laboratory: real runner runs (the same config composition, checks and engine as `python -m runner`),
each in its own run directory under the lesson's directory, so `tensorboard --logdir <lesson dir>` shows every run
of the comparison side by side; plus the small things lessons share (a model built from a config, a batch of its
data, a bar chart with error bars).

A lesson run again into its directory goes on where it stopped: a run that ended there is kept with its recorded
metrics and measures, an unfinished one resumes from its last checkpoint (Lab._fit)."""

import json
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from runner.config import CONFIG_DIR, CheckpointError, ConfigError, register_resolvers, validate
from runner.config.command_line import composed
from runner.data import checkpoint
from runner.engine.hooks import Component
from runner.engine.rundir import config_differences, output_error
from runner.lessons.verdict import Stat

log = logging.getLogger("runner")

# In a run directory: what the lesson measured on the run (at_end's value and its components' `value`s), written once
# the run has ended, so that the lesson run again keeps the run instead of training it again.
MEASURED = "measured.pt"
ENDED = ("completed", "diverged")  # the statuses of a run that is kept as it is when the lesson runs again


class RunInterrupted(Exception):
    """A run of the lesson stopped by SIGINT or SIGTERM; its last checkpoint is kept, to be resumed."""

    def __init__(self, run: str, message: str):
        found = re.search(r"\bSIG[A-Z]+", message)
        self.signal = found[0] if found else "SIGINT"
        self.run, self.detail = run, message.split(". To resume")[0]
        super().__init__(f"run {run} {self.detail}")


class _NotTwice(logging.Filter):
    """Drops the engine's line on a run stopped by a signal: the lesson says it once, with its own resume command."""

    def filter(self, record) -> bool:
        return not record.getMessage().startswith("interrupted by SIG")


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
    # Every run of the lesson as it ended: run, arm, seed, status, test_acc, lr, chance (see gate_failures).
    records: list[dict] = field(default_factory=list)
    config_dir: Path | None = None  # the configs to compose from (None: runner's own); a test's other defaults
    # arm -> {"lr": the tuned lr, "base": the arm's own, "trials": [{lr, status, val_acc}]} (the lesson's `tune`)
    tuning: dict = field(default_factory=dict)
    resume_command: str | None = None  # the command that resumes the lesson, for a run's message when it is stopped

    def overrides(self, arm: str | None = None, seed: int | None = None, extra=()) -> list[str]:
        """The runner overrides of one run: the lesson's recipe (the optimizer, lr, schedule and batch size it is
        designed for, so that runner's defaults move no lesson), the size's, the arm's, the seed, the lesson's extra
        ones, the user's."""
        words = [*self.lesson.get("recipe", []), *self.lesson.sizes.get(self.size, [])]
        if arm is not None:
            words += list(self.lesson.arms[arm])
        if seed is not None:
            words.append(f"seed={seed}")
        return [*words, *extra, *self.user]

    def config(self, arm: str | None = None, seed: int | None = None, extra=()) -> tuple[DictConfig, dict]:
        """The composed, checked runner config of one run and its group choices (nothing runs)."""
        cfg = composed(self.compose, self.overrides(arm, seed, extra))  # Hydra's refusal: runner's one line
        choices = {k: v for k, v in cfg.hydra.runtime.choices.items() if not k.startswith("hydra")}
        cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
        validate(cfg)
        return cfg, choices

    def compose(self, overrides: list[str]) -> DictConfig:
        """Hydra's composition of runner's config with these overrides, its own node included."""
        import hydra

        register_resolvers()
        with hydra.initialize_config_dir(config_dir=str(self.config_dir or CONFIG_DIR), version_base="1.3"):
            return hydra.compose("config", overrides=overrides, return_hydra_config=True)

    def run(self, arm: str | None, seed: int, extra=(), components=(), name: str | None = None,
            at_end=None) -> dict:
        """Train one run of `arm` with `seed` (and `extra` overrides) in <lesson dir>/<name or arm>_seed<seed>;
        returns its metrics (metrics.json) with run_dir added. components: extra engine components (what a lesson
        measures inside the run: runner.engine.hooks.Component subclasses). at_end(run) -> value: measured on the
        trained run (run.model, run.splits, ...) before its test, returned as metrics["at_end"]."""
        if at_end is not None:
            components = [*components, _AtEnd(at_end)]
        if self.lesson.get("tune") and arm is not None:
            extra = [f"optimizer.lr={self.tuned_lr(arm):.6g}", *extra]
        cfg, choices = self.config(arm, seed, extra)
        run_dir = self.out / f"{name or arm or 'run'}_seed{seed}"
        started = time.perf_counter()
        metrics, kept = self._fit(cfg, choices, run_dir, components)
        self.runs_done += 1
        self.records.append({"run": run_dir.name, "arm": name or arm, "seed": seed, "status": metrics.get("status"),
                             "test_acc": metrics.get("test_acc"), "lr": float(cfg.optimizer.lr),
                             "batch_size": int(cfg.trainer.batch_size),
                             "chance": 1.0 / int(cfg.data.num_classes) if cfg.objective.name == "classify" else None})
        scores = ", ".join(f"{k} {metrics[k]:.4g}" for k in ("test_acc", "best_val_acc", "final_train_loss")
                           if isinstance(metrics.get(k), float))
        took = "kept from an earlier run" if kept else f"{time.perf_counter() - started:.0f} s"
        print(f"  run {run_dir.name}: {metrics['status']}, {scores} ({took})", flush=True)
        found = {"at_end": components[-1].value} if at_end is not None else {}
        return {**metrics, **found, "run_dir": str(run_dir), "lesson_wall_s": time.perf_counter() - started}

    def tuned_lr(self, arm: str) -> float:
        """The lesson's `tune` ({factors: [...], seed: S}): each arm's peak lr searched at equal budget before its
        seeds run, so that a comparison of techniques is not a comparison of one shared lr (optimizer rankings flip
        with the tuning protocol). One run per factor x the arm's own lr, on seed S (apart from the verdict's
        seeds), no test pass; the lr with the best validation accuracy wins. Cached per arm; in self.tuning."""
        if arm not in self.tuning:
            spec = self.lesson.tune
            base = float(self.config(arm, int(spec.seed))[0].optimizer.lr)
            trials = []
            for factor in spec.factors:
                lr = base * float(factor)
                cfg, choices = self.config(arm, int(spec.seed), [f"optimizer.lr={lr:.6g}"])
                metrics, _ = self._fit(cfg, choices, self.out / f"tune_{arm}_lr{lr:.3g}", test=False)
                trials.append({"lr": lr, "status": metrics.get("status"), "val_acc": metrics.get("best_val_acc")})
            done = [t for t in trials if t["status"] == "completed" and t["val_acc"] is not None]
            best = max(done, key=lambda t: t["val_acc"])["lr"] if done else base
            self.tuning[arm] = {"lr": best, "base": base, "trials": trials}
            told = ", ".join(f"{t['lr']:.3g}: " + (f"{t['val_acc']:.3f}" if t["status"] == "completed"
                                                    else str(t["status"])) for t in trials)
            print(f"  tuned {arm}: lr {best:.3g} (validation accuracy by lr: {told})", flush=True)
        return self.tuning[arm]["lr"]

    def _fit(self, cfg, choices, run_dir: Path, components=(), test: bool = True) -> tuple[dict, bool]:
        """One run of a composed config in run_dir, quietly unless verbose: (its metrics, whether they were kept from
        an earlier run of the lesson). What run_dir already holds, from an earlier run of the lesson into the same
        directory: a run that ended (completed or diverged) is kept, with what the lesson measured on it, when that
        was kept too (MEASURED), else trained again; an unfinished run resumes from its last checkpoint, unless a
        component of the lesson measures during training (its value is not in the checkpoint): then it starts
        afresh. A run stopped by SIGINT or SIGTERM raises RunInterrupted."""
        # torch from here on: the lessons list and check torch-free
        from runner.engine import train

        earlier = _read_metrics(run_dir)
        _check_same_config(cfg, run_dir)
        ended = earlier.get("status") in ENDED
        if ended:
            values = _measured(run_dir, components)
            if values is not None:
                for component, value in zip(components, values, strict=True):
                    component.value = value
                return earlier, True
            print(f"  run {run_dir.name}: {earlier['status']} before, but what the lesson measured on it was not kept: "
                  "training it again", flush=True)
        resumable = all(c.name or isinstance(c, _AtEnd) for c in components)
        if ended or not resumable:
            cfg.trainer.resume = "never"  # the engine moves what the directory held to previous/
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / MEASURED).unlink(missing_ok=True)
        level, once = log.level, _NotTwice()
        if not self.verbose:
            log.setLevel(logging.WARNING)
        log.addFilter(once)
        try:
            metrics = train.fit(cfg, run_dir, choices, list(components), test=test, command=self.resume_command)
        finally:
            log.setLevel(level)
            log.removeFilter(once)
        if metrics.get("status") == "interrupted":
            raise RunInterrupted(run_dir.name, str(metrics.get("message") or "interrupted"))
        if metrics.get("status") in ENDED:
            _keep_measured(run_dir, components)
        return metrics, False

    def tuning_notes(self) -> list[str]:
        """One line per tuned arm: the lr it runs at and what each tried lr reached on the validation split."""
        return [f"{arm} runs at lr {t['lr']:.3g}, tuned on the validation split at equal budget (seed "
                f"{self.lesson.tune.seed}; its own lr {t['base']:.3g}): " + ", ".join(
                    f"{x['lr']:.3g} -> " + (f"{x['val_acc']:.3f}" if x["status"] == "completed" else x["status"])
                    for x in t["trials"]) for arm, t in self.tuning.items()]

    def model(self, arm: str | None = None, seed: int = 0, extra=()):
        """The network a run of this arm would train (initialized with `seed`), on the CPU, and its config: for
        lessons that look at a network before any training."""
        import torch

        # torch only when a model is built: the lessons list and check torch-free
        from runner.engine.build import build_model

        cfg, _ = self.config(arm, seed, extra)
        torch.manual_seed(seed)
        return build_model(cfg, int(cfg.data.num_classes)), cfg

    def batch(self, arm: str | None = None, seed: int = 0, n: int = 256, extra=()):
        """n preprocessed training images and their labels, as a run of this arm would see them (CPU)."""
        import torch

        # torch only when data loads: the lessons list and check torch-free
        from runner.data.loading import load_splits
        from runner.engine.build import build_preprocess

        cfg, _ = self.config(arm, seed, extra)
        splits = load_splits(cfg.data, torch.device("cpu"))
        preprocess = build_preprocess(cfg, splits.train_x)
        with torch.no_grad():
            return preprocess(splits.train_x[:n]), splits.train_y[:n]

    def figure_path(self) -> Path:
        return self.out / f"{self.name}.png"

    def gate_failures(self) -> list[str]:
        """The sanity gates every run passes before a verdict is drawn from it: it completed (did not diverge, stop
        or fail), and a classifier learnt above chance (test accuracy at least chance + gates.min_gain). Arms listed
        in the lesson's gates.may_fail are exempt (their failing is the claim, e.g. a too-high lr). Returns one
        line per failed run, naming the arm, seed and reason and what to change; empty when every run passed."""
        gates = self.lesson.get("gates") or {}
        exempt, gain = set(gates.get("may_fail") or []), float(gates.get("min_gain", MIN_GAIN))
        failures = []
        for r in self.records:
            r["gate"] = gate(r, gain)
            if r["gate"] != "ok" and r["arm"] not in exempt:
                failures.append(f"{r['arm']} seed {r['seed']} {r['gate']} (lr {r['lr']:g}, batch {r['batch_size']})")
            elif r["gate"] != "ok":
                r["gate"] += " (expected: gates.may_fail)"
        return failures


# A run "learnt" when its test accuracy clears chance by this much (0.15 for 10 classes).
MIN_GAIN = 0.05


def gate(record: dict, min_gain: float = MIN_GAIN) -> str:
    """ok, or why the run does not count: its status (diverged, failed, ...) or that it stayed at chance."""
    if record["status"] != "completed":
        return str(record["status"])
    acc, chance = record.get("test_acc"), record.get("chance")
    if acc is not None and chance is not None and not acc >= chance + min_gain:
        return f"stayed at chance (test acc {acc:.3f}, chance {chance:.2f})"
    return "ok"


def runs_table(records: list[dict]) -> str:
    """Every run of a lesson, failed ones marked: arm, seed, status, test accuracy, gate."""
    lines = ["| run | seed | status | test acc | gate |", "|---|---|---|---|---|"]
    for r in records:
        acc = "-" if r.get("test_acc") is None else f"{r['test_acc']:.4g}"
        lines.append(f"| {r['arm']} | {r['seed']} | {r['status']} | {acc} | {r.get('gate', '')} |")
    return "\n".join(lines)


def runs_figure(path: Path, records: list[dict], title: str) -> str | None:
    """Each run's test accuracy by arm, one dot per seed; a run that diverged or failed is an X at the top, named;
    the chance level dashed. None when no run has an accuracy or a failure to show."""
    if not any(r.get("test_acc") is not None or r["status"] != "completed" for r in records):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = list(dict.fromkeys(r["arm"] for r in records))
    fig, ax = plt.subplots(figsize=(max(5.5, 1.6 + 1.2 * len(arms)), 3.8))
    top = max([r["test_acc"] for r in records if r.get("test_acc") is not None] + [0.5]) * 1.08
    failed = {}  # (arm, what) -> seeds: one label per arm and failure, under its marks
    for r in records:
        i, seeds = arms.index(r["arm"]), [x["seed"] for x in records if x["arm"] == r["arm"]]
        x = i + 0.12 * (seeds.index(r["seed"]) - (len(seeds) - 1) / 2)
        expected = " (expected)" if "expected" in r.get("gate", "") else ""
        if r["status"] != "completed" or r.get("test_acc") is None:
            ax.plot(x, top, "x", color="C3", markersize=9, mew=2)
            failed.setdefault((i, top, f"{r['status']}{expected}"), []).append(r["seed"])
        else:
            ok = r.get("gate", "ok") == "ok"
            ax.plot(x, r["test_acc"], "o", color=f"C{i}" if ok else "C3", markersize=6,
                    mfc=None if ok else "none")
            if not ok:
                failed.setdefault((i, r["test_acc"], f"at chance{expected}"), []).append(r["seed"])
    for (i, y, what), seeds in failed.items():
        ax.annotate(f"{what}: seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}", (i, y),
                    textcoords="offset points", xytext=(0, -14 if y == top else 8), ha="center", fontsize=7,
                    color="C3")
    chance = next((r["chance"] for r in records if r.get("chance")), None)
    if chance:
        ax.axhline(chance, color="0.5", ls="--", lw=1, label=f"chance ({chance:.2f})")
        ax.legend(fontsize=7, loc="lower right")
    ax.set_xticks(range(len(arms)), arms, rotation=20, ha="right")
    ax.set_xlim(-0.6, len(arms) - 0.4)
    ax.set_ylim(0, top * 1.08)
    ax.set_ylabel("test accuracy")
    ax.set_title(f"{title}\nevery run: a dot per seed; X: diverged or failed; hollow: stayed at chance", fontsize=9)
    return save_figure(fig, path)


def _read_metrics(run_dir: Path) -> dict:
    try:
        metrics = json.loads((run_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        return {}
    return metrics if isinstance(metrics, dict) else {}


def _check_same_config(cfg, run_dir: Path) -> None:
    """A run directory of the lesson's that holds a run of another config (the lesson run again with other
    overrides into the same --out) is refused in one line, before anything there is touched."""
    try:
        saved = OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml"))
    except Exception:  # noqa: BLE001 - none, or unreadable: the run's checkpoint still records its config
        return
    if not isinstance(saved, dict) or not isinstance(saved.get("trainer"), dict):
        return
    differences = config_differences(saved, cfg)
    epochs = saved["trainer"].get("epochs")
    if epochs != cfg.trainer.epochs:
        differences.append(f"trainer.epochs: {epochs} -> {cfg.trainer.epochs}")
    if differences:
        raise ConfigError(f"{run_dir} holds a run of another config ({'; '.join(differences[:3])}): run the lesson "
                          "into a new directory (--out <new dir>), or with the overrides it was started with.")


def _measured(run_dir: Path, components) -> list | None:
    """The values the components measured on the run (MEASURED), to be given back to them; None when not kept."""
    if not all(hasattr(c, "value") for c in components):
        return None  # a component whose effect the lesson reads some other way: only a new run gives it
    if not components:
        return []
    try:
        values = checkpoint.load(run_dir / MEASURED)
    except CheckpointError:
        return None
    return values if isinstance(values, list) and len(values) == len(components) else None


def _keep_measured(run_dir: Path, components) -> None:
    """Keep the components' values (MEASURED) when they are plain data that a checkpoint load gives back (tensors,
    numbers, strings, and lists, tuples and dicts of them); a network kept whole, say, is measured again."""
    values = [getattr(c, "value", None) for c in components]
    if not components or not all(hasattr(c, "value") for c in components) or not _plain(values):
        return
    try:
        checkpoint.save(values, run_dir / MEASURED)
    except OSError as err:
        raise output_error(err, run_dir / MEASURED) from None


def _plain(value) -> bool:
    import torch

    if isinstance(value, torch.Tensor):
        return value.device.type == "cpu"  # a checkpoint load gives tensors back on the CPU
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, (str, int)) and _plain(v) for k, v in value.items())
    return False


class _AtEnd(Component):
    """A component that measures the trained run once, after its last epoch."""

    def __init__(self, measure):
        self.measure, self.value = measure, None

    def finish(self, run) -> None:
        self.value = self.measure(run)


def weight_zero_fraction(run) -> float:
    """The fraction of conv/linear weights that are exactly 0."""
    # torch only when a run is measured: the lessons list and check torch-free
    from runner.optimization import optimizers, regularizers

    return regularizers.sparsity(optimizers.split_decay(run.model)[0])["weights/zero_fraction"]


def save_figure(fig, path: Path) -> str:
    """Every lesson figure's ending: laid out, written as a PNG (110 dpi), closed; returns the path."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")  # nothing cut off: long labels widen the picture
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
