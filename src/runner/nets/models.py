"""The networks a `model=` option names. Each takes its activation factory (`activation=`), its normalization
(`norm=`, a layers.Norm) and its dropout settings (`regularization=`, as a layers.Drop) at construction, so that every technique
applies to every model; `init=` is applied afterwards by runner.nets.init. All take CIFAR-shaped input (B, 3, 32, 32)."""

from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import nn

from runner.config.rules import pooled_sides
from runner.nets.layers import NO_DROP, Drop, FractionalMaxPool, Maxout, Norm, StochasticDepth, block

Act = Callable[[], nn.Module]


def pooling(pool: str, ratio: float) -> nn.Module:
    """The downsampling at the end of a stage (`model.pool`): max (2x2 max-pool, halving each side), avg (2x2
    average pool), or fractional: fractional max-pooling (Graham 2014), each side shrunk by `ratio` (in (0.5, 1),
    so more stages fit) with pooling regions drawn at random in training (a regularizer, CS231n lecture 7)."""
    if pool == "fractional":
        return FractionalMaxPool(ratio)
    return nn.AvgPool2d(2) if pool == "avg" else nn.MaxPool2d(2)


class MLP(nn.Module):
    """A fully connected net on the flattened image: `depth` hidden blocks of `width` units (linear, norm,
    activation, dropout), then a linear classifier. depth=0 is softmax regression.

    depth 3, width 512: 2.1M parameters; each hidden layer adds width^2 (the lecture's "more neurons, more
    capacity" experiments vary depth and width).
    """

    def __init__(self, depth: int, width: int, *, num_classes: int, act: Act, norm: Norm, drop: Drop = NO_DROP,
                 in_features: int = 3 * 32 * 32):
        super().__init__()
        layers, c = [], in_features
        for _ in range(depth):
            layers.append(block(c, width, act, norm, spatial=False, drop=drop))
            c = width
        self.hidden = nn.Sequential(*layers)
        self.head = drop.linear(c, num_classes)

    def forward(self, x):  # x: (B, 3, 32, 32) -> logits (B, num_classes)
        return self.head(self.hidden(x.flatten(1)))


class CNN(nn.Module):
    """A small VGG-like net: per stage `convs_per_stage` conv blocks then a 2x2 max-pool (32 -> 16 -> 8 -> 4 for
    three stages; `pool`: see pooling), a global average pool and a linear classifier.

    With widths 32/64/128: about 0.1M parameters and 21 MFLOPs per image.
    """

    def __init__(self, widths: list[int], convs_per_stage: int, *, num_classes: int, act: Act, norm: Norm,
                 drop: Drop = NO_DROP, in_channels: int = 3, pool: str = "max", pool_ratio: float = 0.7071):
        super().__init__()
        stages, c = [], in_channels
        for width in widths:
            for _ in range(convs_per_stage):
                stages.append(block(c, width, act, norm, spatial=True, drop=drop))
                c = width
            stages.append(pooling(pool, pool_ratio))
        self.features = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = drop.fc()
        self.head = drop.linear(c, num_classes)

    def forward(self, x):  # x: (B, 3, 32, 32) -> logits (B, num_classes)
        return self.head(self.drop(self.pool(self.features(x)).flatten(1)))


class VGG(nn.Module):
    """VGG (Simonyan & Zisserman 2015) for 32x32 images: `stages`, each a list of conv widths, every stage ending in
    a 2x2 max-pool (five stages: 32 -> 1; `pool`: see pooling); then hidden fully connected blocks of `fc_widths` and
    the classifier.

    VGG-11 ([[64], [128], [256, 256], [512, 512], [512, 512]], fc_widths [512]): 9.5M parameters, 0.3 GFLOPs.
    """

    def __init__(self, stages: list[list[int]], fc_widths: list[int], *, num_classes: int, act: Act, norm: Norm,
                 drop: Drop = NO_DROP, in_channels: int = 3, image_size: int = 32, pool: str = "max",
                 pool_ratio: float = 0.7071):
        super().__init__()
        side = pooled_sides(image_size, len(stages), pool, pool_ratio)[-1]
        if side < 1:
            raise ValueError(f"VGG's {len(stages)} stages pool {image_size}x{image_size} images down to nothing")
        layers, c = [], in_channels
        for stage in stages:
            for width in stage:
                layers.append(block(c, width, act, norm, spatial=True, drop=drop))
                c = width
            layers.append(pooling(pool, pool_ratio))
        self.features = nn.Sequential(*layers)
        fc, f = [], c * side * side
        for width in fc_widths:
            fc.append(block(f, width, act, norm, spatial=False, drop=drop))
            f = width
        # Dropout in front of the head when there are no hidden fc blocks (each of those ends in its own dropout).
        self.classifier = nn.Sequential(*fc) if fc else nn.Sequential(drop.fc())
        self.head = drop.linear(f, num_classes)

    def forward(self, x):  # x: (B, 3, 32, 32) -> logits (B, num_classes)
        return self.head(self.classifier(self.features(x).flatten(1)))


class BasicBlock(nn.Module):
    """The residual block of He et al. 2016: out = act(branch(x) + shortcut(x)), branch = two 3x3 conv blocks.

    The shortcut is the identity, or a strided 1x1 conv (and norm) where resolution or width change. With
    norm.position=after the norm follows the activation on the sum. With Maxout the last activation moves into the
    branch: for a shortcut that is the same for all k pieces, max_j (s + b_j) = s + max_j b_j, so the block is
    s + maxout(conv2 pieces). Stochastic depth drops the branch, never the shortcut.
    """

    def __init__(self, c_in: int, c_out: int, stride: int, act: Act, norm: Norm, drop: Drop, drop_path: float):
        super().__init__()
        maxout = isinstance(act(), Maxout)
        self.branch = nn.Sequential(OrderedDict(
            first=block(c_in, c_out, act, norm, spatial=True, drop=drop, stride=stride),
            second=block(c_out, c_out, act if maxout else None, norm, spatial=True),
        ))
        self.drop_path = StochasticDepth(drop_path) if drop_path > 0 else nn.Identity()
        if stride == 1 and c_in == c_out:
            self.shortcut = nn.Identity()
        else:
            before = norm.position == "before" and norm.name != "none"
            parts = [("conv", nn.Conv2d(c_in, c_out, 1, stride=stride, bias=not before))]
            if before:
                parts.append(("norm", norm(c_out, spatial=True)))
            self.shortcut = nn.Sequential(OrderedDict(parts))
        post = [] if maxout else [("act", act())]
        if not maxout and norm.position == "after" and norm.name != "none":
            post.append(("norm", norm(c_out, spatial=True)))
        self.post = nn.Sequential(OrderedDict(post))

    def forward(self, x):
        return self.post(self.drop_path(self.branch(x)) + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR ResNet (He et al. 2016): a 3x3 stem conv block of widths[0] channels, one stage of `blocks_per_stage`
    basic blocks per width (every stage after the first halves the resolution), global average pool, linear head.

    ResNet-20 (widths [16, 32, 64], 3 blocks per stage, 6n+2 = 20 layers): 0.27M parameters, 82 MFLOPs.
    ResNet-18 style (widths [64, 128, 256, 512], 2 blocks per stage): 11.2M parameters, 1.1 GFLOPs.
    """

    def __init__(self, widths: list[int], blocks_per_stage: int, *, num_classes: int, act: Act, norm: Norm,
                 drop: Drop = NO_DROP, in_channels: int = 3):
        super().__init__()
        self.stem = block(in_channels, widths[0], act, norm, spatial=True, drop=drop)
        blocks, c, total = [], widths[0], len(widths) * blocks_per_stage
        for s, width in enumerate(widths):
            for b in range(blocks_per_stage):
                stride = 2 if s > 0 and b == 0 else 1
                rate = drop.depth_rate(len(blocks), total)
                blocks.append(BasicBlock(c, width, stride, act, norm, drop, rate))
                c = width
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = drop.fc()
        self.head = drop.linear(c, num_classes)

    def forward(self, x):  # x: (B, 3, 32, 32) -> logits (B, num_classes)
        return self.head(self.drop(self.pool(self.blocks(self.stem(x))).flatten(1)))


class AirBench(nn.Module):
    """A fast CIFAR-10 net in the style of Keller Jordan's airbench94: a 2x2 conv without padding (32 -> 31) meant to
    be initialized by whitening the training patches (`init.first_layer=whiten`), then one stage per width of
    conv -> 2x2 max-pool -> norm -> act -> conv -> norm -> act (31 -> 15 -> 7 -> 3), a global max-pool and a linear
    head without bias whose logits are multiplied by head_scale (a fixed temperature; 1/9 keeps the first losses
    near log(10) with batch-normed features).

    Widths 64/256/256 with a 24-channel stem: 1.97M parameters, 0.24 GFLOPs per image (counted by flops_per_image).
    """

    def __init__(self, widths: list[int], stem_width: int, stem_kernel: int, head_scale: float, *, num_classes: int,
                 act: Act, norm: Norm, drop: Drop = NO_DROP, in_channels: int = 3):
        super().__init__()
        self.stem = nn.Sequential(OrderedDict(conv=nn.Conv2d(in_channels, stem_width, stem_kernel), act=act()))
        stages, c = [], stem_width
        bias = norm.name == "none"
        for width in widths:
            stages.append(nn.Sequential(OrderedDict(
                conv1=nn.Conv2d(c, width, 3, padding=1, bias=bias), pool=nn.MaxPool2d(2),
                norm1=norm(width, spatial=True), act1=act(), drop1=drop.conv(),
                conv2=nn.Conv2d(width, width, 3, padding=1, bias=bias),
                norm2=norm(width, spatial=True), act2=act(), drop2=drop.conv())))
            c = width
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.drop = drop.fc()
        self.head = drop.linear(c, num_classes, bias=False)
        self.head_scale = head_scale

    def forward(self, x):  # x: (B, 3, 32, 32) -> logits (B, num_classes)
        return self.head_scale * self.head(self.drop(self.pool(self.stages(self.stem(x))).flatten(1)))


def torchvision_resnet18(*, num_classes: int, act: Act, norm: Norm, drop: Drop = NO_DROP) -> nn.Module:
    """torchvision's ImageNet ResNet-18, so that its pretrained weights load by name
    (`model.pretrained=torchvision:ResNet18_Weights.IMAGENET1K_V1`), adapted to 32x32 inputs: the 7x7 stem conv keeps
    its weights but strides 1 instead of 2, and the 3x3 max-pool after it is dropped, so the last stage works on 4x4
    maps as in CIFAR ResNets (with ImageNet's stride 32 a 32x32 image would shrink to 1x1). torchvision's own ReLU and
    batch norm are used: activation= and norm= do not apply (config.validate asks for relu and batch), nor dropout.
    11.2M parameters, 1.1 GFLOPs per image (32x32)."""
    import torchvision  # 6 s import: only for this model

    net = torchvision.models.resnet18(num_classes=num_classes)
    net.conv1.stride = (1, 1)
    net.maxpool = nn.Identity()
    return net


def flops_per_image(model: nn.Module, image_shape: tuple[int, ...] = (3, 32, 32)) -> int:
    """Floating-point operations of one forward pass on one image, counted by torch's FlopCounterMode (a multiply-add
    is 2 FLOPs; matmuls and convolutions only, the usual convention)."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    p = next(model.parameters())
    x = torch.zeros(1, *image_shape, device=p.device, dtype=p.dtype)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    model.train(was_training)
    return counter.get_total_flops()
