"""Optimizer plumbing: which parameters are decayed, and decoupled weight decay for any torch optimizer."""

import torch
from torch import nn

_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)


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


def param_groups(model: nn.Module, regularization) -> list[dict]:
    """Parameter groups carrying the L2 coefficient (the optimizer's own weight_decay argument) and the decoupled
    decay coefficient (applied by `decoupled_weight_decay_hook`), from the regularization configs."""
    l2 = regularization.get("l2")
    decoupled = regularization.get("weight_decay")
    decay, no_decay = split_decay(model)
    groups = [{"params": decay, "weight_decay": l2.value if l2 else 0.0,
               "decoupled_weight_decay": decoupled.value if decoupled else 0.0, "name": "decay"}]
    extra = {"weight_decay": l2.value if l2 and l2.decay_norm_and_bias else 0.0,
             "decoupled_weight_decay": decoupled.value if decoupled and decoupled.decay_norm_and_bias else 0.0}
    groups.append({"params": no_decay, **extra, "name": "no_decay"})
    return [g for g in groups if g["params"]]


def decoupled_weight_decay_hook(optimizer: torch.optim.Optimizer, args, kwargs) -> None:
    """Before each step: w <- w * (1 - lr * decoupled_weight_decay), per group (AdamW's rule, for any optimizer)."""
    with torch.no_grad():
        for group in optimizer.param_groups:
            wd = group.get("decoupled_weight_decay", 0.0)
            if wd:
                params = [p for p in group["params"] if p.grad is not None]
                if params:
                    torch._foreach_mul_(params, 1.0 - group["lr"] * wd)
