"""The hooks a technique that keeps state across steps may define, declared once: the `Component` base class holds
each as a no-op, and the loop (runner.engine.train) calls the ones a component overrides, in the order of
`Run.components`:

  start(run)                          once, after building and resuming, before the first epoch
  epoch_start(run, epoch)             before each epoch's first step (epoch counts from 0)
  before_step(run) -> bool            before the forward pass; True: this step wants the uncompiled network
  after_backward(run)                 between backward and the optimizer step
  after_step(run, x, outputs, y)      after the optimizer step (x: the network's input batch)
  after_log(run, window) -> End|None  every trainer.log_every_steps steps, with the window's mean loss (and acc)
  epoch_end(run, epoch, val) -> End|None   after validation, before the best and last checkpoints; a diverged
                                      End ends the run at once (later hooks and the checkpoints skip the epoch)
  finish(run)                         after the last epoch, before the test
  snapshots(run) -> list[dict]        model states the test scores one by one and as an ensemble
  test_scores(run) -> dict            further test scores, keyed by TensorBoard tag
  summary() -> dict|None              what metrics.json keeps under the component's `name`
  state_dict() / load_state_dict(s)   what survives a kill, saved under the component's `name` in the checkpoint

A component that writes TensorBoard tags or a metrics.json entry of its own declares them in `declares` ({tag or
key: what it means}), added to runner.engine.records when its class is defined: runner's own are declared there.

A hook that returns an End stops the run with that status and message. A component class may define no other
public method: a misspelled hook (`after_backwards`) is refused when its class is defined, as it would otherwise
never be called. Helpers start with `_`.

Plain Python, no torch: every module of components imports this one; it imports none of them, only
runner.engine.records (plain Python too).
"""

import difflib
from dataclasses import dataclass

from runner.engine.records import declare

# The loop's hooks, in the order a run meets them.
HOOKS = ("start", "epoch_start", "before_step", "after_backward", "after_step", "after_log", "epoch_end", "finish",
         "snapshots", "test_scores", "summary")
STATE = ("state_dict", "load_state_dict")  # the checkpoint's pair, called for every component with a `name`


@dataclass
class End:
    """Why a run ends before its last epoch: status (diverged, pruned, interrupted, or completed for early stopping)
    and a message for the user."""

    status: str
    message: str


class Component:
    """A technique that keeps state across steps: it overrides the hooks it needs (see the module docstring)."""

    name = ""  # its key in the checkpoint and in metrics.json; "" for a component without state or summary
    declares: dict[str, str] = {}  # the tags and metrics.json keys it writes beyond runner.engine.records' own

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        declare(vars(cls).get("declares", {}))
        for attr, value in vars(cls).items():
            if attr.startswith("_") or attr in HOOKS or attr in STATE:
                continue
            if callable(value) or isinstance(value, (staticmethod, classmethod)):
                close = difflib.get_close_matches(attr, HOOKS + STATE, n=1)
                hint = f"did you mean {close[0]}?" if close else f"the hooks are {', '.join(HOOKS + STATE)}"
                raise TypeError(f"{cls.__qualname__}.{attr} is not a component hook ({hint}); a component defines "
                                "only hooks, its helpers start with _ (runner.engine.hooks)")
        keyed = [attr for attr in ("state_dict", "summary") if attr in vars(cls)]
        if keyed and not cls.name:
            raise TypeError(f"{cls.__qualname__} defines {' and '.join(keyed)} but no `name`, its key in the "
                            "checkpoint and in metrics.json")

    def start(self, run) -> None:
        pass

    def epoch_start(self, run, epoch: int) -> None:
        pass

    def before_step(self, run) -> bool:
        return False

    def after_backward(self, run) -> None:
        pass

    def after_step(self, run, x, outputs, y) -> None:
        pass

    def after_log(self, run, window: dict) -> End | None:
        return None

    def epoch_end(self, run, epoch: int, val: dict) -> End | None:
        return None

    def finish(self, run) -> None:
        pass

    def snapshots(self, run) -> list[dict]:
        return []

    def test_scores(self, run) -> dict:
        return {}

    def summary(self) -> dict | None:
        return None

    def state_dict(self) -> dict | None:
        return None

    def load_state_dict(self, state: dict) -> None:
        pass


def bound(components, name: str) -> list:
    """The bound `name` hooks of the components that override it (on their class, or set on the instance), in
    order. An undeclared name is refused: it would find nothing."""
    if name not in HOOKS:
        close = difflib.get_close_matches(name, HOOKS, n=1)
        raise ValueError(f"{name!r} is not a component hook" + (f" (did you mean {close[0]}?)" if close else "")
                         + f"; the hooks are {', '.join(HOOKS)}")
    default = getattr(Component, name)
    return [hook for c in components if getattr(hook := getattr(c, name), "__func__", hook) is not default]
