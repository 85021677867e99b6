"""Data augmentation on whole uint8 batches on the training device (no per-image Python work).

Every function takes a uint8 batch (B, C, H, W) and a torch.Generator on the batch's device, so the random choices
are reproducible and saved with the checkpoint, and returns a uint8 batch of the same shape.
An `augmentation=` option is an `Augmentation` (its `_target_`), the one object every caller uses: the training loop
(`epoch_view` once per epoch, then a call per batch), the TensorBoard gallery (`augmented_grid`) and the benchmark.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from runner.config import PAD_MODES

# Cutout's fill: mid-gray, close to the CIFAR mean, so about 0 after standardization, like the zeroed patch of
# normalized input in DeVries & Taylor 2017.
CUTOUT_FILL = 128


def _uniform(n: int, low: float, high: float, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, device=x.device, generator=generator)


def flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2."""
    mask = torch.rand(len(x), device=x.device, generator=generator) < 0.5
    return torch.where(mask[:, None, None, None], x.flip(3), x)


def alternating_flip(x: torch.Tensor, epoch: int, seed: int) -> torch.Tensor:
    """The whole training split with each image mirrored in alternate epochs: in epoch 0 a random half (drawn once
    from `seed`), in epoch 1 the other half, and so on. Every image is seen both ways within two epochs, where a
    fresh coin per epoch repeats a view one time in two (Jordan 2024, airbench's alternating flip)."""
    generator = torch.Generator(device=x.device).manual_seed(seed)
    mask = (torch.rand(len(x), device=x.device, generator=generator) < 0.5) ^ bool(epoch % 2)
    return torch.where(mask[:, None, None, None], x.flip(3), x)


def pad(x: torch.Tensor, p: int, mode: str = "zeros") -> torch.Tensor:
    """A batch (B, C, H, W) padded by p pixels on every side: zeros (black, as torchvision's RandomCrop pads), or
    reflect (the image mirrored at its edge without repeating the edge pixel, as airbench pads: the border looks
    like image, not like a frame). Reflect is done by indexing, so it works for uint8 on every device."""
    if mode == "zeros":
        return F.pad(x, (p,) * 4)
    if mode != "reflect":
        raise ValueError(f"pad mode {mode!r} is not one of {PAD_MODES}")

    def index(n):  # p, p-1, ..., 1, 0, 1, ..., n-1, n-2, ..., n-1-p
        i = torch.arange(-p, n + p, device=x.device).abs()
        return torch.where(i > n - 1, 2 * (n - 1) - i, i)

    return x.index_select(2, index(x.shape[2])).index_select(3, index(x.shape[3]))


def translate(x: torch.Tensor, dy: int, dx: int, pad_mode: str = "zeros") -> torch.Tensor:
    """Every image shifted by dy rows and dx columns, the uncovered border filled as `pad` does in pad_mode."""
    b, c, h, w = x.shape
    p = max(abs(dy), abs(dx))
    if p == 0:
        return x
    padded = pad(x, p, pad_mode)
    return padded[:, :, p - dy:p - dy + h, p - dx:p - dx + w]


def random_crop(x: torch.Tensor, padding: int, generator: torch.Generator, pad_mode: str = "zeros") -> torch.Tensor:
    """Crop each image at a random offset from it padded by `padding` pixels on every side (zeros or reflect, see
    `pad`; the standard CIFAR recipe is 32 -> 40 -> 32 with zeros for padding 4). One gather for the whole batch
    from a view of all (2p+1)^2 windows (unfold makes no copy): 2x faster on CPU than gathering rows and columns."""
    if padding == 0:
        return x
    b, _, h, w = x.shape
    padded = pad(x, padding, pad_mode)
    windows = padded.unfold(2, h, 1).unfold(3, w, 1)  # (B, C, 2p+1, 2p+1, H, W), a view
    dy = torch.randint(0, 2 * padding + 1, (b,), device=x.device, generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (b,), device=x.device, generator=generator)
    return windows[torch.arange(b, device=x.device), :, dy, dx]


def random_resized_crop(x: torch.Tensor, min_area_fraction: float, aspect_ratio: list[float],
                        generator: torch.Generator) -> torch.Tensor:
    """Scale augmentation (Szegedy et al. 2015's random resized crop): a box covering a uniform fraction in
    [min_area_fraction, 1] of each image, with a log-uniform aspect ratio (width / height) in aspect_ratio, clipped
    to the image and placed uniformly inside it, is resized back to the full image (bilinear). One affine
    grid_sample for the batch."""
    b = len(x)
    area = _uniform(b, min_area_fraction, 1.0, x, generator)
    log_ratio = _uniform(b, math.log(aspect_ratio[0]), math.log(aspect_ratio[1]), x, generator)
    w = (area * log_ratio.exp()).sqrt().clamp(max=1.0)  # box width / image width
    h = (area / log_ratio.exp()).sqrt().clamp(max=1.0)
    cx = (1.0 - w) * _uniform(b, -1.0, 1.0, x, generator)  # box center in [-1, 1] image coordinates
    cy = (1.0 - h) * _uniform(b, -1.0, 1.0, x, generator)
    zero = torch.zeros_like(w)
    theta = torch.stack([torch.stack([w, zero, cx], 1), torch.stack([zero, h, cy], 1)], 1)  # (B, 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.round_().clamp_(0, 255).to(torch.uint8)


def color_jitter(x: torch.Tensor, brightness: float, contrast: float, saturation: float,
                 generator: torch.Generator) -> torch.Tensor:
    """Per image, factors uniform in [1 - s, 1 + s] for each strength s: brightness scales the pixels, contrast
    blends with the image's mean gray level, saturation with the pixel's own gray level (torchvision's
    ColorJitter rules, in this fixed order), clamped to 0..255 after each."""
    b = len(x)
    f = x.float()

    def factor(strength):
        return _uniform(b, 1.0 - strength, 1.0 + strength, x, generator)[:, None, None, None]

    def gray(img):  # ITU-R 601 luma, (B, 1, H, W)
        return (0.299 * img[:, 0:1] + 0.587 * img[:, 1:2] + 0.114 * img[:, 2:3])

    f = (f * factor(brightness)).clamp_(0, 255)
    mean = gray(f).mean(dim=(1, 2, 3), keepdim=True)
    f = (mean + factor(contrast) * (f - mean)).clamp_(0, 255)
    g = gray(f)
    f = (g + factor(saturation) * (f - g)).clamp_(0, 255)
    return f.round_().to(torch.uint8)


def cutout(x: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """Cutout (DeVries & Taylor 2017): a size x size square, centered uniformly anywhere in the image (so it may
    be clipped by the border), is set to CUTOUT_FILL in every channel."""
    b, _, h, w = x.shape
    cy = torch.randint(0, h, (b, 1), device=x.device, generator=generator)
    cx = torch.randint(0, w, (b, 1), device=x.device, generator=generator)
    rows = torch.arange(h, device=x.device)[None, :] - (cy - size // 2)  # (B, H): 0..size-1 inside the square
    cols = torch.arange(w, device=x.device)[None, :] - (cx - size // 2)
    inside = ((rows >= 0) & (rows < size))[:, :, None] & ((cols >= 0) & (cols < size))[:, None, :]  # (B, H, W)
    return x.masked_fill(inside[:, None], CUTOUT_FILL)


@dataclass(kw_only=True)
class Augmentation:
    """An `augmentation=` option: the steps whose keys it sets, in a fixed order. Per batch (`__call__`): a random
    resized crop (min_area_fraction, aspect_ratio) or a padded random crop (padding, its border by pad_mode), a flip
    (flip: true), color jitter (brightness, contrast, saturation), cutout (cutout_pixels). Per epoch (`epoch_view`):
    with flip: alternate, the whole split mirrored as alternating_flip says, from the run's `seed`."""

    seed: int
    padding: int  # these four keys' defaults are the config schema's (runner.config.schema)
    pad_mode: str
    flip: bool | str
    cutout_pixels: int
    min_area_fraction: float | None = None
    aspect_ratio: list[float] | None = None
    brightness: float | None = None
    contrast: float | None = None
    saturation: float | None = None

    def epoch_view(self, train_x: torch.Tensor, epoch: int) -> torch.Tensor:
        """The training split as `epoch` (0-based) sees it: alternately flipped with flip: alternate, else as is."""
        return alternating_flip(train_x, epoch, self.seed) if self.flip == "alternate" else train_x

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """A training batch augmented by the per-batch steps, drawing from `generator`."""
        if self.min_area_fraction is not None:
            x = random_resized_crop(x, self.min_area_fraction, self.aspect_ratio, generator)
        if self.padding:
            x = random_crop(x, self.padding, generator, self.pad_mode)
        if self.flip is True:
            x = flip(x, generator)
        if self.brightness is not None:
            x = color_jitter(x, self.brightness, self.contrast, self.saturation, generator)
        if self.cutout_pixels:
            x = cutout(x, self.cutout_pixels, generator)
        return x


def augmented_grid(x: torch.Tensor, augmentation: Augmentation, seed: int, copies: int = 3) -> torch.Tensor:
    """An image grid for TensorBoard, (3, H', W') uint8: the original images, then `copies` rows of them augmented
    as epochs 0, 1, 2, ... see them (so alternating flip shows both halves). Uses its own generator from `seed`, so
    the training stream of random numbers is untouched."""
    from torchvision.utils import make_grid

    generator = torch.Generator(device=x.device)
    generator.manual_seed(seed)
    rows = [x] + [augmentation(augmentation.epoch_view(x, epoch), generator) for epoch in range(copies)]
    return make_grid(torch.cat(rows).cpu(), nrow=len(x), padding=2)
