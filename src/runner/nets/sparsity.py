"""Magnitude pruning, the numbers of it: which conv/linear weights are pruned (the smallest |w|, over the whole net or
layer by layer; Han et al. 2015, "Learning both weights and connections"), the gradual sparsity schedule of Zhu &
Gupta 2017 ("To prune, or not to prune"), the sparsity a model has reached, and what pruning saves on disk: a
sparse encoding (a bit per weight for the mask, then the kept values) and gzip of the dense file (Hands-On ML
ch. 11: zero the small weights, then the file compresses). The training-time component is runner.engine.pruning."""

import gzip
import io
import math

import numpy as np
import torch
from torch import nn
from torch.nn.utils import prune

from runner.config import CheckpointError

SPARSE_FORMAT = "runner-sparse-1"


def prunable(model: nn.Module) -> dict[str, nn.Parameter]:
    """The weights pruning acts on, by module name: every conv and linear layer's weight (biases and normalization
    layers stay dense: they are few, and zeroing a scale or shift is not removing a connection)."""
    return {name: m.weight for name, m in model.named_modules()
            if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)) and m.weight.requires_grad}


@torch.no_grad()
def magnitude_masks(weights: dict[str, torch.Tensor], sparsity: float, scope: str) -> dict[str, torch.Tensor]:
    """Boolean masks (True: kept) zeroing the fraction `sparsity` of the smallest-magnitude weights: over all layers
    together (scope=global: a layer with small weights loses more of them) or in each layer (scope=layer). The counts
    are torch.nn.utils.prune's (round(sparsity x weights)); so are the masks (L1Unstructured's)."""
    method = prune.L1Unstructured(amount=float(sparsity))
    if scope == "layer":
        return {n: method.compute_mask(w.detach().contiguous(), torch.ones(w.shape, dtype=torch.bool, device=w.device))
                for n, w in weights.items()}
    if scope != "global":
        raise ValueError(f"scope={scope!r}: allowed global, layer")
    flat = torch.cat([w.detach().flatten() for w in weights.values()])
    kept = method.compute_mask(flat, torch.ones(flat.shape, dtype=torch.bool, device=flat.device))
    return {n: m.view_as(w) for (n, w), m in zip(weights.items(), kept.split([w.numel() for w in weights.values()]),
                                                strict=True)}


def ramp(step: int, start: int, end: int, final: float, kind: str = "cubic") -> float:
    """The target sparsity after `step` optimizer steps: 0 until `start`, `final` from `end` on, and in between
    Zhu & Gupta's cubic s = final (1 - (1 - t)^3), t = (step - start) / (end - start) (prunes fast while there are
    many redundant weights, slowly near the end), or linear s = final t."""
    if step <= start:
        return 0.0
    if step >= end:
        return final
    t = (step - start) / (end - start)
    return final * (1 - (1 - t) ** 3) if kind == "cubic" else final * t


@torch.no_grad()
def reached(weights: dict[str, torch.Tensor]) -> tuple[float, dict[str, float]]:
    """The fraction of weights that are exactly 0, over all of them and per layer (one device sync)."""
    zeros = torch.stack([(w == 0).sum() for w in weights.values()]).tolist()
    total = sum(w.numel() for w in weights.values())
    return sum(zeros) / total, {n: z / w.numel() for (n, w), z in zip(weights.items(), zeros, strict=True)}


@torch.no_grad()
def encode(state: dict[str, torch.Tensor], pruned: list[str]) -> dict:
    """A state dict with the tensors named in `pruned` stored sparse: their shape, their nonzero pattern packed 8
    weights to a byte, and their nonzero values in order. decode() restores the dense state dict exactly."""
    sparse, dense = {}, {}
    for key, t in state.items():
        if key in pruned:
            t = t.detach().cpu().contiguous()
            mask = t != 0
            sparse[key] = {"shape": list(t.shape), "bits": torch.from_numpy(np.packbits(mask.flatten().numpy())),
                           "values": t[mask]}
        else:
            dense[key] = t.detach().cpu()
    return {"format": SPARSE_FORMAT, "dense": dense, "sparse": sparse}


def decode(encoded: dict, source: str = "the sparse file") -> dict[str, torch.Tensor]:
    """The dense state dict of an encode()d one (the order of the original keys is not kept). Each size the encoding
    claims is checked against the data it carries before anything is allocated (a shape against the mask's bits, the
    mask's kept weights against the values): a file that claims more is one CheckpointError naming `source`."""

    def fail(key, problem: str):
        name = repr(key) if type(key) is str and len(key) <= 200 else "a tensor"
        raise CheckpointError(f"{source} is not a sparse encoding runner wrote: {name} {problem}; take the weights "
                              "from the run's checkpoints/last.pt instead.")

    if type(encoded) is not dict or not (type(encoded.get("format")) is str and encoded["format"] == SPARSE_FORMAT):
        fail("format", f"is not {SPARSE_FORMAT!r}")
    dense, sparse = encoded.get("dense"), encoded.get("sparse")
    if type(dense) is not dict or not all(isinstance(t, torch.Tensor) for t in dense.values()):
        fail("dense", "is not a dict of tensors")
    if type(sparse) is not dict:
        fail("sparse", "is not a dict")
    state = dict(dense)
    for key, s in sparse.items():
        shape, bits, values = (s.get(k) for k in ("shape", "bits", "values")) if type(s) is dict else (None,) * 3
        if not (type(shape) is list and len(shape) <= 8 and all(type(n) is int and 0 <= n < 2**63 for n in shape)):
            fail(key, "has no shape (a list of at most 8 sizes)")
        if not (isinstance(bits, torch.Tensor) and bits.dtype == torch.uint8 and bits.dim() == 1
                and isinstance(values, torch.Tensor) and values.dim() == 1):
            fail(key, "lacks its mask bits or its values")
        n = math.prod(shape)
        if bits.numel() != (n + 7) // 8:  # the mask is a bit per weight: what the file carries bounds the shape
            fail(key, f"claims {n:,} weights, but its mask has bits for {8 * bits.numel():,}")
        mask = torch.from_numpy(np.unpackbits(bits.numpy(), count=n).astype(bool)).view(shape)
        kept = int(mask.sum())
        if kept != values.numel():
            fail(key, f"keeps {kept:,} weights, but holds {values.numel():,} values")
        t = torch.zeros(shape, dtype=values.dtype)
        t[mask] = values
        state[key] = t
    return state


def _saved_bytes(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def sizes(state: dict[str, torch.Tensor], pruned: list[str]) -> dict[str, int]:
    """Bytes of the model as torch.save writes it: dense, that file gzipped (zeros compress), and the sparse
    encoding (a bit per weight plus the kept values, 4 bytes each in fp32)."""
    dense = _saved_bytes({k: v.detach().cpu() for k, v in state.items()})
    return {"dense_bytes": len(dense), "gzip_bytes": len(gzip.compress(dense, compresslevel=6)),
            "sparse_bytes": len(_saved_bytes(encode(state, pruned)))}
