"""Lessons on five claims of the lectures about what a choice of optimizer, activation, augmentation or penalty does
to the trained net: adaptive optimizers against tuned Nesterov SGD on held-out data (Wilson et al. 2017), leaky ReLU
and ELU against ReLU (Maas et al. 2013; Clevert et al. 2016), SELU's self-normalization through depth (Klambauer et
al. 2017), data augmentation against overfitting, and L2 against decoupled weight decay (Loshchilov & Hutter 2019).
Each runs real runner runs paired by seed (same initial weights and data order in every arm)."""

import math

from runner.engine.hooks import Component
from runner.lessons.init import activation_outputs, never_positive
from runner.lessons.lab import Lab, save_figure
from runner.lessons.verdict import (
    Result,
    Stat,
    Verdict,
    accuracy_noise,
    all_of,
    holds,
    paired_greater,
    paired_less,
)

# ---- measuring ---------------------------------------------------------------------------------------------------


def train_accuracy(run, n: int | None = None) -> float:
    """The trained run's accuracy on its first n training images (all: None) as they are: no augmentation, eval
    mode, the engine's own evaluation. The training accuracy a run logs is taken on augmented batches while the
    weights still move, so it is not what the test accuracy should be compared with."""
    x, y = run.splits.train_x[:n], run.splits.train_y[:n]
    return run.objective.evaluate(run.model, run.preprocess, x, y, int(run.cfg.trainer.eval_batch_size))["acc"]


def train_images(run, n: int):
    """The first n training images of the run, preprocessed (on the run's device)."""
    import torch

    with torch.no_grad():
        return run.preprocess(run.splits.train_x[:n])


def _hidden(model, x) -> list:
    """The output (batch, units[, h, w]) of each activation layer of `model` on x, first to last."""
    return [out for _, kind, out in activation_outputs(model, x) if kind != "logits"]


def never_positive_fraction(model, x) -> float:
    """The fraction of hidden units (features or channels, of every activation layer) whose output is never
    positive on the batch x: for ReLU the dead units (as runner.lessons.init.dead_relu_fraction counts them in ReLU
    layers), for leaky ReLU the units pushed to the negative side for every image, where they still pass 1% of
    their gradient."""
    return never_positive(_hidden(model, x))


def no_gradient_fraction(model, x) -> float:
    """The fraction of hidden units (features or channels) whose activation passes no gradient for any image of the
    batch x: the local derivative act'(z) is 0 at every input z the unit gets (and every position): the units that
    cannot learn again, the lecture's dead units. Measured by autograd on each activation layer's own inputs, so
    whatever the activation (elementwise ones: ReLU family, ELU, SELU, tanh...)."""
    import torch

    # torch only when the lesson runs: the lessons list and check torch-free
    from runner.nets.diagnostics import is_activation

    alive, handles = [], []

    def hook(module, inputs, out):
        with torch.enable_grad():
            z = inputs[0].detach().float().requires_grad_(True)
            slope = torch.autograd.grad(module.forward(z.clone()).sum(), z)[0]  # forward: not its hooks again
        alive.append((slope != 0).transpose(0, 1).reshape(z.shape[1], -1).any(dim=1))

    for module in model.modules():
        if is_activation(module):
            handles.append(module.register_forward_hook(hook))
    model.train()
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    units = sum(len(a) for a in alive)
    return sum(float((~a).sum()) for a in alive) / max(units, 1)


def unit_means(model, x) -> list[tuple[float, float]]:
    """Per activation layer (first to last), on the batch x: (the mean over its units of |the unit's mean output|,
    that divided by the root-mean-square of the layer's outputs). A unit is a feature, or a channel over its
    positions; per unit, so that units of opposite signs do not cancel (Clevert et al. 2016 speak of the mean
    activation of units). The second is free of the layer's scale: 0 for units centred at 0, 1 for units that are a
    positive constant; ReLU on N(0, s^2) inputs gives (s / sqrt(2 pi), 1 / sqrt(pi) = 0.564)."""
    found = []
    for out in _hidden(model, x):
        dims = [0] + list(range(2, out.dim()))
        mean = float(out.mean(dim=dims).abs().mean())
        found.append((mean, mean / max(float(out.pow(2).mean().sqrt()), 1e-30)))
    return found


def layer_moments(model, x) -> list[tuple[float, float]]:
    """(mean, std) of each activation layer's output over the batch x and all its units, first layer to last (in
    training mode, as the runs train: alpha dropout on)."""
    return [(float(out.mean()), float(out.std())) for out in _hidden(model, x)]


def departure(moments: list[tuple[float, float]]) -> float:
    """The largest departure of a net's layers from the self-normalized state mean 0, std 1: max over the layers
    of |mean| + |ln std| (a std halved or doubled counts ln 2 = 0.69 either way)."""
    return max(abs(m) + abs(math.log(s)) if s > 0 else math.inf for m, s in moments)


def decayed_weights(model):
    """The weights a penalty acts on (conv and linear weights; runner.optimization.optimizers.split_decay), flattened
    into one vector on the CPU."""
    import torch

    # torch only when the lesson runs: the lessons list and check torch-free
    from runner.optimization.optimizers import split_decay

    with torch.no_grad():
        return torch.cat([p.detach().float().flatten().cpu() for p in split_decay(model)[0]])


def relative_distance(a, b) -> float:
    """||a - b|| / ||b|| of two weight vectors (0: the same weights)."""
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


# ---- shared ------------------------------------------------------------------------------------------------------


def _runs(lesson, lab: Lab, measure=None, arms=None) -> dict[str, list[dict]]:
    """Every arm (all of the lesson's, or `arms`) over every seed: {arm: [metrics per seed]} (at_end=measure)."""
    return {arm: [lab.run(arm, seed, at_end=measure) for seed in lesson.seeds] for arm in arms or lesson.arms}


def _stat(runs: list[dict], key) -> Stat:
    return Stat([float(key(m)) if callable(key) else float(m[key]) for m in runs])


def _fit_measure(run) -> dict:
    """What a comparison of fit and generalization needs of a trained run: its training accuracy without
    augmentation (train_accuracy), the number of training images, and of test images (the noise floor of the test
    accuracy)."""
    return {"train_acc": train_accuracy(run), "train_n": len(run.splits.train_y), "test_n": len(run.splits.test_y)}


def _fit_and_gap(runs: dict[str, list[dict]]) -> tuple[dict, dict, dict, dict]:
    """(test acc, training acc, training - test acc) per arm as Stats over the seeds, and the sizes of the training
    and test sets ({train_n, test_n})."""
    test = {arm: _stat(rs, "test_acc") for arm, rs in runs.items()}
    train = {arm: _stat(rs, lambda m: m["at_end"]["train_acc"]) for arm, rs in runs.items()}
    gap = {arm: Stat([tr - te for tr, te in zip(train[arm].values, test[arm].values, strict=True)])
           for arm in runs}
    first = next(iter(runs.values()))[0]["at_end"]
    return test, train, gap, {k: first[k] for k in ("train_n", "test_n")}


def _either_way(a: Stat, b: Stat, a_name: str, b_name: str, measure: str, floor: float = 0.0) -> Verdict:
    """A two-sided paired test ("a and b differ"): each direction at the Bonferroni bar of two tries, so that trying
    both is not two chances of noise; the one that holds, else the reason of the direction the mean points to."""
    up = paired_greater(a, b, a_name, b_name, measure, floor=floor, tries=2)
    down = paired_less(a, b, a_name, b_name, measure, floor=floor, tries=2)
    if up.reproduced or down.reproduced:
        return up if up.reproduced else down
    return up if a.mean >= b.mean else down


def _paired_figure(path, panels: dict[str, dict[str, Stat]], seeds, title: str, log_y=(), refs=None) -> str:
    """One panel per measure: the arms on x, each seed a line through its values in every arm (the pairs the
    verdict compares), the mean a black bar. log_y: the panels drawn on a log scale; refs: {panel: (y, label)}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(1.5 + 3.6 * len(panels), 4.2), squeeze=False)
    for ax, (name, stats) in zip(axes[0], panels.items(), strict=True):
        arms = list(stats)
        for j, seed in enumerate(seeds):
            shift = 0.08 * (j - (len(seeds) - 1) / 2)  # side by side, so that seeds with equal values all show
            ax.plot([i + shift for i in range(len(arms))], [stats[a].values[j] for a in arms], "-",
                    marker="osD^v<>"[j % 7], color=f"C{j}", alpha=0.8, ms=5, label=f"seed {seed}")
        for i, a in enumerate(arms):
            ax.plot([i - 0.2, i + 0.2], [stats[a].mean] * 2, "k-", lw=2.5, label="mean" if i == 0 else None)
        ref = (refs or {}).get(name)
        if ref is not None:
            ax.axhline(ref[0], color="0.4", ls="--", lw=1, label=ref[1])
        if name in log_y:
            ax.set_yscale("log")
        ax.set_xticks(range(len(arms)), arms, rotation=15, ha="right", fontsize=8)
        ax.set_xlim(-0.5, len(arms) - 0.5)
        ax.set_title(name, fontsize=9)
        ax.grid(alpha=0.3, axis="y", which="both")
    axes[0][0].legend(fontsize=7, loc="best")
    fig.suptitle(f"{title}\n(lines: one seed across the arms, the pairs compared; black bars: mean)", fontsize=10)
    return save_figure(fig, path)


# ---- adaptive optimizers generalize worse than tuned SGD (Wilson et al. 2017) -----------------------------------


def adaptive_generalization(lesson, lab: Lab) -> Result:
    """Nesterov SGD vs Adam, each at its own lr tuned at equal budget (the lesson's `tune`), paired by seed on test
    accuracy; the train-test gap of each (training accuracy measured without augmentation)."""
    sgd, adaptive = lesson.sgd_arm, lesson.adaptive_arm
    runs = _runs(lesson, lab, measure=_fit_measure, arms=[sgd, adaptive])
    test, train, gap, sizes = _fit_and_gap(runs)
    test_n = sizes["test_n"]
    floor = accuracy_noise(test[sgd].mean, test_n)
    verdict = paired_greater(test[sgd], test[adaptive], f"{sgd} (tuned)", f"{adaptive} (tuned)", "test accuracy",
                             floor=floor)
    rows = [{"optimizer": arm, "lr (tuned)": lab.tuning.get(arm, {}).get("lr", math.nan), "test acc": test[arm],
             "train acc": train[arm], "train - test": gap[arm]} for arm in runs]
    diff = Stat([a - b for a, b in zip(test[sgd].values, test[adaptive].values, strict=True)])
    gap_diff = Stat([a - b for a, b in zip(gap[adaptive].values, gap[sgd].values, strict=True)])
    notes = [f"test accuracy {sgd} - {adaptive} per seed: {', '.join(f'{d:+.3f}' for d in diff.values)} (test "
             f"noise on {test_n} images about +-{floor:.3f}, the floor of the spread)",
             f"train-test gap {adaptive} - {sgd} per seed: {', '.join(f'{d:+.3f}' for d in gap_diff.values)}: "
             + ("the adaptive optimizer's gap is the larger one in every seed" if min(gap_diff.values) > 0 else
                "the adaptive optimizer's gap is the smaller one in every seed" if max(gap_diff.values) < 0 else
                "neither gap is the larger one in every seed")]
    fitted = min(min(train[arm].values) for arm in runs)
    if fitted >= lesson.fitted_train_acc:
        notes.append(f"every run fits its training set (lowest training accuracy {fitted:.3f}, at least "
                     f"{lesson.fitted_train_acc:g}): the test accuracies compare the solutions each optimizer ends "
                     f"at, as Wilson et al. do; {sgd} - {adaptive}: {diff.text()}")
    else:
        notes.append(f"the lowest training accuracy of a run is {fitted:.3f}, below {lesson.fitted_train_acc:g}: "
                     "Wilson et al. compare nets trained until they (nearly) fit their training set, where the "
                     "adaptive methods' solutions generalize worse; a run that has not fit it yet compares how fast "
                     "each optimizer learns more than where it ends (the full size trains longer)")
    val_n = int(lab.config(sgd, lesson.seeds[0])[0].data.val_size)
    for arm, t in lab.tuning.items():
        tried = sorted(x["lr"] for x in t["trials"])
        scores = [x["val_acc"] for x in t["trials"] if x["status"] == "completed"]
        noise = accuracy_noise(sum(scores) / max(len(scores), 1), val_n)
        if len(scores) > 1 and max(scores) - min(scores) < 2 * noise:
            notes.append(f"{arm}'s tried lrs reach validation accuracies within {max(scores) - min(scores):.3f} of "
                         f"each other, less than twice their noise on {val_n} images (+-{noise:.3f}): at this size "
                         "the lr hardly matters to it, and the tuning picks among equals")
        if len(tried) > 1 and t["lr"] in (tried[0], tried[-1]):
            edge = "largest" if t["lr"] == tried[-1] else "smallest"
            notes.append(f"{arm}'s best lr ({t['lr']:.3g}) is the {edge} one tried: its best may lie beyond the grid "
                         "(widen tune.factors), so it may be less well tuned than the other arm")
    figure = _paired_figure(lab.figure_path(), {"test accuracy": test, "train accuracy - test accuracy": gap},
                            lesson.seeds, "each optimizer at its tuned lr: " + ", ".join(
                                f"{arm} {lab.tuning[arm]['lr']:.3g}" for arm in runs if arm in lab.tuning))
    return Result(list(rows[0]), rows, verdict, notes, figure)


# ---- leaky ReLU does not die; ELU's mean activation is nearer zero (Maas et al. 2013; Clevert et al. 2016) ------


def leaky_relu_elu(lesson, lab: Lab) -> Result:
    """Four arms trained and measured on the same training images: ReLU and leaky ReLU at a high lr (units without
    gradient, units never positive), ReLU and ELU at a normal lr (the units' mean activation)."""

    def measure(run):
        x = train_images(run, lesson.images)
        means = unit_means(run.model, x)
        return {"dead": no_gradient_fraction(run.model, x), "negative": never_positive_fraction(run.model, x),
                "mean": sum(m for m, _ in means) / len(means), "centring": sum(c for _, c in means) / len(means)}

    runs = _runs(lesson, lab, measure=measure)
    dead, negative, mean, centring = ({arm: _stat(rs, lambda m, k=k: m["at_end"][k]) for arm, rs in runs.items()}
                                      for k in ("dead", "negative", "mean", "centring"))
    acc = {arm: _stat(rs, "test_acc") for arm, rs in runs.items()}
    relu_high, leaky, relu, elu = lesson.relu_high_arm, lesson.leaky_arm, lesson.relu_arm, lesson.elu_arm
    worst = max(dead[leaky].values)
    measured_on = f"on {lesson.images} training images"
    verdict = all_of(
        paired_less(dead[leaky], dead[relu_high], leaky, relu_high,
                    f"fraction of hidden units passing no gradient {measured_on}", margin=lesson.dead_margin),
        holds(worst <= lesson.near_zero,
              f"{leaky}: at most {worst:.3g} of its units pass no gradient in any seed (<= {lesson.near_zero:g})",
              f"{leaky}: up to {worst:.3g} of its units pass no gradient (> {lesson.near_zero:g})"),
        paired_less(centring[elu], centring[relu], elu, relu,
                    f"mean |unit's mean activation| / RMS activation {measured_on}"))
    cfgs = {arm: lab.config(arm, lesson.seeds[0]) for arm in lesson.arms}
    lrs = {arm: float(cfg.optimizer.lr) for arm, (cfg, _) in cfgs.items()}
    rows = [{"arm": arm, "activation": cfgs[arm][1]["activation"], "lr": lrs[arm], "units without gradient": dead[arm],
             "units never positive": negative[arm], "mean |unit mean|": mean[arm],
             "mean |unit mean| / RMS": centring[arm], "test acc": acc[arm]}
            for arm in lesson.arms]
    died = Stat([a - b for a, b in zip(dead[relu_high].values, dead[relu].values, strict=True)])
    pushed = Stat([a - b for a, b in zip(negative[leaky].values, negative[relu_high].values, strict=True)])
    notes = [f"measured after training {measured_on}: a unit passes no gradient when its activation's derivative is 0 "
             "at every input it gets (autograd on the layer's inputs); for ReLU that is a unit never positive, for "
             "leaky ReLU a unit on the negative side still passes 1% (slope 0.01) and can move back",
             f"the high lr ({lrs[relu_high]:g}) left {died.text()} more of ReLU's units without gradient than the "
             f"normal lr ({lrs[relu]:g}), paired by seed",
             f"units never positive, {leaky} - {relu_high} per seed: "
             + ", ".join(f"{d:+.3f}" for d in pushed.values) + ": the high lr pushes leaky units to the negative side "
             + ("less often than ReLU's in every seed" if max(pushed.values) < 0 else
                "more often than ReLU's in every seed" if min(pushed.values) > 0 else
                "not consistently less or more often than ReLU's") + "; there a leaky unit keeps 1% of its gradient",
             "the units' mean activation is compared in units of the layer's root-mean-square output, so that a net "
             "whose activations grew larger in training does not count as less centred for that: ELU's is "
             f"{centring[elu].mean / centring[relu].mean:.2f} x ReLU's, its plain mean |unit mean| "
             f"{mean[elu].mean / mean[relu].mean:.2f} x (means over seeds; 0.564 = 1 / sqrt(pi) for ReLU on "
             "centred Gaussian inputs). ELU's outputs go down to -alpha and offset the positive ones, where ReLU's "
             "are all >= 0"]
    figure = _paired_figure(lab.figure_path(), {
        f"units passing no gradient (lr {lrs[relu_high]:g})": {relu_high: dead[relu_high], leaky: dead[leaky]},
        f"units never positive (lr {lrs[relu_high]:g})": {relu_high: negative[relu_high], leaky: negative[leaky]},
        f"mean |unit's mean activation| / RMS (lr {lrs[relu]:g})": {relu: centring[relu], elu: centring[elu]}},
        lesson.seeds,
        "leaky ReLU at a high lr, ELU at a normal lr, each against ReLU (a seed: the same initial weights)")
    return Result(list(rows[0]), rows, verdict, notes, figure)


# ---- SELU keeps mean 0 and std 1 through depth (Klambauer et al. 2017) -------------------------------------------


def in_band(moment: tuple[float, float], mean_max: float, variance: tuple[float, float]) -> bool:
    """Whether a layer's (mean, std) lies where Klambauer et al.'s Theorem 1 proves SELU's layer map contracting:
    |mean| <= mean_max and std^2 within `variance` (the paper's domain: 0.1 and [0.8, 1.5])."""
    mean, std = moment
    return abs(mean) <= mean_max and variance[0] <= std * std <= variance[1]


def selu_self_normalizing(lesson, lab: Lab) -> Result:
    """Per-layer mean and std of a deep MLP without norm layers, at init (one batch, no training) and after
    training, for SELU (with alpha dropout) and for ReLU and tanh, all with LeCun-normal init."""
    x, _ = lab.batch(None, lesson.seeds[0], lesson.images)  # the same images for every arm and seed
    at_init = {arm: [layer_moments(lab.model(arm, seed)[0], x) for seed in lesson.seeds] for arm in lesson.arms}
    runs = _runs(lesson, lab, measure=lambda run: layer_moments(run.model, train_images(run, lesson.images)))
    trained = {arm: [m["at_end"] for m in rs] for arm, rs in runs.items()}
    stages = {"at init": at_init, "trained": trained}
    off = {stage: {arm: Stat([departure(m) for m in ms]) for arm, ms in moments.items()}
           for stage, moments in stages.items()}
    band = (float(lesson.band.mean), tuple(float(v) for v in lesson.band.variance))
    inside = {stage: {arm: Stat([float(sum(in_band(layer, *band) for layer in m)) for m in ms])
                      for arm, ms in moments.items()} for stage, moments in stages.items()}
    selu = lesson.selu_arm
    depth = len(at_init[selu][0])
    told = f"|mean| <= {band[0]:g}, variance in [{band[1][0]:g}, {band[1][1]:g}]"
    init_in = min(inside["at init"][selu].values)
    last = [m[-1] for m in trained[selu]]
    parts = [holds(init_in == depth, f"{selu} at init: all {depth} layers in the band ({told}) in every seed",
                   f"{selu} at init: only {init_in:.0f} of {depth} layers in the band ({told}) in a seed"),
             holds(all(in_band(m, *band) for m in last),
                   f"{selu} trained: the last layer in the band in every seed (mean, std: "
                   + ", ".join(f"{mu:+.3f}, {sd:.3f}" for mu, sd in last) + ")",
                   f"{selu} trained: the last layer out of the band ({told}) in a seed (mean, std: "
                   + ", ".join(f"{mu:+.3f}, {sd:.3f}" for mu, sd in last) + ")")]
    for stage, by_arm in off.items():
        parts += [paired_greater(by_arm[arm], by_arm[selu], arm, selu,
                                 f"{stage}, largest |mean| + |ln std| over the layers") for arm in lesson.drift_arms]
    verdict = all_of(*parts)
    acc = {arm: _stat(rs, "test_acc") for arm, rs in runs.items()}
    rows = []
    for arm in lesson.arms:
        row = {"arm": arm}
        for stage, moments in stages.items():
            row[f"last layer mean, std ({stage})"] = (f"{Stat([m[-1][0] for m in moments[arm]]).text(2)}, "
                                                      f"{Stat([m[-1][1] for m in moments[arm]]).text(2)}")
            row[f"departure ({stage})"] = off[stage][arm]
            row[f"layers in band ({stage})"] = inside[stage][arm]
        rows.append({**row, "test acc": acc[arm]})
    worst_layer = [max(range(depth), key=lambda k, m=m: abs(m[k][0]) + abs(math.log(m[k][1]))) + 1
                   for m in trained[selu]]
    notes = [f"{depth} hidden layers, LeCun normal init (weights N(0, 1/fan_in)) in every arm, so a seed starts every "
             f"arm from the same weights; moments over {lesson.images} training images and all units of a layer, "
             "in training mode (alpha dropout on, as in training); departure: the largest |mean| + |ln std| over the "
             "layers (0 at mean 0, std 1; ln 2 = 0.69 for a std halved or doubled)",
             f"the band ({told}) is the domain where Klambauer et al. prove the SELU layer map contracting toward "
             "(0, 1) for normalized weights; training moves the weights off LeCun's scale, so the claim after "
             "training is that depth pulls the moments back into it, by the last layer",
             f"{selu} trained: the largest departure is at layer " + ", ".join(str(k) for k in worst_layer)
             + f" (by seed) of {depth}, {off['trained'][selu].text()}; the last layer's "
             + Stat([abs(mu) + abs(math.log(sd)) for mu, sd in last]).text(),
             "variance theory at init: ReLU keeps half the second moment per layer (std x 1/sqrt(2) = 0.71 per "
             "layer), tanh shrinks slowly (tanh' < 1 away from 0)"]
    for arm in lesson.drift_arms:
        factor = Stat([(m[-1][1] / m[0][1]) ** (1 / max(depth - 1, 1)) for m in at_init[arm]])
        notes.append(f"{arm} at init: per-layer std factor {factor.text()} (geometric mean over the {depth} layers)")
    figure = _moments_figure(lab.figure_path(), stages, lesson.seeds,
                             f"layer moments of a {depth}-layer MLP without norm layers, LeCun-normal init", band)
    return Result(list(rows[0]), rows, verdict, notes, figure)


def _moments_figure(path, stages: dict[str, dict[str, list]], seeds, title: str, band) -> str:
    """Per stage (at init, trained) two panels: each layer's std (log scale) and mean, a line per arm and seed; the
    band of Klambauer et al.'s theorem shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(stages), figsize=(6.0 * len(stages), 7.2), squeeze=False, sharex=True)
    styles = ["-", "--", ":", "-."]
    for col, (stage, moments) in enumerate(stages.items()):
        for i, (arm, per_seed) in enumerate(moments.items()):
            for j, m in enumerate(per_seed):
                layers = range(1, len(m) + 1)
                label = f"{arm}, seed {seeds[j]}"
                style = {"ls": styles[j % 4], "color": f"C{i}", "marker": "osD^"[j % 4], "ms": 3, "label": label}
                axes[0][col].plot(layers, [s for _, s in m], **style)
                axes[1][col].plot(layers, [mu for mu, _ in m], **style)
        axes[0][col].axhspan(math.sqrt(band[1][0]), math.sqrt(band[1][1]), color="0.85", zorder=0)
        axes[1][col].axhspan(-band[0], band[0], color="0.85", zorder=0)
        axes[0][col].set(yscale="log", ylabel="std of the layer's output (log)", title=stage)
        axes[1][col].set(xlabel="hidden layer", ylabel="mean of the layer's output")
        for ax in axes[:, col]:
            ax.grid(alpha=0.3, which="both")
    handles, labels = axes[0][-1].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, ncol=len(stages[next(iter(stages))]), loc="upper center",
               bbox_to_anchor=(0.5, 0.0), handlelength=4)  # below the panels, clear of every line
    fig.suptitle(f"{title}\n(colour: arm; line style and marker: seed; grey: the band where SELU's map contracts to "
                 "mean 0, std 1)", fontsize=10)
    return save_figure(fig, path)


# ---- data augmentation reduces overfitting -----------------------------------------------------------------------


def augmentation_overfitting(lesson, lab: Lab) -> Result:
    """The same net trained with and without augmentation on a small training set, paired by seed: the gap between
    its accuracy on the (unaugmented) training images and the test images, and the test accuracy."""
    plain, augmented = lesson.plain_arm, lesson.augmented_arm
    runs = _runs(lesson, lab, measure=_fit_measure, arms=[plain, augmented])
    test, train, gap, sizes = _fit_and_gap(runs)
    test_n = sizes["test_n"]
    floor = accuracy_noise(test[plain].mean, test_n)
    verdict = all_of(
        paired_less(gap[augmented], gap[plain], augmented, plain, "train accuracy - test accuracy"),
        paired_greater(test[augmented], test[plain], augmented, plain, "test accuracy", floor=floor))
    cfg, _ = lab.config(plain, lesson.seeds[0])
    rows = [{"augmentation": arm, "train acc (no augmentation, eval)": train[arm], "test acc": test[arm],
             "train - test": gap[arm]} for arm in runs]
    notes = [f"{sizes['train_n']} training images, {cfg.trainer.epochs} epochs; training accuracy "
             "measured after training on the training images as they are (no crop or flip, eval mode), so both "
             f"arms' gaps are measured alike; test noise on {test_n} images about +-{floor:.3f}",
             f"{augmented} - {plain}: training accuracy {train[augmented].mean - train[plain].mean:+.3f}, test "
             f"accuracy {test[augmented].mean - test[plain].mean:+.3f} (means over seeds)"]
    figure = _paired_figure(lab.figure_path(), {"train accuracy (no augmentation)": train, "test accuracy": test,
                                                "train - test (the overfitting)": gap}, lesson.seeds,
                            f"augmentation={augmented} vs {plain} on {sizes['train_n']} training images")
    return Result(list(rows[0]), rows, verdict, notes, figure)


# ---- L2 and weight decay: one update for SGD, two for Adam (Loshchilov & Hutter 2019) -----------------------------


class WeightsAfter(Component):
    """A component that keeps a copy of the penalized weights (decayed_weights) right after optimizer step number
    `steps` (counted from 1)."""

    def __init__(self, steps: int):
        self.steps, self.value = steps, None

    def after_step(self, run, x, outputs, y) -> None:
        if run.state.step + 1 == self.steps:  # run.state.step counts the steps before this one
            self.value = decayed_weights(run.model)


def l2_vs_weight_decay(lesson, lab: Lab) -> Result:
    """Runs from the same seed with L2 (g + lambda w) and with decoupled decay (w <- w - lr lambda w) at the same
    lambda, under plain SGD and under Adam: the relative distance between the two weight vectors of each pair after
    a few steps (the update rule) and at the end, and each Adam arm's weight norm against Adam without a penalty."""
    early, runs = {arm: [] for arm in lesson.arms}, {arm: [] for arm in lesson.arms}
    for arm in lesson.arms:
        for seed in lesson.seeds:
            snapshot = WeightsAfter(lesson.steps)
            runs[arm].append(lab.run(arm, seed, components=[snapshot], at_end=lambda run: decayed_weights(run.model)))
            early[arm].append(snapshot.value)
    final = {arm: [m["at_end"] for m in rs] for arm, rs in runs.items()}

    def distances(weights) -> dict[str, Stat]:
        return {pair: Stat([relative_distance(a, b) for a, b in zip(weights[p[0]], weights[p[1]], strict=True)])
                for pair, p in lesson.pairs.items()}

    def named(by_pair: dict[str, Stat]) -> dict[str, Stat]:  # the figure's labels: which arms a pair holds
        return {f"{lesson.pairs[pair][0]} vs {lesson.pairs[pair][1]}": v for pair, v in by_pair.items()}

    distance, distance_end = distances(early), distances(final)
    norm = {arm: Stat([float(w.norm()) for w in ws]) for arm, ws in final.items()}
    reference = lesson.reference_arm
    shrink = {arm: Stat([1 - n / r for n, r in zip(norm[arm].values, norm[reference].values, strict=True)])
              for arm in lesson.pairs[lesson.differing_pair]}
    after = f"after {lesson.steps} steps"
    verdict = _l2_verdict(lesson, distance, shrink, after)
    cfgs = {arm: lab.config(arm, lesson.seeds[0])[0] for arm in lesson.arms}
    strength = {arm: next((float(c.regularization[k].value) for k in ("l2", "weight_decay")
                           if k in c.regularization), 0.0) for arm, c in cfgs.items()}
    pair_of = {arm: pair for pair, arms in lesson.pairs.items() for arm in arms}
    rows = [{"arm": arm, "optimizer": cfgs[arm].optimizer._target_.rsplit(".", 1)[-1],
             "lr": float(cfgs[arm].optimizer.lr), "penalty": next(iter(cfgs[arm].regularization), "none"),
             "lambda": strength[arm], f"distance to its pair {after}": distance.get(pair_of.get(arm), ""),
             "distance at the end": distance_end.get(pair_of.get(arm), ""), "weight norm at the end": norm[arm],
             "test acc": _stat(runs[arm], "test_acc")} for arm in lesson.arms]
    total = int(runs[lesson.pairs[lesson.exact_pair][0]][0]["steps"])
    a_decay = lesson.pairs[lesson.differing_pair][1]
    lr_decay = float(cfgs[a_decay].optimizer.lr) * strength[a_decay]
    notes = _l2_notes(lesson, distance, distance_end, shrink, after, total, lr_decay)
    figure = _paired_figure(lab.figure_path(), {
        f"relative distance of the pair's weights {after}": named(distance),
        "relative distance at the end": named(distance_end),
        "weight norm at the end": {arm: norm[arm] for arm in lesson.arms}}, lesson.seeds,
        "L2 vs decoupled weight decay at the same lambda, under SGD and Adam",
        log_y=(f"relative distance of the pair's weights {after}", "relative distance at the end"),
        refs={f"relative distance of the pair's weights {after}": (lesson.float_tolerance, "float tolerance"),
              "relative distance at the end": (lesson.float_tolerance, "float tolerance")})
    return Result(list(rows[0]), rows, verdict, notes, figure)


def _l2_verdict(lesson, distance: dict[str, Stat], shrink: dict[str, Stat], after: str) -> Verdict:
    """One update under SGD (the pair's weights within the float tolerance), two under Adam (apart), and which of
    Adam's arms shrinks the weights more, either way."""
    sgd, adam = lesson.exact_pair, lesson.differing_pair
    a_l2, a_decay = lesson.pairs[adam]
    exact, apart = max(distance[sgd].values), min(distance[adam].values)
    return all_of(
        holds(exact <= lesson.float_tolerance,
              f"{sgd} {after}: the two runs' weights differ by at most {exact:.2g} (relative), within the float "
              f"tolerance {lesson.float_tolerance:g}: one and the same update",
              f"{sgd} {after}: the two runs' weights differ by up to {exact:.2g} (relative), beyond the float "
              f"tolerance {lesson.float_tolerance:g}"),
        holds(apart >= lesson.apart_factor * lesson.float_tolerance,
              f"{adam} {after}: the weights differ by at least {apart:.2g} (relative), over "
              f"{lesson.apart_factor:g} x the float tolerance: two different updates",
              f"{adam} {after}: the weights differ by only {apart:.2g} (relative), under {lesson.apart_factor:g} x "
              "the float tolerance"),
        _either_way(shrink[a_l2], shrink[a_decay], a_l2, a_decay,
                    f"shrinkage of the weight norm at the end against {lesson.reference_arm} (1 - norm / its norm)"))


def _l2_notes(lesson, distance: dict[str, Stat], distance_end: dict[str, Stat], shrink: dict[str, Stat], after: str,
              total: int, lr_decay: float) -> list[str]:
    """What the numbers say beside the verdict: the protocol, the Adam pair's distance against the SGD pair's, the
    shrinkage against decoupled decay's formula, and why the SGD pair may drift apart over a whole run."""
    sgd, adam = lesson.exact_pair, lesson.differing_pair
    a_l2, a_decay = lesson.pairs[adam]
    ratio = Stat([a / max(b, 1e-300) for a, b in zip(distance[adam].values, distance[sgd].values, strict=True)])
    more = a_l2 if shrink[a_l2].mean > shrink[a_decay].mean else a_decay
    notes = ["same seed in every arm: the same initial weights, batches and order; plain SGD (no momentum, whose "
             "velocity would carry the L2 term into later steps), the same lr schedule in both arms of a pair",
             f"{after} the {adam} pair's distance is {ratio.text()} x the {sgd} pair's, seed by seed",
             f"shrinkage at the end against {lesson.reference_arm}: {a_l2} {shrink[a_l2].text()}, {a_decay} "
             f"{shrink[a_decay].text()} (decoupled decay alone: 1 - (1 - lr lambda)^{total} = "
             f"{1 - (1 - lr_decay) ** total:.3g}); {more} shrinks the weights more at the same lambda. Adam divides "
             "L2's term lambda w by its running gradient scale sqrt(v), so weights with small gradients are pulled "
             "hard and those with large ones hardly at all; decoupled decay shrinks every weight by lr x lambda per "
             "step"]
    grown, exact = max(distance_end[sgd].values), max(distance[sgd].values)
    if grown > lesson.float_tolerance:
        notes.append(f"at the end ({total} steps) the {sgd} pair differs by "
                     + ", ".join(f"{d:.2g}" for d in distance_end[sgd].values) + " (by seed): the two formulas round "
                     f"differently (w - lr (g + lambda w) vs w (1 - lr lambda) - lr g), {after} by at most "
                     f"{exact:.2g}, and training can amplify such a difference as it would any other (a unit's input "
                     "crossing 0 in one run and not the other)")
    return notes
