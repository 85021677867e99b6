"""Batch norm folded into the layer before it, for inference (Hands-On ML ch. 11, "fold the batch-norm layers into
the previous layer"; Jacob et al. 2018): in eval mode BN is the per-channel affine y = g (z - mean) / sqrt(var + eps)
+ b of the conv/linear output z = W x + c, so W' = W g / sqrt(var + eps) and c' = (c - mean) g / sqrt(var + eps) + b
compute the same thing with one layer less. torch.fx's fuse finds every conv/linear whose only consumer is a batch
norm and rewrites the pair with torch.nn.utils.fusion; a norm after an activation (norm.position=after) or after a
pool stays as it is (folding it would change the function)."""

import copy

import torch
from torch import nn

_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def batch_norms(model: nn.Module) -> int:
    return sum(isinstance(m, _NORMS) for m in model.modules())


def fold_batch_norm(model: nn.Module) -> tuple[nn.Module, int]:
    """A folded copy of `model` (which is left as it is) in eval mode, as a torch.fx GraphModule, and how many
    batch norms were folded."""
    from torch import fx
    from torch.fx.experimental.optimization import fuse

    class Tracer(fx.Tracer):
        """Every module without children is a leaf (runner's Maxout reads x.shape, which symbolic tracing cannot)."""

        def is_leaf_module(self, m: nn.Module, qualified_name: str) -> bool:
            return super().is_leaf_module(m, qualified_name) or not any(m.children())

    copied = copy.deepcopy(model).eval()
    traced = fx.GraphModule(copied, Tracer().trace(copied), type(model).__name__)
    folded = fuse(traced, inplace=True, no_trace=True).eval()
    return folded, batch_norms(model) - batch_norms(folded)


@torch.inference_mode()
def max_abs_difference(a: nn.Module, b: nn.Module, batches) -> tuple[float, float]:
    """The largest |a(x) - b(x)| over the batches, and the largest |a(x)|, both in fp32 with TF32 off (TF32 rounds
    the mantissa to 10 bits, which alone differs by 1e-3)."""
    diff, scale = 0.0, 0.0
    with torch.backends.cudnn.flags(enabled=torch.backends.cudnn.enabled, allow_tf32=False):
        matmul = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False
        try:
            for x in batches:
                ya, yb = a(x).float(), b(x).float()
                diff = max(diff, (ya - yb).abs().max().item())
                scale = max(scale, ya.abs().max().item())
        finally:
            torch.backends.cuda.matmul.allow_tf32 = matmul
    return diff, scale
