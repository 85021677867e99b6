"""The networks a `model=` option names. Each takes its activation and normalization from the config groups,
so that every technique applies to every model."""

from collections.abc import Callable

from torch import nn

from runner.layers import conv_block


class CNN(nn.Module):
    """A small VGG-like net: per stage `convs_per_stage` conv blocks then a 2x2 max-pool (32 -> 16 -> 8 -> 4 for
    three stages), a global average pool and a linear classifier.

    With widths 32/64/128: about 0.1M parameters and 38 MFLOPs per image.
    """

    def __init__(self, widths: list[int], convs_per_stage: int, *, num_classes: int,
                 act: Callable[[], nn.Module], norm, in_channels: int = 3):
        super().__init__()
        stages, c = [], in_channels
        for width in widths:
            for _ in range(convs_per_stage):
                stages.append(conv_block(c, width, act, norm))
                c = width
            stages.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(c, num_classes)

    def forward(self, x):  # x: (B, 3, 32, 32) -> logits (B, num_classes)
        return self.head(self.pool(self.features(x)).flatten(1))
