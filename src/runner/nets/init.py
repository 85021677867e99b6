"""Weight initialization (`init=`), applied to every Linear and Conv layer after the model is built, and the
start-up warnings about activation / init / norm / dropout combinations the lectures warn against.

Formulas, with fan_in = in_channels * kernel area and fan_out = out_channels * kernel area:
  normal N(0, std^2); uniform U(-bound, bound);
  lecun_normal std = 1 / sqrt(fan_in)                  lecun_uniform bound = sqrt(3 / fan_in)     (LeCun et al. 1998)
  xavier_normal std = gain * sqrt(2 / (fan_in + fan_out))  xavier_uniform bound = gain * sqrt(6 / (fan_in + fan_out))
                                                                                                  (Glorot & Bengio 2010)
  he_normal std = gain / sqrt(fan)                     he_uniform bound = gain * sqrt(3 / fan)    (He et al. 2015)
  orthogonal: a (semi-)orthogonal matrix times gain (Saxe et al. 2014).
  dirac: each conv starts as the identity on its first min(in, out) channels (torch.nn.init.dirac_; Zagoruyko &
         Komodakis 2017's DiracNets); the other output channels and every Linear keep PyTorch's init.
Independently of the scheme, `init.first_layer=whiten` sets the first conv's filters to whiten the k x k patches of
the (preprocessed) training images: see whiten_conv_.
"""

import logging
import math
from dataclasses import dataclass

import torch
from torch import nn

from runner.config.regularizers import REGULARIZERS, shifting_selu

log = logging.getLogger("runner")

_LAYERS = (nn.Linear, nn.modules.conv._ConvNd)


def fans(weight: torch.Tensor) -> tuple[int, int]:
    """(fan_in, fan_out) of a Linear (out, in) or conv (out, in, *kernel) weight."""
    receptive = math.prod(weight.shape[2:])
    return weight.shape[1] * receptive, weight.shape[0] * receptive


def activation_gain(activation) -> float:
    """The gain that keeps the forward variance for the activation of `activation=` (torch.nn.init.calculate_gain).

    ELU, GELU and SiLU have no exact value; they behave like ReLU for large inputs, so ReLU's sqrt(2) is used.
    PReLU and RReLU use leaky ReLU's gain at their initial / mean slope. Maxout with two pieces keeps the second
    moment of Gaussian input (E[max(a, b)^2] = E[a^2] by symmetry): gain 1.
    """
    name = activation["_target_"].rsplit(".", 1)[-1]
    calculate = nn.init.calculate_gain
    if name in ("ReLU", "ELU", "GELU", "SiLU"):
        return calculate("relu")
    if name == "LeakyReLU":
        return calculate("leaky_relu", activation.negative_slope)
    if name == "PReLU":
        return calculate("leaky_relu", activation.init)
    if name == "RReLU":
        return calculate("leaky_relu", (activation.lower + activation.upper) / 2)
    if name in ("Tanh", "Sigmoid", "SELU"):
        return calculate(name.lower())
    return 1.0


# ---------------------------------------------------------------------------------------------------------------
# The schemes: one class per `init=` option (its `_target_`), each filling one Linear/Conv weight in place

@dataclass(kw_only=True)
class Init:
    """What every `init=` option holds beside its own keys: `bias`, the value every bias of the layers it fills is
    set to, and the data-dependent first layer: first_layer=whiten whitens the first conv on training patches with
    whiten_epsilon (see whiten_conv_), whose weights then train only with first_layer_trainable.
    fill(weight, gain) fills one Linear/Conv weight, gain_for(activation) says with which gain."""

    first_layer: str  # its default, and first_layer_trainable's, are the config schema's (runner.config.schema)
    first_layer_trainable: bool
    bias: float = 0.0
    whiten_epsilon: float | None = None

    def layers(self, model: nn.Module) -> list[nn.Module]:
        """The layers whose weights and biases this scheme sets: every Linear and Conv."""
        return [m for m in model.modules() if isinstance(m, _LAYERS)]

    def gain_for(self, activation) -> float:
        return 1.0

    def fill(self, weight: torch.Tensor, gain: float) -> None:
        raise NotImplementedError


@dataclass(kw_only=True)
class Default(Init):
    """PyTorch's own initialization of each layer, kept."""

    def layers(self, model: nn.Module) -> list[nn.Module]:
        return []


@dataclass(kw_only=True)
class Zeros(Init):
    def fill(self, weight: torch.Tensor, gain: float) -> None:
        weight.zero_()


@dataclass(kw_only=True)
class Constant(Init):
    value: float

    def fill(self, weight: torch.Tensor, gain: float) -> None:
        weight.fill_(self.value)


@dataclass(kw_only=True)
class Normal(Init):
    std: float

    def fill(self, weight: torch.Tensor, gain: float) -> None:
        weight.normal_(0.0, self.std)


@dataclass(kw_only=True)
class Uniform(Init):
    bound: float

    def fill(self, weight: torch.Tensor, gain: float) -> None:
        weight.uniform_(-self.bound, self.bound)


@dataclass(kw_only=True)
class LecunNormal(Init):
    def fill(self, weight: torch.Tensor, gain: float) -> None:
        weight.normal_(0.0, 1.0 / math.sqrt(fans(weight)[0]))


@dataclass(kw_only=True)
class LecunUniform(Init):
    def fill(self, weight: torch.Tensor, gain: float) -> None:
        bound = math.sqrt(3.0 / fans(weight)[0])
        weight.uniform_(-bound, bound)


@dataclass(kw_only=True)
class Scaled(Init):
    """A scheme scaled by `gain`: a number, or auto for the activation's (activation_gain)."""

    gain: float | str = 1.0

    def gain_for(self, activation) -> float:
        return activation_gain(activation) if self.gain == "auto" else float(self.gain)


@dataclass(kw_only=True)
class XavierNormal(Scaled):
    def fill(self, weight: torch.Tensor, gain: float) -> None:
        fan_in, fan_out = fans(weight)
        weight.normal_(0.0, gain * math.sqrt(2.0 / (fan_in + fan_out)))


@dataclass(kw_only=True)
class XavierUniform(Scaled):
    def fill(self, weight: torch.Tensor, gain: float) -> None:
        fan_in, fan_out = fans(weight)
        bound = gain * math.sqrt(6.0 / (fan_in + fan_out))
        weight.uniform_(-bound, bound)


@dataclass(kw_only=True)
class HeNormal(Scaled):
    """mode fan_in keeps the forward variance, fan_out the backward one."""

    mode: str = "fan_in"

    def fan(self, weight: torch.Tensor) -> int:
        fan_in, fan_out = fans(weight)
        return fan_in if self.mode == "fan_in" else fan_out

    def fill(self, weight: torch.Tensor, gain: float) -> None:
        weight.normal_(0.0, gain / math.sqrt(self.fan(weight)))


@dataclass(kw_only=True)
class HeUniform(HeNormal):
    def fill(self, weight: torch.Tensor, gain: float) -> None:
        bound = gain * math.sqrt(3.0 / self.fan(weight))
        weight.uniform_(-bound, bound)


@dataclass(kw_only=True)
class Orthogonal(Scaled):
    def fill(self, weight: torch.Tensor, gain: float) -> None:
        nn.init.orthogonal_(weight, gain)


@dataclass(kw_only=True)
class Dirac(Init):
    """Convs only: every Linear keeps PyTorch's init."""

    def layers(self, model: nn.Module) -> list[nn.Module]:
        return [m for m in super().layers(model) if not isinstance(m, nn.Linear)]

    def fill(self, weight: torch.Tensor, gain: float) -> None:
        nn.init.dirac_(weight[:weight.shape[1]])  # output channels past the input count keep their init


@torch.no_grad()
def patch_covariance(inputs: torch.Tensor, kernel: int, chunk: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (D,) and covariance (D, D) of all kernel x kernel patches (stride 1, no padding) of `inputs`
    (N, C, H, W), D = C * kernel^2 in conv-weight order (channel, row, column). float64, a chunk of images at a
    time."""
    d = inputs.shape[1] * kernel * kernel
    total = torch.zeros(d, dtype=torch.float64, device=inputs.device)
    outer = torch.zeros(d, d, dtype=torch.float64, device=inputs.device)
    count = 0
    for x in inputs.split(chunk):
        x = x.float()
        h, w = x.shape[2] - kernel + 1, x.shape[3] - kernel + 1
        # The patches by slicing (F.unfold is 100x slower on CPU): (n, C, k*k, h, w), in conv-weight order.
        p = torch.stack([x[:, :, i:i + h, j:j + w] for i in range(kernel) for j in range(kernel)], 2)
        p = p.reshape(len(x), d, h * w).transpose(1, 2).reshape(-1, d).double()  # (patches, D)
        total += p.sum(0)
        outer += p.T @ p
        count += len(p)
    mean = total / count
    return mean, outer / count - torch.outer(mean, mean)


@torch.no_grad()
def whiten_conv_(conv: nn.Conv2d, inputs: torch.Tensor, epsilon: float) -> int:
    """Set `conv`'s filters to whiten its input patches (the ZCA idea of preprocess=zca, on patches): with the
    patch covariance's eigenvalues l_i and eigenvectors v_i, filter i is v_i / sqrt(l_i + epsilon) and filter
    n + i its negative (so that an activation keeps both signs), for the n = min(out_channels // 2, D) largest
    l_i; the bias centres each output. On the training patches the first n outputs then have covariance
    diag(l_i / (l_i + epsilon)), about the identity. Returns n; channels past 2n keep their init."""
    k = conv.kernel_size[0]
    mean, cov = patch_covariance(inputs, k)
    values, vectors = torch.linalg.eigh(cov)  # ascending
    n = min(conv.out_channels // 2, len(values))
    values, vectors = values.flip(0)[:n], vectors.flip(1)[:, :n]
    filters = (vectors / (values.clamp_min(0) + epsilon).sqrt()).T  # (n, D)
    filters = torch.cat([filters, -filters])
    conv.weight[:2 * n] = filters.view(2 * n, *conv.weight.shape[1:]).to(conv.weight)
    if conv.bias is not None:
        conv.bias[:2 * n] = -(filters @ mean).to(conv.bias)
    return n


def first_conv(model: nn.Module) -> nn.Conv2d:
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            return module
    raise ValueError(f"init.first_layer=whiten needs a conv layer; {type(model).__name__} has none")


def initialize(model: nn.Module, init: Init, activation, inputs: torch.Tensor | None = None) -> int:
    """Initialize the Linear and Conv layers of `model` by the scheme of `init=` (its gain, where auto, that of
    `activation=`): their weights by init.fill, their biases to init.bias. With init.first_layer=whiten, then whiten
    the first conv on `inputs` (preprocessed training images, see build.init_inputs; without them that step is left
    out) and freeze its weights unless init.first_layer_trainable. Returns how many layers were initialized."""
    layers = init.layers(model)
    gain = init.gain_for(activation)
    with torch.no_grad():
        for module in layers:
            init.fill(module.weight, gain)
            if module.bias is not None:
                nn.init.constant_(module.bias, init.bias)
    if init.first_layer == "whiten" and inputs is not None:
        conv = first_conv(model)
        n = whiten_conv_(conv, inputs, init.whiten_epsilon)
        conv.weight.requires_grad_(init.first_layer_trainable)
        log.info("init.first_layer=whiten: %d whitening filters (and their negatives) of %dx%d patches from %d "
                 "training images", n, *conv.kernel_size, len(inputs))
    return len(layers)


def consistency_warnings(activation, init, norm, regularization) -> list[str]:
    """Combinations the lectures warn about (they run, but defeat the technique). Each is logged as a warning;
    returns the messages."""
    act = activation["_target_"].rsplit(".", 1)[-1]
    scheme = init.name
    messages = []
    if act == "SELU":
        if scheme != "lecun_normal":
            messages.append(f"activation=selu with init={scheme}: SELU self-normalizes only from LeCun normal "
                            "init (Klambauer et al. 2017); use init=lecun_normal.")
        if norm.name == "batch":
            messages.append("activation=selu with norm=batch: SELU normalizes by itself; batch norm undoes its "
                            "fixed point. Use norm=none.")
        if shifting_selu(regularization, "shifts"):
            messages.append("activation=selu with ordinary dropout shifts the mean and variance SELU keeps; "
                            f"use regularization={' or '.join(shifting_selu(REGULARIZERS, 'keeps'))} instead.")
    for name in shifting_selu(regularization, "keeps") if act != "SELU" else ():
        messages.append(f"regularization={name} is made for activation=selu (here {act}); use dropout.")
    if scheme in ("he_normal", "he_uniform") and act in ("Sigmoid", "Tanh"):
        messages.append(f"init={scheme} with activation={act.lower()}: He init is derived for ReLU; for "
                        "sigmoid/tanh use init=xavier_normal or xavier_uniform.")
    if scheme in ("zeros", "constant"):
        messages.append(f"init={scheme}: every unit of a layer starts identical, gets the same gradient and stays "
                        "identical (symmetry is never broken). Use a random init such as he_normal.")
    for message in messages:
        log.warning(message)
    return messages
