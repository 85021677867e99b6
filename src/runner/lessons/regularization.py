"""Lessons on regularization: what each penalty, noise and average does to the weights and the scores."""

import math
import statistics
import time

from runner.lessons.lab import Lab, bar_figure, save_figure, weight_zero_fraction
from runner.lessons.verdict import (
    NOT_REPRODUCED,
    Result,
    Stat,
    Verdict,
    accuracy_noise,
    all_of,
    greater,
    holds,
    less,
    paired_greater,
    paired_less,
)


def l1_sparsity(lesson, lab: Lab) -> Result:
    measured = {arm: [] for arm in lesson.arms}
    accs = {arm: [] for arm in lesson.arms}
    for arm in lesson.arms:
        for seed in lesson.seeds:
            m = lab.run(arm, seed, at_end=weight_zero_fraction)
            measured[arm].append(m["at_end"])
            accs[arm].append(m["test_acc"])
    zeros = {arm: Stat(v) for arm, v in measured.items()}
    acc = {arm: Stat(v) for arm, v in accs.items()}
    verdict = greater(zeros["l1"], zeros["l2"], "L1", "L2", "fraction of weights exactly 0", margin=lesson.margin)
    rows = [{"penalty": arm, "strength": lesson.strength, "exact zeros": zeros[arm], "test acc": acc[arm]}
            for arm in lesson.arms]
    figure = bar_figure(lab.figure_path(), zeros, "fraction of conv/linear weights exactly 0",
                        f"L1 vs L2 at strength {lesson.strength}")
    notes = ["weights/zero_fraction and weights/near_zero_fraction in TensorBoard show the zeros appear epoch by "
             "epoch; L1's proximal step (regularization.l1.proximal=true) sets them to exactly 0.0"]
    return Result(["penalty", "strength", "exact zeros", "test acc"], rows, verdict, notes, figure)


# ---------------------------------------------------------------------------------------------------------------
# Shared measurements

def _collect(lab: Lab, arms, seeds, measure=None, extra=()) -> dict[str, list[dict]]:
    """Every arm over every seed: {arm: [metrics of each seed]} (with at_end=measure)."""
    return {arm: [lab.run(arm, seed, extra=extra, at_end=measure) for seed in seeds] for arm in arms}


def _stat(runs: list[dict], key) -> Stat:
    return Stat([float(key(m) if callable(key) else m[key]) for m in runs])


def _test_count(run) -> int:
    return len(run.splits.test_y)


def paired(a: Stat, b: Stat) -> tuple[Stat, Stat]:
    """a - b seed by seed, against zeros: for runs that share their seed (data order, initial weights), the spread
    of the difference is the honest one, not the spread of each side."""
    diff = Stat([x - y for x, y in zip(a.values, b.values, strict=True)])
    return diff, Stat([0.0] * diff.n)


# ---------------------------------------------------------------------------------------------------------------
# Dropout before batch norm: the variance shift (Li et al. 2019)

def variance_shift(model, x) -> dict[str, dict[str, float]]:
    """Per batch norm layer, averaged over its channels, on the batch `x` of the trained network:
    shift: the variance of its input with the dropout layers on over that without them (every BN on its running
    statistics in both passes, so only dropout differs): what dropout adds in training and takes away at test;
    running: its running variance (collected in training) over the variance its input has at test. 1: no shift;
    Li et al. 2019: dropout in front of a BN layer makes both > 1, so at test BN divides by too large a variance."""
    import torch
    from torch import nn

    # torch only when the lesson runs: the lessons list and check torch-free
    from runner.nets.layers import enable_dropout

    norms = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    seen: dict[str, torch.Tensor] = {}

    def hook(name):
        def pre(module, inputs):
            z = inputs[0].detach().float()
            dims = [0] + list(range(2, z.dim()))  # over the batch (and positions): one variance per channel
            seen[name] = z.var(dim=dims)

        return pre

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in norms]
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()
            enable_dropout(model)
            model(x)
            noisy = dict(seen)
            model.eval()
            model(x)
            test = dict(seen)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return {n: {"shift": (noisy[n] / test[n].clamp_min(1e-12)).mean().item(),
                "running": (m.running_var.float() / test[n].clamp_min(1e-12)).mean().item()} for n, m in norms}


def _val_batch(run, n: int):
    import torch

    with torch.no_grad():
        return run.preprocess(run.splits.val_x[:n])


def dropout_variance_shift(lesson, lab: Lab) -> Result:
    runs = _collect(lab, lesson.arms, lesson.seeds,
                    measure=lambda run: variance_shift(run.model, _val_batch(run, lesson.images)))
    layers = list(runs[next(iter(lesson.arms))][0]["at_end"])

    def per_layer(key):
        return {arm: {layer: _stat(ms, lambda m, layer=layer: m["at_end"][layer][key]) for layer in layers}
                for arm, ms in runs.items()}

    shift, running = per_layer("shift"), per_layer("running")
    # The claim is about the BN layers with a dropout in front of them: every one but the first (the input's).
    behind = layers[1:] or layers
    mean_shift = {arm: _stat(ms, lambda m: statistics.fmean(m["at_end"][k]["shift"] for k in behind))
                  for arm, ms in runs.items()}
    acc = {arm: _stat(ms, "test_acc") for arm, ms in runs.items()}
    verdict = all_of(
        greater(mean_shift["before"], mean_shift["after"], "dropout before BN", "dropout after the last BN",
                f"variance of the BN inputs behind a dropout ({', '.join(behind)}), dropout on / off",
                margin=lesson.margin),
        holds(abs(mean_shift["after"].mean - 1.0) < lesson.margin,
              f"with dropout only after the last BN the ratio is {mean_shift['after'].text()}, about 1",
              f"with dropout only after the last BN the ratio is {mean_shift['after'].text()}, not within "
              f"{lesson.margin} of 1"))
    rows = [{"arm": arm, "BN layer": layer, "input variance, dropout on/off": shift[arm][layer],
             "running var / test var": running[arm][layer]} for arm in lesson.arms for layer in layers]
    rows += [{"arm": arm, "BN layer": "test acc", "input variance, dropout on/off": acc[arm]} for arm in lesson.arms]
    figure = _grouped_figure(lab.figure_path(), shift, "BN input variance, dropout on / off",
                             f"dropout p={lesson.p} before vs after batch norm (1 = no shift)", ref=1.0)
    notes = [f"measured after training on {lesson.images} validation images, every BN on its running statistics: "
             "one pass with the dropout layers on, one without, the variance of each BN layer's input per channel",
             "running var / test var: what BN divides by at test (collected in training, dropout on) over what its "
             "input has at test; besides dropout's shift it holds the lag of the running average behind the weights, "
             "so it is not exactly 1 even without dropout in front",
             "the first BN layer sees the input image, with no dropout in front of it, in both arms: ratio 1",
             "norm.reestimate_batches recomputes the running statistics after training, the other remedy of Li et al."]
    return Result(["arm", "BN layer", "input variance, dropout on/off", "running var / test var"], rows, verdict,
                  notes, figure)


def _grouped_figure(path, groups: dict[str, dict[str, Stat]], ylabel: str, title: str, ref: float | None = None):
    """Bars per key (x) and arm (colour), mean over seeds with a 1-std error bar and the seeds as dots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(next(iter(groups.values())))
    width = 0.8 / len(groups)
    fig, ax = plt.subplots(figsize=(2.0 + 1.2 * len(keys), 3.8))
    for j, (arm, stats) in enumerate(groups.items()):
        for i, key in enumerate(keys):
            s, x = stats[key], i + (j - (len(groups) - 1) / 2) * width
            ax.bar(x, s.mean, width, yerr=s.std if s.n > 1 else None, capsize=3, color=f"C{j}", alpha=0.75,
                   label=arm if i == 0 else None)
            ax.plot([x] * s.n, s.values, "k.", markersize=4)
    if ref is not None:
        ax.axhline(ref, color="gray", linestyle="--", linewidth=1)
    ax.set_xticks(range(len(keys)), keys, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    n = max(s.n for stats in groups.values() for s in stats.values())
    ax.set_title(f"{title}\n(bars: mean over {n} seeds, error bar: 1 std, dots: each seed)", fontsize=9)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


# ---------------------------------------------------------------------------------------------------------------
# Inverted dropout keeps the expectation

def logged_scalars(run_dir, prefix: str) -> dict[str, list[float]]:
    """Every value the run wrote to TensorBoard under tags starting with `prefix`: {tag: [values by step]}."""
    from pathlib import Path

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, list[float]] = {}
    for path in sorted(Path(run_dir).glob("events.out.tfevents.*")):  # each file, not the directory's watcher
        events = EventAccumulator(str(path), size_guidance={"scalars": 0})
        events.Reload()
        for tag in events.Tags()["scalars"]:
            if tag.startswith(prefix):
                out.setdefault(tag, []).extend(e.value for e in events.Scalars(tag))
    return out


def unscaled_dropout_ratio(model, x) -> float:
    """What the mean ratio would be without inverted dropout's 1/(1-p): every dropout layer's input masked with
    its own p but not rescaled, mean(masked) / mean(input), averaged over the layers (1 - p in expectation)."""
    import torch
    from torch import nn

    ratios = []

    def pre(module, inputs):
        z = inputs[0].detach().float()
        kept = z * (torch.rand_like(z) >= module.p)
        ratios.append((kept.mean() / z.mean()).item())

    drops = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    handles = [m.register_forward_pre_hook(pre) for m in drops]
    was_training = model.training
    try:
        model.eval()  # the layers in front see what they see at test; the hook masks by hand
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return statistics.fmean(ratios)


def inverted_dropout(lesson, lab: Lab) -> Result:
    runs = _collect(lab, lesson.arms, lesson.seeds,
                    measure=lambda run: unscaled_dropout_ratio(run.model, _val_batch(run, lesson.images)))
    logged = {arm: [logged_scalars(m["run_dir"], "diag/dropout_mean_ratio/") for m in ms] for arm, ms in runs.items()}
    layers = sorted({tag for per_seed in logged.values() for tags in per_seed for tag in tags})
    inverted = {arm: Stat([statistics.fmean(v for tag in tags.values() for v in tag) for tags in per_seed])
                for arm, per_seed in logged.items()}
    unscaled = {arm: _stat(ms, "at_end") for arm, ms in runs.items()}
    worst = max((abs(v - 1.0) for per_seed in logged.values() for tags in per_seed for vs in tags.values()
                 for v in vs), default=math.nan)
    steps = sum(len(vs) for tags in logged[next(iter(logged))] for vs in tags.values())
    means = ", ".join(f"{arm} {inverted[arm].text()}" for arm in lesson.arms)
    parts = [holds(all(abs(inverted[arm].mean - 1.0) < lesson.tolerance for arm in lesson.arms),
                   f"inverted dropout's logged train/eval mean ratio is within {lesson.tolerance} of 1 in every arm "
                   f"({means}; the farthest single value {worst:.3f} from 1)",
                   f"inverted dropout's logged train/eval mean ratio is not within {lesson.tolerance} of 1 in every "
                   f"arm ({means})")]
    parts += [less(unscaled[arm], inverted[arm], "without the 1/(1-p)", "inverted dropout",
                   f"train/eval mean ratio at {arm}") for arm in lesson.arms]
    verdict = all_of(*parts)
    rows = [{"arm": arm, "p": float(lab.config(arm, lesson.seeds[0])[0].regularization.dropout.p),
             "inverted (diag/)": inverted[arm], "without 1/(1-p)": unscaled[arm]} for arm in lesson.arms]
    stats = {f"{arm} inverted": inverted[arm] for arm in lesson.arms}
    stats.update({f"{arm} unscaled": unscaled[arm] for arm in lesson.arms})
    figure = bar_figure(lab.figure_path(), stats, "mean activation, training / evaluation",
                        "inverted dropout keeps the mean; dropping without rescaling loses 1-p of it")
    notes = [f"inverted: diag/dropout_mean_ratio/<layer> as the diagnostics logged it ({len(layers)} dropout "
             f"layers, {steps} values in the first seed's run of {next(iter(lesson.arms))}, averaged); without "
             f"1/(1-p): each dropout layer's input masked by hand with the same p, on {lesson.images} validation "
             "images of the trained network",
             "evaluation passes a dropout layer's input on unchanged, so the ratio compares training to test"]
    return Result(["arm", "p", "inverted (diag/)", "without 1/(1-p)"], rows, verdict, notes, figure)


# ---------------------------------------------------------------------------------------------------------------
# Dropout slows training, not inference; MC dropout slows prediction

def epochs_to(history: list[dict], key: str, target: float) -> float:
    """The first epoch (1-based) whose `key` reaches `target` (>=); len(history) + 1 when none does."""
    for i, entry in enumerate(history, 1):
        if entry.get(key) is not None and entry[key] >= target:
            return float(i)
    return float(len(history) + 1)


def time_ratios(first, second, repeats: int) -> Stat:
    """second()'s time over first()'s, each timed `repeats` times in alternation (so a busy machine slows both
    alike): one ratio per repeat."""
    first(), second()  # warm-up
    ratios = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        first()
        t1 = time.perf_counter()
        second()
        t2 = time.perf_counter()
        ratios.append((t2 - t1) / max(t1 - t0, 1e-9))
    return Stat(ratios)


def _median_iqr(s: Stat) -> str:
    q = statistics.quantiles(s.values, n=4) if s.n > 1 else [s.mean] * 3
    return f"{q[1]:.3g} (IQR {q[0]:.3g}-{q[2]:.3g})"


def dropout_speed(lesson, lab: Lab) -> Result:
    import copy

    # torch only when the lesson runs: the lessons list and check torch-free
    from runner.engine import evaluation

    def keep(run):
        return copy.deepcopy(run.model).cpu(), run.preprocess.cpu(), run.splits.test_x[:lesson.images].cpu()

    runs = _collect(lab, ["plain", "dropout"], lesson.seeds, measure=keep)
    targets = [lesson.target_fraction * max(e["val_acc"] for e in m["history"]) for m in runs["plain"]]
    epochs = {arm: Stat([epochs_to(m["history"], "val_acc", t) for m, t in zip(ms, targets, strict=True)])
              for arm, ms in runs.items()}
    # Timing, in this one process: the trained plain and dropout networks of the first seed, in eval mode.
    (plain, pre, x), (drop, _, _) = runs["plain"][0]["at_end"], runs["dropout"][0]["at_end"]
    z = pre(x)
    passes, batch = lesson.mc_passes, len(x)
    import torch

    def forward(net):
        def go():
            net.eval()
            with torch.inference_mode():
                net(z)

        return go

    inference = time_ratios(forward(plain), forward(drop), lesson.repeats)
    mc = time_ratios(lambda: evaluation.probabilities(drop, pre, x, batch),
                     lambda: evaluation.mc_dropout_probabilities(drop, pre, x, batch, passes, 0), lesson.repeats)
    verdict = all_of(
        greater(epochs["dropout"], epochs["plain"], "dropout", "no dropout",
                f"epochs to reach {lesson.target_fraction:g} x the plain run's best val acc"),
        holds(abs(statistics.median(inference.values) - 1.0) < lesson.inference_tolerance,
              f"an eval forward pass of the dropout net takes {_median_iqr(inference)} x the plain net's (median "
              f"of {inference.n} timings)",
              f"an eval forward pass of the dropout net takes {_median_iqr(inference)} x the plain net's, not "
              f"within {lesson.inference_tolerance} of 1"),
        holds(statistics.median(mc.values) > lesson.mc_fraction * passes,
              f"MC dropout with {passes} passes predicts in {_median_iqr(mc)} x the time of one deterministic pass",
              f"MC dropout with {passes} passes predicts in only {_median_iqr(mc)} x the time of one pass "
              f"(expected above {lesson.mc_fraction * passes:g})"))
    acc = {arm: _stat(ms, "test_acc") for arm, ms in runs.items()}
    rows = [{"measure": f"epochs to {lesson.target_fraction:g} x plain's best val acc", "no dropout": epochs["plain"],
             "dropout": epochs["dropout"]},
            {"measure": "test acc at the end", "no dropout": acc["plain"], "dropout": acc["dropout"]},
            {"measure": f"eval forward time on {batch} images (x plain)", "no dropout": 1.0,
             "dropout": _median_iqr(inference)},
            {"measure": f"prediction time, MC dropout {passes} passes (x one pass)", "no dropout": "-",
             "dropout": _median_iqr(mc)}]
    figure = _curves_figure(lab.figure_path(), runs, targets)
    notes = [f"the epoch count reads each run's val acc after every epoch (history in metrics.json); {len(runs['plain'][0]['history'])} "
             "epochs per run; a run that never reaches the target counts as epochs + 1",
             f"times: {lesson.repeats} alternating timings in this one process on {batch} test images (CPU, a "
             "shared machine: the ratio of back-to-back timings, not the absolute times, is what carries over)",
             "the train/eval loss of a dropout run is measured with dropout on: compare val acc, not train loss"]
    return Result(["measure", "no dropout", "dropout"], rows, verdict, notes, figure)


def _curves_figure(path, runs: dict[str, list[dict]], targets: list[float]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for j, (arm, ms) in enumerate(runs.items()):
        for k, m in enumerate(ms):
            accs = [e["val_acc"] for e in m["history"]]
            ax.plot(range(1, len(accs) + 1), accs, color=f"C{j}", marker=".", alpha=0.8,
                    label=arm if k == 0 else None)
    ax.axhline(statistics.fmean(targets), color="gray", linestyle="--", linewidth=1, label="target (mean)")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_ylabel("validation accuracy")
    ax.set_title("dropout slows training: val acc per epoch (one line per seed)", fontsize=9)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


# ---------------------------------------------------------------------------------------------------------------
# MC dropout's calibration

def past_best(history: list[dict]) -> dict:
    """How far a run went past its best validation NLL: the epoch of the lowest val loss, the last one's rise above
    it, and the train and validation accuracy at the end (a widening gap while the NLL rises: overconfidence)."""
    losses = [e["val_loss"] for e in history]
    best = min(range(len(losses)), key=losses.__getitem__)
    return {"best_epoch": best + 1, "rise": losses[-1] - losses[best], "train_acc": history[-1]["train_acc"],
            "val_acc": history[-1]["val_acc"]}


def mc_dropout_calibration(lesson, lab: Lab) -> Result:
    runs = _collect(lab, ["dropout"], lesson.seeds, extra=[f"evaluation.mc_dropout_passes={lesson.passes}"])["dropout"]
    failed = [f"seed {s}: {m['status']}" for s, m in zip(lesson.seeds, runs, strict=True) if m["status"] != "completed"]
    if failed:
        return Result(["score"], [], Verdict(NOT_REPRODUCED, "no network to compare: " + ", ".join(failed)))
    pairs = {"acc": ("test_acc", "test_mc_acc"), "nll": ("test_loss", "test_mc_nll"), "ece": ("test_ece", "test_mc_ece")}
    det = {k: _stat(runs, a) for k, (a, _) in pairs.items()}
    mc = {k: _stat(runs, b) for k, (_, b) in pairs.items()}
    # Both from the same network of each seed on the same test images: judged on the per-seed differences.
    verdict = all_of(*(paired_less(mc[k], det[k], f"MC dropout ({lesson.passes} passes)", "deterministic",
                                   f"test {k}") for k in ("nll", "ece")))
    rows = [{"score": k, "deterministic": det[k], f"MC dropout ({lesson.passes} passes)": mc[k],
             "MC - det (paired)": paired(mc[k], det[k])[0]} for k in pairs]
    over = [past_best(m["history"]) for m in runs]
    rise = Stat([o["rise"] for o in over])
    gap = Stat([o["train_acc"] - o["val_acc"] for o in over])
    epochs = len(runs[0]["history"])
    figure = _grouped_figure(lab.figure_path(), {"deterministic": {k: det[k] for k in ("nll", "ece")},
                                                 f"MC {lesson.passes} passes": {k: mc[k] for k in ("nll", "ece")}},
                             "test NLL / ECE (lower is better)", "MC dropout vs the deterministic network")
    acc = paired(mc["acc"], det["acc"])[0]
    notes = ["both columns come from the same trained network of each seed (the deterministic pass scales nothing "
             "at test: inverted dropout); the verdict compares them seed by seed",
             "ECE: evaluation.ece_bins equal-width confidence bins; NLL: mean -log p(true class) on the test split",
             f"how overconfident the networks are: the validation NLL ends {rise.text()} above its lowest (reached "
             f"at epoch {', '.join(str(o['best_epoch']) for o in over)} of {epochs}), with train accuracy "
             f"{gap.text()} above validation accuracy at the end: " +
             ("overconfident, the regime the claim is about (the softmax claims more than the net knows)"
              if rise.mean > lesson.overconfident_rise else
              f"not the overconfident regime the claim is about (a rise above {lesson.overconfident_rise:g} would "
              "show it; more epochs or less data, trainer.epochs / data.train_size, get there)"),
             f"test accuracy, MC dropout - deterministic: {acc.text()} (paired; "
             f"{'a gain' if acc.mean > 0 else 'a loss' if acc.mean < 0 else 'no change'} on average)"]
    return Result(list(rows[0]), rows, verdict, notes, figure)


# ---------------------------------------------------------------------------------------------------------------
# Max-norm bounds the weights

def unit_norms(model) -> list[float]:
    """The L2 norm of every unit's incoming weights (rows of each Linear, filters of each conv)."""
    from torch import nn

    norms = []
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            norms += m.weight.detach().reshape(m.weight.shape[0], -1).norm(dim=1).tolist()
    return norms


def max_norm_bound(lesson, lab: Lab) -> Result:
    runs = _collect(lab, lesson.arms, lesson.seeds, measure=lambda run: unit_norms(run.model))
    c, slack = float(lesson.c), 1.0 + 1e-5  # float32 rounding of a rescaled row
    largest = {arm: _stat(ms, lambda m: max(m["at_end"])) for arm, ms in runs.items()}
    above = {arm: _stat(ms, lambda m: sum(v > c * slack for v in m["at_end"]) / len(m["at_end"]))
             for arm, ms in runs.items()}
    acc = {arm: _stat(ms, "test_acc") for arm, ms in runs.items()}
    bounded = max(largest["max_norm"].values)
    unbounded = min(largest["plain"].values)
    verdict = all_of(
        holds(bounded <= c * slack, f"with max-norm every unit's incoming weight norm is <= c = {c:g} (largest "
                                    f"{bounded:.4g} over {len(lesson.seeds)} seeds)",
              f"with max-norm a unit's norm is {bounded:.4g} > c = {c:g}"),
        holds(unbounded > c * slack, f"without it every seed has units above c (largest norm at least "
                                     f"{unbounded:.3g}; {above['plain'].text()} of the units)",
              f"without it a seed stays under c (largest norm {unbounded:.3g}): c = {c:g} binds nothing here"))
    rows = [{"arm": arm, "largest unit norm": largest[arm], "fraction of units above c": above[arm], "test acc": acc[arm]}
            for arm in lesson.arms]
    figure = _norms_figure(lab.figure_path(), runs, c)
    notes = [f"norms of every Linear row and conv filter after the last epoch; c = {c:g} (regularization.max_norm"
             ".value); the constraint rescales after every optimizer step"]
    return Result(["arm", "largest unit norm", "fraction of units above c", "test acc"], rows, verdict, notes, figure)


def _norms_figure(path, runs, c: float) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for j, (arm, ms) in enumerate(runs.items()):
        values = [v for m in ms for v in m["at_end"]]
        ax.hist(values, bins=60, alpha=0.6, color=f"C{j}", label=f"{arm} ({len(ms)} seeds)")
    ax.axvline(c, color="k", linestyle="--", linewidth=1, label=f"c = {c:g}")
    ax.set_xlabel("L2 norm of a unit's incoming weights")
    ax.set_ylabel("units")
    ax.set_yscale("log")
    ax.set_title("max-norm: every unit's weight norm after training", fontsize=9)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


# ---------------------------------------------------------------------------------------------------------------
# Early stopping

def early_stopping(lesson, lab: Lab) -> Result:
    runs = _collect(lab, ["last", "stopped"], lesson.seeds,
                    measure=lambda run: (len(run.splits.test_y), len(run.splits.val_y)))
    last, stopped = runs["last"], runs["stopped"]
    best_full = _stat(last, "best_epoch")
    stop_epoch = _stat(stopped, "epochs_completed")
    restored = _stat(stopped, lambda m: m["early_stopping"]["best_epoch"])
    acc_last, acc_stop = _stat(last, "test_acc"), _stat(stopped, "test_acc")
    overfit = _stat(last, lambda m: max(e["val_acc"] for e in m["history"]) - m["history"][-1]["val_acc"])
    patience = int(lab.config("stopped", lesson.seeds[0])[0].regularization.early_stopping.patience_epochs)
    test_n, val_n = last[0]["at_end"]
    floor = accuracy_noise(acc_last.mean, test_n)
    near = all(s - b <= patience for s, b in zip(stop_epoch.values, restored.values, strict=True))
    verdict = all_of(
        holds(near, f"early stopping ended {stop_epoch.text()} epochs in, at most patience={patience} after the "
                    f"best val epoch it restored ({restored.text()}; the full run's best: {best_full.text()})",
              f"early stopping ended {stop_epoch.text()} epochs in, more than patience={patience} after its best "
              f"epoch {restored.text()}"),
        greater(acc_stop, acc_last, "restored best epoch", "last epoch", "test acc", floor=floor))
    epochs = len(last[0]["history"])
    rows = [{"run": f"no early stopping ({epochs} epochs)", "epochs": Stat([float(epochs)] * len(last)),
             "best val epoch": best_full, "test acc": acc_last},
            {"run": f"early stopping (patience {patience})", "epochs": stop_epoch, "best val epoch": restored,
             "test acc": acc_stop}]
    figure = _val_curves(lab.figure_path(), last, stopped)
    notes = [f"label noise (data.label_noise) makes the network memorize wrong labels late in training: the full "
             f"run's val acc falls {overfit.text()} from its best to its last epoch",
             "both arms share their seed, so the early-stopped run is the first epochs of the full run; it puts back "
             "the best epoch's weights before the test",
             f"test accuracy noise on {test_n} images: about +-{floor:.3f} (binomial), used as the floor of the spread"]
    if stop_epoch.mean < best_full.mean:
        val_noise = accuracy_noise(statistics.fmean(m["best_val_acc"] for m in last), val_n)
        notes.append(f"early stopping ended (epoch {stop_epoch.text()}) before the full run's best epoch "
                     f"({best_full.text()} of {epochs}): a dip of the noisy val acc ({val_n} images with noisy labels, "
                     f"about +-{val_noise:.3f}) looked like the end of progress; a longer patience or a larger val "
                     "split waits such dips out")
    return Result(["run", "epochs", "best val epoch", "test acc"], rows, verdict, notes, figure)


def _val_curves(path, last, stopped) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for k, m in enumerate(last):
        accs = [e["val_acc"] for e in m["history"]]
        ax.plot(range(1, len(accs) + 1), accs, "C0.-", alpha=0.7, label="full run" if k == 0 else None)
    for k, m in enumerate(stopped):
        n = m["epochs_completed"]
        ax.axvline(n, color="C1", alpha=0.6, linestyle="--", label="early stop" if k == 0 else None)
        ax.plot(m["early_stopping"]["best_epoch"], m["early_stopping"]["best"], "C1*", markersize=10,
                label="restored epoch" if k == 0 else None)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_ylabel("validation accuracy (noisy labels)")
    ax.set_title("early stopping: where it stops on the val curve (one line per seed)", fontsize=9)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


# ---------------------------------------------------------------------------------------------------------------
# Polyak averaging (EMA of the weights)

def ema_decay(steps: int, window_fraction: float) -> float:
    """The decay whose average spans about window_fraction of a run of `steps` optimizer steps (an EMA averages
    over about 1 / (1 - decay) steps). The default 0.999 spans 1000 steps: in a run of a few hundred steps the
    average still holds a large share of the random initial weights (0.999^300 = 74%)."""
    return 1.0 - 1.0 / max(2.0, window_fraction * steps)


def train_images(lab: Lab, arm: str, seed: int) -> tuple[int, int]:
    """(training images, batch size) of a run of `arm`."""
    import torch

    # torch only when the lesson runs: the lessons list and check torch-free
    from runner.data.loading import load_splits

    cfg, _ = lab.config(arm, seed)
    return len(load_splits(cfg.data, torch.device("cpu")).train_y), int(cfg.trainer.batch_size)


def ema_polyak(lesson, lab: Lab) -> Result:
    arm0 = next(iter(lesson.arms))
    images, batch = train_images(lab, arm0, lesson.seeds[0])
    epochs = int(lab.config(arm0, lesson.seeds[0])[0].trainer.epochs)
    steps = epochs * math.ceil(images / batch)
    decay = ema_decay(steps, lesson.window_fraction)
    runs = _collect(lab, lesson.arms, lesson.seeds, measure=_test_count,
                    extra=["averaging=ema", f"averaging.decay={decay:.6f}"])
    failed = [f"{arm} seed {s}: {m['status']}" for arm, ms in runs.items()
              for s, m in zip(lesson.seeds, ms, strict=True) if m["status"] != "completed"]
    if failed:
        return Result(["schedule"], [], Verdict(NOT_REPRODUCED, "EMA and raw weights not compared: " +
                                                ", ".join(failed)))
    test_n = runs[arm0][0]["at_end"]
    raw = {arm: _stat(ms, "test_acc") for arm, ms in runs.items()}
    ema = {arm: _stat(ms, "test_acc_ema") for arm, ms in runs.items()}
    gain = {arm: paired(ema[arm], raw[arm])[0] for arm in lesson.arms}
    # The same run's two weights on the same test images: judged on the per-seed differences.
    parts = {arm: paired_greater(ema[arm], raw[arm], "EMA", "raw", f"test acc ({arm})") for arm in lesson.arms}
    verdict = parts[lesson.verdict_arm]
    rows = [{"schedule": arm, "raw test acc": raw[arm], "EMA test acc": ema[arm], "EMA - raw (paired)": gain[arm],
             "seeds EMA > raw": f"{sum(d > 0 for d in gain[arm].values)} of {gain[arm].n}",
             "beyond the spread": "yes" if parts[arm].reproduced else "no"} for arm in lesson.arms]
    stats = {f"{arm} raw": raw[arm] for arm in lesson.arms} | {f"{arm} EMA": ema[arm] for arm in lesson.arms}
    figure = bar_figure(lab.figure_path(), stats, "test accuracy", f"EMA of the weights (decay {decay:.4f}) vs raw")
    notes = [f"decay {decay:.4f}: the average spans about {1 / (1 - decay):.0f} of the run's {steps} steps "
             f"(window_fraction={lesson.window_fraction}); at runner's default 0.999 the random initial weights would "
             f"still hold 0.999^{steps} = {0.999 ** steps:.0%} of the average at the end",
             f"both accuracies of a seed come from the same run on the same {test_n} test images, so the verdict "
             f"is on their per-seed difference (paired), on the {lesson.verdict_arm} arm (verdict_arm): a constant "
             "lr leaves the weights jittering around a minimum, where an average sits nearer its centre"]
    if len(lesson.arms) > 1:
        order = sorted(lesson.arms, key=lambda a: gain[a].mean, reverse=True)
        notes.append("EMA - raw by schedule: " + ", ".join(f"{a} {gain[a].text()}" for a in order) +
                     f"; the average gains most under {order[0]}" +
                     (" (an lr annealed to 0 stills the weights by itself, leaving the average less to smooth)"
                      if order[0] == lesson.verdict_arm else ""))
    if gain[lesson.verdict_arm].mean < 0:
        notes.append(f"here the average is below the raw weights ({gain[lesson.verdict_arm].text()}): it trails "
                     f"them by about {1 / (1 - decay):.0f} of {steps} steps, a lag that costs more than the smoothing "
                     "gains while the weights still improve quickly")
    return Result(list(rows[0]), rows, verdict, notes, figure)
