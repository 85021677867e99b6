"""Building blocks the models share: the normalization a `norm=` option names, Maxout, the dropout family of
`regularization=` (dropout, Gaussian dropout, alpha dropout, Uout, DropConnect, stochastic depth, max-norm), and the
conv/linear block that puts a layer, its norm and its activation in the order `norm.position` gives."""

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from runner.config.regularizers import chosen

# ---------------------------------------------------------------------------------------------------------------
# Normalization: one class per `norm=` option (its `_target_`)

def group_count(channels: int, groups: int) -> int:
    """The largest divisor of `channels` not above `groups` (GroupNorm needs groups | channels; 500 units with
    groups=8 get 5 groups of 100)."""
    return max(g for g in range(1, min(groups, channels) + 1) if channels % g == 0)


@dataclass(frozen=True, kw_only=True)
class Norm:
    """norm=none (no layer), and what every `norm=` option holds: `position` of its layer, before or after the
    activation; `eps`, added to the variance; `learn_scale` false fixes the scale (gamma) at 1 so that only the
    shift (beta) trains, as in airbench. Called with (channels, spatial) it makes the layer: spatial after a conv
    (B, C, H, W), else (B, C)."""

    position: str = "before"
    eps: float = 1e-5
    learn_scale: bool = True
    name: ClassVar[str] = "none"

    def __call__(self, channels: int, spatial: bool) -> nn.Module:
        layer = self.layer(channels, spatial)
        if not self.learn_scale and not isinstance(layer, nn.Identity):
            layer.weight.requires_grad_(False)  # the scale stays 1: only the shift learns
        return layer

    def layer(self, channels: int, spatial: bool) -> nn.Module:
        return nn.Identity()


@dataclass(frozen=True, kw_only=True)
class BatchNorm(Norm):
    """norm=batch (Ioffe & Szegedy 2015): each channel over the mini-batch; running statistics for evaluation."""

    momentum: float = 0.1
    name: ClassVar[str] = "batch"

    def layer(self, channels: int, spatial: bool) -> nn.Module:
        return (nn.BatchNorm2d if spatial else nn.BatchNorm1d)(channels, eps=self.eps, momentum=self.momentum)


@dataclass(frozen=True, kw_only=True)
class LayerNorm(Norm):
    """norm=layer (Ba et al. 2016): over all features of one example; for a conv over C, H and W (GroupNorm with
    one group, as in Wu & He 2018)."""

    name: ClassVar[str] = "layer"

    def layer(self, channels: int, spatial: bool) -> nn.Module:
        return nn.GroupNorm(1, channels, eps=self.eps) if spatial else nn.LayerNorm(channels, eps=self.eps)


@dataclass(frozen=True, kw_only=True)
class GroupNorm(Norm):
    """norm=group (Wu & He 2018): over groups of channels, `groups` of them (see group_count)."""

    groups: int = 8
    name: ClassVar[str] = "group"

    def layer(self, channels: int, spatial: bool) -> nn.Module:
        return nn.GroupNorm(group_count(channels, self.groups), channels, eps=self.eps)


@torch.no_grad()
def reestimate_batch_norm(model: nn.Module, batches) -> int:
    """Recompute the running statistics of every batch-norm layer of `model` over `batches` (network inputs), as
    the cumulative average over them (momentum None), with everything else in eval mode: dropout and the other
    noise off, as at test time, so the statistics are those the test will see (Li et al. 2019's fix for the
    variance shift that dropout in front of batch norm causes). Layers held in eval mode (frozen by transfer=) keep
    theirs. Returns the number of layers re-estimated; the model's train/eval mode is left as it was."""
    was_training = model.training
    model.eval()
    redone = []
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            m.train()  # a frozen layer's train() keeps it in eval
            if m.training:
                redone.append((m, m.momentum))
                m.reset_running_stats()
                m.momentum = None
    if redone:
        for x in batches:
            model(x)
    for m, momentum in redone:
        m.momentum = momentum
        m.eval()
    model.train(was_training)
    return len(redone)


# ---------------------------------------------------------------------------------------------------------------
# Maxout

class Maxout(nn.Module):
    """Maxout (Goodfellow et al. 2013): the max over `pieces` linear pieces per unit.

    Takes the output of a layer that produced pieces * C features, with the pieces of unit c at channels
    c * pieces ... c * pieces + pieces - 1, and returns C features: (B, C*k, ...) -> (B, C, ...). `block()` makes the
    layer in front of it k times wider, so a Maxout unit really is max_j (w_j . x + b_j): k=2 doubles the parameters.
    """

    def __init__(self, pieces: int = 2):
        super().__init__()
        self.pieces = pieces

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, ck, *rest = x.shape
        return x.view(b, ck // self.pieces, self.pieces, *rest).amax(dim=2)

    def extra_repr(self) -> str:
        return f"pieces={self.pieces}"


def pieces_of(activation: nn.Module) -> int:
    """How many times wider the layer in front of `activation` must be: Maxout's k, 1 for everything else."""
    return activation.pieces if isinstance(activation, Maxout) else 1


# ---------------------------------------------------------------------------------------------------------------
# Dropout family

class GaussianDropout(nn.Module):
    """Multiplicative Gaussian noise N(1, p / (1 - p)) in training (Srivastava et al. 2014, sec. 10): the same mean
    and variance as inverted dropout of rate p, with no exact zeros. Identity in eval mode."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        std = (self.p / (1.0 - self.p)) ** 0.5
        return x * (1.0 + std * torch.randn_like(x))

    def extra_repr(self) -> str:
        return f"p={self.p}"


class DropConnectLinear(nn.Linear):
    """A Linear layer whose weights, not activations, are dropped in training (Wan et al. 2013): each weight is
    zeroed with probability p and the kept ones scaled by 1/(1-p), so the expected weight is W (inverted, like
    dropout). One mask per mini-batch (the paper draws one per example; per batch costs one matmul). Eval: plain
    Linear with W."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, p: float):
        super().__init__(in_features, out_features, bias=bias)
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return super().forward(x)
        keep = torch.rand_like(self.weight) >= self.p
        return nn.functional.linear(x, self.weight * keep / (1.0 - self.p), self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, p={self.p}"


class StochasticDepth(nn.Module):
    """Drops a residual branch (Huang et al. 2016): in training each example's branch output is zeroed with
    probability p and kept ones are scaled by 1/(1-p); in eval the branch is kept as is. The inverted form of the
    paper's rule (which scales by the survival probability at test time): the same expectation."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        keep = torch.rand((len(x),) + (1,) * (x.dim() - 1), device=x.device) >= self.p
        return x * keep / (1.0 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Uout(nn.Module):
    """Uniform multiplicative noise (Li et al. 2019, "Understanding the disharmony between dropout and batch
    normalization by variance shift", sec. 5): x * (1 + u), u ~ U(-beta, beta) per unit in training; identity in
    eval. Its variance beta^2/3 x^2 is small for the usual beta (0.1 to 0.5: 0.003 to 0.08 x^2, against p/(1-p) x^2
    for dropout), so batch norm after it sees a smaller variance shift between training and test."""

    def __init__(self, beta: float):
        super().__init__()
        self.beta = beta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.beta == 0:
            return x
        return x * (1.0 + self.beta * (2.0 * torch.rand_like(x) - 1.0))

    def extra_repr(self) -> str:
        return f"beta={self.beta}"


# Modules that are random in training and deterministic in eval: what MC dropout switches back on.
DROPOUT_TYPES = (nn.Dropout, nn.AlphaDropout, GaussianDropout, Uout, DropConnectLinear)
# The noise on units that regularization=<kind>.placement=after_last_norm keeps only behind the last norm layer.
UNIT_NOISE = (nn.Dropout, nn.AlphaDropout, GaussianDropout, Uout)
NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)


def keep_noise_after_last_norm(model: nn.Module) -> int:
    """Replace every unit-noise module (dropout, Gaussian dropout, alpha dropout, Uout) that comes before the
    model's last normalization layer by an identity, so that no batch norm sees the variance shift of a dropout in
    front of it (Li et al. 2019: dropout only after the last BN layer). "Before" is the order the layers are
    registered, which is their forward order in runner's models. Returns how many were removed."""
    modules = list(model.named_modules())
    last_norm = max((i for i, (_, m) in enumerate(modules) if isinstance(m, NORM_TYPES)), default=-1)
    removed = 0
    for name, module in modules[:last_norm]:
        if isinstance(module, UNIT_NOISE):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, nn.Identity())
            removed += 1
    return removed


class FractionalMaxPool(nn.FractionalMaxPool2d):
    """Fractional max-pooling (Graham 2014) with 2x2 regions, each side shrunk to int(side * ratio): in training the
    regions' offsets are drawn at random for every image and channel (torch's FractionalMaxPool2d); in eval they are
    fixed (the draw 0.5 for all), so that evaluation is deterministic."""

    def __init__(self, ratio: float):
        super().__init__(2, output_ratio=ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return super().forward(x)
        fixed = x.new_full((x.shape[0], x.shape[1], 2), 0.5)
        return nn.functional.fractional_max_pool2d(x, self.kernel_size, output_ratio=self.output_ratio,
                                                   _random_samples=fixed)


def enable_dropout(model: nn.Module) -> int:
    """Put only the dropout-type modules of `model` in training mode (call after model.eval(): batch norm keeps its
    running statistics). For MC dropout evaluation. Returns how many modules were switched."""
    switched = 0
    for module in model.modules():
        if isinstance(module, DROPOUT_TYPES):
            module.train()
            switched += 1
    return switched


@dataclass(frozen=True)
class Drop:
    """The in-network regularizers of `regularization=`, as the model builders place them.

    kind/p: one of config.regularizers.DROPOUTS in front of every fully connected layer that follows a hidden layer (the MLP's
    hidden layers, VGG's classifier, the head after global pooling); conv_p: the same kind after every conv block
    (for uout: its beta and conv_beta). placement: every (as said) or after_last_norm (build_model then keeps only
    those behind the last norm layer, see keep_noise_after_last_norm).
    dropconnect_p: every Linear layer is a DropConnectLinear. stochastic_depth_p: the drop probability of the last
    residual block; block b of B drops with p * (b + 1) / B (Huang et al. 2016's linear decay rule).
    """

    kind: str = "none"
    p: float = 0.0
    conv_p: float = 0.0
    dropconnect_p: float = 0.0
    stochastic_depth_p: float = 0.0
    placement: str = "every"

    @classmethod
    def from_config(cls, regularization) -> "Drop":
        def rate(name: str, key: str = "p") -> float:
            return regularization[name][key] if name in regularization else 0.0

        kinds = chosen(regularization, "dropout")
        kind = kinds[0] if kinds else "none"  # config.validate allows one
        key = "beta" if kind == "uout" else "p"  # Uout's noise is U(-beta, beta), not a drop probability
        placement = regularization[kind].get("placement", "every") if kind != "none" else "every"
        return cls(kind=kind, p=rate(kind, key), conv_p=rate(kind, f"conv_{key}"), dropconnect_p=rate("dropconnect"),
                   stochastic_depth_p=rate("stochastic_depth"), placement=placement)

    def _module(self, p: float) -> nn.Module:
        if p == 0 or self.kind == "none":
            return nn.Identity()
        if self.kind == "dropout":
            return nn.Dropout(p)  # inverted: kept units scaled by 1/(1-p) in training
        if self.kind == "gaussian_dropout":
            return GaussianDropout(p)
        if self.kind == "uout":
            return Uout(p)
        return nn.AlphaDropout(p)

    def fc(self) -> nn.Module:
        """The dropout in front of a fully connected layer."""
        return self._module(self.p)

    def conv(self) -> nn.Module:
        """The dropout after a conv block."""
        return self._module(self.conv_p)

    def linear(self, in_features: int, out_features: int, bias: bool = True) -> nn.Linear:
        if self.dropconnect_p > 0:
            return DropConnectLinear(in_features, out_features, bias, p=self.dropconnect_p)
        return nn.Linear(in_features, out_features, bias)

    def depth_rate(self, block: int, blocks: int) -> float:
        """Drop probability of residual block `block` (0-based) of `blocks`: linear from p/blocks to p."""
        return self.stochastic_depth_p * (block + 1) / blocks


@torch.no_grad()
def apply_max_norm(model: nn.Module, value: float) -> None:
    """Max-norm constraint (Srivastava et al. 2014): rescale each unit's incoming weight vector (a row of a Linear
    weight, one filter of a conv) whose L2 norm exceeds `value` back onto the ball of radius `value`. Frozen
    weights (requires_grad=False: a transfer=linear_probe body, a fixed whitening stem) are not trained, so left
    alone."""
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)) and module.weight.requires_grad:
            w = module.weight.view(module.weight.shape[0], -1)  # (units, fan_in)
            norms = w.norm(dim=1, keepdim=True)
            w.mul_(torch.clamp(value / norms.clamp_min(1e-12), max=1.0))


def max_norm_hook(model: nn.Module, value: float) -> Callable:
    """An optimizer step post-hook applying the max-norm constraint to `model` after every step."""

    def hook(optimizer, args, kwargs) -> None:
        apply_max_norm(model, value)

    return hook


NO_DROP = Drop()


# ---------------------------------------------------------------------------------------------------------------
# The block every model is made of

def block(c_in: int, c_out: int, act: Callable[[], nn.Module] | None, norm: Norm, *, spatial: bool,
          drop: Drop = NO_DROP, stride: int = 1) -> nn.Sequential:
    """A 3x3 conv (spatial, with `stride`) or a linear layer, then norm and activation in the order norm.position gives, then the
    dropout of `drop` (conv_p after a conv block, p after a hidden linear block: in front of the next layer).

    A Maxout activation makes the layer produce pieces * c_out features, which it maxes down to c_out; a norm placed
    before it normalizes all the pieces. The layer has no bias when a norm follows it directly (the norm's own shift
    makes it redundant). act=None: the layer and, for position before, its norm (a residual branch's last conv).
    Children are named conv/linear, norm, act, drop, so diagnostics tags read `features.0.act`.
    """
    a = act() if act is not None else None
    k = pieces_of(a) if a is not None else 1
    before = norm.position == "before"
    bias = not (before and norm.name != "none")
    if spatial:
        layer = ("conv", nn.Conv2d(c_in, k * c_out, 3, stride=stride, padding=1, bias=bias))
    else:
        layer = ("linear", drop.linear(c_in, k * c_out, bias))
    if a is None:
        parts = [layer, ("norm", norm(c_out, spatial) if before else nn.Identity())]
    elif before:
        parts = [layer, ("norm", norm(k * c_out, spatial)), ("act", a)]
    else:
        parts = [layer, ("act", a), ("norm", norm(c_out, spatial))]
    if a is not None:
        parts.append(("drop", drop.conv() if spatial else drop.fc()))
    return nn.Sequential(OrderedDict((n, m) for n, m in parts if not isinstance(m, nn.Identity)))
