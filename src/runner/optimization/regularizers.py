"""The regularizers that live in the training loop rather than in the network or the optimizer: gradient clipping,
early stopping, and the sparsity measure that makes L1's effect visible. (L2, weight decay and L1 act through the
optimizer's parameter groups, see runner.optimization.optimizers; dropout and friends are layers, see runner.nets.layers.)"""

import torch
from torch import nn

# |w| below this counts as near zero (conv/linear weights start around 0.05-0.2 in magnitude).
NEAR_ZERO = 1e-3


def clip_gradients(params: list[torch.Tensor], by: str, threshold: float) -> torch.Tensor:
    """Clip the gradients of `params` in place, by global L2 norm or by value; returns the global norm before
    clipping, as a device tensor (read back only when logged)."""
    grads = [p.grad for p in params if p.grad is not None]
    norm = torch.nn.utils.get_total_norm(grads)
    if by == "norm":
        torch.nn.utils.clip_grads_with_norm_(params, threshold, norm)
    else:
        torch.nn.utils.clip_grad_value_(params, threshold)
    return norm


@torch.no_grad()
def sparsity(weights: list[torch.Tensor]) -> dict[str, float]:
    """The fraction of weights that are exactly 0.0, and that are below NEAR_ZERO in magnitude."""
    count = sum(w.numel() for w in weights)
    zeros = sum((w == 0).sum() for w in weights)
    near = sum((w.abs() < NEAR_ZERO).sum() for w in weights)
    return {"weights/zero_fraction": float(zeros) / count, "weights/near_zero_fraction": float(near) / count}


class EarlyStopping:
    """Patience on a validation metric (val_acc: higher is better; val_loss: lower is better). `observe` returns
    True when the run should stop: patience_epochs epochs in a row without an improvement above min_delta.
    Keeps a copy of the best epoch's weights (and buffers) to put back at the end."""

    def __init__(self, metric: str, patience_epochs: int, min_delta: float):
        self.metric, self.patience_epochs, self.min_delta = metric, patience_epochs, min_delta
        self.best, self.best_epoch, self.bad_epochs, self.stopped = None, 0, 0, False
        self.best_weights: dict[str, torch.Tensor] | None = None

    def observe(self, metrics: dict, epoch: int, model: nn.Module) -> bool:
        value = metrics[self.metric]
        sign = 1.0 if self.metric.endswith("acc") else -1.0
        if self.best is None or sign * (value - self.best) > self.min_delta:
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
            self.best_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            self.bad_epochs += 1
        self.stopped = self.bad_epochs >= self.patience_epochs
        return self.stopped

    def restore(self, model: nn.Module) -> None:
        """Put the best epoch's weights back into `model`."""
        if self.best_weights is not None:
            model.load_state_dict(self.best_weights)

    def state_dict(self) -> dict:
        return {"best": self.best, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs,
                "stopped": self.stopped, "best_weights": self.best_weights}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_epoch, self.bad_epochs = state["best"], state["best_epoch"], state["bad_epochs"]
        self.stopped, self.best_weights = state["stopped"], state["best_weights"]
