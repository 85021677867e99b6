"""Data augmentation on whole uint8 batches on the training device (no per-image Python work).

Every function takes a batch (B, C, H, W) and a torch.Generator on the batch's device, so the random choices are
reproducible and saved with the checkpoint.
"""

import torch


def flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2."""
    mask = torch.rand(len(x), device=x.device, generator=generator) < 0.5
    return torch.where(mask[:, None, None, None], x.flip(3), x)


def random_crop(x: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Crop each image at a random offset from it zero-padded by `padding` pixels on every side
    (the standard CIFAR recipe, 32 -> 40 -> 32 for padding 4). Gathered with one indexing op for the batch."""
    if padding == 0:
        return x
    b, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (padding,) * 4)
    dy = torch.randint(0, 2 * padding + 1, (b, 1), device=x.device, generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (b, 1), device=x.device, generator=generator)
    rows = (dy + torch.arange(h, device=x.device))[:, None, :, None]  # (B, 1, H, 1)
    cols = (dx + torch.arange(w, device=x.device))[:, None, None, :]  # (B, 1, 1, W)
    batch = torch.arange(b, device=x.device)[:, None, None, None]
    channel = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, channel, rows, cols]


def augment(x: torch.Tensor, cfg, generator: torch.Generator) -> torch.Tensor:
    """Apply the augmentation config `cfg` (its `padding` and `flip` keys) to a training batch."""
    x = random_crop(x, cfg.padding, generator)
    if cfg.flip:
        x = flip(x, generator)
    return x
