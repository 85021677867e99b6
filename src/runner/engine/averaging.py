"""Weight averaging: an exponential moving average of the weights (Polyak averaging in its exponential form, as
the lecture writes it: x_test = decay * x_test + (1 - decay) * x after every step), evaluated beside the raw model
(val/acc_ema)."""

import copy

import torch
from torch import nn


class EMA:
    """A copy of `model` whose floating-point parameters and buffers (batch norm's running statistics too) follow
    ema = decay * ema + (1 - decay) * current after every `every_steps`-th optimizer step; integer buffers (batch
    counts) are copied. Starts equal to the model. lookahead: the model is then set to the average (Zhang et al.
    2019's Lookahead with the EMA as slow weights; airbench's weight averaging), so training continues from it.
    ramp_power: the decay used at step t of total_steps is decay * (t / total_steps)^ramp_power (0: constant), so
    that early training, far from any optimum, is not held back."""

    def __init__(self, model: nn.Module, decay: float, every_steps: int = 1, lookahead: bool = False,
                 total_steps: int = 1, ramp_power: float = 0.0):
        self.decay, self.every_steps, self.lookahead = decay, every_steps, lookahead
        self.total_steps, self.ramp_power = max(1, total_steps), ramp_power
        self.steps = 0
        self.model = copy.deepcopy(model).eval()
        self.model.requires_grad_(False)
        pairs = list(zip(self.model.state_dict().values(), model.state_dict().values(), strict=True))
        self._floats = [(e, m) for e, m in pairs if e.is_floating_point()]
        self._others = [(e, m) for e, m in pairs if not e.is_floating_point()]

    @torch.no_grad()
    def update(self) -> None:
        """Called after every step: every every_steps-th call, move the average towards the model's current
        weights (one fused op for all tensors), and with lookahead copy it back into the model."""
        self.steps += 1
        if self.steps % self.every_steps:
            return
        ema, current = zip(*self._floats, strict=True)
        decay = self.decay * min(1.0, self.steps / self.total_steps) ** self.ramp_power
        torch._foreach_lerp_(list(ema), list(current), 1.0 - decay)
        if self.lookahead:
            torch._foreach_copy_(list(current), list(ema))
        for e, m in self._others:
            e.copy_(m)

    def state_dict(self) -> dict:
        return self.model.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state)


class Lookahead(EMA):
    """averaging=lookahead: the EMA with the model set to the average after every update."""

    def __init__(self, model: nn.Module, decay: float, every_steps: int = 1, total_steps: int = 1,
                 ramp_power: float = 0.0):
        super().__init__(model, decay, every_steps, True, total_steps, ramp_power)


def none(model: nn.Module, total_steps: int = 1) -> None:
    """averaging=none: no average; the model is evaluated with its own weights only."""
    return None
