"""Input preprocessing: statistics fitted on the training split only, then applied unchanged to every split.

Every option is affine: uint8 x (B, 3, 32, 32) -> z = (x / 255 - mean) / std, then for PCA and ZCA each image
flattened to a D = 3072 vector times a D x D matrix. The fitted statistics are buffers, so they are saved in the
checkpoint beside the model, and `Preprocess(**state_dict)` rebuilds a fitted preprocessor from one.
The lecture's list (CS231n): none, subtract the mean image (AlexNet), per-channel mean (VGG), per-channel mean and
std (ResNet), PCA, whitening.
"""

import torch
from torch import nn


class Preprocess(nn.Module):
    """z = (x / 255 - mean) / std, mean and std broadcast over (B, C, H, W); then z.flatten(1) @ matrix if a
    matrix is set (D x D, D = C * H * W), in image layout again so that every model takes it."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, matrix: torch.Tensor | None = None):
        super().__init__()
        self.register_buffer("mean", mean.float())
        self.register_buffer("std", std.float())
        self.register_buffer("matrix", None if matrix is None else matrix.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = (x.float() / 255.0 - self.mean) / self.std
        if self.matrix is not None:
            z = (z.flatten(1) @ self.matrix).view_as(z)
        return z


def _chunks(train_x: torch.Tensor, chunk: int = 10_000):
    """The split as float64 on a 0..1 scale, a chunk at a time (no 600 MB float copy of CIFAR at once)."""
    for i in range(0, len(train_x), chunk):
        yield train_x[i:i + chunk].to(torch.float64) / 255.0


def channel_stats(train_x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std on a 0..1 scale over a uint8 split, each (1, C, 1, 1)."""
    total = torch.zeros(train_x.shape[1], dtype=torch.float64, device=train_x.device)
    squares = torch.zeros_like(total)
    for x in _chunks(train_x):
        total += x.sum(dim=(0, 2, 3))
        squares += (x * x).sum(dim=(0, 2, 3))
    count = train_x.numel() / train_x.shape[1]
    mean = total / count
    std = (squares / count - mean * mean).clamp_min(1e-12).sqrt()
    return mean.float().reshape(1, -1, 1, 1), std.float().reshape(1, -1, 1, 1)


def mean_image(train_x: torch.Tensor) -> torch.Tensor:
    """The mean image on a 0..1 scale, (1, C, H, W)."""
    total = torch.zeros(train_x.shape[1:], dtype=torch.float64, device=train_x.device)
    for x in _chunks(train_x):
        total += x.sum(dim=0)
    return (total / len(train_x)).float()[None]


def eigen(train_x: torch.Tensor, mean: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (descending) and eigenvectors (columns) of the D x D covariance of the mean-subtracted,
    flattened training images, D = C * H * W."""
    d = train_x[0].numel()
    dtype = torch.float32 if train_x.device.type == "mps" else torch.float64  # MPS has no float64
    cov = torch.zeros(d, d, dtype=dtype, device=train_x.device)
    for x in _chunks(train_x):
        z = (x - mean.to(torch.float64)).flatten(1).to(dtype)
        cov += z.T @ z
    cov /= len(train_x)
    # eigh of 3072 x 3072: float32 takes 5 s on a 2-core CPU (float64 15 s), and errs by ~1e-6 of the top
    # eigenvalue, far below ZCA's epsilon. MPS has no eigh: there it runs on the CPU.
    on = cov.float() if train_x.device.type == "cuda" else cov.float().cpu()
    values, vectors = torch.linalg.eigh(on)
    return values.flip(0).clamp_min(0).to(train_x.device), vectors.flip(1).to(train_x.device)


# ---------------------------------------------------------------------------------------------------------------
# The options: one function per `preprocess=` option (its `_target_`), fitted on the training images `train_x`
# (uint8, N x C x H x W) only

def _flat(train_x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(zeros, ones), (1, C, 1, 1): the mean and std that leave the 0..1 pixels as they are."""
    c = train_x.shape[1]
    return torch.zeros(1, c, 1, 1, device=train_x.device), torch.ones(1, c, 1, 1, device=train_x.device)


def none(train_x: torch.Tensor) -> Preprocess:
    return Preprocess(*_flat(train_x))


def center(train_x: torch.Tensor) -> Preprocess:
    return Preprocess(channel_stats(train_x)[0], _flat(train_x)[1])


def standardize(train_x: torch.Tensor) -> Preprocess:
    return Preprocess(*channel_stats(train_x))


def pixel_mean(train_x: torch.Tensor) -> Preprocess:
    return Preprocess(mean_image(train_x), _flat(train_x)[1])


def pca(train_x: torch.Tensor, components: int) -> Preprocess:
    """The projection onto the top `components` principal directions, kept in pixel coordinates."""
    mean = mean_image(train_x)
    vectors = eigen(train_x, mean)[1][:, :components]  # (D, k)
    return Preprocess(mean, _flat(train_x)[1], (vectors @ vectors.T).float())


def zca(train_x: torch.Tensor, epsilon: float) -> Preprocess:
    """U diag(1 / sqrt(eigenvalue + epsilon)) U^T."""
    mean = mean_image(train_x)
    values, vectors = eigen(train_x, mean)
    return Preprocess(mean, _flat(train_x)[1], (vectors @ torch.diag((values + epsilon).rsqrt()) @ vectors.T).float())


def input_grid(module: Preprocess, x: torch.Tensor) -> torch.Tensor:
    """A grid for TensorBoard, (3, H', W'): the images `x` (uint8) above what the network sees of them, each
    preprocessed image stretched to 0..1 on its own so that centered or whitened input stays visible."""
    from torchvision.utils import make_grid

    with torch.no_grad():
        z = module(x).float()
    low = z.amin(dim=(1, 2, 3), keepdim=True)
    high = z.amax(dim=(1, 2, 3), keepdim=True)
    seen = (z - low) / (high - low).clamp_min(1e-8)
    return make_grid(torch.cat([x.float() / 255.0, seen]).cpu(), nrow=len(x), padding=2)
