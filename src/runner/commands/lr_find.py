"""The learning-rate range test: `python -m runner.lr_find [overrides]` (keys: configs/lr_find.yaml).

Builds what `python -m runner [overrides]` would build (data, preprocessing, augmentation, model, pretrained weights,
optimizer with its parameter groups and regularization), then trains it for lr_find.steps steps while the lr grows
exponentially from start_lr to end_lr (Smith 2017, sec. 3.3; Hands-On ML ch. 11: "train a few hundred iterations,
raising the lr exponentially from a very small to a very large value, and read where the loss shoots back up").
The loss is smoothed by a bias-corrected moving average; the test stops once it passes stop_factor x its lowest.

Writes lr_find.csv (step, lr, loss, smoothed loss), lr_find.png (loss against lr, log axis, the suggestions marked)
and lr_find.json (the suggestions) into its run directory, and prints the suggested optimizer.lr (the lowest
smoothed loss's lr / suggest_divisor), the steepest descent's lr, the peak for schedule=onecycle, and the command
that trains with it.
"""

import csv
import json
import logging
import math
import shlex
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from runner import job
from runner.config import CONFIG_DIR, ConfigError, UserError, register_resolvers, validate
from runner.config.command_line import check_command_line
from runner.config.keys import integer, number
from runner.config.schema import fail

register_resolvers()
log = logging.getLogger("runner")

KEYS = {
    "start_lr": number("(0, inf)"), "end_lr": number("(0, inf)"),
    "steps": integer("[10, inf)", why="optimizer steps of the test"),
    "smoothing": number("[0, 1)", why="the moving average's weight of the past"),
    "stop_factor": number("(1, inf)", why="stop above this many times the lowest smoothed loss"),
    "suggest_divisor": number("[1, inf)"), "onecycle_divisor": number("[1, inf)"),
}
MIN_POINTS = 5  # fewer steps before the loss turns up give no curve to read


def check(node: DictConfig) -> None:
    """The lr_find keys, each in its range, start_lr below end_lr; one line for the first that is not."""
    for key in node:
        if key not in KEYS:
            raise ConfigError(f"lr_find.{key} is not a key of the lr range test: its keys are {', '.join(KEYS)}. "
                              "Remove or correct the override.")
    for key, rule in KEYS.items():
        if key not in node:
            raise ConfigError(f"lr_find.{key} is missing: set it with `+lr_find.{key}=<value>`.")
        problem = rule.problem(node[key])
        if problem:
            fail(f"lr_find.{key}", node[key], problem)
    if not node.start_lr < node.end_lr:
        fail("lr_find.end_lr", node.end_lr, f"must be above lr_find.start_lr={node.start_lr}")


def lr_at(step: int, steps: int, start: float, end: float) -> float:
    """The lr of `step` (0-based) of `steps`: start at the first, end at the last, exponential in between."""
    return start * (end / start) ** (step / (steps - 1))


def smoothed(losses: list[float], beta: float) -> list[float]:
    """The bias-corrected exponential moving average of `losses` (as Adam corrects its moments)."""
    out, avg = [], 0.0
    for i, loss in enumerate(losses):
        avg = beta * avg + (1 - beta) * loss
        out.append(avg / (1 - beta ** (i + 1)))
    return out


def suggest(lrs: list[float], curve: list[float], suggest_divisor: float, onecycle_divisor: float,
            skip_start: int = 0) -> dict:
    """What the curve says: the lr of the lowest smoothed loss (where the loss turns up), the lr where it falls
    fastest per decade before that (the steepest descent), the suggested optimizer.lr (lowest / suggest_divisor) and
    the peak lr for schedule=onecycle (lowest / onecycle_divisor). The steepest descent is read as fastai and
    torch-lr-finder read it: on the smoothed curve, past its first `skip_start` steps (the moving average of a
    handful of noisy losses: its slope there is noise, and the lr barely moves) and before the lowest point (past
    it the loss diverges); None when nothing is left between the two."""
    if len(curve) < MIN_POINTS:
        raise UserError(f"the loss rose within the first {len(curve)} steps of the test, leaving no curve to read: "
                        f"lower lr_find.start_lr (it is {lrs[0]:.3g}).")
    low = min(range(len(curve)), key=curve.__getitem__)
    logs = [math.log10(lr) for lr in lrs]
    # the slope of the smoothed loss per decade of lr, central differences, from skip_start up to the lowest point
    slopes = {i: (curve[i + 1] - curve[i - 1]) / (logs[i + 1] - logs[i - 1])
              for i in range(max(1, skip_start), min(low, len(curve) - 2) + 1)}
    steepest = min(slopes, key=slopes.__getitem__) if slopes else None
    return {"min_loss_lr": lrs[low], "min_loss": curve[low], "min_loss_step": low,
            "steepest_lr": None if steepest is None else lrs[steepest],
            "steepest_slope_per_decade": slopes.get(steepest),
            "lr": lrs[low] / suggest_divisor, "onecycle_max_lr": lrs[low] / onecycle_divisor}


def skipped_steps(steps: int) -> int:
    """The steps at the start of a test of `steps` steps that the steepest descent ignores: a tenth, as fastai's
    lr_find (`num_it // 10`)."""
    return steps // 10


# ---------------------------------------------------------------------------------------------------------------
# The test

def run_test(cfg: DictConfig, settings: DictConfig, choices: dict[str, str] | None = None) -> list[dict]:
    """Build the run of `cfg` as runner.engine.run.Run does (runner.engine.run.build_parts) and train it with the
    exponentially rising lr; one row per step taken: step, lr, loss, smoothed_loss. Stops early when the smoothed loss
    passes stop_factor x its lowest or is not finite. choices: the options chosen, for the log lines."""
    from runner.data import loading as data  # torch from here on: the checks before it stay quick
    from runner.engine.run import build_parts, pick_device
    from runner.optimization import regularizers

    parts = build_parts(cfg, pick_device(cfg.device), choices or {})
    splits, preprocess, augmentation, fast = parts.splits, parts.preprocess, parts.augmentation, parts.speed
    objective, model, optimizer, generator = parts.objective, parts.model, parts.optimizer, parts.generator
    if parts.freezer is not None:
        parts.freezer.set_epoch(0)  # what trains in the first epoch of the run
    # every parameter group keeps its ratio to the first (reused layers' lr_mult, the norm biases' lr factor)
    ratios = [g["lr"] / optimizer.param_groups[0]["lr"] for g in optimizer.param_groups]
    clip = cfg.regularization.get("grad_clip")

    batches, epoch, rows, best, avg = iter(()), 0, [], math.inf, 0.0
    beta = settings.smoothing
    model.train()
    progress = _progress(cfg, settings.steps)
    for step in range(settings.steps):
        lr = lr_at(step, settings.steps, settings.start_lr, settings.end_lr)
        for group, ratio in zip(optimizer.param_groups, ratios, strict=True):
            group["lr"] = lr * ratio
        batch = next(batches, None)
        if batch is None:  # the next epoch: a new shuffle (and the augmentation's epoch view)
            train_x = augmentation.epoch_view(splits.train_x, epoch)
            batches = data.train_batches(train_x, splits.train_y, cfg.trainer.batch_size, generator)
            epoch += 1
            batch = next(batches)
        x, y = batch
        x = fast.layout(preprocess(augmentation(x, generator)))
        with fast.autocast():
            loss = objective.loss(model(x), x, y)
        optimizer.zero_grad(set_to_none=True)
        fast.backward(loss)
        if clip is not None:
            fast.unscale(optimizer)
            regularizers.clip_gradients(list(model.parameters()), clip.by, clip.threshold)
        fast.step(optimizer)
        value = loss.item()
        avg = beta * avg + (1 - beta) * value
        smooth = avg / (1 - beta ** (step + 1))
        rows.append({"step": step, "lr": lr, "loss": value, "smoothed_loss": smooth})
        if progress.due():
            progress.update(step + 1, step + 1, f"lr {lr:.3g} smoothed loss {smooth:.4f}")
        if not math.isfinite(smooth):
            log.info("step %d, lr %.3g: the loss became %s; stopping", step, lr, value)
            break
        if smooth > settings.stop_factor * best:
            log.info("step %d, lr %.3g: the smoothed loss %.4g passed %g x its lowest (%.4g); stopping", step, lr,
                     smooth, settings.stop_factor, best)
            break
        best = min(best, smooth)
    progress.close()
    return rows


def _progress(cfg: DictConfig, steps: int):
    """The test's progress as a run shows its epochs' (trainer.progress, trainer.progress_every_s): a bar over its
    steps on a terminal, with the lr and the smoothed loss; a log line every progress_every_s seconds elsewhere."""
    from runner.engine.tracking import Progress, progress_mode  # torch: only once the test runs

    mode = progress_mode(cfg.trainer.progress, cfg.trainer.progress_every_s, True, sys.stderr.isatty())
    progress = Progress(mode, steps, 1, cfg.trainer.progress_every_s, name="lr range test")
    progress.start_epoch(0, 0)
    return progress


# ---------------------------------------------------------------------------------------------------------------
# What it writes

def plot(rows: list[dict], found: dict, path: Path, title: str) -> None:
    """Loss against lr (log axis): each step's loss faint, the smoothed loss, the suggestions as vertical lines."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    rows = [r for r in rows if math.isfinite(r["smoothed_loss"])]
    lrs = [r["lr"] for r in rows]
    fig, ax = plt.subplots(figsize=(8, 5))
    ax.plot(lrs, [r["loss"] for r in rows], color="tab:blue", alpha=0.25, lw=1, label="loss per step")
    ax.plot(lrs, [r["smoothed_loss"] for r in rows], color="tab:blue", lw=2, label="smoothed loss")
    marks = [("min_loss_lr", "tab:red", "lowest smoothed loss"), ("steepest_lr", "tab:purple", "steepest descent"),
             ("onecycle_max_lr", "tab:orange", "suggested onecycle peak"), ("lr", "tab:green", "suggested lr")]
    for key, color, what in marks:
        if found[key] is not None:
            ax.axvline(found[key], color=color, ls="--", lw=1.5, label=f"{what}: {found[key]:.3g}")
    ax.set_xscale("log")
    low = min(min(r["smoothed_loss"], r["loss"]) for r in rows)
    top = max(rows[0]["smoothed_loss"], low) * 1.3  # the tail past the turning point would squash the curve
    ax.set_ylim(low - 0.05 * (top - low) - 1e-9, top)
    ax.set(xlabel="learning rate (log scale)", ylabel="training loss", title=title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def write(rows: list[dict], found: dict, run_dir: Path, settings: DictConfig, title: str) -> list[Path]:
    paths = [run_dir / "lr_find.csv", run_dir / "lr_find.png", run_dir / "lr_find.json"]
    with paths[0].open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["step", "lr", "loss", "smoothed_loss"])
        writer.writeheader()
        writer.writerows(rows)
    plot(rows, found, paths[1], title)
    record = {**found, "steps_taken": len(rows), "lr_find": OmegaConf.to_container(settings)}
    paths[2].write_text(json.dumps(record, indent=2) + "\n")
    return paths


def train_command(overrides: list[str], lr: float) -> str:
    """`python -m runner` with the same overrides, lr_find's and optimizer.lr's left out, at optimizer.lr=lr."""
    kept = [o for o in overrides if not o.lstrip("+~").startswith(("lr_find.", "optimizer.lr=", "hydra."))]
    return " ".join(shlex.quote(w) for w in ["python", "-m", "runner", *kept, f"optimizer.lr={lr:.3g}"])


def report(found: dict, rows: list[dict], settings: DictConfig, schedule: str, overrides: list[str]) -> str:
    lines = [
        f"lr range test: {len(rows)} of {settings.steps} steps, lr {settings.start_lr:.3g} -> {rows[-1]['lr']:.3g}",
        f"lowest smoothed loss {found['min_loss']:.4f} at lr {found['min_loss_lr']:.3g}; " + (
            f"steepest descent at lr {found['steepest_lr']:.3g}" if found["steepest_lr"] is not None else
            f"no steepest descent read (the loss was lowest within the first {skipped_steps(settings.steps)} "
            "steps, which are left out as noise)"),
        f"suggested optimizer.lr={found['lr']:.3g} (lowest / {settings.suggest_divisor:g}); with schedule=onecycle, "
        f"its peak optimizer.lr={found['onecycle_max_lr']:.3g} (lowest / {settings.onecycle_divisor:g})",
    ]
    lr = found["onecycle_max_lr"] if schedule == "onecycle" else found["lr"]
    lines.append(f"train with it (schedule={schedule}): {train_command(overrides, lr)}")
    return "\n".join(lines)


def main_job(cfg: DictConfig, run_dir: Path, overrides: list[str], choices: dict, on_accept=None) -> dict:
    """Check the config, run the test, write its files; returns the suggestions. on_accept: called before the first
    file is written (the job's record then): a test refused or failed before that writes nothing."""
    settings = cfg.lr_find
    check(settings)
    run_cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k not in ("lr_find", "hydra")])
    validate(run_cfg)
    rows = run_test(run_cfg, settings, choices)
    finite = [r for r in rows if math.isfinite(r["smoothed_loss"])]
    found = suggest([r["lr"] for r in finite], [r["smoothed_loss"] for r in finite], settings.suggest_divisor,
                    settings.onecycle_divisor, skipped_steps(settings.steps))
    title = f"lr range test: model={choices.get('model', '?')} optimizer={choices.get('optimizer', '?')}"
    if on_accept is not None:
        on_accept()
    paths = write(rows, found, run_dir, settings, title)
    text = report(found, rows, settings, run_cfg.schedule.name, overrides)
    log.info("%s\nfiles: %s", text, ", ".join(str(p) for p in paths))
    return found


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="lr_find")
def main(cfg: DictConfig) -> None:
    hydra_cfg = HydraConfig.get()
    choices = {k: v for k, v in hydra_cfg.runtime.choices.items() if not k.startswith("hydra")}
    run_dir, record = Path(hydra_cfg.runtime.output_dir), job.Record(cfg)
    try:
        main_job(cfg, run_dir, list(hydra_cfg.overrides.task), choices, on_accept=record.keep)
    except UserError as err:
        if not record.kept:
            job.remove_made(run_dir)
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2 if isinstance(err, ConfigError) else 1)
    except KeyboardInterrupt:
        if not record.kept:
            job.remove_made(run_dir)
        print("interrupted by SIGINT: no lr range test was written. Run the command again.", file=sys.stderr)
        sys.exit(130)


def cli() -> None:
    """The command line: a bad option or run directory is one line, before Hydra composes (and makes a run
    directory); a refused test leaves no directory behind."""
    try:
        check_command_line(sys.argv[1:], "lr_find", own=("lr_find",))
        job.check_run_dir(sys.argv[1:], "lr_find")
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    try:
        main()
    except KeyboardInterrupt:
        print("interrupted by SIGINT while starting: nothing was written. Run the command again.", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    cli()
