"""Weight averaging: an exponential moving average of the weights (Polyak averaging in its exponential form, as
the lecture writes it: x_test = decay * x_test + (1 - decay) * x after every step), evaluated beside the raw model
(val/acc_ema)."""

import copy

import torch
from torch import nn


class EMA:
    """A copy of `model` whose floating-point parameters and buffers (batch norm's running statistics too) follow
    ema = decay * ema + (1 - decay) * current after every optimizer step; integer buffers (batch counts) are
    copied. Starts equal to the model."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        self.model.requires_grad_(False)
        pairs = list(zip(self.model.state_dict().values(), model.state_dict().values(), strict=True))
        self._floats = [(e, m) for e, m in pairs if e.is_floating_point()]
        self._others = [(e, m) for e, m in pairs if not e.is_floating_point()]

    @torch.no_grad()
    def update(self) -> None:
        """Move the average one step towards the model's current weights (one fused op for all tensors)."""
        ema, current = zip(*self._floats, strict=True)
        torch._foreach_lerp_(list(ema), list(current), 1.0 - self.decay)
        for e, m in self._others:
            e.copy_(m)

    def state_dict(self) -> dict:
        return self.model.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state)
