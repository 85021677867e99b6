"""Learning-rate schedules as multipliers of the optimizer's lr, evaluated at every optimizer step.

Each schedule is a small callable object `factor(step) -> float` (objects, not lambdas, so LambdaLR can save them
in a checkpoint); lengths given in epochs are turned into steps here, once.
"""

import math
from dataclasses import dataclass

import torch


@dataclass
class Constant:
    def __call__(self, step: int) -> float:
        return 1.0


@dataclass
class OneCycle:
    """Smith & Topin 2017: linear rise from 1/div_factor to 1 over pct_start of total steps, then cosine down to
    1/(div_factor * final_div_factor) at the last step."""

    total_steps: int
    pct_start: float
    div_factor: float
    final_div_factor: float

    def __call__(self, step: int) -> float:
        start = 1.0 / self.div_factor
        end = start / self.final_div_factor
        rise = max(1, round(self.pct_start * self.total_steps))
        if step < rise:
            return start + (1.0 - start) * step / rise
        progress = min(1.0, (step - rise) / max(1, self.total_steps - 1 - rise))
        return end + (1.0 - end) * 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass
class Warmup:
    """A linear warmup from 0 over warmup_steps in front of `inner`, which then runs over the remaining steps."""

    inner: object
    warmup_steps: int

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.inner(0) * (step + 1) / (self.warmup_steps + 1)
        return self.inner(step - self.warmup_steps)


def factor_fn(cfg, total_steps: int, steps_per_epoch: int):
    """The multiplier function for the schedule config `cfg` over a run of total_steps optimizer steps."""
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    steps = max(1, total_steps - warmup)
    if cfg.name == "constant":
        fn = Constant()
    elif cfg.name == "onecycle":
        fn = OneCycle(steps, cfg.pct_start, cfg.div_factor, cfg.final_div_factor)
    else:
        raise ValueError(f"schedule={cfg.name!r} is not known")
    return Warmup(fn, warmup) if warmup > 0 else fn


def build(cfg, optimizer: torch.optim.Optimizer, total_steps: int, steps_per_epoch: int):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor_fn(cfg, total_steps, steps_per_epoch))
