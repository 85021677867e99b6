"""prune=magnitude: the component that makes a sparse model while it trains (the numbers are runner.nets.sparsity).

when=after: one-shot magnitude pruning to prune.sparsity at the start of epoch trainer.epochs - fine_tune_epochs
(the last fine_tune_epochs epochs retrain the kept weights with the mask held; 0: prune after the last epoch, just
before the test). when=during: Zhu & Gupta's (2017) gradual schedule, the target rising from 0 at start_epoch to
prune.sparsity at trainer.epochs - fine_tune_epochs, the masks recomputed every every_steps optimizer steps.

Pruned weights are held at exactly 0: their gradients are masked after backward and the weights after every
optimizer step (before a weight average sees them). The masks are the component's state, saved in the checkpoint.
"""

import logging

import torch

from runner.engine.hooks import Component
from runner.nets import sparsity as sp

log = logging.getLogger("runner")

SPARSE_FILE = "checkpoints/sparse.pt"


def none(**kwargs) -> None:
    """prune=none: no pruning component."""
    return None


class Pruning(Component):
    name = "prune"

    def __init__(self, sparsity: float, scope: str, when: str, fine_tune_epochs: int, start_epoch: int,
                 every_steps: int, ramp: str, *, model: torch.nn.Module, epochs: int, steps_per_epoch: int):
        self.sparsity, self.scope, self.when, self.ramp_kind = sparsity, scope, when, ramp
        self.every_steps = every_steps
        self.weights = sp.prunable(model)
        self.prune_epoch = epochs - fine_tune_epochs  # the epoch from which the final mask holds
        self.start_step, self.end_step = start_epoch * steps_per_epoch, self.prune_epoch * steps_per_epoch
        self.masks: dict[str, torch.Tensor] = {}
        self.target = 0.0  # the sparsity of the current masks
        self.before: dict = {}  # when=after: the val scores right before and after the one-shot pruning
        self.saved: dict = {}  # the sizes of the saved model, once written

    # -----------------------------------------------------------------------------------------------------------
    # Masks

    def _prune_to(self, target: float) -> None:
        """New masks at `target` from the weights' magnitudes (pruned weights are 0, so they stay pruned), applied."""
        self.masks = sp.magnitude_masks(self.weights, target, self.scope)
        self.target = target
        self._apply()

    @torch.no_grad()
    def _apply(self) -> None:
        for n, w in self.weights.items():
            w.mul_(self.masks[n])

    # -----------------------------------------------------------------------------------------------------------
    # Hooks

    def start(self, run) -> None:
        count = sum(w.numel() for w in self.weights.values())
        plan = (f"one-shot at the start of epoch {self.prune_epoch + 1}, then {run.cfg.trainer.epochs - self.prune_epoch}"
                " fine-tuning epoch(s)" if self.when == "after" and self.prune_epoch < run.cfg.trainer.epochs else
                "after the last epoch, before the test" if self.when == "after" else
                f"{self.ramp_kind} ramp from step {self.start_step} to {self.end_step}, every {self.every_steps} steps")
        log.info("prune=magnitude: %.1f%% of %s conv/linear weights in %d layers (scope=%s), %s", 100 * self.sparsity,
                 f"{count:,}", len(self.weights), self.scope, plan)

    def epoch_start(self, run, epoch) -> None:
        if epoch >= self.prune_epoch and self.target < self.sparsity:
            self._one_shot(run, f"at the start of epoch {epoch + 1}")

    def after_backward(self, run) -> None:
        if self.masks:
            for n, w in self.weights.items():
                if w.grad is not None:
                    w.grad.mul_(self.masks[n])

    def after_step(self, run, x, outputs, y) -> None:
        step = run.state.step + 1  # the step just taken (run.state.step counts it after the hooks)
        if self.when == "during" and self.start_step < step <= self.end_step and (
                (step - self.start_step) % self.every_steps == 0 or step == self.end_step):
            self._prune_to(sp.ramp(step, self.start_step, self.end_step, self.sparsity, self.ramp_kind))
        elif self.masks:
            self._apply()

    def epoch_end(self, run, epoch, val) -> None:
        overall, per_layer = sp.reached(self.weights)
        run.tracker.scalars({"prune/target": self.target, "prune/sparsity": overall,
                             **{f"prune/sparsity/{n}": v for n, v in per_layer.items()}}, run.state.step)

    def finish(self, run) -> None:
        if self.target < self.sparsity:  # when=after with fine_tune_epochs=0
            self._one_shot(run, "after the last epoch")
            run.save_last()
        overall, per_layer = sp.reached(self.weights)
        width = max(len(n) for n in per_layer)
        log.info("prune: reached sparsity %.4f (asked %.4f), per layer:\n%s", overall, self.sparsity,
                 "\n".join(f"  {n:<{width}}  {v:.4f} of {self.weights[n].numel():,}" for n, v in per_layer.items()))
        emptied = [n for n, v in per_layer.items() if v == 1.0]
        if emptied:  # global scope at a high sparsity can take a whole layer: nothing passes through it any more
            log.warning("prune: every weight of %s is pruned, so the output no longer depends on the input through "
                        "it; use prune.scope=layer or a lower prune.sparsity", ", ".join(emptied))
        if not run.world.main:
            return
        state = run.model.state_dict()
        pruned = [f"{n}.weight" for n in self.weights]
        run._save(sp.encode(state, pruned), run.run_dir / SPARSE_FILE)
        self.saved = {**sp.sizes(state, pruned), "sparse_file": SPARSE_FILE}
        log.info("prune: the model is %s bytes dense, %s gzipped, %s in %s (a bit per weight + the kept values)",
                 f"{self.saved['dense_bytes']:,}", f"{self.saved['gzip_bytes']:,}", f"{self.saved['sparse_bytes']:,}",
                 run.run_dir / SPARSE_FILE)

    def _one_shot(self, run, when: str) -> None:
        self._prune_to(self.sparsity)
        before = run.state.history[-1].get("val_acc") if run.state.history else None
        after = {}
        if len(run.splits.val_y):
            with run.speed.autocast():
                after = run.objective.evaluate(run.model, run.preprocess, run.splits.val_x, run.splits.val_y,
                                               run.cfg.trainer.eval_batch_size)
        self.before = {"val_acc_before_prune": before, "val_acc_after_prune": after.get("acc")}
        shown = (f"; val acc {before:.4f} -> {after['acc']:.4f}" if before is not None and "acc" in after else "")
        log.info("prune: %.1f%% of the weights pruned %s%s", 100 * self.sparsity, when, shown)

    # -----------------------------------------------------------------------------------------------------------
    # State and record

    def state_dict(self) -> dict:
        return {"target": self.target, "masks": {n: m.cpu() for n, m in self.masks.items()}, "before": self.before}

    def load_state_dict(self, state: dict) -> None:
        self.target, self.before = state["target"], state["before"]
        self.masks = {n: m.to(self.weights[n].device) for n, m in state["masks"].items()}

    def summary(self) -> dict:
        """metrics.json's `prune`: what was asked, the sparsity reached (overall and per layer), the val accuracy
        around a one-shot pruning, and the saved model's sizes."""
        overall, per_layer = sp.reached(self.weights)
        return {"sparsity": self.sparsity, "scope": self.scope, "when": self.when, "target": self.target,
                "reached": overall, "per_layer": per_layer,
                "weights": sum(w.numel() for w in self.weights.values()), **self.before, **self.saved}
