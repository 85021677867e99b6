"""What a run leaves for its user: TensorBoard scalars, the pictures of step 0 and the HPARAMS entry (in the run's own
directory, beside the curves), the run's environment, and what a person watching the run sees between the epoch lines
(Progress)."""

import collections
import contextlib
import functools
import logging
import math
import os
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
from runner.data.augment import augmented_grid
from runner.data.preprocess import input_grid
from runner.engine.records import check_tag, where
from runner.optimization import schedules

log = logging.getLogger("runner")


# The Custom Scalars tab (http://localhost:6006/#custom_scalars): the run's story first, one chart per quantity,
# then the diagnostics, closed until opened. Each entry is a regex over the tags as TensorBoard shows them
# (runner.engine.records.where): the curves of train, validation and the weight average are runs of their own that
# write the same tags, so each chart shows them in their own colours. The charts of the story are dense (every step:
# loss, accuracy, lr, throughput), so that even a one-epoch run draws lines that TensorBoard's outlier clipping
# (on by default; it leaves the lowest and highest 5% of a chart's values out of its scale) cannot empty.
LAYOUT = {
    "learning curves": {
        "loss: train (each step), validation (after each epoch)": ["Multiline", [r"^curves/loss$"]],
        "accuracy: train (each step, augmented), validation (after each epoch)": ["Multiline", [r"^curves/acc$"]],
        "learning rate per parameter group": ["Multiline", [r"^lr/"]],
        "throughput (training images per second, each step)": ["Multiline", [r"^perf/img_per_s$"]],
    },
    "diagnostics (diagnostics.every_steps)": {
        "activation std per layer": ["Multiline", [r"^diag/act_std/"]],
        "dead ReLU fraction per layer": ["Multiline", [r"^diag/dead_frac/"]],
        "gradient norm per layer (before clipping)": ["Multiline", [r"^diag/grad_norm/"]],
        "update / weight ratio per layer (rule of thumb: 1e-3)": ["Multiline", [r"^diag/update_ratio/"]],
        "loss with batch vs running statistics (batch norm)": ["Multiline", [r"^diag/loss_(batch|running)_stats$"]],
        "gradient norm (whole net)": ["Multiline", [r"^train/grad_norm$"]],
    },
}
CLOSED = {"diagnostics (diagnostics.every_steps)"}  # categories the tab shows folded
# The HPARAMS metrics columns, these first.
METRICS_FIRST = ("val/best_acc", "test/acc", "test/loss")


def layout_summary():
    """The Custom Scalars layout as a TensorBoard summary: LAYOUT, with the CLOSED categories folded (a field of
    TensorBoard's layout proto that torch's add_custom_scalars does not set)."""
    from tensorboard.plugins.custom_scalar import layout_pb2
    from torch.utils.tensorboard.summary import custom_scalars

    summary = custom_scalars(LAYOUT)
    tensor = summary.value[0].tensor
    layout = layout_pb2.Layout.FromString(tensor.string_val[0])
    for category in layout.category:
        category.closed = category.title in CLOSED
    tensor.string_val[0] = layout.SerializeToString()
    return summary


class Tracker:
    """TensorBoard event files in `run_dir`, and in its subdirectories for the curves (runner.engine.records.where:
    train/, validation/, validation_ema/, each a run of its own in TensorBoard). On resume, purge_step drops the
    events an earlier, killed process wrote past the checkpoint, so the curves do not double back."""

    def __init__(self, run_dir: Path, purge_step: int | None = None, enabled: bool = True, lazy: bool = False):
        """enabled=False: write nothing (the ranks other than 0 of a data-parallel run); writer is then None.
        lazy=True: open the event file only with `open`, once the step to purge from is known (a resumed run)."""
        self.run_dir, self.enabled, self.writer = Path(run_dir), enabled, None
        self.purge_step, self.runs = None, {}  # the curves' writers by subdirectory, each opened at its first value
        self._queue: collections.deque = collections.deque()  # (values, step) that `series` left to `drain`
        if not lazy:
            self.open(purge_step)

    def open(self, purge_step: int | None = None) -> None:
        if self.enabled:
            self.purge_step = purge_step
            self.writer = SummaryWriter(log_dir=str(self.run_dir), purge_step=purge_step)
            self.writer.file_writer.add_summary(layout_summary())

    def _writer(self, subdir: str) -> SummaryWriter:
        if not subdir:
            return self.writer
        if subdir not in self.runs:
            self.runs[subdir] = SummaryWriter(log_dir=str(self.run_dir / subdir), purge_step=self.purge_step)
        return self.runs[subdir]

    def scalar(self, tag: str, value: float, step: int) -> None:
        self.scalars({tag: value}, step)

    def figure(self, tag: str, figure, step: int) -> None:
        """A matplotlib figure under a declared tag."""
        if self.writer is not None:
            check_tag(tag)
            self.writer.add_figure(tag, figure, step)

    def scalars(self, values: dict[str, float], step: int) -> None:
        """Each value under its declared tag, in the run or subdirectory records.where gives it."""
        if self.writer is None:
            return
        for tag, value in values.items():
            check_tag(tag)
            subdir, name = where(tag)
            self._writer(subdir).add_scalar(name, value, step)

    def series(self, values: dict[str, list[float]], first_step: int) -> None:
        """Consecutive steps' values of each tag, the first at `first_step` (a log window's steps), queued: `drain`
        writes them a step at a time between the next steps, while the device works (written at once, right after
        the read that waited for the device, they would leave it idle), `flush` and `close` the rest."""
        for i in range(max(map(len, values.values()), default=0)):
            self._queue.append(({tag: v[i] for tag, v in values.items() if i < len(v)}, first_step + i))

    def drain(self, steps: int = 1) -> None:
        """Write the queued values of up to `steps` steps."""
        for _ in range(min(steps, len(self._queue))):
            self.scalars(*self._queue.popleft())

    def flush(self) -> None:
        self.drain(len(self._queue))

    def hparams(self, hparams: dict, metrics: dict[str, float], step: int, experiment: bool = True) -> None:
        """The HPARAMS tab entry, written into this run (SummaryWriter.add_hparams would open a timestamped
        sub-run apart from the curves). Every metric tag is also a scalar of this run, as TensorBoard requires.
        experiment=False: this run's values only, not the table's columns (TensorBoard takes those from one run;
        a sweep writes them once for all its trials, runner.sweeps.study.write_experiment)."""
        if self.writer is None:
            return
        metrics = {tag: metrics[tag] for tag in metric_order(metrics)}
        exp, ssi, sei = hparams_summary(hparams, metrics)
        _mark_differing(exp, set(overridden_keys()))
        for summary in (exp, ssi, sei) if experiment else (ssi, sei):
            self.writer.file_writer.add_summary(summary, step)
        self.scalars(metrics, step)

    def close(self) -> None:
        self.flush()
        for writer in [self.writer, *self.runs.values()]:
            if writer is not None:
                writer.close()
        self.runs = {}


def _mark_differing(summary, names: set[str]) -> None:
    """Flag the hyperparameters `names` of an HPARAMS experiment summary as `differs`: TensorBoard lists the
    columns that differ first (then by name) and shows only the first few, so the keys the command line set come
    first."""
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = summary.value[0].metadata.plugin_data
    data = plugin_data_pb2.HParamsPluginData.FromString(content.content)
    for info in data.experiment.hparam_infos:
        info.differs = info.name in names
    content.content = data.SerializeToString()


def overridden_keys(overrides=None) -> list[str]:
    """The config keys the command line set (Hydra's task overrides: `optimizer=adam` gives optimizer,
    `+seed=3` seed, `optimizer.lr=0.1` optimizer.lr; in a sweep, the searched keys), in their order. Without
    `overrides`, those of the Hydra job running now (none outside one)."""
    if overrides is None:
        from hydra.core.hydra_config import HydraConfig

        overrides = HydraConfig.get().overrides.task if HydraConfig.initialized() else []
    keys = [str(o).split("=", 1)[0].lstrip("~+") for o in overrides if "=" in str(o)]
    return list(dict.fromkeys(k.split("@", 1)[0] for k in keys))


def flat_hparams(cfg, choices: dict[str, str], first=None) -> dict:
    """Every chosen group option (`optimizer: adam`) and every numeric or boolean hyperparameter, flattened to
    dotted keys (`optimizer.lr`): what the HPARAMS tab and the sweep table compare runs by. The keys the command
    line overrode come first (`first`, default overridden_keys()): TensorBoard lists the columns in this order, so
    a sweep's searched hyperparameters are not lost among the constants."""
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
    first = [k for k in (overridden_keys() if first is None else first) if k in out]
    # a group's option first, then its overridden keys: optimizer, optimizer.lr, ...
    return {**{k: out[k] for k in first}, **{k: v for k, v in out.items() if k not in first}}


@functools.cache
def _code_version() -> tuple[str | None, bool]:
    """The git commit and dirty flag of the code this process imported: asked once per process (a sweep's trials
    run the same code; two git commands per trial were a tenth of a second of its fixed cost)."""
    root = Path(runner.__file__).resolve().parents[2]

    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=5).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    return git("rev-parse", "HEAD") or None, bool(git("status", "--porcelain", "--untracked-files=no"))


def environment(device: torch.device) -> dict:
    """The code version and machine a run used: enough to reproduce it."""
    commit, dirty = _code_version()
    return {
        "runner_version": runner.__version__,
        "git_commit": commit,
        "git_dirty": dirty,
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


# The terminal bar refreshes at most this often: each refresh reads the running loss back from the device (a sync
# that stalls the queue of GPU work), so the throttle bounds that cost to a few hundred microseconds a second.
BAR_REFRESH_S = 0.5


def progress_mode(setting, every_s: float, main: bool, tty: bool) -> str:
    """trainer.progress as what a run shows within an epoch: "bar" (a live tqdm bar: auto on a terminal, or true),
    "lines" (a plain log line every trainer.progress_every_s seconds: auto off a terminal), or "off" (false, a
    progress_every_s of 0 off a terminal, and every rank of a data-parallel run but rank 0)."""
    if not main or setting is False:
        return "off"
    if setting is True or tty:
        return "bar"
    return "lines" if every_s > 0 else "off"


def in_multirun() -> bool:
    """Whether this process runs a job of a Hydra multirun (a sweep's trial)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


class Progress:
    """What a person watching a run sees between the epoch lines. "bar": one tqdm bar over the run's training steps
    (on stderr; log lines print above it), with the epoch, elapsed time and ETA, the epoch's running loss and
    accuracy and img/s, and the phase (validating, testing) while there is no step to count; it is cleared when the
    run ends (the log lines say the rest). "lines": a log line with the same figures every `every_s` seconds (a log
    file, a pipe). Start-up phases are log lines (`phase`). The training loop asks `due()` after each step (a clock
    read) and only then reads the loss (`show`). name: what the bar and lines call the work instead of the epoch
    (a command with steps but no epochs: "lr range test")."""

    def __init__(self, mode: str, steps_per_epoch: int, epochs: int, every_s: float = 30.0, name: str | None = None):
        self.mode, self.steps, self.epochs, self.name = mode, steps_per_epoch, epochs, name
        self.total = steps_per_epoch * epochs
        self.interval = BAR_REFRESH_S if mode == "bar" else every_s
        self.bar, self._redirect = None, None
        self._next = math.inf  # perf_counter time of the next refresh; never when off
        self._t0 = self._step0 = None  # when and at which step this process began training (for the ETA)
        self.epoch, self._epoch_start = 0, 0.0

    def start_epoch(self, epoch: int, step: int) -> None:
        if self.mode == "off":
            return
        now = time.perf_counter()
        self.epoch, self._epoch_start, self._next = epoch, now, now + self.interval
        if self._t0 is None:
            self._t0, self._step0 = now, step
        if self.mode == "bar":
            if self.bar is None:
                self._open_bar(step)
            self.bar.set_description_str(self._epoch_name(), refresh=False)
            self.bar.set_postfix_str("", refresh=False)  # the last epoch's figures are its epoch line's
            self.bar.update(step - self.bar.n)
            self.bar.refresh()

    def due(self) -> bool:
        """Whether the figures are due (at most every `interval` seconds): then read them and call `show`."""
        return time.perf_counter() >= self._next

    def show(self, step: int, step_in_epoch: int, images: int, loss: float, acc: float | None) -> None:
        """step: optimizer steps of the run; step_in_epoch and images: of this epoch so far; loss and acc: the
        epoch's running means."""
        seconds = max(time.perf_counter() - self._epoch_start, 1e-9)
        self.update(step, step_in_epoch, f"loss {loss:.4f}" + (f" acc {acc:.4f}" if acc is not None else "") +
                    f" {images / seconds:,.0f} img/s")

    def update(self, step: int, step_in_epoch: int, figures: str) -> None:
        """The bar at `step` with `figures` beside it, or a log line of them (the epoch line follows the last
        step of an epoch in "lines" mode, so none then)."""
        now = time.perf_counter()
        self._next = now + self.interval
        if self.bar is not None:
            self.bar.set_postfix_str(figures, refresh=False)
            self.bar.update(step - self.bar.n)  # refreshes: the bar's own mininterval is 0
            return
        if step_in_epoch == self.steps and self.name is None:
            return  # the epoch line follows with the same figures
        from tqdm import tqdm

        elapsed = now - self._t0
        done = step - self._step0
        eta = tqdm.format_interval((self.total - step) * elapsed / done) if done > 0 else "?"
        log.info("%s  step %d/%d  %s  elapsed %s  ETA %s", self._epoch_name(), step_in_epoch, self.steps, figures,
                 tqdm.format_interval(elapsed), eta)

    def end_epoch(self, step: int, images: int, loss: float, acc: float | None) -> None:
        """The bar at the epoch's last step, with its final figures (the epoch line follows in "lines" mode)."""
        if self.bar is not None:
            self.show(step, self.steps, images, loss, acc)

    def phase(self, what: str) -> None:
        """Name the work between steps ("validating (N images)", "testing (N images)") on the bar; the test pass
        also as a log line in "lines" mode (the epoch line follows validation at once)."""
        if self.bar is not None:
            self.bar.set_description_str(what if what.startswith("testing") else f"{self._epoch_name()} {what}",
                                         refresh=True)
        elif self.mode == "lines" and what.startswith("testing"):
            log.info("%s ...", what)

    def close(self) -> None:
        """Clear the bar (its figures are in the log lines above it: a bar left standing would read as a last
        line after the results) and give logging back."""
        if self.bar is not None:
            self.bar.leave = False
            self.bar.close()
            self.bar = None
        if self._redirect is not None:
            self._redirect.__exit__(None, None, None)
            self._redirect = None
        self._next = math.inf

    def _epoch_name(self) -> str:
        return self.name or f"epoch {self.epoch + 1}/{self.epochs}"

    def _open_bar(self, step: int) -> None:
        from tqdm import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        self.bar = tqdm(total=self.total, initial=step, desc=self._epoch_name(), unit="step", mininterval=0,
                        miniters=1, file=sys.stderr, **bar_width(sys.stderr),
                        bar_format="{desc} {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} steps "
                                   "[{elapsed}<{remaining}{postfix}]")
        # The log lines (epoch lines, warnings) print above the bar instead of through it.
        self._redirect = logging_redirect_tqdm(loggers=[logging.getLogger()], tqdm_class=tqdm)
        self._redirect.__enter__()


FALLBACK_COLUMNS = 80  # the bar's width where the terminal reports none
FALLBACK_ROWS = 24  # the screen's height where the terminal reports none


def bar_width(stream) -> dict:
    """tqdm's size settings for a bar on `stream`: follow the terminal's width as it changes, or FALLBACK_COLUMNS
    where it reports 0 columns (some containers, `script`, a COLUMNS=0 environment), which tqdm would take as room
    for nothing and draw no bar at all; and FALLBACK_ROWS where it reports 0 lines (`script` reports 0 x 0), where
    tqdm would take the bar to be below the screen and hide it."""
    try:
        size = os.get_terminal_size(stream.fileno())
        columns, rows = size.columns, size.lines
    except (AttributeError, OSError, ValueError):  # not a terminal: tqdm reads COLUMNS, if set
        columns = os.environ.get("COLUMNS", "").strip()
        columns, rows = (int(columns) if columns.lstrip("-").isdigit() else None), None
    settings = {"ncols": FALLBACK_COLUMNS} if columns is not None and columns <= 0 else {"dynamic_ncols": True}
    if rows is not None and rows <= 0:
        settings["nrows"] = FALLBACK_ROWS
    return settings


@contextlib.contextmanager
def phase(what: str):
    """A start-up step that can take a while (loading data, fitting the preprocessing, whitening): a log line when
    it begins, and one with its duration when it took over a second."""
    log.info("%s ...", what)
    start = time.perf_counter()
    yield
    seconds = time.perf_counter() - start
    if seconds >= 1.0:
        log.info("%s: done in %.1f s", what, seconds)


def start_pictures(run) -> None:
    """TensorBoard at step 0 of a fresh run: the model's size and layers, the planned lr curve, augmented training
    images, and what the network sees after preprocessing."""
    cfg, tracker = run.cfg, run.tracker
    tracker.scalars({"model/params": run.n_params, "model/flops_per_image": run.flops}, 0)
    tracker.writer.add_text("model", f"{run.n_params:,} parameters, {run.flops / 1e6:.1f} MFLOPs per image\n\n"
                            + "\n".join("    " + line for line in str(run.model).splitlines()), 0)
    total = run.steps_per_epoch * cfg.trainer.epochs
    lrs = schedules.planned_lrs(run.scheduler, total)
    title = f"schedule={cfg.schedule.name}" + (" (drops follow val metric)" if cfg.schedule.name == "plateau" else "")
    tracker.figure("schedule/lr_plan", schedules.plan_figure(lrs, run.steps_per_epoch, title), 0)
    sample, copies = run.splits.train_x[:16], 3
    settings = ", ".join(f"{k}={v}" for k, v in cfg.augmentation.items() if not str(k).startswith("_") and k != "name")
    tracker.figure("inputs/augmentation", labelled_grid(
        augmented_grid(sample, run.augmentation, cfg.seed, copies),
        ["original", *(f"epoch {e + 1}" for e in range(copies))],
        f"augmentation={cfg.augmentation.get('name', run.choices.get('augmentation', '?'))} ({settings or 'none'}): "
        "16 training images, then one random draw of what each epoch trains on"), 0)
    tracker.figure("inputs/preprocess", labelled_grid(
        input_grid(run.preprocess, sample), ["original", "network input"],
        f"preprocess={run.choices.get('preprocess', '?')}: what the network sees (each image stretched to 0..1 to "
        "be visible)"), 0)


def labelled_grid(grid: torch.Tensor, row_labels: list[str], title: str):
    """A matplotlib figure of an image grid (3, H, W) (uint8, or floats in 0..1) made by torchvision's make_grid
    with one row per label: each row named at its left, the whole titled, for TensorBoard's add_figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    image = grid.float() / 255.0 if grid.dtype == torch.uint8 else grid.float()
    height, width = image.shape[1:]
    fig, ax = plt.subplots(figsize=(12, 12 * height / width + 0.8), dpi=100)
    ax.imshow(image.clamp(0, 1).permute(1, 2, 0).cpu().numpy(), interpolation="nearest")
    row = height / len(row_labels)
    ax.set_yticks([row * (i + 0.5) for i in range(len(row_labels))], row_labels)
    ax.set_xticks([])
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_title(title, fontsize=10, loc="left")
    fig.tight_layout()
    return fig


def column_order(values: dict[str, set]) -> list[str]:
    """The HPARAMS columns of several runs (a sweep's trials), given each hyperparameter's set of values: those
    that differ between the runs (what the sweep searched) first, then the constants, each alphabetical.
    TensorBoard shows the first few columns only, in this order."""
    return sorted(values, key=lambda name: (len(values[name]) < 2, name))


def metric_order(tags) -> list[str]:
    """The HPARAMS metric columns: METRICS_FIRST, then the others alphabetical."""
    return sorted(tags, key=lambda t: (METRICS_FIRST.index(t) if t in METRICS_FIRST else len(METRICS_FIRST), t))
