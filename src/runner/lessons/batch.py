"""Lessons on the batch and the loss landscape (CS231n lecture 7; Keskar et al. 2017; Wu & He 2018; Pascanu et al.
2013; Choromanska et al. 2015): how the mini-batch gradient's noise falls with the batch size, which minimum a small
and a large batch end in, what a tiny batch does to batch norm, how clipping tames exploding gradients, and how much
the final loss depends on the seed in a narrow and in a wide net."""

import math
import statistics

from runner.engine.records import read_scalars
from runner.lessons.lab import Lab, save_figure
from runner.lessons.verdict import (
    NOT_REPRODUCED,
    Result,
    Stat,
    Verdict,
    accuracy_noise,
    all_of,
    critical,
    holds,
    paired_greater,
    paired_less,
)

# ---- shared ------------------------------------------------------------------------------------------------------


def _runs(lesson, lab: Lab, arms, at_end=None) -> dict[str, list[dict]]:
    """{arm: [metrics of each seed]}, every arm on the lesson's seeds."""
    return {arm: [lab.run(arm, seed, at_end=at_end) for seed in lesson.seeds] for arm in arms}


def _value(m: dict, key: str) -> float:
    """metrics[key] as a float; nan where the run has none (it diverged or failed before measuring)."""
    value = m.get(key)
    return float(value) if isinstance(value, (int, float)) else math.nan


def _statuses(runs: list[dict]) -> str:
    counts = {}
    for m in runs:
        counts[m["status"]] = counts.get(m["status"], 0) + 1
    return ", ".join(f"{n} {s}" for s, n in counts.items())


def _accuracies(runs: list[dict]):
    """A table cell: the test accuracies' Stat when every run completed, else each run's accuracy or its status (a
    diverged run has no accuracy)."""
    if all(m["status"] == "completed" for m in runs):
        return Stat([_value(m, "test_acc") for m in runs])
    return ", ".join(f"{m['test_acc']:.3g}" if m["status"] == "completed" else m["status"] for m in runs)


def _test_examples(lab: Lab) -> int:
    cfg, _ = lab.config(None, 0)
    if cfg.data.name == "synthetic":
        return int(cfg.data.test_examples)
    return 10_000  # CIFAR-10's test split (load_splits would read the images only to count them)


def _paired_panel(ax, values: dict[str, list[float]], seeds, ylabel: str, title: str, log_y: bool = False) -> None:
    """Each arm a column, each seed a dot, the dots of one seed joined across the arms (the pairs the verdict
    compares); a nan value (no measurement) is left out."""
    arms = list(values)
    for j, seed in enumerate(seeds):
        ys = [values[arm][j] for arm in arms]
        ax.plot(range(len(arms)), ys, "-", color="0.6", lw=1, zorder=1)
        ax.scatter(range(len(arms)), ys, color=f"C{j}", s=30, zorder=2, label=f"seed {seed}")
    ax.set_xticks(range(len(arms)), arms, rotation=15, ha="right")
    ax.set_xlim(-0.5, len(arms) - 0.5)
    ax.set(ylabel=ylabel, title=title)
    if log_y:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


# ---- sharp minima: Keskar et al. 2017 ----------------------------------------------------------------------------


def stability_bound(optimizer: str, lr: float, momentum: float = 0.0) -> float:
    """The largest curvature on which gradient descent with this optimizer (its `optimizer=` choice) is stable:
    2 / lr for plain SGD, 2 (1 + momentum) / lr for heavy-ball momentum (on a quadratic of curvature h the
    iteration's factor reaches -1 at h = 2 (1 + beta) / lr). Full-batch training tends to raise the top Hessian
    eigenvalue up to this bound (Cohen et al. 2021, the edge of stability); inf for the other optimizers."""
    if optimizer == "sgd":
        return 2.0 / lr
    if optimizer == "momentum":
        return 2.0 * (1.0 + momentum) / lr
    return math.inf


def sharp_minima(lesson, lab: Lab) -> Result:
    small, large = lesson.small, lesson.large
    runs = _runs(lesson, lab, [small, large])
    top = {arm: Stat([_value(m, "sharpness_hessian_top") for m in rs]) for arm, rs in runs.items()}
    rise = {arm: Stat([_value(m, "sharpness_loss_increase") for m in rs]) for arm, rs in runs.items()}
    train = {arm: Stat([_value(m, "final_train_loss") for m in rs]) for arm, rs in runs.items()}
    verdict = paired_greater(top[large], top[small], large, small, "top Hessian eigenvalue of the training loss")
    cfg = {arm: lab.config(arm, lesson.seeds[0])[0] for arm in runs}
    optimizer = lab.config(large, lesson.seeds[0])[1]["optimizer"]
    by_rise = paired_greater(rise[large], rise[small], large, small, "mean training-loss increase under random "
                             f"weight perturbations of relative size {float(cfg[large].evaluation.sharpness_radius):g}")
    bound = stability_bound(optimizer, float(cfg[large].optimizer.lr), float(cfg[large].optimizer.get("momentum", 0)))
    rows = [{"arm": arm, "batch": int(cfg[arm].trainer.batch_size), "lr": float(cfg[arm].optimizer.lr),
             "status": _statuses(rs), "top Hessian eigenvalue": top[arm], "loss increase": rise[arm],
             "final train loss": train[arm], "test acc": _accuracies(rs)} for arm, rs in runs.items()]
    notes = [f"at the same lr, {small} ran {int(cfg[small].trainer.epochs)} epochs of batch "
             f"{int(cfg[small].trainer.batch_size)} ({_steps(runs[small])} steps), {large} "
             f"{int(cfg[large].trainer.epochs)} epochs of batch {int(cfg[large].trainer.batch_size)} "
             f"({_steps(runs[large])} steps)"]
    if math.isfinite(bound) and math.isfinite(top[large].mean):
        reached = top[large].mean / bound
        notes.append(f"gradient descent at this lr is stable up to a curvature of {bound:.3g} ({optimizer}, lr "
                     f"{float(cfg[large].optimizer.lr):g}); the top eigenvalue reached {reached:.0%} of it with the "
                     f"large batch and {top[small].mean / bound:.0%} with the small one" + (
                         ": full-batch training climbs to that bound (Cohen et al. 2021, the edge of stability), "
                         "while a small batch's gradient noise keeps it out of such sharp regions (Jastrzebski et al. "
                         "2020)" if reached >= 0.7 else
                         ": the large batch stayed well under it here, so the bound is not what set its curvature"))
    agree = by_rise.reproduced == verdict.reproduced
    notes.append(f"the second measure, the loss increase under random perturbations, {'agrees' if agree else 'differs'}"
                 f": {by_rise.text()}" + ("" if agree else
                                          ". Random directions average the curvature over all directions (about the "
                                          "Hessian's trace, scaled by the weights' norms), the top eigenvalue is the "
                                          "steepest one; Keskar et al.'s sharpness is a maximum over a neighbourhood, "
                                          "closer to the latter"))
    if all(math.isfinite(v) for v in (train[large].mean, train[small].mean, top[large].mean, top[small].mean)):
        lower = small if train[small].mean < train[large].mean else large
        sharper = large if top[large].mean > top[small].mean else small
        told = (f"the {lower} arm ended at the lower training loss ({train[small].text()} {small}, "
                f"{train[large].text()} {large})")
        if sharper == small:
            told += f"; the {small} arm is the sharper one here"
        elif lower == large:
            told += (", where the cross-entropy's curvature shrinks as the predictions grow confident: the large "
                     "batch's larger eigenvalue does not come from having trained less far")
        else:
            told += (": part of the small batch's flatter end may be that it trained further (the cross-entropy's "
                     "curvature shrinks as the predictions grow confident)")
        notes.append(told)
    figure = _sharp_figure(lab, runs, top, rise, bound)
    return Result(list(rows[0]), rows, verdict, notes, figure)


def _steps(runs: list[dict]) -> str:
    """The runs' optimizer steps: one number when they agree."""
    steps = sorted({int(m.get("steps", 0)) for m in runs})
    return ", ".join(str(n) for n in steps)


def _sharp_figure(lab: Lab, runs, top, rise, bound) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seeds = lab.lesson.seeds
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    _paired_panel(axes[0], {a: s.values for a, s in top.items()}, seeds, "top Hessian eigenvalue",
                  "curvature of the final minimum")
    if math.isfinite(bound):
        axes[0].axhline(bound, color="C3", ls="--", lw=1)
        axes[0].annotate(f"stability bound {bound:.3g}", (0, bound), textcoords="offset points", xytext=(0, 4),
                         fontsize=8, color="C3")
    _paired_panel(axes[1], {a: s.values for a, s in rise.items()}, seeds, "mean loss increase",
                  "loss rise under random weight perturbations")
    _loss_curves(axes[2], runs)
    axes[2].set(xlabel="epoch", ylabel="training loss (epoch mean)", title="training loss, every seed")
    axes[2].set_yscale("log")
    axes[2].grid(alpha=0.3)
    axes[2].legend(fontsize=8)
    fig.suptitle("small vs large batch at the same lr (a line joins the two arms of one seed)", fontsize=10)
    return save_figure(fig, lab.figure_path())


# ---- the gradient's noise falls as 1 / B -------------------------------------------------------------------------


def minibatch_gradient_variance(model, x, y, batch_sizes, images: int, min_draws: int, generator, loss_fn,
                                chunk: int = 512) -> dict[int, dict]:
    """For each batch size B: the mean squared distance E ||g_B - g||^2 of the gradient g_B of a mini-batch of B
    examples drawn with replacement from (x, y) from the gradient g over all of them, over max(min_draws,
    images // B) draws, and its standard error. Drawn with replacement, g_B is a mean of B independent per-example
    gradients, so E ||g_B - g||^2 = tr(Sigma) / B exactly, Sigma the per-example gradients' covariance over (x, y).
    The model is measured in eval mode (batch norm on its running statistics, no dropout), where the examples'
    gradients do not depend on one another. loss_fn(outputs, y): the mean loss over a batch."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]

    def gradient(xb, yb):
        grads = torch.autograd.grad(loss_fn(model(xb), yb), params)
        return torch.cat([g.reshape(-1) for g in grads])

    was_training = model.training
    model.eval()
    try:
        full = sum(gradient(xb, yb) * len(yb) for xb, yb in zip(x.split(chunk), y.split(chunk), strict=True))
        full = full / len(y)
        out = {}
        for b in batch_sizes:
            draws = max(int(min_draws), int(images) // int(b))
            distances = torch.empty(draws, dtype=torch.float64)
            for k in range(draws):
                idx = torch.randint(len(y), (int(b),), generator=generator).to(y.device)
                distances[k] = (gradient(x[idx], y[idx]) - full).pow(2).sum().double()
            out[int(b)] = {"mean": distances.mean().item(), "se": (distances.std() / math.sqrt(draws)).item(),
                           "draws": draws}
    finally:
        model.train(was_training)
    return out


def log_slope(sizes, values) -> float:
    """The least-squares slope of log(value) against log(size): -1 for a value proportional to 1 / size."""
    import numpy as np

    return float(np.polyfit(np.log(np.asarray(sizes, float)), np.log(np.asarray(values, float)), 1)[0])


def gradient_noise(lesson, lab: Lab) -> Result:
    sizes = sorted(int(b) for b in lesson.batch_sizes)

    def measure(run):
        import torch

        model = run.model
        x = run.speed.layout(run.preprocess(run.splits.train_x[:lesson.pool]))
        y = run.splits.train_y[:lesson.pool]
        generator = torch.Generator().manual_seed(int(run.cfg.seed))
        return {"pool": len(y), "sizes": minibatch_gradient_variance(
            model, x, y, sizes, lesson.images, lesson.min_draws, generator,
            lambda out, yb: run.objective.loss(out.float(), None, yb))}

    runs = [lab.run(None, seed, name="trained", at_end=measure) for seed in lesson.seeds]
    found = [m["at_end"]["sizes"] for m in runs if m.get("at_end")]
    if len(found) < len(runs):
        verdict = Verdict(NOT_REPRODUCED, "a run ended before its gradients could be measured")
        return Result(["batch size"], [], verdict, [], None)
    slopes = Stat([log_slope(sizes, [f[b]["mean"] for b in sizes]) for f in found])
    n = slopes.n
    z = critical(1, n - 1) if n > 1 and slopes.std > 0 else 0.0
    low, high = slopes.mean - z * slopes.se(), slopes.mean + z * slopes.se()
    tol = float(lesson.tolerance)
    told = (f"slope of log E||g_B - g||^2 against log B: {slopes.text()} over {n} seeds, 95% interval "
            f"[{low:.3f}, {high:.3f}]")
    verdict = holds(-1 - tol <= low and high <= -1 + tol,
                    f"{told}, within {tol:g} of -1 (the variance falls as 1/B; 1/sqrt(B) would give -0.5)",
                    f"{told}: not within {tol:g} of -1 on both ends")
    scaled = {b: Stat([f[b]["mean"] * b for f in found]) for b in sizes}
    rows = [{"batch size": b, "draws": found[0][b]["draws"], "E||g_B - g||^2": Stat([f[b]["mean"] for f in found]),
             "B x E||g_B - g||^2": scaled[b]} for b in sizes]
    first, last = scaled[sizes[0]].mean, scaled[sizes[-1]].mean
    notes = [f"B x E||g_B - g||^2 estimates tr(Sigma), the per-example gradients' total variance: {first:.4g} at B = "
             f"{sizes[0]} and {last:.4g} at B = {sizes[-1]} ({last / first - 1:+.0%}); constant means 1/B exactly",
             f"measured on each seed's network after {int(lab.config(None, lesson.seeds[0])[0].trainer.epochs)} "
             f"epoch(s) of training, in eval mode, on {runs[0]['at_end']['pool']} training images (mini-batches "
             "drawn from them with replacement)",
             "why larger batches allow larger lr: a step moves by lr g with a noise of covariance lr^2 Sigma / B, so "
             "one step with a k-times larger batch and a k-times larger lr moves as far, with as much noise, as k "
             "steps of the small batch at the small lr (k lr^2 Sigma / B both): the linear scaling rule (Goyal et "
             "al. 2017); lr / B is the noise scale (Smith & Le 2018)"]
    figure = _noise_figure(lab, sizes, found, lesson.seeds)
    return Result(list(rows[0]), rows, verdict, notes, figure)


def _noise_figure(lab: Lab, sizes, found, seeds) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(6.8, 4.6))
    for j, (seed, f) in enumerate(zip(seeds, found, strict=True)):
        means = np.array([f[b]["mean"] for b in sizes])
        errors = np.array([f[b]["se"] for b in sizes])
        slope = log_slope(sizes, means)
        fit = np.polyfit(np.log(sizes), np.log(means), 1)
        ax.errorbar(sizes, means, yerr=2 * errors, fmt="o", color=f"C{j}", ms=5, capsize=3,
                    label=f"seed {seed}: slope {slope:.3f}")
        ax.plot(sizes, np.exp(np.polyval(fit, np.log(sizes))), "-", color=f"C{j}", lw=1, alpha=0.7)
    start = np.mean([f[sizes[0]]["mean"] for f in found])
    ax.plot(sizes, start * sizes[0] / np.asarray(sizes, float), "k--", lw=1, label="1/B (slope -1)")
    ax.plot(sizes, start * np.sqrt(sizes[0] / np.asarray(sizes, float)), ":", color="0.5", lw=1,
            label="1/sqrt(B) (slope -0.5)")
    ax.set(xscale="log", yscale="log", xlabel="batch size B", ylabel="E ||g_B - g||^2",
           title="the mini-batch gradient's squared distance from the full gradient\n(dots: mean over draws, bars: "
                 "2 standard errors; lines: each seed's fit)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return save_figure(fig, lab.figure_path())


# ---- batch norm at a tiny batch: Wu & He 2018 --------------------------------------------------------------------


def layer_norm_small_batch(lesson, lab: Lab) -> Result:
    bn_small, other_small = lesson.small
    bn_normal, other_normal = lesson.normal
    runs = _runs(lesson, lab, [bn_small, other_small, bn_normal, other_normal])
    acc = {arm: Stat([_value(m, "test_acc") for m in rs]) for arm, rs in runs.items()}
    examples = _test_examples(lab)
    noise = accuracy_noise(acc[other_small].mean if math.isfinite(acc[other_small].mean) else 0.5, examples)
    tiny = paired_greater(acc[other_small], acc[bn_small], other_small, bn_small, "test accuracy", floor=noise)
    worse = paired_less(acc[bn_normal], acc[other_normal], bn_normal, other_normal, "test accuracy", floor=noise,
                        margin=lesson.tolerance)
    gap = Stat([a - b for a, b in zip(acc[bn_normal].values, acc[other_normal].values, strict=True)])
    fine = holds(not worse.reproduced,
                 f"at the normal batch batch norm is as good: {bn_normal} {acc[bn_normal].text()} vs {other_normal} "
                 f"{acc[other_normal].text()}, paired difference {gap.text()} (not worse by more than "
                 f"{lesson.tolerance:g} beyond the spread)",
                 f"at the normal batch batch norm is worse too: {worse.reason}")
    verdict = all_of(tiny, fine)
    cfg = {arm: lab.config(arm, lesson.seeds[0])[0] for arm in runs}
    rows = [{"arm": arm, "norm": str(cfg[arm].norm.name), "batch": int(cfg[arm].trainer.batch_size),
             "lr": _lr(cfg[arm]), "status": _statuses(rs), "test acc": _accuracies(rs)} for arm, rs in runs.items()]
    drop = {arm: Stat([a - b for a, b in zip(acc[s].values, acc[n].values, strict=True)])
            for arm, s, n in (("batch", bn_small, bn_normal), ("other", other_small, other_normal))}
    name = str(cfg[other_small].norm.name)
    notes = [f"going from batch {int(cfg[bn_normal].trainer.batch_size)} to {int(cfg[bn_small].trainer.batch_size)} "
             f"changed batch norm's test accuracy by {drop['batch'].text()} and {name} norm's by "
             f"{drop['other'].text()} (paired by seed; equal epochs, so the tiny batch takes more, smaller steps: "
             "lr x batch / trainer.lr_reference_batch_size)",
             f"batch norm normalizes each unit with the mean and variance of the batch: over "
             f"{int(cfg[bn_small].trainer.batch_size)} examples these are noisy (over 2, every normalized value is "
             f"+-1), and the running averages used at test differ from what training saw; {name} norm normalizes "
             "each example on its own, the same in training and at test"]
    figure = _norm_figure(lab, acc, runs, lesson)
    return Result(list(rows[0]), rows, verdict, notes, figure)


def _lr(cfg) -> str:
    lr = float(cfg.optimizer.lr)
    if cfg.trainer.lr_reference_batch_size:
        lr *= int(cfg.trainer.batch_size) / int(cfg.trainer.lr_reference_batch_size)
    return f"{lr:.3g}"


def _norm_figure(lab: Lab, acc, runs, lesson) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, (bn, other), where in ((axes[0], lesson.small, "tiny batch"), (axes[1], lesson.normal, "normal batch")):
        _paired_panel(ax, {bn: acc[bn].values, other: acc[other].values}, lesson.seeds, "test accuracy", where)
    low = min(min(s.values) for s in acc.values() if s.n)
    high = max(max(s.values) for s in acc.values() if s.n)
    for ax in axes:
        ax.set_ylim(low - 0.05, high + 0.05)
    fig.suptitle("batch norm vs a per-example norm at a tiny and a normal batch (a line joins one seed's pair)",
                 fontsize=10)
    return save_figure(fig, lab.figure_path())


# ---- gradient clipping: Pascanu et al. 2013 ----------------------------------------------------------------------


def clipping_outcomes(clipped: list[dict], unclipped: list[dict], chance: float, min_gain: float,
                      margin: float) -> list[str]:
    """Per seed (the two lists share their seeds): ok when the clipped run completed and learned (test accuracy at
    least chance + min_gain) and the unclipped one diverged or reached an accuracy lower by more than margin;
    otherwise what failed."""
    out = []
    for c, u in zip(clipped, unclipped, strict=True):
        if c["status"] != "completed":
            out.append(f"the clipped run {c['status']}")
        elif not _value(c, "test_acc") >= chance + min_gain:
            out.append(f"the clipped run stayed near chance ({_value(c, 'test_acc'):.3g})")
        elif u["status"] == "completed" and not _value(u, "test_acc") < _value(c, "test_acc") - margin:
            out.append(f"the unclipped run trained as well ({_value(u, 'test_acc'):.3g} vs "
                       f"{_value(c, 'test_acc'):.3g})")
        else:
            out.append("ok")
    return out


def _told(m: dict) -> str:
    """A run's test accuracy, or how it ended when it did not complete."""
    return f"{m['test_acc']:.3g}" if m["status"] == "completed" else str(m["status"])


def grad_clipping(lesson, lab: Lab) -> Result:
    clipped, unclipped = lesson.clipped, lesson.unclipped
    runs = _runs(lesson, lab, [unclipped, clipped])
    gain = float((lesson.get("gates") or {}).get("min_gain", 0.05))
    chance = 1.0 / int(lab.config(clipped, lesson.seeds[0])[0].data.num_classes)
    outcome = clipping_outcomes(runs[clipped], runs[unclipped], chance, gain, lesson.margin)
    per_seed = "; ".join(f"seed {s}: {unclipped} {_told(u)}, {clipped} {_told(c)}"
                         for s, u, c in zip(lesson.seeds, runs[unclipped], runs[clipped], strict=True))
    good = sum(o == "ok" for o in outcome)
    verdict = holds(good == len(outcome),
                    f"in every seed the clipped run trains and the unclipped one diverges or is worse by more than "
                    f"{lesson.margin:g} ({per_seed})",
                    f"{len(outcome) - good} of {len(outcome)} seeds do not show it: " + "; ".join(
                        f"seed {s}: {o}" for s, o in zip(lesson.seeds, outcome, strict=True) if o != "ok")
                    + f" ({per_seed})")
    cfg = lab.config(clipped, lesson.seeds[0])[0]
    rows = [{"arm": arm, "status": _statuses(rs), "test acc": _accuracies(rs),
             "epochs done": ", ".join(str(m.get("epochs_completed", 0)) for m in rs)} for arm, rs in runs.items()]
    diverged = [m for m in runs[unclipped] if m["status"] == "diverged"]
    notes = [f"clipping rescales the whole gradient to norm {float(cfg.regularization.grad_clip.threshold):g} "
             "whenever it is longer (regularization=[grad_clip]): a step can never be longer than lr x threshold "
             "(times momentum's build-up), however steep the wall the net runs into; the direction is kept"]
    windows = [v for m in runs[clipped] for v in scalar_series(m["run_dir"], "train/grad_norm")[1]]
    threshold = float(cfg.regularization.grad_clip.threshold)
    if windows:
        above = sum(v > threshold for v in windows)
        notes.append(f"the clipped runs' gradient norm before clipping (the mean of each window of "
                     f"{int(cfg.trainer.log_every_steps)} steps) was above the threshold in {above} of {len(windows)} "
                     f"windows (median {statistics.median(windows):.3g}): "
                     + ("clipping acted through most of training, where it works like a smaller lr"
                        if above > len(windows) / 2 else "in most windows the gradient stayed under it"))
    if diverged:
        notes.append(f"{len(diverged)} of {len(runs[unclipped])} unclipped runs diverged: " + "; ".join(
            str(m.get("message", "")).split(". ")[0] for m in diverged[:2]))
    else:
        notes.append("no unclipped run diverged here: the comparison rests on accuracy alone")
    figure = _clip_figure(lab, runs, lesson)
    return Result(list(rows[0]), rows, verdict, notes, figure)


def scalar_series(run_dir, tag: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one scalar tag (a name of runner.engine.records.TAGS) in a run's TensorBoard events."""
    points = read_scalars(run_dir, tag)
    return [p[0] for p in points], [p[1] for p in points]


def _clip_figure(lab: Lab, runs, lesson) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.4))
    for i, (arm, rs) in enumerate(runs.items()):
        for j, m in enumerate(rs):
            steps, losses = scalar_series(m["run_dir"], "train/loss")
            style = ["-", "--", ":", "-."][j % 4]
            axes[0].plot(steps, losses, style, color=f"C{i}", label=f"{arm}, seed {lesson.seeds[j]}")
            if m["status"] == "diverged" and steps:
                axes[0].plot(steps[-1], losses[-1], "x", color="C3", ms=10, mew=2)
            if arm == lesson.clipped:
                steps, norms = scalar_series(m["run_dir"], "train/grad_norm")
                axes[1].plot(steps, norms, style, color=f"C{i}", label=f"seed {lesson.seeds[j]}")
    axes[0].set(xlabel="step", ylabel="training loss (each step)", yscale="log",
                title="training loss (x: the last window before the run diverged)")
    threshold = float(lab.config(lesson.clipped, lesson.seeds[0])[0].regularization.grad_clip.threshold)
    axes[1].axhline(threshold, color="k", ls="--", lw=1, label=f"clip threshold {threshold:g}")
    axes[1].set(xlabel="step", ylabel="gradient norm before clipping", yscale="log",
                title=f"{lesson.clipped}: the gradient's norm before it is clipped")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return save_figure(fig, lab.figure_path())


# ---- the seed's spread at two widths: Choromanska et al. 2015 ----------------------------------------------------


def training_loss(run, images: int) -> float:
    """The mean cross-entropy of the trained model on its first `images` training images, in eval mode and without
    augmentation: the loss of the minimum the run ended in (not the running mean of the last epoch)."""
    x, y = run.splits.train_x[:images], run.splits.train_y[:images]
    model = run.model
    return float(run.objective.evaluate(model, run.preprocess, x, y, int(run.cfg.trainer.eval_batch_size))["loss"])


def spread_greater(a: list[float], b: list[float]) -> dict:
    """Is the spread of the values `a` larger than that of `b`? Each value's absolute deviation from its own group's
    mean (Levene's deviations), compared by the exact permutation test of their difference in means: every split of
    the pooled deviations into groups of the two sizes is as likely if the spreads are equal, and p is the share of
    splits whose difference is at least the one measured (no normal values assumed; with 4 + 4 seeds the smallest p
    is 1/70). Beside it, one-sided: the Brown-Forsythe test (Levene's test about the medians) and the F-test of the
    variance ratio (which assumes normal values). Returns the three p-values and the ratio of the standard
    deviations."""
    import numpy as np
    from scipy import stats

    dev_a = [abs(v - statistics.fmean(a)) for v in a]
    dev_b = [abs(v - statistics.fmean(b)) for v in b]
    exact = stats.permutation_test((dev_a, dev_b), lambda x, y, axis: np.mean(x, axis=axis) - np.mean(y, axis=axis),
                                   permutation_type="independent", alternative="greater", n_resamples=np.inf,
                                   vectorized=True)
    _, p = stats.levene(a, b, center="median")
    wider = statistics.fmean(abs(v - statistics.median(a)) for v in a) > statistics.fmean(
        abs(v - statistics.median(b)) for v in b)
    ratio = statistics.variance(a) / statistics.variance(b) if statistics.variance(b) > 0 else math.inf
    return {"p_permutation": float(exact.pvalue), "p_brown_forsythe": float(p / 2 if wider else 1 - p / 2),
            "p_f": float(stats.f.sf(ratio, len(a) - 1, len(b) - 1)) if math.isfinite(ratio) else 0.0,
            "std_ratio": math.sqrt(ratio)}


def seed_variance(lesson, lab: Lab) -> Result:
    narrow, wide = lesson.narrow, lesson.wide
    runs = _runs(lesson, lab, [narrow, wide], at_end=lambda run: training_loss(run, lesson.loss_images))
    loss = {arm: Stat([float(m["at_end"]) if m.get("at_end") is not None else math.nan for m in rs])
            for arm, rs in runs.items()}
    if not all(math.isfinite(v) for s in loss.values() for v in s.values):
        verdict = Verdict(NOT_REPRODUCED, "a run ended without a final training loss")
        return Result(["arm"], [], verdict, [], None)
    test = spread_greater(loss[narrow].values, loss[wide].values)
    alpha = float(lesson.alpha)
    told = (f"final training loss over {len(lesson.seeds)} seeds: {narrow} {loss[narrow].text(4)}, {wide} "
            f"{loss[wide].text(4)}; std ratio {test['std_ratio']:.3g}; the seeds' absolute deviations from their "
            f"arm's mean, exact permutation test p = {test['p_permutation']:.3g}")
    verdict = holds(test["p_permutation"] < alpha, f"{told} < {alpha:g}: the {wide} net's loss varies less",
                    f"{told}, not below {alpha:g}")
    cfg = {arm: lab.config(arm, lesson.seeds[0])[0] for arm in runs}
    rows = [{"arm": arm, "width": int(cfg[arm].model.width), "params": int(rs[0].get("model_params") or 0),
             "status": _statuses(rs), "final train loss": loss[arm], "std": loss[arm].std,
             "std / mean": loss[arm].std / loss[arm].mean if loss[arm].mean > 0 else math.nan,
             "test acc": _accuracies(rs)} for arm, rs in runs.items()]
    cv = {arm: loss[arm].std / loss[arm].mean for arm in runs}
    notes = [f"beside it, one-sided: the Brown-Forsythe test (deviations from the medians, compared by a t-test) "
             f"gives p = {test['p_brown_forsythe']:.3g}, the F-test of the variance ratio p = {test['p_f']:.3g}. The "
             "verdict takes the permutation test: exact for a few seeds and with no normal losses assumed (the "
             "F-test assumes them; the Brown-Forsythe test's t-test is approximate with this few seeds)",
             f"the spread compared is that of the loss itself (Choromanska et al. 2015, fig. 2); relative to the "
             f"mean (the coefficient of variation, std / mean) it is {cv[narrow]:.3g} for {narrow} and "
             f"{cv[wide]:.3g} for {wide}: " + (
                 f"{wide}'s is smaller too, so its smaller spread is not only a matter of its lower loss"
                 if cv[wide] < cv[narrow] and loss[wide].mean < loss[narrow].mean else
                 f"{wide}'s is smaller too" if cv[wide] < cv[narrow] else
                 f"{wide}'s is not smaller: relative to its mean it varies as much or more")]
    falling = {arm: _last_drop(rs) for arm, rs in runs.items()}
    if all(math.isfinite(v) for v in falling.values()):
        change = {arm: round(-v, 2) + 0.0 for arm, v in falling.items()}  # + 0.0: no "-0%"
        notes.append(f"in the last epoch the training loss changed by {change[narrow]:+.0%} ({narrow}) and "
                     f"{change[wide]:+.0%} ({wide}) on average over the seeds: "
                     + ("both had about settled" if max(falling.values()) < 0.05 else
                        "not every arm had settled into its minimum, so its spread includes how fast each seed trains"
                        "; more epochs (-- trainer.epochs=...) or --full let them settle"))
    notes.append(f"the loss is measured on the first {int(lesson.loss_images)} training images in eval mode after "
                 "the last epoch; seeds change the initial weights and the order of the batches")
    figure = _spread_figure(lab, runs, loss, lesson)
    return Result(list(rows[0]), rows, verdict, notes, figure)


def _last_drop(runs: list[dict]) -> float:
    """The mean relative fall of the epoch's training loss from the second-last epoch to the last (nan with fewer
    than two epochs)."""
    drops = [1 - h[-1]["train_loss"] / h[-2]["train_loss"] for m in runs if len(h := m.get("history") or []) >= 2]
    return statistics.fmean(drops) if drops else math.nan


def _spread_figure(lab: Lab, runs, loss, lesson) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.4))
    for i, s in enumerate(loss.values()):
        for j, (seed, v) in enumerate(zip(lesson.seeds, s.values, strict=True)):
            axes[0].scatter(i + 0.06 * (j - (s.n - 1) / 2), v, color=f"C{j}", s=30, zorder=2,
                            label=f"seed {seed}" if i == 0 else None)
        axes[0].errorbar(i + 0.3, s.mean, yerr=s.std, fmt="s", color="k", capsize=4, ms=4)
        axes[0].annotate(f"std {s.std:.3g}", (i + 0.3, s.mean), textcoords="offset points", xytext=(6, 0),
                         fontsize=8)
    axes[0].set_xticks(range(len(loss)), list(loss))
    axes[0].set_xlim(-0.5, len(loss) - 0.2)
    axes[0].set(ylabel="final training loss", yscale="log", title="each seed's final training loss (black: mean "
                "and 1 std)")
    _loss_curves(axes[1], runs)
    axes[1].set(xlabel="epoch", ylabel="training loss (epoch mean)", yscale="log",
                title="training loss per epoch, every seed")
    for ax in axes:
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    return save_figure(fig, lab.figure_path())


def _loss_curves(ax, runs: dict[str, list[dict]]) -> None:
    """Each run's training loss per epoch (its history), one colour per arm, every seed drawn."""
    for i, (arm, rs) in enumerate(runs.items()):
        for j, m in enumerate(rs):
            losses = [h["train_loss"] for h in m.get("history") or []]
            ax.plot(range(1, len(losses) + 1), losses, color=f"C{i}", alpha=0.75, marker="o", ms=2.5,
                    label=arm if j == 0 else None)
