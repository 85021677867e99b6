"""Learning-rate schedules as multipliers of the optimizer's lr, evaluated at every optimizer step.

Each schedule is a small callable object `factor(step) -> float` (objects, not lambdas, so LambdaLR can hold them;
the checkpoint keeps only the plateau schedule's counters, see `state_dict`); lengths given in epochs are turned
into steps here, once. `step` counts optimizer steps from 0 after the warmup; T is the number of steps after it.
"""

import math
from dataclasses import dataclass, field

import torch


@dataclass
class Constant:
    def __call__(self, step: int) -> float:
        return 1.0


@dataclass
class Step:
    """Step decay: gamma^floor(step / step_steps), the lr multiplied by gamma every step_epochs."""

    step_steps: int
    gamma: float

    def __call__(self, step: int) -> float:
        return self.gamma ** (step // self.step_steps)


@dataclass
class MultiStep:
    """Piecewise constant: gamma^(number of milestones passed), a milestone at each of milestone_steps."""

    milestone_steps: list[int]
    gamma: float

    def __call__(self, step: int) -> float:
        return self.gamma ** sum(step >= m for m in self.milestone_steps)


@dataclass
class Exponential:
    """lr0 * gamma^(step / steps_per_epoch): the lr falls by gamma per epoch, smoothly at every step."""

    steps_per_epoch: int
    gamma_per_epoch: float

    def __call__(self, step: int) -> float:
        return self.gamma_per_epoch ** (step / self.steps_per_epoch)


@dataclass
class Power:
    """lr0 / (1 + step / scale_steps)^exponent (the lecture's 1/t decay for exponent 1)."""

    scale_steps: float
    exponent: float

    def __call__(self, step: int) -> float:
        return (1.0 + step / self.scale_steps) ** -self.exponent


def _cosine(progress: float, min_factor: float) -> float:
    """Half a cosine from 1 at progress 0 down to min_factor at progress 1 (Loshchilov & Hutter 2017)."""
    return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


@dataclass
class Cosine:
    """Cosine annealing from lr0 at the first step to min_factor * lr0 at the last (step T - 1)."""

    total_steps: int
    min_factor: float

    def __call__(self, step: int) -> float:
        return _cosine(step / max(1, self.total_steps - 1), self.min_factor)


@dataclass
class CosineRestarts:
    """SGDR (Loshchilov & Hutter 2017): cosine annealing over cycles of cycle_steps, each cycle cycle_mult times
    longer than the one before; each cycle restarts at lr0. Within a cycle of length L, at step s of it:
    min_factor + (1 - min_factor) * (1 + cos(pi * s / L)) / 2."""

    cycle_steps: int
    cycle_mult: int
    min_factor: float

    def cycle_at(self, step: int) -> tuple[int, int]:
        """(step within its cycle, that cycle's length)."""
        length = self.cycle_steps
        while step >= length:
            step -= length
            length *= self.cycle_mult
        return step, length

    def cycle_ends(self, total_steps: int) -> list[int]:
        ends, end, length = [], self.cycle_steps, self.cycle_steps
        while end <= total_steps:
            ends.append(end)
            length *= self.cycle_mult
            end += length
        return ends

    def __call__(self, step: int) -> float:
        within, length = self.cycle_at(step)
        return _cosine(within / length, self.min_factor)


@dataclass
class Cyclic:
    """Triangular cyclical lr (Smith 2017): linear from min_factor up to 1 over half_cycle_steps, then back down;
    cycle = floor(1 + step / (2 h)), x = |step / h - 2 cycle + 1|, factor = min + (1 - min) * max(0, 1 - x)."""

    half_cycle_steps: int
    min_factor: float

    def cycle_ends(self, total_steps: int) -> list[int]:
        return list(range(2 * self.half_cycle_steps, total_steps + 1, 2 * self.half_cycle_steps))

    def __call__(self, step: int) -> float:
        h = self.half_cycle_steps
        cycle = math.floor(1 + step / (2 * h))
        x = abs(step / h - 2 * cycle + 1)
        return self.min_factor + (1.0 - self.min_factor) * max(0.0, 1.0 - x)


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
class Triangular:
    """One triangle over the run (the schedule of fast CIFAR-10 trainers such as airbench): linear from start_factor
    up to 1 at peak_fraction of the total steps, then linear down to end_factor at the last step."""

    total_steps: int
    peak_fraction: float
    start_factor: float
    end_factor: float

    def __call__(self, step: int) -> float:
        peak = max(1, round(self.peak_fraction * self.total_steps))
        if step < peak:
            return self.start_factor + (1.0 - self.start_factor) * step / peak
        progress = min(1.0, (step - peak) / max(1, self.total_steps - 1 - peak))
        return 1.0 + (self.end_factor - 1.0) * progress


@dataclass
class Plateau:
    """Performance scheduling (ReduceLROnPlateau): the factor starts at 1 and is multiplied by `factor` (not below
    min_factor) once the validation metric has not improved by more than `threshold` for more than
    patience_epochs epochs in a row. Fed by `observe` once per epoch; the factor does not depend on the step."""

    metric: str
    factor: float
    patience_epochs: int
    threshold: float
    min_factor: float
    state: dict = field(default_factory=lambda: {"scale": 1.0, "best": None, "bad_epochs": 0})

    def __call__(self, step: int) -> float:
        return self.state["scale"]

    def observe(self, value: float) -> None:
        best, sign = self.state["best"], 1.0 if self.metric.endswith("acc") else -1.0  # acc up, loss down
        if best is None or sign * (value - best) > self.threshold:
            self.state.update(best=value, bad_epochs=0)
            return
        self.state["bad_epochs"] += 1
        if self.state["bad_epochs"] > self.patience_epochs:
            self.state.update(scale=max(self.min_factor, self.state["scale"] * self.factor), bad_epochs=0)


@dataclass
class Warmup:
    """A linear warmup from 0 over warmup_steps in front of `inner`, which then runs over the remaining steps."""

    inner: object
    warmup_steps: int

    def cycle_ends(self, total_steps: int) -> list[int]:
        ends = self.inner.cycle_ends(total_steps - self.warmup_steps) if hasattr(self.inner, "cycle_ends") else []
        return [self.warmup_steps + e for e in ends]

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.inner(0) * (step + 1) / (self.warmup_steps + 1)
        return self.inner(step - self.warmup_steps)


def factor_fn(cfg, total_steps: int, steps_per_epoch: int):
    """The multiplier function for the schedule config `cfg` over a run of total_steps optimizer steps."""
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    steps = max(1, total_steps - warmup)

    def epochs(n: float) -> int:
        return max(1, round(n * steps_per_epoch))

    name = cfg.name
    if name == "constant":
        fn = Constant()
    elif name == "step":
        fn = Step(epochs(cfg.step_epochs), cfg.gamma)
    elif name == "multistep":
        fn = MultiStep([epochs(m) for m in cfg.milestone_epochs], cfg.gamma)
    elif name == "exponential":
        fn = Exponential(steps_per_epoch, cfg.gamma_per_epoch)
    elif name == "power":
        fn = Power(cfg.scale_epochs * steps_per_epoch, cfg.exponent)
    elif name == "cosine":
        fn = Cosine(steps, cfg.min_factor)
    elif name == "cosine_restarts":
        fn = CosineRestarts(epochs(cfg.cycle_epochs), cfg.cycle_mult, cfg.min_factor)
    elif name == "cyclic":
        fn = Cyclic(epochs(cfg.half_cycle_epochs), cfg.min_factor)
    elif name == "onecycle":
        fn = OneCycle(steps, cfg.pct_start, cfg.div_factor, cfg.final_div_factor)
    elif name == "triangular":
        fn = Triangular(steps, cfg.peak_fraction, cfg.start_factor, cfg.end_factor)
    elif name == "plateau":
        fn = Plateau(cfg.metric, cfg.factor, cfg.patience_epochs, cfg.threshold, cfg.min_factor)
    else:
        raise ValueError(f"schedule={name!r} is not known")
    return Warmup(fn, warmup) if warmup > 0 else fn


def build(cfg, optimizer: torch.optim.Optimizer, total_steps: int, steps_per_epoch: int):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor_fn(cfg, total_steps, steps_per_epoch))


# ---------------------------------------------------------------------------------------------------------------
# What the training loop asks of a schedule beyond the lr: cycle ends, the plateau's metric, its saved state

def _factor(scheduler):
    return scheduler.lr_lambdas[0]


def _plateau(scheduler) -> Plateau | None:
    fn = _factor(scheduler)
    fn = fn.inner if isinstance(fn, Warmup) else fn
    return fn if isinstance(fn, Plateau) else None


def cycle_ends(scheduler, total_steps: int) -> list[int]:
    """The steps at which a cycle of cosine_restarts or cyclic ends (where a snapshot is taken); [] otherwise."""
    fn = _factor(scheduler)
    return fn.cycle_ends(total_steps) if hasattr(fn, "cycle_ends") else []


def observe(scheduler, metrics: dict) -> None:
    """Feed this epoch's validation metrics (val_acc, val_loss) to a plateau schedule, and apply its factor to the
    optimizer at once, so the next step already uses it. Does nothing for every other schedule."""
    plateau = _plateau(scheduler)
    if plateau is None:
        return
    plateau.observe(metrics[plateau.metric])
    for group, base, fn in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas, strict=True):
        group["lr"] = base * fn(scheduler.last_epoch)


def state_dict(scheduler) -> dict:
    """The scheduler's state for a checkpoint: LambdaLR's counters without the factor objects (which load with
    weights_only=True could not rebuild), plus the plateau's counters."""
    plateau = _plateau(scheduler)
    return {**scheduler.state_dict(), "lr_lambdas": [None] * len(scheduler.lr_lambdas),
            "plateau": dict(plateau.state) if plateau else None}


def load_state_dict(scheduler, state: dict) -> None:
    state = dict(state)
    plateau_state = state.pop("plateau", None)
    scheduler.load_state_dict(state)
    plateau = _plateau(scheduler)
    if plateau is not None and plateau_state is not None:  # None: resumed from a run on another schedule
        plateau.state.update(plateau_state)


# ---------------------------------------------------------------------------------------------------------------
# The planned curve, drawn once at the start of a run

def planned_lrs(cfg, base_lr: float, total_steps: int, steps_per_epoch: int) -> list[float]:
    """The lr at every step of the run, as the schedule plans it (a plateau schedule's drops are not known ahead:
    its plan is flat)."""
    fn = factor_fn(cfg, total_steps, steps_per_epoch)
    return [base_lr * fn(step) for step in range(total_steps)]


def plan_figure(lrs: list[float], steps_per_epoch: int, title: str):
    """A matplotlib Figure of the planned lr per step, epochs marked on a second axis."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3), dpi=100)
    ax = fig.add_subplot()
    ax.plot(range(len(lrs)), lrs, lw=1.5)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("learning rate")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    top = ax.secondary_xaxis("top", functions=(lambda s: s / steps_per_epoch, lambda e: e * steps_per_epoch))
    top.set_xlabel("epoch")
    fig.tight_layout()
    return fig
