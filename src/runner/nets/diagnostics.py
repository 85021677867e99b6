"""Training diagnostics (`diagnostics.every_steps`): what the lectures look at to tell a healthy network from a
sick one, measured at step 0 and every N optimizer steps, written to TensorBoard under `diag/` (the histograms under `diag/activations/`).

Per activation layer: mean, std and a histogram of its output; for ReLU the fraction of dead units (never positive
on the batch); for sigmoid/tanh the fraction of saturated values. Per Linear/Conv layer: gradient norm (before any
clipping) and update-to-weight ratio ||dW|| / ||W|| (rule of thumb: about 1e-3). With batch norm: the loss on the
same batch with batch statistics (training mode) and with running statistics (evaluation mode). Per dropout-type
layer (dropout, Gaussian dropout, alpha dropout, Uout): the mean of its output in training over the mean of its input
(what evaluation passes on unchanged), about 1 for inverted dropout. At step 0: the
initial loss against ln(number of classes), and the activation std per layer as a curve over depth
(`diag/act_std_by_layer`, a figure under Images). Histograms start at the second diagnostic step (with the first's).
After each diagnostic step: a warning when all units of a layer are identical (symmetry never broken).

Forward hooks are attached only for a diagnostic step and removed in the same step, so the other steps pay nothing.
Everything is computed on the device and read back with one transfer per diagnostic step.
"""

import logging
import math

import torch
from torch import nn
from torch.nn import functional as F

from runner.nets.layers import UNIT_NOISE, Maxout

log = logging.getLogger("runner")

HISTOGRAM_BINS = 64
# A sigmoid/tanh value is saturated where the local derivative is below 10% of its maximum
# (tanh: |y| > 0.949; sigmoid: y < 0.026 or y > 0.974): there almost no gradient flows back.
SATURATION_DERIVATIVE = 0.1
# The step-0 loss should be close to ln(classes) (uniform predictions); warn beyond this relative distance.
INITIAL_LOSS_TOLERANCE = 0.25

_LAYERS = (nn.Linear, nn.modules.conv._ConvNd)


def is_activation(module: nn.Module) -> bool:
    return type(module).__module__ == "torch.nn.modules.activation" or isinstance(module, Maxout)


def dead_fraction(y: torch.Tensor) -> torch.Tensor:
    """Fraction of units (dim 1: features or channels) that are never positive over the whole batch (and every
    position): dead ReLUs, which get no gradient."""
    alive = (y > 0).transpose(0, 1).reshape(y.shape[1], -1).any(dim=1)
    return 1.0 - alive.float().mean()


def saturated_fraction(y: torch.Tensor, kind: str) -> torch.Tensor:
    """Fraction of the values of a sigmoid or tanh output where the derivative is below SATURATION_DERIVATIVE of its
    maximum: tanh' = 1 - y^2 (max 1), sigmoid' = y (1 - y) (max 1/4)."""
    derivative = 1.0 - y * y if kind == "tanh" else 4.0 * y * (1.0 - y)
    return (derivative < SATURATION_DERIVATIVE).float().mean()


def identical_units(weight: torch.Tensor) -> torch.Tensor:
    """True (as a 0-dim tensor) when every unit (row of a Linear, filter of a conv) has the same weights."""
    w = weight.reshape(weight.shape[0], -1)
    return (w - w[:1]).abs().amax() == 0


@torch.no_grad()
def batch_norm_losses(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(loss with batch statistics, loss with running statistics) on one batch, dropout off in both, or None when
    the model has no batch norm. The running statistics are restored afterwards: measuring changes nothing."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return None
    saved = [[b.clone() for b in m.buffers()] for m in norms]
    was_training = model.training
    try:
        model.eval()
        running = F.cross_entropy(model(x).float(), y)
        for m in norms:
            m.train()
        batch = F.cross_entropy(model(x).float(), y)
    finally:
        for m, buffers in zip(norms, saved, strict=True):
            for b, s in zip(m.buffers(), buffers, strict=True):
                b.copy_(s)
        model.train(was_training)
    return batch, running


class Probe:
    """The diagnostics of one run. In the training step: `start(step)` before the forward pass, `gradients()` after
    backward (before the optimizer step), `finish(step, x, logits, y)` after the step; start returns whether this
    is a diagnostic step, the other two are called only then."""

    def __init__(self, model: nn.Module, diagnostics, tracker):
        self.model, self.tracker = model, tracker
        self.every, self.histograms = diagnostics.every_steps, diagnostics.histograms
        self.layers = [(n, m) for n, m in model.named_modules() if isinstance(m, _LAYERS)]
        self.activations = [(n, m) for n, m in model.named_modules() if is_activation(m)]
        self.dropouts = [(n, m) for n, m in model.named_modules() if isinstance(m, UNIT_NOISE)]
        self.reported_symmetric: set[str] = set()
        # The first diagnostic step's histograms wait for the second: a histogram of one step is a lone slice in
        # TensorBoard, and a run with a single diagnostic step shows none.
        self._held_histograms: list[tuple] | None = []
        self._handles, self._acts, self._grads, self._before = [], {}, {}, {}

    def start(self, step: int) -> bool:
        if self.every <= 0 or step % self.every != 0:
            return False
        self._acts = {}
        for name, module in self.activations:
            self._handles.append(module.register_forward_hook(self._hook(name, type(module).__name__.lower())))
        for name, module in self.dropouts:
            self._handles.append(module.register_forward_hook(self._dropout_hook(name)))
        return True

    def _dropout_hook(self, name: str):
        def hook(module, inputs, output):
            # Evaluation passes the input on unchanged, so mean(training output) / mean(input) is the layer's
            # train/eval ratio of the mean activation: 1 in expectation for inverted dropout (kept units scaled by
            # 1 / (1 - p)), 1 - p without the scaling. Meaningful where the mean is away from 0 (after a ReLU).
            if module.training:
                self._acts.setdefault(name, {})["dropout_mean_ratio"] = (
                    output.detach().float().mean() / inputs[0].detach().float().mean())

        return hook

    def _hook(self, name: str, kind: str):
        def hook(module, inputs, output):
            y = output.detach().float()
            stats = {"act_mean": y.mean(), "act_std": y.std()}
            if kind == "relu":
                stats["dead_frac"] = dead_fraction(y)
            elif kind in ("sigmoid", "tanh"):
                stats["saturated_frac"] = saturated_fraction(y, kind)
            if self.histograms:
                lo, hi = y.min(), y.max()
                stats["_hist"] = (lo, hi, torch.histc(y, HISTOGRAM_BINS, 0, 0), y.sum(), (y * y).sum(), y.numel())
            self._acts[name] = stats

        return hook

    @torch.no_grad()
    def gradients(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._grads = {n: m.weight.grad.norm() for n, m in self.layers if m.weight.grad is not None}
        self._before = {n: m.weight.detach().clone() for n, m in self.layers}

    @torch.no_grad()
    def finish(self, step: int, x: torch.Tensor, logits: torch.Tensor | None, y: torch.Tensor | None) -> dict[str, float]:
        """Measure what needs the updated weights, read everything back at once and write it at step + 1 (the
        steps done: everything a step logs comes after it, so a resumed run purges exactly what its killed
        predecessor wrote after the checkpoint). Returns the scalars.
        logits and y are None for an objective without labels (the autoencoder): the loss checks are skipped."""
        values: dict[str, torch.Tensor] = {}
        for name, stats in self._acts.items():
            for key, v in stats.items():
                if not key.startswith("_"):
                    values[f"diag/{key}/{name}"] = v
        symmetric = {}
        for name, module in self.layers:
            w = module.weight.detach()
            if name in self._grads:
                values[f"diag/grad_norm/{name}"] = self._grads[name]
            values[f"diag/update_ratio/{name}"] = (w - self._before[name]).norm() / self._before[name].norm()
            if w.shape[0] > 1:
                symmetric[name] = identical_units(w)
        losses = batch_norm_losses(self.model, x, y) if y is not None else None
        if losses is not None:
            values["diag/loss_batch_stats"], values["diag/loss_running_stats"] = losses
            values["diag/bn_train_eval_gap"] = losses[1] - losses[0]
        if step == 0 and logits is not None:
            values["diag/initial_loss"] = F.cross_entropy(logits.detach().float(), y)
        hists = {n: s["_hist"] for n, s in self._acts.items() if "_hist" in s}
        self._acts, self._grads, self._before = {}, {}, {}

        # One transfer from the device for everything: scalars, symmetry flags, then per histogram
        # (min, max, sum, sum of squares) and its bin counts.
        keys = list(values) + [f"_sym/{n}" for n in symmetric]
        parts = [v.float().reshape(1) for v in values.values()] + [s.float().reshape(1) for s in symmetric.values()]
        for lo, hi, counts, total, squares, _ in hists.values():
            parts += [torch.stack([lo, hi, total, squares]).float(), counts.float()]
        flat = torch.cat(parts).tolist() if parts else []
        scalars = dict(zip(keys, flat[:len(keys)], strict=True))
        at = len(keys)
        histograms = []
        for name, (*_, num) in hists.items():
            lo, hi, total, squares = flat[at:at + 4]
            counts = flat[at + 4:at + 4 + HISTOGRAM_BINS]
            at += 4 + HISTOGRAM_BINS
            histograms.append((f"diag/activations/{name}", lo, hi, counts, total, squares, num, step + 1))
        if self._held_histograms is not None and histograms:
            histograms, self._held_histograms = self._held_histograms, histograms
            if histograms:  # from the second diagnostic step on: the held ones, then this step's
                histograms += self._held_histograms
                self._held_histograms = None
        for args in histograms:
            self._histogram(*args)

        out = {k: v for k, v in scalars.items() if not k.startswith("_sym/")}
        self.tracker.scalars(out, step + 1)  # logged after the step, at the count of steps done, like lr/ and train/
        for name in symmetric:
            if scalars[f"_sym/{name}"] and name not in self.reported_symmetric:
                self.reported_symmetric.add(name)
                log.warning("layer %s: all its units are identical after step %d: the initialization did not break "
                            "the symmetry (constant or zero init?), so they compute the same thing.", name, step)
        if step == 0 and logits is not None:
            self._initial_report(out, logits.shape[1])
        return out

    def _histogram(self, tag, lo, hi, counts, total, squares, num, step) -> None:
        if hi <= lo:  # every value the same (a dead layer): one bucket
            counts, limits = [num], [hi]
        else:
            width = (hi - lo) / HISTOGRAM_BINS
            limits = [lo + width * (i + 1) for i in range(HISTOGRAM_BINS)]
        self.tracker.writer.add_histogram_raw(tag, min=lo, max=hi, num=num, sum=total, sum_squares=squares,
                                              bucket_limits=limits, bucket_counts=counts, global_step=step)

    def _initial_report(self, scalars: dict[str, float], classes: int) -> None:
        """Step 0: the loss against ln(classes), the std of every activation layer as a curve over depth."""
        expected = math.log(classes)
        loss = scalars["diag/initial_loss"]
        ratios = sorted(v for k, v in scalars.items() if k.startswith("diag/update_ratio/"))
        median = ratios[len(ratios) // 2] if ratios else float("nan")
        log.info("diagnostics at step 0: loss %.3f (ln %d = %.3f for uniform predictions); median update/weight "
                 "ratio %.2g (rule of thumb: about 1e-3)", loss, classes, expected, median)
        if abs(loss - expected) > INITIAL_LOSS_TOLERANCE * expected:
            log.warning("the initial loss %.3f is far from ln(%d) = %.3f: the initial logits are not small. Check "
                        "the initialization scale (init=) and the input preprocessing.", loss, classes, expected)
        layers = [(n, scalars[f"diag/act_std/{n}"]) for n, _ in self.activations if f"diag/act_std/{n}" in scalars]
        if layers and self.tracker.writer is not None:
            figure = depth_figure([n for n, _ in layers], [v for _, v in layers], "std of the layer's output",
                                  "activation std by depth at step 0\n(falling with depth: vanishing signal; "
                                  "rising: exploding)")
            self.tracker.figure("diag/act_std_by_layer", figure, 0)


def depth_figure(names: list[str], values: list[float], ylabel: str, title: str):
    """A per-layer measure over depth (layer names on the x axis, input side first): what TensorBoard's scalar
    charts cannot show without faking the layer index as a step."""
    import matplotlib  # a heavy import, only for diagnostics at step 0

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(names) + 2), 4), dpi=100)
    ax.plot(range(1, len(values) + 1), values, "o-")
    ax.set_xticks(range(1, len(values) + 1), [f"{i} {n}" for i, n in enumerate(names, start=1)], rotation=45,
                  ha="right", fontsize=8)
    if values and min(values) > 0 and max(values) / min(values) > 10:
        ax.set_yscale("log")
    ax.set(xlabel="activation layer (input side first)", ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
