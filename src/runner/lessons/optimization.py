"""Lessons on optimization (CS231n "Training Neural Networks II", Goodfellow et al. ch. 8, Goyal et al. 2017): the
optimizers on the lecture's 2-D surfaces (runner.pictures: exact and seconds long), and the learning rate, batch
norm, batch size, warmup and schedules on real runs."""

import math

from runner.commands import pictures
from runner.engine.records import read_scalars
from runner.lessons.lab import Lab, save_figure
from runner.lessons.verdict import (
    NOT_REPRODUCED,
    REPRODUCED,
    Result,
    Stat,
    Verdict,
    accuracy_noise,
    all_of,
    critical,
    greater,
    holds,
    paired_greater,
    paired_less,
)

# ---- the optimizer race on 2-D surfaces (runner.pictures) -------------------------------------------------------


def _race(lesson, lab: Lab, title: str | None = None) -> tuple[dict, str]:
    """The race of lesson.optimizers on lesson.surface at the common lesson.lr; the picture (paths on the
    contours, loss per step) as the lesson's figure."""
    from omegaconf import OmegaConf

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
    """(steps, values) of a run's train/loss in TensorBoard: the loss of every step."""
    points = read_scalars(run_dir, "train/loss")
    return [p[0] for p in points], [p[1] for p in points]


def _loss_steps_figure(path, runs: dict[str, list[dict]], title: str) -> str:
    """Each run's logged training loss per step (log scale); a diverged run ends with an x at its last logged step."""
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
    ax.set(yscale="log", xlabel="optimizer step", ylabel="training loss (each step, log scale)",
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
                                "logged step), too low crawls")
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
    cfg, _ = lab.config(None, 0)
    return accuracy_noise(acc.mean, int(cfg.data.val_size))


def per_image_bn_gap(model, x, y, sizes) -> dict[int, float]:
    """The batch norm train/eval gap per image: the images x (preprocessed) cut into batches of each size, each
    image's loss with its batch's statistics (training mode) against its loss with the running statistics
    (evaluation mode), |difference| averaged over the images (those of a last incomplete batch left out). Per image,
    not per batch: a batch's mean loss lets the images' differences cancel, the more the larger the batch. Dropout is
    off in both passes; the running statistics are left as they were."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [[b.clone() for b in m.buffers()] for m in norms]
    was_training = model.training
    gaps = {}
    try:
        with torch.no_grad():
            model.eval()
            running = F.cross_entropy(model(x).float(), y, reduction="none")
            for m in norms:
                m.train()
            for size in sizes:
                n = len(y) // size * size
                batch = torch.cat([F.cross_entropy(model(x[at:at + size]).float(), y[at:at + size], reduction="none")
                                   for at in range(0, n, size)])
                gaps[size] = (batch - running[:n]).abs().mean().item()
    finally:
        for m, buffers in zip(norms, saved, strict=True):
            for b, s in zip(m.buffers(), buffers, strict=True):
                b.copy_(s)
        model.train(was_training)
    return gaps


def bn_gap(run, sizes, images: int) -> dict:
    """The trained run's per-image train/eval gap (per_image_bn_gap) on its first `images` validation images at each
    batch size, twice: with the running averages as training left them ("lagged": they trail the weights, which kept
    moving while they averaged), and after one exact pass over the training split (no augmentation) has replaced them
    by the population statistics of the final weights ("exact"). The pass averages equal batches of 500 (the
    remainder left out), so that every image weighs the same. The run's test then uses these statistics."""
    # torch only when the lesson runs: the lessons list and check torch-free
    from runner.nets.layers import reestimate_batch_norm

    x, y = run.preprocess(run.splits.val_x[:images]), run.splits.val_y[:images]
    lagged = per_image_bn_gap(run.model, x, y, sizes)
    train = run.splits.train_x
    chunk = min(500, len(train))
    reestimate_batch_norm(run.model, (run.preprocess(b) for b in train[:len(train) // chunk * chunk].split(chunk)))
    return {"lagged": lagged, "exact": per_image_bn_gap(run.model, x, y, sizes)}


def log_slope(sizes, values) -> float:
    """The least-squares slope of log(value) against log(size): -0.5 for a value proportional to 1/sqrt(size)."""
    xs, ys = [math.log(s) for s in sizes], [math.log(v) for v in values]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((a - mx) * (b - my) for a, b in zip(xs, ys, strict=True)) / sum((a - mx) ** 2 for a in xs)


def bn_train_eval_gap(lesson, lab: Lab) -> Result:
    sizes = sorted(lesson.batch_sizes)
    small, large = sizes[0], sizes[-1]
    arm = list(lesson.arms)[0]
    runs = [lab.run(arm, seed, at_end=lambda run: bn_gap(run, sizes, lesson.images)) for seed in lesson.seeds]
    failed = [f"seed {s}: {m['status']}" for s, m in zip(lesson.seeds, runs, strict=True) if m["status"] != "completed"]
    if failed:
        return Result(["batch size"], [], Verdict(NOT_REPRODUCED, "no gap measured: " + ", ".join(failed)))
    gaps = {when: {s: Stat([m["at_end"][when][s] for m in runs]) for s in sizes} for when in ("exact", "lagged")}
    exact = gaps["exact"]
    slope = Stat([log_slope(sizes, [m["at_end"]["exact"][s] for s in sizes]) for m in runs])
    t = critical(1, slope.n - 1) if slope.n > 1 else critical()
    low, high = slope.mean - t * slope.se(), slope.mean + t * slope.se()
    tol = lesson.slope_tolerance
    verdict = all_of(
        paired_greater(exact[small], exact[large], f"batch {small}", f"batch {large}",
                       "per-image |loss(batch stats) - loss(population stats)|"),
        holds(-0.5 - tol <= low and high <= -0.5 + tol,
              f"the gap falls as 1/sqrt(batch size), as the noise of a mean over the batch does: log-log slope "
              f"{slope.text()} over batch sizes {sizes} (95% interval {low:.2f} to {high:.2f}, within -0.5 +- {tol:g})",
              f"the gap does not fall as 1/sqrt(batch size): log-log slope {slope.text()} over batch sizes {sizes} "
              f"(95% interval {low:.2f} to {high:.2f}, not within -0.5 +- {tol:g})"))
    rows = [{"batch size": s, "per-image gap, population stats": exact[s],
             "x sqrt(batch size)": Stat([v * math.sqrt(s) for v in exact[s].values]),
             "per-image gap, running averages": gaps["lagged"][s]} for s in sizes]
    lag = Stat([b - a for a, b in zip(exact[large].values, gaps["lagged"][large].values, strict=True)])
    notes = [f"per image: each of the first {lesson.images} validation images' loss with its batch's statistics "
             "(training mode) against its loss with population statistics (evaluation mode), |difference| averaged "
             "over the images; the population statistics come from one exact pass over the training split after "
             "training (norm.reestimate_batches does the same in a run)",
             f"with the running averages as training left them the gap at batch {large} is "
             f"{gaps['lagged'][large].text()} against {exact[large].text()} with the population statistics "
             f"(difference {lag.text()}): " + ("the averages trail the weights, and that lag, not the noise of a "
                                              "batch, is most of it" if lag.mean > exact[large].mean else
                                              "the averages' lag adds little here"),
             "x sqrt(batch size) stays level where the gap is the noise of the batch's statistics (the standard "
             "error of a mean over B images is sigma / sqrt(B)); a run with diagnostics on logs the gap of its "
             "training batches as diag/bn_train_eval_gap"]
    figure = _gap_figure(lab.figure_path(), sizes, exact, gaps["lagged"])
    return Result(list(rows[0]), rows, verdict, notes, figure)


def _gap_figure(path, sizes, exact: dict[int, Stat], lagged: dict[int, Stat]) -> str:
    """The per-image gap against the batch size (log-log), with the 1/sqrt(B) line through the smallest size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (label, gaps) in enumerate((("population statistics", exact), ("running averages", lagged))):
        ax.errorbar(sizes, [gaps[s].mean for s in sizes], yerr=[gaps[s].std for s in sizes], color=f"C{i}",
                    marker="o", capsize=3, label=label)
    ax.plot(sizes, [exact[sizes[0]].mean * math.sqrt(sizes[0] / s) for s in sizes], "k--", lw=1,
            label="1 / sqrt(batch size)")
    ax.set(xscale="log", yscale="log", xlabel="batch size", ylabel="per-image |loss(batch) - loss(eval)|",
           title="batch norm's train/eval gap per image (mean and std over seeds)")
    ax.set_xticks(sizes, [str(s) for s in sizes])
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def _by_seed(lesson, lab: Lab, arms=None) -> dict[str, list[dict]]:
    """{arm: [the metrics of each seed's run]}, every run as it ended: one that diverged or failed has no test
    accuracy (the gates name it; nothing stands in for it)."""
    return {arm: [lab.run(arm, seed) for seed in lesson.seeds] for arm in arms or lesson.arms}


def _accs(runs: list[dict]) -> Stat | None:
    """The test accuracy of every seed; None unless every run completed."""
    if any(m["status"] != "completed" or m.get("test_acc") is None for m in runs):
        return None
    return Stat([float(m["test_acc"]) for m in runs])


def _acc_cell(runs: list[dict]):
    """A table cell: the test accuracy over the seeds, or each seed's (its status where it did not complete)."""
    stat = _accs(runs)
    return stat if stat is not None else ", ".join(
        f"{m['test_acc']:.4g}" if m["status"] == "completed" else m["status"] for m in runs)


def _diff_cell(runs: list[dict], base: list[dict]):
    """This arm's test accuracy minus the base arm's, seed by seed ("" where a run did not complete)."""
    a, b = _accs(runs), _accs(base)
    if a is None or b is None or runs is base:
        return ""
    return Stat([x - y for x, y in zip(a.values, b.values, strict=True)])


def _paired_acc(test, a_runs: list[dict], b_runs: list[dict], a: str, b: str, measure: str = "test accuracy",
                margin: float = 0.0, tries: int = 1) -> Verdict:
    """test (verdict.paired_greater or paired_less) on two arms' test accuracies, paired by seed (the arms share each
    seed's initial weights); not compared when a run of either did not complete."""
    sa, sb = _accs(a_runs), _accs(b_runs)
    if sa is None or sb is None:
        return Verdict(NOT_REPRODUCED, f"{measure}: {a} vs {b} not compared, not every run completed ({a}: "
                                       f"{_statuses(a_runs)}; {b}: {_statuses(b_runs)})")
    return test(sa, sb, a, b, measure, margin=margin, tries=tries)


def _not_below(a_runs: list[dict], b_runs: list[dict], a: str, b: str, tol: float, why: str) -> Verdict:
    """`a` at most `tol` below `b` on test accuracy, paired by seed: a + tol above b beyond the spread, a one-sided
    bound on the paired difference (not the mere absence of a significant drop, which few seeds always give)."""
    sa, sb = _accs(a_runs), _accs(b_runs)
    if sa is None or sb is None:
        return _paired_acc(paired_greater, a_runs, b_runs, a, b)  # names the runs that did not complete
    return paired_greater(Stat([v + tol for v in sa.values]), sb, f"{a} + {tol:g}", b, f"test accuracy ({why})")


def _goes_wrong(good: list[dict], bad: list[dict], g: str, b: str, seeds) -> Verdict:
    """`b` goes wrong against `g`: a lower test accuracy, paired by seed, or it diverged where `g` completed (the
    claim's "diverges or lands somewhere bad"); the seeds where `b` diverged are named, the others compared."""
    gone = [s for s, mg, mb in zip(seeds, good, bad, strict=True)
            if mb["status"] == "diverged" and mg["status"] == "completed"]
    if not gone:
        return _paired_acc(paired_greater, good, bad, g, b)
    kept = [(mg, mb) for mg, mb in zip(good, bad, strict=True) if mb["status"] != "diverged"]
    if not kept:
        return holds(True, f"{b} diverged at every seed ({', '.join(map(str, gone))}) where {g} trained", "")
    rest = _paired_acc(paired_greater, [k[0] for k in kept], [k[1] for k in kept], g, b)
    return Verdict(rest.verdict, f"{b} diverged at seed(s) {', '.join(map(str, gone))}; the other seeds: "
                                 f"{rest.reason}")


def _arm_rows(lab: Lab, runs: dict[str, list[dict]], base: str) -> list[dict]:
    rows = []
    for arm, ms in runs.items():
        cfg, _ = lab.config(arm, 0)
        rows.append({"arm": arm, "batch": int(cfg.trainer.batch_size), "lr": _lr(lab, arm),
                     "warmup epochs": cfg.schedule.warmup_epochs, "steps": int(ms[0].get("steps", 0)),
                     "status": _statuses(ms), "test acc": _acc_cell(ms), f"- {base} (paired)": _diff_cell(ms, runs[base])})
    return rows


def _curves(runs: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """The runs as _curves_figure draws them: each one's history, and whether it diverged."""
    return {arm: [{"history": m.get("history") or [], "diverged": m["status"] == "diverged"} for m in ms]
            for arm, ms in runs.items()}


def linear_scaling(lesson, lab: Lab) -> Result:
    runs = _by_seed(lesson, lab)
    base, tol = lesson.base, lesson.tolerance
    keeps = [_not_below(runs[arm], runs[base], arm, base, tol, f"at most {tol:g} below: the rule keeps it")
             for arm in lesson.scaled_ok]
    matters = [_paired_acc(paired_greater, runs[scaled], runs[control], scaled, control,
                           measure="test accuracy, lr scaled vs not (the rule is needed)")
               for control, scaled in lesson.unscaled.items()]
    stops = _paired_acc(paired_less, runs[lesson.beyond], runs[base], lesson.beyond, base, margin=tol,
                        measure=f"test accuracy, {lesson.beyond} more than {tol:g} below {base} (up to a point)")
    verdict = all_of(*keeps, *matters, stops)
    rows = _arm_rows(lab, runs, base)
    notes = [f"every arm trains the same epochs from the same initial weights per seed; trainer.lr_reference_batch_size "
             "applies the rule (lr = optimizer.lr x batch / reference), and a batch k times larger takes k times "
             f"fewer steps ({', '.join(str(r['arm']) + ' ' + str(r['steps']) for r in rows)})",
             f"the claim in three parts: scaled arms within {tol:g} of {base} (a one-sided bound on the paired drop), "
             "each scaled arm above the same batch at the unscaled lr, and the largest batch "
             f"({lesson.beyond}) more than {tol:g} below {base}"]
    for control, scaled in lesson.unscaled.items():
        diff = _diff_cell(runs[scaled], runs[control])
        if diff:
            notes.append(f"at the same batch, scaling the lr changed the test accuracy by {diff.text()} "
                         f"({scaled} - {control}, {sum(d > 0 for d in diff.values)} of {diff.n} seeds higher)")
    figure = _curves_figure(lab.figure_path(), _curves(runs), "val_acc", "validation accuracy",
                            "lr x k for batch x k at equal epochs (x: diverged)")
    return Result(list(rows[0]), rows, verdict, notes, figure)


def warmup_large_batch(lesson, lab: Lab) -> Result:
    runs = _by_seed(lesson, lab)
    small, cold, warm, tol = lesson.small, lesson.without_warmup, lesson.with_warmup, lesson.tolerance
    seeds = list(lesson.seeds)
    verdict = all_of(
        _goes_wrong(runs[small], runs[cold], small, cold, seeds),
        _goes_wrong(runs[warm], runs[cold], warm, cold, seeds),
        _not_below(runs[warm], runs[small], warm, small, tol, f"at most {tol:g} below: the warmup recovers it"))
    rows = _arm_rows(lab, runs, small)
    notes = ["at the start the weights are random and the gradients large and fast-changing; the linear scaling "
             "rule's large lr applied from the first step can throw the net somewhere bad (or make it diverge); a "
             "gradual warmup (schedule.warmup_epochs, Goyal et al. 2017: 5 of 90 epochs) ramps the lr up from 0"]
    unscaled = lesson.get("unscaled")
    if unscaled:
        diff = _diff_cell(runs[warm], runs[unscaled])
        if diff:
            notes.append(f"{warm} - {unscaled} (the same batch at the small batch's lr, not scaled): {diff.text()}, "
                         f"{sum(d > 0 for d in diff.values)} of {diff.n} seeds higher: "
                         + ("the rule's lr, warmed up, pays" if diff.mean > 0 else
                            "the rule's lr does not pay here even with the warmup"))
    figure = _curves_figure(lab.figure_path(), _curves(runs), "val_acc", "validation accuracy",
                            "large batch + the rule's lr, with and without warmup (x: diverged)")
    return Result(list(rows[0]), rows, verdict, notes, figure)


def lr_curve(lab: Lab, arm: str, per_epoch: int) -> list[float]:
    """The lr of every step of a run of `arm` with `per_epoch` steps an epoch, from the code the runs use
    (runner.engine.build.schedule_factor), at the arm's tuned peak where the lesson tunes it."""
    # torch only when the lesson runs: the lessons list and check torch-free
    from runner.engine.build import schedule_factor

    cfg, _ = lab.config(arm, 0)
    total = per_epoch * int(cfg.trainer.epochs)
    factor = schedule_factor(cfg.schedule, total, per_epoch)
    peak = lab.tuning[arm]["lr"] if arm in lab.tuning else float(cfg.optimizer.lr)
    return [peak * factor(step) for step in range(total)]


def lr_schedules(lesson, lab: Lab) -> Result:
    runs = _by_seed(lesson, lab)
    const, decaying = lesson.constant, list(lesson.decaying)
    tries = len(decaying) if lesson.require == "any" else 1  # "any of k": each at the Bonferroni bar of k tries
    parts = [_paired_acc(paired_greater, runs[arm], runs[const], arm, const, tries=tries) for arm in decaying]
    won = [arm for arm, v in zip(decaying, parts, strict=True) if v.reproduced]
    verdict = all_of(*parts) if lesson.require == "all" else Verdict(
        REPRODUCED if won else NOT_REPRODUCED, "; ".join(v.reason for v in parts))
    rows = [{"schedule": arm, "peak lr (tuned)": f"{lab.tuning[arm]['lr']:.3g}" if arm in lab.tuning else "",
             "status": _statuses(ms), "test acc": _acc_cell(ms), f"- {const} (paired)": _diff_cell(ms, runs[const]),
             "final train loss": _number_cell(ms, "final_train_loss"),
             f"beats {const}": "" if arm == const else ("yes" if arm in won else "no")}
            for arm, ms in runs.items()]
    curves = {}
    for arm, ms in runs.items():  # the steps of an epoch, as the run counted them
        per_epoch = int(ms[0]["steps"]) // max(int(ms[0]["epochs_completed"]), 1)
        curves[arm] = (per_epoch, lr_curve(lab, arm, per_epoch))
    diffs = {arm: _diff_cell(runs[arm], runs[const]) for arm in decaying}
    ahead = [arm for arm, d in diffs.items() if isinstance(d, Stat) and d.mean > 0]
    notes = [f"the claim checked: a decaying schedule beats a constant lr at the same budget "
             f"({'every one' if lesson.require == 'all' else 'at least one'} of {', '.join(decaying)} against "
             f"{const}, test accuracy paired by seed" + (f", each at the bar of {tries} tries" if tries > 1 else "")
             + "); each schedule runs at its own peak lr, tuned on the validation split at equal budget (the "
             "lesson's `tune`), so that no schedule is judged at another's lr",
             f"ahead of {const} on average: {len(ahead)} of the {len(decaying)} decaying schedules"
             + (f" ({', '.join(ahead)})" if ahead else "") + "; the lr curves come from the same code the runs use "
             "(runner.engine.build.schedule_factor)"]
    best = max(ahead, key=lambda arm: diffs[arm].mean, default=None)
    if not won and best is not None:
        d = diffs[best]
        bar = (critical(tries, d.n - 1) if d.n > 1 else critical(tries)) * d.se()
        notes.append(f"not reproduced at this size: the largest gain over the tuned constant lr is {best}'s "
                     f"{d.text()} ({sum(v > 0 for v in d.values)} of {d.n} seeds higher), under the bar of {bar:.2g} "
                     f"it must clear ({tries} tries, {d.n} seeds)" + _flatness(lab, const))
    figure = _curves_figure(lab.figure_path(), _curves(runs), "val_acc", "validation accuracy",
                            "validation accuracy per epoch", lr_curves=curves)
    return Result(list(rows[0]), rows, verdict, notes, figure)


def _flatness(lab: Lab, arm: str) -> str:
    """The range of the arm's tuning trials: where the accuracy barely depends on the lr at this budget, a schedule
    (a way of varying the lr) has little to gain."""
    trials = [t for t in lab.tuning.get(arm, {}).get("trials", []) if t["status"] == "completed"]
    if len(trials) < 2:
        return ""
    accs = [t["val_acc"] for t in trials]
    return (f"; the constant lr's validation accuracy ranged over {max(accs) - min(accs):.3f} across its tuning "
            f"trials ({min(t['lr'] for t in trials):.3g} to {max(t['lr'] for t in trials):.3g})")


def _number_cell(runs: list[dict], key: str):
    """A number of every run over the seeds (a Stat), or each seed's status where a run did not complete."""
    if any(m["status"] != "completed" or m.get(key) is None for m in runs):
        return ", ".join(m["status"] if m.get(key) is None else f"{m[key]:.4g}" for m in runs)
    return Stat([float(m[key]) for m in runs])
