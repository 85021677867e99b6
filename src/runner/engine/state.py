"""Where a run stands: the optimizer steps taken, the epoch being trained, one history entry per finished epoch, the
best validation accuracy, the seconds trained and the resumes. The loop advances it (`took_step`, `finished_epoch`,
`keep_best`); components read it and may change it where their technique says so (early stopping stops before the
next epoch, divergence takes back the epoch it refuses, averaging adds its scores to the epoch's entry).

Its saved part (`state_dict` / `load_state_dict`) is one piece of the checkpoint that runner.engine.run.Run writes and
reads with its one pair, under the same top-level keys as before this class existed: a checkpoint written before it
resumes as it is. Plain Python, no torch."""

import time
from dataclasses import dataclass, field


def _no_best() -> dict:
    return {"acc": -1.0, "epoch": -1}


@dataclass
class RunState:
    step: int = 0  # optimizer steps taken
    epoch: int = 0  # the epoch being trained, from 0
    history: list[dict] = field(default_factory=list)  # one entry per finished epoch (train, val, lr, timings)
    best: dict = field(default_factory=_no_best)  # the best val acc and its epoch (from 1); epoch -1: none yet
    elapsed: float = 0.0  # seconds trained by the processes before this one (a resumed run)
    resumes: list[dict] = field(default_factory=list)  # one entry per resume: where it continued, what changed
    # This process's, not saved:
    wall_start: float = field(default_factory=time.perf_counter)
    first_step_at: float | None = None  # time.time() of this process's first finished training step
    stop_before_next_epoch: bool = False  # set by a component (early stopping resumed after it had stopped)
    unfinished_images: int = 0  # images of an epoch that ended before its last step (interrupted, diverged)

    @property
    def epochs_done(self) -> int:
        return len(self.history)

    def seconds(self) -> float:
        """Seconds trained in all, this process's included."""
        return self.elapsed + time.perf_counter() - self.wall_start

    def took_step(self) -> None:
        self.step += 1
        if self.first_step_at is None:
            self.first_step_at = time.time()

    def finished_epoch(self, entry: dict) -> None:
        self.history.append(entry)

    def keep_best(self, val: dict) -> bool:
        """Whether the epoch just finished has the best validation accuracy so far (then it is recorded)."""
        if "acc" not in val or val["acc"] <= self.best["acc"]:
            return False
        self.best = {"acc": val["acc"], "epoch": self.epoch + 1}
        return True

    def state_dict(self) -> dict:
        return {"step": self.step, "best": self.best, "history": self.history, "elapsed": self.seconds(),
                "resumes": self.resumes}

    def load_state_dict(self, state: dict) -> None:
        """`state`: a checkpoint (its "epoch" is the epochs it holds; "resumes" is absent from the oldest)."""
        self.epoch, self.step = state["epoch"], state["step"]
        self.best, self.history, self.elapsed = state["best"], state["history"], state["elapsed"]
        self.resumes = list(state.get("resumes", []))
