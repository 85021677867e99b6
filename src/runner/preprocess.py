"""Input preprocessing: statistics fitted on the training split only, then applied unchanged to every split.

A preprocessor is a module that takes a uint8 batch (B, 3, 32, 32) and returns float input for the network; its
fitted statistics are buffers, so they are saved in the checkpoint beside the model.
"""

import torch
from torch import nn


class Standardize(nn.Module):
    """(x / 255 - mean) / std per channel."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.register_buffer("mean", mean.reshape(1, -1, 1, 1).float())
        self.register_buffer("std", std.reshape(1, -1, 1, 1).float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() / 255.0 - self.mean) / self.std


def channel_stats(train_x: torch.Tensor, chunk: int = 10_000) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std on a 0..1 scale over a uint8 split, in chunks (no 600 MB float copy)."""
    total = torch.zeros(train_x.shape[1], dtype=torch.float64, device=train_x.device)
    squares = torch.zeros_like(total)
    for i in range(0, len(train_x), chunk):
        x = train_x[i:i + chunk].to(torch.float64) / 255.0
        total += x.sum(dim=(0, 2, 3))
        squares += (x * x).sum(dim=(0, 2, 3))
    count = train_x.numel() / train_x.shape[1]
    mean = total / count
    std = (squares / count - mean * mean).clamp_min(1e-12).sqrt()
    return mean.float(), std.float()


def fit(cfg, train_x: torch.Tensor) -> nn.Module:
    """Build the preprocessor that `cfg` (the preprocess group) names, fitted on the training images."""
    if cfg.name == "standardize":
        return Standardize(*channel_stats(train_x))
    raise ValueError(f"preprocess={cfg.name!r} is not known")
