"""Optimizer plumbing: which class runs an `optimizer=` option (torch's, or with `impl=reference` the lecture's
update rules of runner.optimization.reference; built by runner.engine.build.make_optimizer), which parameters are decayed, linear lr scaling with the batch size, and
the regularizers that act on the weights at each step (decoupled weight decay, L1) for any optimizer.

Per parameter group, the keys the hooks below read:
  weight_decay      the optimizer's own argument: coupled L2 (g += value * w) for every class but AdamW, whose own
                    argument is decoupled decay (Loshchilov & Hutter 2019)
  decoupled_decay   w <- w * (1 - lr * value) before each step, for any optimizer (regularization=weight_decay)
  l1_subgradient    g += value * sign(w) before each step: the gradient of value * |w| added to the loss
  l1_proximal       w <- sign(w) * max(|w| - lr * value, 0) after each step: the proximal (soft-thresholding) step
                    of value * |w|, which leaves exact zeros (ISTA)
"""

import inspect

import torch
from omegaconf import OmegaConf
from torch import nn

_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)


def scaled_lr(lr: float, batch_size: int, reference_batch_size: int | None) -> float:
    """The linear scaling rule (Goyal et al. 2017): lr * batch_size / reference_batch_size; unchanged when the
    reference is null."""
    return lr if reference_batch_size is None else lr * batch_size / reference_batch_size


def implementation(optimizer_cfg):
    """The optimizer config whose `_target_` runs `optimizer=`: as it is (a torch.optim class), or with
    impl=reference retargeted to the class of the same name in runner.optimization.reference."""
    if optimizer_cfg.impl != "reference":
        return optimizer_cfg
    name = optimizer_cfg._target_.rsplit(".", 1)[-1]
    return OmegaConf.merge(optimizer_cfg, {"_target_": f"runner.optimization.reference.{name}"})


def has_fused(cls) -> bool:
    """Whether the optimizer class is torch's with a fused kernel (one kernel for all parameters)."""
    return cls.__module__.startswith("torch.optim") and "fused" in inspect.signature(cls).parameters


def split_decay(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(weights to decay, parameters to leave alone): biases and normalization-layer parameters are not decayed,
    since shrinking a norm's scale or a bias towards zero does not regularize the function the net computes."""
    decay, no_decay = [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            (no_decay if isinstance(module, _NORM_TYPES) or name.endswith("bias") else decay).append(p)
    return decay, no_decay


def _coefficients(regularization, weights: bool, decoupled_native: bool) -> dict:
    """The per-group regularization keys (see the module docstring) for the weights (weights=True) or for the
    biases and norm parameters, which only options with decay_norm_and_bias reach."""

    def value(option: str, key: str = "value") -> float:
        node = regularization.get(option)
        return float(node[key]) if node is not None and (weights or node.decay_norm_and_bias) else 0.0

    def l1(proximal: bool) -> float:
        return sum(value(o, k) for o, k in (("l1", "value"), ("elastic_net", "l1"))
                   if o in regularization and bool(regularization[o].proximal) == proximal)

    l2, decoupled = value("l2") + value("elastic_net", "l2"), value("weight_decay")
    return {"weight_decay": decoupled if decoupled_native else l2,
            "decoupled_decay": 0.0 if decoupled_native else decoupled,
            "l1_subgradient": l1(proximal=False), "l1_proximal": l1(proximal=True)}


def norm_biases(model: nn.Module) -> list[nn.Parameter]:
    """The shift (bias) parameters of the normalization layers."""
    return [m.bias for m in model.modules()
            if isinstance(m, _NORM_TYPES) and getattr(m, "bias", None) is not None and m.bias.requires_grad]


def param_groups(model: nn.Module, regularization, decoupled_native: bool = False, lr: float | None = None,
                 norm_bias_lr_factor: float = 1.0) -> list[dict]:
    """Two parameter groups, "decay" (conv and linear weights) and "no_decay" (biases, norm parameters), carrying
    the coefficients of `regularization=`. decoupled_native: the optimizer's weight_decay is decoupled (AdamW), so
    regularization.weight_decay goes there; config.validate rejects a coupled L2 beside it.
    norm_bias_lr_factor != 1 (trainer.norm_bias_lr_factor): the normalization layers' biases go into a third group
    "norm_bias" whose lr is lr times the factor, and whose regularization coefficients are divided by it, so that
    the factor speeds up what the loss's gradient does to them but not their decay (each coefficient acts through
    lr * coefficient; as in airbench, whose "bias_scaler" scales the lr but not the weight decay)."""
    decay, no_decay = split_decay(model)
    coefficients = _coefficients(regularization, False, decoupled_native)
    groups = [{"params": decay, **_coefficients(regularization, True, decoupled_native), "name": "decay"}]
    if norm_bias_lr_factor == 1.0:
        groups.append({"params": no_decay, **coefficients, "name": "no_decay"})
    else:
        if lr is None:
            raise ValueError("param_groups: norm_bias_lr_factor needs the lr it multiplies")
        shifts = {id(p) for p in norm_biases(model)}
        groups += [{"params": [p for p in no_decay if id(p) not in shifts], **coefficients, "name": "no_decay"},
                   {"params": [p for p in no_decay if id(p) in shifts], "name": "norm_bias",
                    **{k: v / norm_bias_lr_factor for k, v in coefficients.items()}, "lr": lr * norm_bias_lr_factor}]
    return [g for g in groups if g["params"]]


def _with_grad(group) -> list[torch.Tensor]:
    return [p for p in group["params"] if p.grad is not None]


def decoupled_weight_decay_hook(optimizer: torch.optim.Optimizer, args, kwargs) -> None:
    """Before each step: w <- w * (1 - lr * decoupled_decay), per group (AdamW's rule, for any optimizer)."""
    with torch.no_grad():
        for group in optimizer.param_groups:
            wd = group.get("decoupled_decay", 0.0)
            if wd and (params := _with_grad(group)):
                torch._foreach_mul_(params, 1.0 - group["lr"] * wd)


def l1_subgradient_hook(optimizer: torch.optim.Optimizer, args, kwargs) -> None:
    """Before each step: g += l1_subgradient * sign(w), the (sub)gradient of the penalty l1 * sum|w| on the loss.
    Weights hover around zero under it but rarely land on exactly 0.0."""
    with torch.no_grad():
        for group in optimizer.param_groups:
            lam = group.get("l1_subgradient", 0.0)
            if lam and (params := _with_grad(group)):
                torch._foreach_add_([p.grad for p in params], torch._foreach_sign(params), alpha=lam)


def l1_proximal_hook(optimizer: torch.optim.Optimizer, args, kwargs) -> None:
    """After each step: soft-thresholding by lr * l1_proximal, the proximal operator of the L1 penalty (ISTA;
    Parikh & Boyd 2014, sec. 6.5.2). Every weight the step left within lr * l1 of zero becomes exactly 0.0.
    Exact for SGD; for adaptive optimizers it is the common heuristic that ignores their per-weight scaling."""
    with torch.no_grad():
        for group in optimizer.param_groups:
            lam = group.get("l1_proximal", 0.0)
            if lam:
                threshold = group["lr"] * lam
                for p in _with_grad(group):
                    p.copy_(p.sign() * (p.abs() - threshold).clamp_min_(0.0))


def hold(optimizer: torch.optim.Optimizer, params) -> None:
    """From the next step on, `params` (and only they, of those held before) are not updated: their gradients
    are dropped before each step, and torch's optimizers skip a parameter without one (no step, no momentum, no
    decay). Unlike requires_grad=False this leaves the set of trained parameters alone, as DistributedDataParallel
    needs (init.first_layer_bias_epochs)."""
    optimizer.held_params = list(params)


def hold_hook(optimizer: torch.optim.Optimizer, args, kwargs) -> None:
    """Before each step (and before the regularizers' hooks): drop the gradients of the parameters `hold` named."""
    for p in getattr(optimizer, "held_params", ()):
        p.grad = None


def register_hooks(optimizer: torch.optim.Optimizer) -> None:
    """The weight regularizers every optimizer gets (each does nothing for a group whose coefficient is 0), after
    the hook that keeps held parameters still."""
    optimizer.register_step_pre_hook(hold_hook)
    optimizer.register_step_pre_hook(decoupled_weight_decay_hook)
    optimizer.register_step_pre_hook(l1_subgradient_hook)
    optimizer.register_step_post_hook(l1_proximal_hook)
