"""Building blocks the models share: the normalization layer a `norm=` option names, and a conv/linear block
that places it before or after the activation."""

from collections.abc import Callable

from torch import nn


def norm_layer(kind: str, channels: int, spatial: bool) -> nn.Module:
    """The normalization `kind` for `channels` features; spatial: after a conv (B, C, H, W), else (B, C)."""
    if kind == "none":
        return nn.Identity()
    if kind == "batch":
        return nn.BatchNorm2d(channels) if spatial else nn.BatchNorm1d(channels)
    raise ValueError(f"norm={kind!r} is not known")


def conv_block(c_in: int, c_out: int, act: Callable[[], nn.Module], norm) -> nn.Sequential:
    """3x3 conv, then norm and activation in the order norm.position gives. The conv has no bias when a
    batch norm follows it directly (the norm's own shift makes it redundant)."""
    before = norm.position == "before"
    conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=not (norm.kind == "batch" and before))
    layers = [conv, norm_layer(norm.kind, c_out, True), act()]
    if not before:
        layers[1], layers[2] = layers[2], layers[1]
    return nn.Sequential(*[m for m in layers if not isinstance(m, nn.Identity)])
