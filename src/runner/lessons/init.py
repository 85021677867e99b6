"""Lessons on initialization and activations (CS231n "Training Neural Networks I"): how the initial weights set the
scale of the signal through depth, why they must be random, what the first loss should be, and how ReLUs die and
sigmoids saturate. Most measure an untrained network on one batch (no training: seconds); two train real runs."""

import math

from runner.lessons.lab import Lab, bar_figure, save_figure
from runner.lessons.verdict import Result, Stat, all_of, greater, holds, less

# ---- measuring --------------------------------------------------------------------------------------------------


def activation_outputs(model, x) -> list[tuple[str, str, "object"]]:
    """(name, kind, output) of every activation layer of `model` (in forward order) on the batch x, in training
    mode (as at step 0 of a run), without gradients."""
    import torch

    # torch only when the lesson runs: the lessons list and check torch-free
    from runner.nets.diagnostics import is_activation

    found, handles = [], []
    for name, module in model.named_modules():
        if is_activation(module):
            kind = type(module).__name__.lower()
            handles.append(module.register_forward_hook(
                lambda m, i, out, name=name, kind=kind: found.append((name, kind, out.detach().float()))))
    model.train()
    try:
        with torch.no_grad():
            logits = model(x)
    finally:
        for h in handles:
            h.remove()
    found.append(("logits", "logits", logits.detach().float()))
    return found


def depth_stds(model, x) -> list[float]:
    """The std of each activation layer's output on the batch x, first hidden layer to last."""
    return [float(out.std()) for _, kind, out in activation_outputs(model, x) if kind != "logits"]


def unit_spread(run_or_model) -> float:
    """The largest distance between two units' incoming weights (rows of a Linear, filters of a conv) over the
    hidden layers (every conv/linear but the output layer), relative to the mean norm of the units' weights:
    0 when every unit of every hidden layer is the same (symmetry never broken)."""
    import torch
    from torch import nn

    model = getattr(run_or_model, "model", run_or_model)
    layers = [m for m in model.modules() if isinstance(m, nn.Linear | nn.modules.conv._ConvNd)][:-1]
    spread = 0.0
    with torch.no_grad():
        for m in layers:
            w = m.weight.detach().float().reshape(m.weight.shape[0], -1)
            scale = w.norm(dim=1).mean().clamp_min(1e-12)
            spread = max(spread, float(torch.cdist(w, w, compute_mode="donot_use_mm_for_euclid_dist").max() / scale))
    return spread


def dead_relu_fraction(run, n: int = 1024) -> float:
    """The fraction of ReLU units (features or channels) of the trained run that are never positive on its first
    n training images: dead units, which get no gradient again."""
    x = run.preprocess(run.splits.train_x[:n])
    return never_positive([out for _, kind, out in activation_outputs(run.model, x) if kind == "relu"])


def never_positive(outs) -> float:
    """The fraction of units (features or channels: dim 1) among the layer outputs `outs` that are never positive,
    each layer weighted by its units."""
    # torch only when the lesson runs: the lessons list and check torch-free
    from runner.nets.diagnostics import dead_fraction

    units = sum(o.shape[1] for o in outs)
    return sum(float(dead_fraction(o)) * o.shape[1] for o in outs) / max(units, 1)


def _finite(values: list[float]) -> list[float]:
    """The values of the runs that ended with a model to measure (a diverged run gives nan)."""
    return [v for v in values if math.isfinite(v)]


def _stds_figure(path, stds: dict[str, list[list[float]]], title: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for i, (arm, runs) in enumerate(stds.items()):
        values = np.array(runs)
        mean = values.mean(axis=0)
        layers = np.arange(1, values.shape[1] + 1)
        style = "-" if "relu" in arm else "--"
        ax.plot(layers, mean, style, color=f"C{i}", marker="o", ms=4, label=arm)
        if len(runs) > 1:
            ax.fill_between(layers, values.min(axis=0), values.max(axis=0), color=f"C{i}", alpha=0.2)
    ax.set(yscale="log", xlabel="hidden layer (activation output)", ylabel="std of the activations (log scale)",
           title=title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, ncol=2)
    return save_figure(fig, path)


# ---- the lessons -------------------------------------------------------------------------------------------------


def init_depth_std(lesson, lab: Lab) -> Result:
    """Per-layer activation std of a deep MLP at init, per init x activation; the std ratio per layer."""
    x, _ = lab.batch(None, lesson.seeds[0], lesson.images)  # the same images for every arm (no arm changes data)
    stds = {arm: [depth_stds(lab.model(arm, seed)[0], x) for seed in lesson.seeds] for arm in lesson.arms}

    def factor_from(start: int) -> dict[str, Stat]:
        # The per-layer factor: the geometric mean of std(layer k+1) / std(layer k) from layer `start` (from 0) on.
        return {arm: Stat([(s[-1] / s[start]) ** (1 / (len(s) - 1 - start)) if s[start] > 0 else 0.0 for s in runs])
                for arm, runs in stds.items()}

    depth = len(next(iter(stds.values()))[0])
    whole, factor = factor_from(0), factor_from(depth // 2)
    last = {arm: Stat([s[-1] for s in runs]) for arm, runs in stds.items()}
    lo, hi = lesson.steady
    collapsed = [a for a in lesson.collapse_arms if max(last[a].values) < lesson.collapse_std]
    steady = [a for a in lesson.steady_arms if lo <= min(factor[a].values) and max(factor[a].values) <= hi]
    verdict = all_of(
        holds(len(collapsed) == len(lesson.collapse_arms),
              f"std 0.01 collapses: last-layer std {', '.join(f'{a} {last[a].text()}' for a in lesson.collapse_arms)}"
              f" (below {lesson.collapse_std:g})",
              f"std 0.01 does not collapse below {lesson.collapse_std:g} in "
              f"{', '.join(a for a in lesson.collapse_arms if a not in collapsed)}"),
        holds(len(steady) == len(lesson.steady_arms),
              f"steady (per-layer std factor over the second half in [{lo:g}, {hi:g}]): "
              + ", ".join(f"{a} {factor[a].text()}" for a in lesson.steady_arms),
              "not steady: " + ", ".join(f"{a} {factor[a].text()}" for a in lesson.steady_arms if a not in steady)
              + f" (per-layer std factor outside [{lo:g}, {hi:g}])"),
        less(factor[lesson.halving_arm], factor[lesson.halving_reference], lesson.halving_arm,
             lesson.halving_reference, "per-layer std factor", margin=lesson.halving_margin),
    )
    rows = [{"init x activation": arm, "std layer 1": Stat([s[0] for s in stds[arm]]), f"std layer {depth}": last[arm],
             "per-layer factor": whole[arm], f"factor, layers {depth // 2 + 1}-{depth}": factor[arm]}
            for arm in lesson.arms]
    notes = [f"{depth} hidden layers; the per-layer factor is the geometric mean of std(k+1) / std(k) over all "
             f"layers and over the second half (layers {depth // 2 + 1}-{depth}), which the verdict uses: tanh + "
             "Xavier does shrink, but slowly and ever more slowly (about 1/sqrt(layer) in std: tanh' < 1 away from "
             "0), where a wrong scale shrinks or grows by the same factor at every layer. Variance theory: 0.01 x sqrt(width) per layer for std 0.01 (x 1/sqrt(2) more with ReLU), 1 for He + "
             "ReLU, 1/sqrt(2) = 0.71 for Xavier + ReLU (ReLU zeroes half the variance that Xavier does not make up "
             "for); tanh is near-linear around 0, so Xavier (gain 1) keeps it, slightly shrinking as tanh squashes",
             "a run shows the same at step 0 in TensorBoard: diag/act_std_by_layer (Images) and diag/act_std/*"]
    figure = _stds_figure(lab.figure_path(), stds, f"activation std by depth at init, {depth}-layer MLP "
                                                   f"(band: min-max over {len(lesson.seeds)} seeds)")
    return Result(list(rows[0]), rows, verdict, notes, figure)


def constant_init_symmetry(lesson, lab: Lab) -> Result:
    """Train with init=constant and with he_normal; the spread between units of each hidden layer at the end."""
    spread = {arm: [] for arm in lesson.arms}
    acc = {arm: [] for arm in lesson.arms}
    for arm in lesson.arms:
        for seed in lesson.seeds:
            m = lab.run(arm, seed, at_end=unit_spread)
            spread[arm].append(m["at_end"] if m["at_end"] is not None else math.nan)
            acc[arm].append(m.get("test_acc", math.nan))
    spread = {a: Stat(_finite(v)) for a, v in spread.items()}
    acc = {a: Stat(_finite(v)) for a, v in acc.items()}
    same, broken = lesson.symmetric_arm, lesson.random_arm
    verdict = all_of(
        holds(max(spread[same].values, default=math.inf) <= lesson.identical_below,
              f"{same}: units of each hidden layer still identical after training (largest relative distance "
              f"{max(spread[same].values, default=math.inf):.2g} <= {lesson.identical_below:g})",
              f"{same}: units differ after training (largest relative distance {max(spread[same].values, default=math.inf):.2g} > "
              f"{lesson.identical_below:g})"),
        greater(spread[broken], spread[same], broken, same, "largest relative distance between units",
                margin=lesson.identical_below))
    rows = [{"init": arm, "unit distance / unit norm": spread[arm], "test acc": acc[arm]} for arm in lesson.arms]
    notes = ["identical units get identical gradients, so no step (and no amount of training) separates them: the "
             "hidden layers act as one unit each. A run with init=constant logs a warning at its first diagnostic "
             "step. Dropout would break the tie (it is off here)"]
    figure = bar_figure(lab.figure_path(), spread, "largest distance between two units' weights / mean unit norm",
                        "units of the hidden layers after training", log_y=False)
    return Result(list(rows[0]), rows, verdict, notes, figure)


def initial_loss(lesson, lab: Lab) -> Result:
    """The loss of an untrained network on a batch, against ln(classes)."""
    import torch
    from torch.nn import functional as F

    losses = {arm: [] for arm in lesson.arms}
    classes = None
    x, y = lab.batch(None, lesson.seeds[0], lesson.images)  # the same images for every arm and seed
    for arm in lesson.arms:
        for seed in lesson.seeds:
            model, cfg = lab.model(arm, seed)
            model.train()
            with torch.no_grad():
                losses[arm].append(float(F.cross_entropy(model(x).float(), y)))
            classes = int(cfg.data.num_classes)
    expected = math.log(classes)
    stats = {a: Stat(v) for a, v in losses.items()}
    small = stats[lesson.small_arm]
    off = abs(small.mean - expected)
    verdict = holds(off + 2 * small.se() <= lesson.tolerance,
                    f"{lesson.small_arm}: initial loss {small.text()} vs ln {classes} = {expected:.4f} (off by "
                    f"{off:.3g}, within {lesson.tolerance:g} with 2 standard errors)",
                    f"{lesson.small_arm}: initial loss {small.text()} vs ln {classes} = {expected:.4f}: off by "
                    f"{off:.3g} (+ 2 standard errors {2 * small.se():.2g}), more than {lesson.tolerance:g}")
    rows = [{"init": arm, "initial loss": stats[arm], f"ln {classes}": expected,
             "loss - ln C": Stat([v - expected for v in losses[arm]])} for arm in lesson.arms]
    notes = ["small weights give near-zero logits, so the softmax is uniform: loss = -ln(1/C) = ln C. A loss far "
             "above it at step 0 means large initial logits (a too-large init or unscaled inputs); runs check it "
             "(diag/initial_loss, and a warning beyond 25%)"]
    figure = bar_figure(lab.figure_path(), stats, "cross-entropy loss at step 0",
                        f"initial loss on {lesson.images} images (ln {classes} = {expected:.3f})")
    return Result(list(rows[0]), rows, verdict, notes, figure)


def dead_relu(lesson, lab: Lab) -> Result:
    """Train at a normal and at a too-high lr; the fraction of ReLU units that never fire on a batch afterwards."""
    dead = {arm: [] for arm in lesson.arms}
    acc = {arm: [] for arm in lesson.arms}
    status = {arm: [] for arm in lesson.arms}
    for arm in lesson.arms:
        for seed in lesson.seeds:
            m = lab.run(arm, seed, at_end=lambda run: dead_relu_fraction(run, lesson.images))
            dead[arm].append(m["at_end"] if m["at_end"] is not None else math.nan)
            acc[arm].append(m.get("test_acc", math.nan))
            status[arm].append(m["status"])
    dead = {a: Stat(_finite(v)) for a, v in dead.items()}
    acc = {a: Stat(_finite(v)) for a, v in acc.items()}
    verdict = greater(dead[lesson.high_arm], dead[lesson.normal_arm], lesson.high_arm, lesson.normal_arm,
                      f"fraction of dead ReLU units on {lesson.images} training images", margin=lesson.margin)
    rows = [{"lr": arm, "dead ReLU fraction": dead[arm], "test acc": acc[arm], "status": ", ".join(status[arm])}
            for arm in lesson.arms]
    notes = ["a large update pushes a unit's bias and weights to where its input is negative for every image: it "
             "outputs 0, gets gradient 0 and never recovers. diag/dead_frac/* in TensorBoard shows when they die",
             "a diverged run has no trained model to measure: it is left out of the numbers (see status)"]
    figure = bar_figure(lab.figure_path(), dead, "fraction of ReLU units never active on the batch",
                        "dead ReLUs after training")
    return Result(list(rows[0]), rows, verdict, notes, figure)


def saturation(lesson, lab: Lab) -> Result:
    """Fraction of saturated sigmoid/tanh values at init, large init vs Xavier."""
    # torch only when the lesson runs: the lessons list and check torch-free
    from runner.nets.diagnostics import saturated_fraction

    frac = {arm: [] for arm in lesson.arms}
    x, _ = lab.batch(None, lesson.seeds[0], lesson.images)  # the same images for every arm
    for arm in lesson.arms:
        for seed in lesson.seeds:
            model, _ = lab.model(arm, seed)
            outs = [(kind, out) for _, kind, out in activation_outputs(model, x) if kind in ("tanh", "sigmoid")]
            frac[arm].append(sum(float(saturated_fraction(o, k)) * o.numel() for k, o in outs)
                             / sum(o.numel() for _, o in outs))
    stats = {a: Stat(v) for a, v in frac.items()}
    verdict = all_of(*(greater(stats[large], stats[xavier], large, xavier, "saturated fraction",
                               margin=lesson.margin) for large, xavier in lesson.pairs.items()))
    rows = [{"init x activation": arm, "saturated fraction": stats[arm]} for arm in lesson.arms]
    notes = ["saturated: where the local derivative is below 10% of its maximum (tanh |y| > 0.949; sigmoid "
             "y < 0.026 or > 0.974), so almost no gradient flows back through the unit; runs log diag/saturated_frac/*"]
    figure = bar_figure(lab.figure_path(), stats, "fraction of saturated activation values at init",
                        "sigmoid/tanh saturation: large init vs Xavier")
    return Result(list(rows[0]), rows, verdict, notes, figure)
