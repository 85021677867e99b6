"""Weight initialization (`init=`), applied to every Linear and Conv layer after the model is built, and the
start-up warnings about activation / init / norm / dropout combinations the lectures warn against.

Formulas, with fan_in = in_channels * kernel area and fan_out = out_channels * kernel area:
  normal N(0, std^2); uniform U(-bound, bound);
  lecun_normal std = 1 / sqrt(fan_in)                  lecun_uniform bound = sqrt(3 / fan_in)     (LeCun et al. 1998)
  xavier_normal std = gain * sqrt(2 / (fan_in + fan_out))  xavier_uniform bound = gain * sqrt(6 / (fan_in + fan_out))
                                                                                                  (Glorot & Bengio 2010)
  he_normal std = gain / sqrt(fan)                     he_uniform bound = gain * sqrt(3 / fan)    (He et al. 2015)
  orthogonal: a (semi-)orthogonal matrix times gain (Saxe et al. 2014).
"""

import logging
import math

import torch
from torch import nn

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
        return calculate("leaky_relu", activation.get("negative_slope", 0.01))
    if name == "PReLU":
        return calculate("leaky_relu", activation.get("init", 0.25))
    if name == "RReLU":
        return calculate("leaky_relu", (activation.get("lower", 1 / 8) + activation.get("upper", 1 / 3)) / 2)
    if name in ("Tanh", "Sigmoid", "SELU"):
        return calculate(name.lower())
    return 1.0


def gain_of(init, activation) -> float:
    gain = init.get("gain", 1.0)
    return activation_gain(activation) if gain == "auto" else float(gain)


@torch.no_grad()
def init_weight(weight: torch.Tensor, init, gain: float = 1.0) -> None:
    """Fill one Linear/Conv weight in place by `init.scheme`."""
    scheme = init.scheme
    fan_in, fan_out = fans(weight)
    if scheme == "zeros":
        weight.zero_()
    elif scheme == "constant":
        weight.fill_(init.value)
    elif scheme == "normal":
        weight.normal_(0.0, init.std)
    elif scheme == "uniform":
        weight.uniform_(-init.bound, init.bound)
    elif scheme == "lecun_normal":
        weight.normal_(0.0, 1.0 / math.sqrt(fan_in))
    elif scheme == "lecun_uniform":
        bound = math.sqrt(3.0 / fan_in)
        weight.uniform_(-bound, bound)
    elif scheme == "xavier_normal":
        weight.normal_(0.0, gain * math.sqrt(2.0 / (fan_in + fan_out)))
    elif scheme == "xavier_uniform":
        bound = gain * math.sqrt(6.0 / (fan_in + fan_out))
        weight.uniform_(-bound, bound)
    elif scheme in ("he_normal", "he_uniform"):
        fan = fan_in if init.mode == "fan_in" else fan_out
        if scheme == "he_normal":
            weight.normal_(0.0, gain / math.sqrt(fan))
        else:
            bound = gain * math.sqrt(3.0 / fan)
            weight.uniform_(-bound, bound)
    elif scheme == "orthogonal":
        nn.init.orthogonal_(weight, gain)
    else:
        raise ValueError(f"init.scheme={scheme!r} is not known")


def initialize(model: nn.Module, init, activation) -> int:
    """Initialize every Linear and Conv weight of `model` by `init=` (the gain of he_* follows `activation=` when
    gain is auto) and set their biases to init.bias. scheme default leaves PyTorch's own initialization.
    Returns how many layers were initialized."""
    if init.scheme == "default":
        return 0
    gain = gain_of(init, activation)
    count = 0
    for module in model.modules():
        if isinstance(module, _LAYERS):
            init_weight(module.weight, init, gain)
            if module.bias is not None:
                nn.init.constant_(module.bias, init.get("bias", 0.0))
            count += 1
    return count


def consistency_warnings(activation, init, norm, regularization) -> list[str]:
    """Combinations the lectures warn about (they run, but defeat the technique). Each is logged as a warning;
    returns the messages."""
    act = activation["_target_"].rsplit(".", 1)[-1]
    scheme = init.scheme
    messages = []
    if act == "SELU":
        if scheme != "lecun_normal":
            messages.append(f"activation=selu with init={scheme}: SELU self-normalizes only from LeCun normal "
                            "init (Klambauer et al. 2017); use init=lecun_normal.")
        if norm.kind == "batch":
            messages.append("activation=selu with norm=batch: SELU normalizes by itself; batch norm undoes its "
                            "fixed point. Use norm=none.")
        if "dropout" in regularization or "gaussian_dropout" in regularization:
            messages.append("activation=selu with ordinary dropout shifts the mean and variance SELU keeps; "
                            "use regularization=alpha_dropout instead.")
    elif "alpha_dropout" in regularization:
        messages.append(f"regularization=alpha_dropout is made for activation=selu (here {act}); use dropout.")
    if scheme in ("he_normal", "he_uniform") and act in ("Sigmoid", "Tanh"):
        messages.append(f"init={scheme} with activation={act.lower()}: He init is derived for ReLU; for "
                        "sigmoid/tanh use init=xavier_normal or xavier_uniform.")
    if scheme in ("zeros", "constant"):
        messages.append(f"init={scheme}: every unit of a layer starts identical, gets the same gradient and stays "
                        "identical (symmetry is never broken). Use a random init such as he_normal.")
    for message in messages:
        log.warning(message)
    return messages
