"""Learning-rate schedules as multipliers of the optimizer's lr, evaluated at every optimizer step.

Each schedule is a small callable object `factor(step) -> float` (objects, not lambdas, so LambdaLR can hold them;
the checkpoint keeps only the plateau schedule's counters, see `state_dict`), one class per `schedule=` option (its
`_target_`). Lengths are given in epochs, as the config has them, and turned into steps with the steps_per_epoch the
run gives when it builds the schedule (runner.engine.build.schedule_factor). `step` counts optimizer steps from 0
after the warmup; T (total_steps) is the number of steps after it.
"""

import math
from dataclasses import dataclass, field


@dataclass(kw_only=True)
class Schedule:
    """What every schedule is given when the run is built: steps_per_epoch, to turn its lengths in epochs into
    steps, and total_steps, the T optimizer steps it runs over."""

    steps_per_epoch: int
    total_steps: int

    def steps(self, epochs: float) -> int:
        """A length in epochs as a whole number of optimizer steps, at least 1."""
        return max(1, round(epochs * self.steps_per_epoch))


@dataclass(kw_only=True)
class Constant(Schedule):
    def __call__(self, step: int) -> float:
        return 1.0


@dataclass(kw_only=True)
class Step(Schedule):
    """Step decay: gamma^floor(step / S), the lr multiplied by gamma every step_epochs (S steps)."""

    step_epochs: float
    gamma: float

    def __call__(self, step: int) -> float:
        return self.gamma ** (step // self.steps(self.step_epochs))


@dataclass(kw_only=True)
class MultiStep(Schedule):
    """Piecewise constant: gamma^(number of milestones passed), a milestone at each of milestone_epochs."""

    milestone_epochs: list[float]
    gamma: float

    def __call__(self, step: int) -> float:
        return self.gamma ** sum(step >= self.steps(m) for m in self.milestone_epochs)


@dataclass(kw_only=True)
class Exponential(Schedule):
    """lr0 * gamma_per_epoch^(step / steps_per_epoch): the lr falls by gamma per epoch, smoothly at every step."""

    gamma_per_epoch: float

    def __call__(self, step: int) -> float:
        return self.gamma_per_epoch ** (step / self.steps_per_epoch)


@dataclass(kw_only=True)
class Power(Schedule):
    """lr0 / (1 + step / s)^exponent, s = scale_epochs * steps_per_epoch (the lecture's 1/t decay for exponent 1)."""

    scale_epochs: float
    exponent: float

    def __call__(self, step: int) -> float:
        return (1.0 + step / (self.scale_epochs * self.steps_per_epoch)) ** -self.exponent


def _cosine(progress: float, min_factor: float) -> float:
    """Half a cosine from 1 at progress 0 down to min_factor at progress 1 (Loshchilov & Hutter 2017)."""
    return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


@dataclass(kw_only=True)
class Cosine(Schedule):
    """Cosine annealing from lr0 at the first step to min_factor * lr0 at the last (step T - 1)."""

    min_factor: float

    def __call__(self, step: int) -> float:
        return _cosine(step / max(1, self.total_steps - 1), self.min_factor)


@dataclass(kw_only=True)
class CosineRestarts(Schedule):
    """SGDR (Loshchilov & Hutter 2017): cosine annealing over cycles of cycle_epochs, each cycle cycle_mult times
    longer than the one before; each cycle restarts at lr0. Within a cycle of length L steps, at step s of it:
    min_factor + (1 - min_factor) * (1 + cos(pi * s / L)) / 2."""

    cycle_epochs: float
    cycle_mult: int
    min_factor: float

    def cycle_at(self, step: int) -> tuple[int, int]:
        """(step within its cycle, that cycle's length)."""
        length = self.steps(self.cycle_epochs)
        while step >= length:
            step -= length
            length *= self.cycle_mult
        return step, length

    def cycle_ends(self, total_steps: int) -> list[int]:
        ends, end = [], self.steps(self.cycle_epochs)
        length = end
        while end <= total_steps:
            ends.append(end)
            length *= self.cycle_mult
            end += length
        return ends

    def __call__(self, step: int) -> float:
        within, length = self.cycle_at(step)
        return _cosine(within / length, self.min_factor)


@dataclass(kw_only=True)
class Cyclic(Schedule):
    """Triangular cyclical lr (Smith 2017): linear from min_factor up to 1 over half a cycle (h = half_cycle_epochs
    in steps), then back down; cycle = floor(1 + step / (2 h)), x = |step / h - 2 cycle + 1|,
    factor = min + (1 - min) * max(0, 1 - x)."""

    half_cycle_epochs: float
    min_factor: float

    def cycle_ends(self, total_steps: int) -> list[int]:
        h = self.steps(self.half_cycle_epochs)
        return list(range(2 * h, total_steps + 1, 2 * h))

    def __call__(self, step: int) -> float:
        h = self.steps(self.half_cycle_epochs)
        cycle = math.floor(1 + step / (2 * h))
        x = abs(step / h - 2 * cycle + 1)
        return self.min_factor + (1.0 - self.min_factor) * max(0.0, 1.0 - x)


@dataclass(kw_only=True)
class OneCycle(Schedule):
    """Smith & Topin 2017: linear rise from 1/div_factor to 1 over pct_start of total steps, then cosine down to
    1/(div_factor * final_div_factor) at the last step."""

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


@dataclass(kw_only=True)
class Triangular(Schedule):
    """One triangle over the run (the schedule of fast CIFAR-10 trainers such as airbench): linear from start_factor
    up to 1 at peak_fraction of the total steps, then linear down to end_factor at the last step."""

    peak_fraction: float
    start_factor: float
    end_factor: float

    def __call__(self, step: int) -> float:
        peak = max(1, round(self.peak_fraction * self.total_steps))
        if step < peak:
            return self.start_factor + (1.0 - self.start_factor) * step / peak
        progress = min(1.0, (step - peak) / max(1, self.total_steps - 1 - peak))
        return 1.0 + (self.end_factor - 1.0) * progress


@dataclass(kw_only=True)
class Plateau(Schedule):
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
    replan(scheduler)


def replan(scheduler) -> None:
    """Set every parameter group's lr to what the schedule plans at the step it stands at. After loading a
    checkpoint the saved lr is the old plan's, which differs when the run has been made longer (trainer.epochs)."""
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

def planned_lrs(scheduler, total_steps: int) -> list[float]:
    """The lr of the first parameter group at every one of total_steps steps, as `scheduler` plans it from the
    start (a plateau schedule's drops are not known ahead: its plan is flat)."""
    fn, base_lr = _factor(scheduler), scheduler.base_lrs[0]
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
