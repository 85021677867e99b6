"""Lessons on optimization (CS231n "Training Neural Networks II", Goodfellow et al. ch. 8, Goyal et al. 2017): the
optimizers on the lecture's 2-D surfaces (runner.pictures: exact and seconds long), and the learning rate, batch
norm, batch size, warmup and schedules on real runs."""

import math

from runner.lessons.lab import Lab, bar_figure, save_figure
from runner.lessons.verdict import (
    NOT_REPRODUCED,
    REPRODUCED,
    Result,
    Stat,
    Verdict,
    all_of,
    greater,
    holds,
    less,
)

# ---- the optimizer race on 2-D surfaces (runner.pictures) -------------------------------------------------------


def _race(lesson, lab: Lab, title: str | None = None) -> tuple[dict, str]:
    """The race of lesson.optimizers on lesson.surface at the common lesson.lr; the picture (paths on the
    contours, loss per step) as the lesson's figure."""
    from omegaconf import OmegaConf

    from runner import pictures

    params = OmegaConf.to_container(lesson.get(lesson.surface) or {})
    results = pictures.race(lesson.surface, list(lesson.optimizers), lesson.lr, lesson.steps, tol=lesson.tol,
                            noise_std=0.0, **params)
    cfg = OmegaConf.merge(pictures.defaults(), {"optimizers": list(lesson.optimizers), "steps": lesson.steps,
                                                "lr": lesson.lr, "lr_mode": "common", "tol": lesson.tol,
                                                lesson.surface: params})
    fig = pictures.figure(pictures.make_surface(lesson.surface, cfg), results, cfg, 0.0)
    if title:
        fig.suptitle(title, fontsize=14)
    fig.savefig(lab.figure_path())
    return results, str(lab.figure_path())


def _steps(result: dict, steps: int) -> float:
    """Steps to the tolerance; inf where it never got there (or diverged)."""
    return math.inf if result["steps_to_tol"] is None else float(result["steps_to_tol"])


def _race_rows(results: dict, steps: int) -> list[dict]:
    import numpy as np

    return [{"optimizer": name, "steps to tol": "diverged" if r["diverged"] else
             f"never in {steps}" if r["steps_to_tol"] is None else r["steps_to_tol"],
             "final loss - minimum": r["final_gap"], "loss rises": int((np.diff(r["losses"]) > 0).sum())}
            for name, r in results.items()]


def _faster(results: dict, fast: list[str], slow: str, steps: int) -> Verdict:
    told = ", ".join(f"{n} {_cell(results[n], steps)}" for n in [*fast, slow])
    ok = all(_steps(results[n], steps) < _steps(results[slow], steps) for n in fast)
    return holds(ok, f"steps to the tolerance: {told}: {', '.join(fast)} faster than {slow}",
                 f"steps to the tolerance: {told}: not every one of {', '.join(fast)} is faster than {slow}")


def _cell(result: dict, steps: int) -> str:
    return "diverged" if result["diverged"] else f"never in {steps}" if result["steps_to_tol"] is None else \
        str(result["steps_to_tol"])


_RACE_NOTE = ("the surfaces are exact and noiseless (no seeds: every number is deterministic); `python -m "
              "runner.pictures` draws the same race with noisy gradients beside it")


def optimizers_bowl(lesson, lab: Lab) -> Result:
    results, figure = _race(lesson, lab)
    verdict = _faster(results, list(lesson.faster), lesson.slower, lesson.steps)
    notes = [f"bowl 0.5 (x1^2 + {lesson.bowl.condition:g} x2^2) at the common lr {lesson.lr:g}: SGD's step is "
             f"limited by the steep direction (it zigzags when lr x condition > 1) and crawls along the shallow one; "
             "momentum accumulates the consistent shallow component and damps the zigzag", _RACE_NOTE]
    return Result(["optimizer", "steps to tol", "final loss - minimum", "loss rises"],
                  _race_rows(results, lesson.steps), verdict, notes, figure)


def saddle_point(lesson, lab: Lab) -> Result:
    results, figure = _race(lesson, lab)
    verdict = all_of(holds(results[lesson.stalls]["steps_to_tol"] is None,
                           f"{lesson.stalls} never gets within {lesson.tol:g} of a minimum in {lesson.steps} steps "
                           f"(final gap {results[lesson.stalls]['final_gap']:.3g})",
                           f"{lesson.stalls} reaches a minimum ({_cell(results[lesson.stalls], lesson.steps)} steps)"),
                     _faster(results, list(lesson.escape), lesson.stalls, lesson.steps))
    notes = [f"the start lies {lesson.saddle.start[1]:g} off the ridge through the saddle: the gradient pushing "
             "away from it is ~curvature x distance, so plain SGD multiplies that distance by only (1 + lr x "
             "curvature) per step; momentum (and the adaptive methods, which divide by the tiny gradient's size) "
             "build up speed along the escape direction", _RACE_NOTE]
    return Result(["optimizer", "steps to tol", "final loss - minimum", "loss rises"],
                  _race_rows(results, lesson.steps), verdict, notes, figure)


def momentum_too_high(lesson, lab: Lab) -> Result:
    results, figure = _race(lesson, lab)
    high, good = lesson.high, lesson.good
    start = lesson.bowl.start[0]
    # How far past the minimum (x1 = 0) each path swings along x1, relative to where it started.
    over = {n: float(max(-p[0] * math.copysign(1.0, start) for p in r["path"])) / abs(start)
            for n, r in results.items()}
    verdict = all_of(
        holds(over[high] > over[good] + lesson.overshoot_margin,
              f"{high} overshoots the minimum by {over[high]:.0%} of the start's distance along x1, {good} by "
              f"{over[good]:.0%}",
              f"{high} overshoots by {over[high]:.0%}, {good} by {over[good]:.0%}: not {lesson.overshoot_margin:.0%} "
              "more"),
        _faster(results, [good], high, lesson.steps))
    rows = [{**row, "overshoot along x1": over[row["optimizer"]]} for row in _race_rows(results, lesson.steps)]
    notes = ["with momentum beta the velocity is a sum of past gradients with weights beta^k: at 0.99 it remembers "
             "~100 steps, so it swings far past the minimum and circles around it, its amplitude shrinking by only "
             "sqrt(beta) = 0.995 a step (0.95 at 0.9)", _RACE_NOTE]
    return Result(list(rows[0]), rows, verdict, notes, figure)


def adagrad_vs_rmsprop(lesson, lab: Lab) -> Result:
    from runner import pictures

    sizes = pictures.effective_steps(optimizers=(lesson.shrinking, lesson.steady), steps=lesson.steps,
                                     lr=lesson.lr)
    fig = pictures.effective_steps_figure(sizes, lesson.lr)
    fig.savefig(lab.figure_path())
    t = lesson.steps
    ada, rms = sizes[lesson.shrinking], sizes[lesson.steady]
    shrink = ada[-1] / ada[0]
    verdict = all_of(
        holds(abs(shrink - 1 / math.sqrt(t)) <= lesson.rel_tol / math.sqrt(t),
              f"{lesson.shrinking}'s step shrinks as 1/sqrt(t): step {t} / step 1 = {shrink:.4g} "
              f"(1/sqrt({t}) = {1 / math.sqrt(t):.4g})",
              f"{lesson.shrinking}'s step {t} / step 1 = {shrink:.4g}, not 1/sqrt({t}) = {1 / math.sqrt(t):.4g}"),
        holds(abs(rms[-1] / lesson.lr - 1) <= lesson.rel_tol,
              f"{lesson.steady}'s step settles at lr: step {t} = {rms[-1]:.4g} (lr {lesson.lr:g})",
              f"{lesson.steady}'s step {t} = {rms[-1]:.4g} is not lr {lesson.lr:g}"))
    rows = [{"optimizer": n, "step 1": s[0], "step 10": s[min(9, t - 1)], f"step {t}": s[-1],
             f"step {t} / lr": s[-1] / lesson.lr} for n, s in sizes.items()]
    notes = ["on a constant gradient g: AdaGrad's cache sums g^2 for ever (step lr g / sqrt(t g^2) = lr / sqrt(t): it "
             "stops moving in long runs); RMSProp's leaky average of g^2 settles at g^2 (step -> lr). RMSProp's "
             "first steps are large (its cache starts at 0 without bias correction: step 1 = lr / sqrt(1 - alpha))"]
    return Result(list(rows[0]), rows, verdict, notes, str(lab.figure_path()))


def adam_bias_correction(lesson, lab: Lab) -> Result:
    from runner import pictures

    b1, b2 = lesson.betas
    first = {bc: pictures.adam_first_step(bc, lr=lesson.lr, betas=(b1, b2)) for bc in (True, False)}
    sizes = pictures.effective_steps(optimizers=("adam", "adam_no_bias_correction"), steps=lesson.steps,
                                     lr=lesson.lr)
    fig = pictures.effective_steps_figure(sizes, lesson.lr)
    fig.axes[0].set_title(f"Adam's update size on a constant gradient, lr {lesson.lr:g}, betas ({b1:g}, {b2:g}):\n"
                          f"with bias correction every step is lr; without, step 1 is (1 - b1) / sqrt(1 - b2) = "
                          f"{(1 - b1) / math.sqrt(1 - b2):.2f} lr\nand the size keeps drifting for ~1 / (1 - b2) "
                          "steps (it depends on t, not on the gradient)")
    fig.savefig(lab.figure_path())
    ratio = first[False] / first[True]
    theory = (1 - b1) / math.sqrt(1 - b2)
    verdict = all_of(
        holds(abs(first[True] / lesson.lr - 1) <= lesson.rel_tol,
              f"with bias correction the first step is lr ({first[True]:.4g} at lr {lesson.lr:g})",
              f"with bias correction the first step is {first[True]:.4g}, not lr {lesson.lr:g}"),
        holds(abs(ratio / theory - 1) <= lesson.rel_tol and abs(ratio - 1) > lesson.badly_scaled,
              f"without it the first step is {ratio:.3f}x lr ((1 - b1) / sqrt(1 - b2) = {theory:.3f}): off the "
              f"intended lr by more than {lesson.badly_scaled:.0%}",
              f"without it the first step is {ratio:.3f}x lr ((1 - b1) / sqrt(1 - b2) = {theory:.3f})"))
    rows = [{"Adam": "bias-corrected" if bc else "uncorrected", "step 1": first[bc], "step 1 / lr": first[bc] /
             lesson.lr, "step 10": sizes[name][9], f"step {lesson.steps}": sizes[name][-1]}
            for bc, name in ((True, "adam"), (False, "adam_no_bias_correction"))]
    notes = ["m and v start at 0: after one step m = (1 - b1) g and v = (1 - b2) g^2, both far too small; dividing "
             "by (1 - b1^t) and (1 - b2^t) undoes it. Uncorrected, the step m / sqrt(v) at t = 1 is 0.1 / 0.0316 = "
             "3.16 (in units of lr) at betas (0.9, 0.999): larger than lr, and its size then depends on t, not on "
             "the gradient; runner.optimization.reference.Adam (bias_correction=false) is the uncorrected rule"]
    return Result(list(rows[0]), rows, verdict, notes, str(lab.figure_path()))


# ---- the learning rate, batch norm, batch size and schedules on real runs ----------------------------------------


def _outcome(m: dict) -> dict:
    """What a run reached: status, final training loss (inf when it diverged), best and final validation accuracy
    (chance, 1 / classes, when it diverged before its first epoch ended)."""
    history = m.get("history") or []
    chance = 0.1
    diverged = m["status"] == "diverged"
    return {"status": m["status"], "diverged": diverged,
            "train_loss": math.inf if diverged else m.get("final_train_loss", math.nan),
            "val_acc": history[-1]["val_acc"] if history and not diverged else
            (m.get("final_val_acc") if not diverged else chance),
            "best_val_acc": max([h["val_acc"] for h in history] or [chance]),
            "test_acc": m.get("test_acc", chance if diverged else math.nan), "history": history}


def _runs(lesson, lab: Lab, arms=None, at_end=None) -> dict[str, list[dict]]:
    out = {}
    for arm in arms or list(lesson.arms):
        out[arm] = []
        for seed in lesson.seeds:
            m = lab.run(arm, seed, at_end=at_end)
            out[arm].append({**_outcome(m), "at_end": m.get("at_end"), "metrics": m})
    return out


def _stat(runs: list[dict], key: str) -> Stat:
    """`key` over the runs where it is finite (a diverged run's training loss is inf: left out)."""
    return Stat([float(r[key]) for r in runs if math.isfinite(float(r[key]))])


def _show(values: list[float]):
    """A table cell: the Stat when every value is finite, else each value (inf: diverged)."""
    if all(math.isfinite(v) for v in values):
        return Stat(values)
    return ", ".join("diverged" if math.isinf(v) else f"{v:.4g}" for v in values)


def _statuses(runs: list[dict]) -> str:
    counts = {}
    for r in runs:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    return ", ".join(f"{n} {s}" for s, n in counts.items())


def _curves_figure(path, runs: dict[str, list[dict]], key: str, ylabel: str, title: str, log_y: bool = False,
                   lr_curves: dict | None = None) -> str:
    """Per arm the mean over seeds of `key` per epoch (a diverged run ends where it diverged: an x); with lr_curves
    ({arm: (steps_per_epoch, [lr per step])}) a panel of the lr per step on the left."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    panels = 2 if lr_curves else 1
    fig, axes = plt.subplots(1, panels, figsize=(6.5 * panels, 4.4))
    axes = np.atleast_1d(axes)
    if lr_curves:
        for i, (arm, (per_epoch, lrs)) in enumerate(lr_curves.items()):
            axes[0].plot(np.arange(1, len(lrs) + 1) / per_epoch, lrs, color=f"C{i}", label=arm)
        axes[0].set(xlabel="epoch", ylabel="learning rate", title="the lr of every step")
        axes[0].grid(alpha=0.3)
        axes[0].legend(fontsize=8)
    ax = axes[-1]
    for i, (arm, seeds) in enumerate(runs.items()):
        for j, r in enumerate(seeds):
            values = [h[key] for h in r["history"]]
            epochs = np.arange(1, len(values) + 1)
            ax.plot(epochs, values, color=f"C{i}", marker="o", ms=3, alpha=0.8, label=arm if j == 0 else None)
            if r["diverged"]:
                ax.plot(len(values) + 1, values[-1] if values else np.nan, "x", color=f"C{i}", ms=10)
    ax.set(xlabel="epoch", ylabel=ylabel, title=title)
    if log_y:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def train_loss_by_step(run_dir) -> tuple[list[int], list[float]]:
    """(steps, values) of a run's train/loss in TensorBoard: the mean of every trainer.log_every_steps window."""
    from pathlib import Path

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    points = []
    for path in sorted(Path(run_dir).glob("events.out.tfevents.*")):
        events = EventAccumulator(str(path), size_guidance={"scalars": 0})
        events.Reload()
        if "train/loss" in events.Tags()["scalars"]:
            points += [(e.step, e.value) for e in events.Scalars("train/loss")]
    points.sort()
    return [p[0] for p in points], [p[1] for p in points]


def _loss_steps_figure(path, runs: dict[str, list[dict]], title: str) -> str:
    """Each run's logged training loss per step (log scale); a diverged run ends with an x at its last window."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    for i, (arm, seeds) in enumerate(runs.items()):
        for j, r in enumerate(seeds):
            steps, values = train_loss_by_step(r["metrics"]["run_dir"])
            ax.plot(steps, values, color=f"C{i}", lw=1.4, alpha=0.85,
                    label=f"{arm} ({_statuses(seeds)})" if j == 0 else None)
            if r["diverged"] and steps:
                ax.plot(steps[-1], values[-1], "x", color=f"C{i}", ms=11, mew=2.5)
    ax.set(yscale="log", xlabel="optimizer step", ylabel="training loss (mean of each log window, log scale)",
           title=title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def lr_too_high_low(lesson, lab: Lab) -> Result:
    runs = _runs(lesson, lab)
    high, low = runs[lesson.high], runs[lesson.low]
    first = {arm: _show([r["history"][0]["train_loss"] if r["history"] else math.inf for r in rs])
             for arm, rs in runs.items()}
    loss = {arm: _stat(rs, "train_loss") for arm, rs in runs.items()}
    stalled = Stat([(r["history"][-1]["train_loss"] if r["history"] else math.nan) for r in low])
    ln_c = math.log(10)
    verdict = all_of(
        holds(all(r["diverged"] for r in high), f"lr {lesson.high}: diverged in every seed ({_statuses(high)})",
              f"lr {lesson.high}: {_statuses(high)}: not every seed diverged"),
        greater(stalled, loss[lesson.good], lesson.low, lesson.good, "final training loss",
                margin=lesson.stall_margin),
        holds(stalled.mean > lesson.stall_fraction * ln_c,
              f"lr {lesson.low} stalls: final training loss {stalled.text()}, still above {lesson.stall_fraction:g} "
              f"x ln 10 = {lesson.stall_fraction * ln_c:.3g}",
              f"lr {lesson.low} does not stall: final training loss {stalled.text()} is below "
              f"{lesson.stall_fraction:g} x ln 10"))
    rows = [{"arm": arm, "lr": _lr(lab, arm), "status": _statuses(rs), "train loss, epoch 1": first[arm],
             "final train loss": _show([r["train_loss"] for r in rs]), "final val acc": _stat(rs, "val_acc")}
            for arm, rs in runs.items()]
    notes = ["at runner's defaults (norm=batch, schedule=onecycle) the default model never reaches `diverged`, not "
             "even at lr 10: batch norm rescales every layer's input whatever the weights' size and 1cycle starts "
             "at lr / 25. So this lesson runs without normalization, at a constant lr, with the loss checked "
             "every few steps (trainer.log_every_steps): the setting of the lecture's loss curves",
             "a diverged run stops at the first log window with a non-finite or exploded loss: the x in the figure"]
    figure = _loss_steps_figure(lab.figure_path(), runs, "training loss per step: too high diverges (x: its last "
                                "logged window), too low crawls")
    return Result(list(rows[0]), rows, verdict, notes, figure)


def _lr(lab: Lab, arm: str) -> str:
    cfg, _ = lab.config(arm, 0)
    lr = float(cfg.optimizer.lr)
    if cfg.trainer.lr_reference_batch_size:
        lr *= cfg.trainer.batch_size / cfg.trainer.lr_reference_batch_size
    return f"{lr:g}"


def bn_high_lr(lesson, lab: Lab) -> Result:
    runs = _runs(lesson, lab)
    acc = {arm: _stat(rs, "val_acc") for arm, rs in runs.items()}
    verdict = greater(acc[lesson.with_bn], acc[lesson.without_bn], lesson.with_bn, lesson.without_bn,
                      "final validation accuracy (chance 0.1 for a diverged run)",
                      floor=_noise(acc[lesson.with_bn], lab))
    rows = [{"arm": arm, "lr": _lr(lab, arm), "status": _statuses(rs), "final val acc": acc[arm],
             "final train loss": _show([r["train_loss"] for r in rs])} for arm, rs in runs.items()]
    notes = ["batch norm makes each layer's output independent of the scale of its weights, so a large step does "
             "not blow the activations up layer after layer; without it the same lr explodes (or stalls where "
             "ReLUs die)", "a diverged run counts at chance accuracy (0.1) and an infinite training loss"]
    figure = _curves_figure(lab.figure_path(), runs, "val_acc", "validation accuracy",
                            "the same high lr with and without batch norm (x: diverged)")
    return Result(list(rows[0]), rows, verdict, notes, figure)


def _noise(acc: Stat, lab: Lab) -> float:
    from runner.lessons.verdict import accuracy_noise

    cfg, _ = lab.config(None, 0)
    return accuracy_noise(acc.mean, int(cfg.data.val_size))


def bn_gap(run, sizes=(16, 256)) -> dict[int, float]:
    """|loss with batch statistics - loss with running statistics| (runner.nets.diagnostics.batch_norm_losses) of the
    trained run on validation batches of each size, averaged over the batches of that size in the first 512 images."""
    from runner.nets.diagnostics import batch_norm_losses

    x = run.preprocess(run.splits.val_x[:512])
    y = run.splits.val_y[:512]
    gaps = {}
    for size in sizes:
        values = []
        for at in range(0, len(y) - size + 1, size):
            batch, running = batch_norm_losses(run.model, x[at:at + size], y[at:at + size])
            values.append(float((batch - running).abs()))
        gaps[size] = sum(values) / len(values)
    return gaps


def bn_train_eval_gap(lesson, lab: Lab) -> Result:
    sizes = list(lesson.batch_sizes)
    runs = _runs(lesson, lab, at_end=lambda run: bn_gap(run, sizes))
    arm = list(lesson.arms)[0]
    gaps = {s: Stat([r["at_end"][s] for r in runs[arm]]) for s in sizes}
    small, large = min(sizes), max(sizes)
    verdict = all_of(
        greater(gaps[large], Stat([0.0] * len(lesson.seeds)), f"batch {large}", "no gap", "|loss with batch "
                "statistics - loss with running statistics|", margin=lesson.min_gap),
        greater(gaps[small], gaps[large], f"batch {small}", f"batch {large}", "the train/eval loss gap"))
    rows = [{"batch size": s, "|loss(batch stats) - loss(running stats)|": gaps[s]} for s in sizes]
    notes = ["in training batch norm normalizes with the batch's own mean and variance, in evaluation with running "
             "averages: the same images get a different loss. The smaller the batch the noisier its statistics and "
             "the larger the gap (Ioffe 2017, batch renormalization); runs log it as diag/bn_train_eval_gap, "
             "diag/loss_batch_stats and diag/loss_running_stats"]
    figure = bar_figure(lab.figure_path(), {f"batch {s}": g for s, g in gaps.items()},
                        "|loss with batch stats - loss with running stats|",
                        "batch norm's train/eval gap on validation batches after training")
    return Result(list(rows[0]), rows, verdict, notes, figure)


def linear_scaling(lesson, lab: Lab) -> Result:
    runs = _runs(lesson, lab)
    acc = {arm: _stat(rs, "val_acc") for arm, rs in runs.items()}
    base = lesson.base
    noise = _noise(acc[base], lab)
    drops = {arm: less(acc[arm], acc[base], arm, base, "final validation accuracy", floor=noise,
                       margin=lesson.tolerance) for arm in lesson.arms if arm != base}
    kept = [arm for arm in lesson.scaled_ok if not drops[arm].reproduced]
    stops = [arm for arm, v in drops.items() if v.reproduced]
    verdict = all_of(
        holds(len(kept) == len(lesson.scaled_ok),
              f"lr x k for batch x k keeps the accuracy (no drop beyond {lesson.tolerance:g} + the spread) at "
              f"{', '.join(lesson.scaled_ok)}",
              "lr x k for batch x k loses accuracy at " + "; ".join(drops[a].reason for a in lesson.scaled_ok
                                                                     if a not in kept)),
        holds(bool(stops), "up to a point: it drops at " + "; ".join(drops[a].reason for a in stops),
              f"no drop at any k tried (the point where it stops is beyond {list(lesson.arms)[-1]})"))
    rows = [{"arm": arm, "lr": _lr(lab, arm), "status": _statuses(rs), "final val acc": acc[arm],
             "steps": int(rs[0]["metrics"].get("steps", 0)),
             "drop vs base beyond the spread": "" if arm == base else ("yes" if drops[arm].reproduced else "no")}
            for arm, rs in runs.items()]
    notes = ["runner's trainer.lr_reference_batch_size applies the rule (lr = optimizer.lr x batch / reference). At "
             "equal epochs a batch k times larger takes k times fewer steps: the rule holds while the lr is small "
             "enough that k small steps ~ one k-times larger step; beyond that the early steps are unstable "
             "(Goyal et al. 2017 needed warmup past batch 8k on ImageNet) and the few steps left do not suffice"]
    figure = bar_figure(lab.figure_path(), acc, "final validation accuracy", "lr x k for batch x k at equal epochs")
    return Result(list(rows[0]), rows, verdict, notes, figure)


def warmup_large_batch(lesson, lab: Lab) -> Result:
    runs = _runs(lesson, lab)
    acc = {arm: _stat(rs, "val_acc") for arm, rs in runs.items()}
    warm = acc[lesson.with_warmup]
    verdict = all_of(
        greater(warm, acc[lesson.without_warmup], lesson.with_warmup, lesson.without_warmup,
                "final validation accuracy (chance 0.1 for a diverged run)", floor=_noise(warm, lab)),
        # "fixes it": the warmed-up run must also learn, not merely survive at chance
        holds(warm.mean > 0.1 + lesson.learns_margin,
              f"{lesson.with_warmup} learns: {warm.text()} > chance 0.1 + {lesson.learns_margin:g}",
              f"{lesson.with_warmup} does not learn either: {warm.text()} is within {lesson.learns_margin:g} of "
              "chance (0.1): the lr is too high even after the warmup"))
    rows = [{"arm": arm, "lr": _lr(lab, arm), "status": _statuses(rs), "train loss, epoch 1":
             _show([r["history"][0]["train_loss"] if r["history"] else math.inf for r in rs]),
             "final val acc": acc[arm]} for arm, rs in runs.items()]
    notes = ["at the start the weights are random and the gradients large and fast-changing: a large lr applied at "
             "once throws the net into a bad region (or diverges); ramping it up over the first epoch(s) "
             "(schedule.warmup_epochs) lets the net reach a region where the large lr is stable (Goyal et al. 2017)"]
    if not verdict.reproduced and not any(r["diverged"] for rs in runs.values() for r in rs):
        notes.append("no run diverged here: with batch norm the start at full lr is survivable at this size, so "
                     "the warmup's gain (if any) is small against the spread of the seeds; more seeds (seeds=[...]) "
                     "or a larger batch and lr show it more clearly")
    figure = _curves_figure(lab.figure_path(), runs, "val_acc", "validation accuracy",
                            "large batch + large lr, with and without warmup (x: diverged)")
    return Result(list(rows[0]), rows, verdict, notes, figure)


def lr_curve(lab: Lab, arm: str, per_epoch: int) -> list[float]:
    """The lr of every step of a run of `arm` with `per_epoch` steps an epoch, from the code the runs use
    (runner.engine.build.schedule_factor)."""
    from runner.engine.build import schedule_factor

    cfg, _ = lab.config(arm, 0)
    total = per_epoch * int(cfg.trainer.epochs)
    factor = schedule_factor(cfg.schedule, total, per_epoch)
    return [float(cfg.optimizer.lr) * factor(step) for step in range(total)]


def lr_schedules(lesson, lab: Lab) -> Result:
    runs = _runs(lesson, lab)
    acc = {arm: _stat(rs, "val_acc") for arm, rs in runs.items()}
    noise = _noise(acc[lesson.constant], lab)
    parts = [greater(acc[arm], acc[lesson.constant], arm, lesson.constant, "final validation accuracy", floor=noise)
             for arm in lesson.decaying]
    won = [arm for arm, v in zip(lesson.decaying, parts, strict=True) if v.reproduced]
    verdict = all_of(*parts) if lesson.require == "all" else Verdict(
        REPRODUCED if won else NOT_REPRODUCED, "; ".join(v.reason for v in parts))
    rows = [{"schedule": arm, "status": _statuses(rs), "final val acc": acc[arm],
             "best val acc": _stat(rs, "best_val_acc"), "final train loss": _show([r["train_loss"] for r in rs]),
             f"beats {lesson.constant}": "" if arm == lesson.constant else ("yes" if arm in won else "no")}
            for arm, rs in runs.items()]
    curves = {}
    for arm, rs in runs.items():  # the steps of an epoch, as the run counted them
        per_epoch = int(rs[0]["metrics"]["steps"]) // max(int(rs[0]["metrics"]["epochs_completed"]), 1)
        curves[arm] = (per_epoch, lr_curve(lab, arm, per_epoch))
    notes = [f"the claim checked: a decaying schedule beats a constant lr at the same budget "
             f"({'every one' if lesson.require == 'all' else 'at least one'} of {', '.join(lesson.decaying)} against "
             f"{lesson.constant}, all at optimizer.lr, equal epochs); the lr curves come from the same code the runs "
             "use (runner.engine.build.schedule_factor)",
             "the final accuracy is what a budget buys; the best is what early stopping would keep"]
    if not won:
        const = _stat(runs[lesson.constant], "train_loss")
        notes.append(f"not reproduced at this budget: the constant lr ends at a training loss of {const.text()}. A "
                     "decay pays off once a run has reached the noise floor of its lr (the loss hovers, and a "
                     "smaller lr settles it); in a short or easy run the constant lr's larger steps are worth "
                     "more than settling, which a decay gives up early. The claim is about runs long enough to "
                     "converge: --full, or more epochs (-- trainer.epochs=...)")
    figure = _curves_figure(lab.figure_path(), runs, "val_acc", "validation accuracy", "validation accuracy per epoch",
                            lr_curves=curves)
    return Result(list(rows[0]), rows, verdict, notes, figure)
