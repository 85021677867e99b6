"""What the loop's regularizers compute on tensors: gradient clipping, and the sparsity measure that makes L1's effect
visible. (The components that apply them in the loop, gradient clipping and early stopping, are in
runner.engine.components; L2, weight decay and L1 act through the optimizer's parameter groups, see
runner.optimization.optimizers; dropout and friends are layers, see runner.nets.layers.)"""

import torch

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
