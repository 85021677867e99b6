"""The techniques that keep state across steps, each one object with the hooks it needs (as Keras callbacks and
Lightning's Callback do; the hooks are declared in runner.engine.hooks). A new technique is a new component added in
`build_components`; a regularizer acting in the loop is named with its component in the regularizer table
(runner.config.regularizers: by its entry, or by the `_target_` of its option file). The loop does not change.
"""

import logging
import math

import torch
from hydra.utils import get_class

from runner.config.regularizers import component_keys, in_loop
from runner.data import checkpoint
from runner.engine import build
from runner.engine.hooks import Component, End, bound  # noqa: F401 (bound: Run.hooks)
from runner.engine.inference import Export
from runner.engine.sharpness import Sharpness
from runner.nets.init import first_conv
from runner.nets.layers import reestimate_batch_norm
from runner.optimization import optimizers, regularizers, schedules

log = logging.getLogger("runner")


class Averaging(Component):
    """Polyak averaging (averaging=ema) or Lookahead (averaging=lookahead): the averaged copy follows the model after
    every step, is validated beside it (val/acc_ema) and tested (test/acc_ema)."""

    name = "ema"

    def __init__(self, ema):
        self.ema = ema

    def after_step(self, run, x, outputs, y) -> None:
        self.ema.update()

    def epoch_end(self, run, epoch, val) -> None:
        with run.speed.autocast():
            scores = run.objective.evaluate(self.ema.model, run.preprocess, run.splits.val_x, run.splits.val_y,
                                            run.cfg.trainer.eval_batch_size)
        run.tracker.scalars({f"val/{k}_ema": v for k, v in scores.items()}, run.state.step)
        run.state.history[-1].update({f"val_{k}_ema": v for k, v in scores.items()})

    def state_dict(self) -> dict:
        return self.ema.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.ema.load_state_dict(state)


class EarlyStopping(Component):
    """regularization=early_stopping: patience on a validation metric (val_acc: higher is better; val_loss: lower is
    better). The run ends once patience_epochs epochs in a row brought no improvement above min_delta; a copy of the
    best epoch's weights (and buffers) is kept, and put back at the end (and into checkpoints/last.pt)."""

    name = "early_stopping"

    def __init__(self, metric: str, patience_epochs: int, min_delta: float):
        self.metric, self.patience_epochs, self.min_delta = metric, patience_epochs, min_delta
        self.best, self.best_epoch, self.bad_epochs, self.stopped = None, 0, 0, False
        self.best_weights: dict[str, torch.Tensor] | None = None

    def start(self, run) -> None:
        if self.stopped:
            run.state.stop_before_next_epoch = True  # resumed from a run that had already stopped early

    def epoch_end(self, run, epoch, val) -> End | None:
        value = {f"val_{k}": v for k, v in val.items()}[self.metric]
        sign = 1.0 if self.metric.endswith("acc") else -1.0
        if self.best is None or sign * (value - self.best) > self.min_delta:
            self.best, self.best_epoch, self.bad_epochs = value, epoch + 1, 0
            self.best_weights = {k: v.detach().clone() for k, v in run.model.state_dict().items()}
        else:
            self.bad_epochs += 1
        self.stopped = self.bad_epochs >= self.patience_epochs
        if not self.stopped:
            return None
        log.info("early stopping after epoch %d: %s has not improved for %d epochs (best %.4f at epoch %d)",
                 epoch + 1, self.metric, self.bad_epochs, self.best, self.best_epoch)
        return End("completed", "")

    def finish(self, run) -> None:
        if self.best_weights is None or not run.world.main:
            return
        run.model.load_state_dict(self.best_weights)
        run.save_last()
        log.info("restored the weights of epoch %d (%s %.4f)", self.best_epoch, self.metric, self.best)

    def state_dict(self) -> dict:
        return {"best": self.best, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs,
                "stopped": self.stopped, "best_weights": self.best_weights}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_epoch, self.bad_epochs = state["best"], state["best_epoch"], state["bad_epochs"]
        self.stopped, self.best_weights = state["stopped"], state["best_weights"]

    def summary(self) -> dict:
        return {k: v for k, v in self.state_dict().items() if k != "best_weights"}


class Snapshots(Component):
    """schedule.snapshot_ensemble=true: the weights at the end of every lr cycle go to checkpoints/snapshot_<k>.pt;
    the test scores each snapshot and the ensemble of their softmax outputs (Huang et al. 2017)."""

    def __init__(self, cycle_ends: list[int], epochs: int):
        self.ends = cycle_ends
        if len(cycle_ends) < 2:
            log.warning("schedule.snapshot_ensemble: only %d cycle(s) end within %d epochs, so there is no ensemble "
                        "of snapshots to report; use more epochs or shorter cycles", len(cycle_ends), epochs)

    def epoch_end(self, run, epoch, val) -> None:
        for k, end in enumerate(self.ends, 1):
            if run.state.step - run.steps_per_epoch < end <= run.state.step:  # the k-th cycle ended in this epoch
                run.save_weights(run.run_dir / f"checkpoints/snapshot_{k}.pt", epoch + 1)

    def snapshots(self, run) -> list[dict]:
        paths = [run.run_dir / f"checkpoints/snapshot_{k}.pt" for k in range(1, len(self.ends) + 1)]
        return [checkpoint.load(p, map_location=run.device)["model"] for p in paths if p.is_file()]


class Freezing(Component):
    """transfer=linear_probe / freeze_until / gradual_unfreeze: which layers train in each epoch."""

    def __init__(self, freezer):
        self.freezer = freezer

    def epoch_start(self, run, epoch) -> None:
        self.freezer.set_epoch(epoch, run.tracker, run.state.step + 1)  # logged with the epoch's first step


class StemBiasHold(Component):
    """init.first_layer_bias_epochs=N: the whitening stem's bias trains N epochs, then is held (optimizers.hold:
    no step, no momentum, no decay), as airbench does."""

    def __init__(self, bias: torch.nn.Parameter, epochs: int):
        self.bias, self.epochs = bias, epochs

    def epoch_start(self, run, epoch) -> None:
        optimizers.hold(run.optimizer, [self.bias] if epoch >= self.epochs else [])
        if epoch == self.epochs:
            log.info("epoch %d: the whitening layer's bias stays as it is from now on (init.first_layer_bias_epochs"
                     "=%d)", epoch + 1, self.epochs)


class BatchNormReestimate(Component):
    """norm.reestimate_batches=N: after the last epoch (and after early stopping put its best weights back), the
    batch-norm running statistics of the model, and of its weight average if any, are recomputed over N training
    batches (preprocessed, not augmented, a fixed draw of the run's seed) with dropout and every other noise off
    (layers.reestimate_batch_norm). The validation and test scores before and after go to TensorBoard
    (norm/reestimate_...) and metrics.json (bn_reestimate); the test that follows, and checkpoints/last.pt, use the
    new statistics."""

    name = "bn_reestimate"

    def __init__(self, batches: int):
        self.batches, self.result = batches, None

    def finish(self, run) -> None:
        cfg, splits = run.cfg, run.splits
        size = cfg.trainer.batch_size
        order = torch.randperm(len(splits.train_x), generator=torch.Generator().manual_seed(cfg.seed))
        n = min(self.batches, max(1, len(order) // size))
        if n < self.batches:
            log.warning("norm.reestimate_batches=%d: the training split holds %d batches of %d; using those",
                        self.batches, n, size)
        idx = [order[i * size:(i + 1) * size].to(splits.train_x.device) for i in range(n)]
        models = [("", run.model)]
        if run.ema is not None:
            models.append(("_ema", run.ema.model))
        self.result = {"batches": n, "images": sum(len(i) for i in idx)}
        for suffix, model in models:
            before = self._scores(run, model, suffix, "before")
            with run.speed.autocast():
                layers = reestimate_batch_norm(model, (run.speed.layout(run.preprocess(splits.train_x[i]))
                                                       for i in idx))
            after = self._scores(run, model, suffix, "after")
            self.result.update({**before, **after, f"layers{suffix}": layers})
        run.tracker.scalars({f"norm/reestimate_{k}": v for k, v in self.result.items()}, run.state.step)
        shown = ", ".join(f"{k.removesuffix('_before')} {self.result[k]:.4f} -> {self.result[k[:-6] + 'after']:.4f}"
                          for k in self.result if k.endswith("_before") and "acc" in k)
        log.info("norm.reestimate_batches=%d: batch norm statistics of %d layers recomputed over %s training images "
                 "(dropout off): %s", self.batches, self.result["layers"], f"{self.result['images']:,}", shown)
        run.save_last()

    @staticmethod
    def _scores(run, model, suffix: str, when: str) -> dict:
        splits, size, scores = run.splits, run.cfg.trainer.eval_batch_size, {}
        for split, x, y in (("val", splits.val_x, splits.val_y), ("test", splits.test_x, splits.test_y)):
            if len(y):
                with run.speed.autocast():
                    got = run.objective.evaluate(model, run.preprocess, x, y, size)
                scores.update({f"{split}_{k}{suffix}_{when}": v for k, v in got.items()})
        return scores

    def summary(self) -> dict | None:
        return self.result


class Diagnostics(Component):
    """The network's health every diagnostics.every_steps steps (runner.nets.diagnostics.Probe): activation
    statistics, dead and saturated units, gradient norms, update/weight ratios, batch norm's train/eval gap."""

    def __init__(self, probe):
        self.probe, self.watching = probe, False

    def before_step(self, run) -> bool:
        self.watching = self.probe.start(run.state.step)
        return self.watching  # the hooks would make a compiled network recompile: run the original one

    def after_backward(self, run) -> None:
        if self.watching:
            self.probe.gradients()

    def after_step(self, run, x, outputs, y) -> None:
        if self.watching:
            labelled = run.objective.has_accuracy
            self.probe.finish(run.state.step, x, outputs if labelled else None, y if labelled else None)


class GradientClipping(Component):
    """regularization=grad_clip: gradients clipped between backward and the step, by global norm or by value; the
    mean global norm before clipping over each log window is train/grad_norm."""

    def __init__(self, by: str, threshold: float):
        self.by, self.threshold = by, threshold
        self.norms, self.steps = None, 0

    def after_backward(self, run) -> None:
        run.speed.unscale(run.optimizer)  # fp16 gradients carry the scaler's factor until unscaled
        norm = regularizers.clip_gradients(list(run.model.parameters()), self.by, self.threshold)
        self.norms = norm if self.norms is None else self.norms + norm
        self.steps += 1

    def after_log(self, run, window: dict) -> None:
        run.tracker.scalar("train/grad_norm", self.norms.item() / self.steps, run.state.step)
        self.norms, self.steps = None, 0


class Divergence(Component):
    """Ends the run with status `diverged`, before anything is validated further or saved as best or last, when
    - a training window's mean loss is NaN or infinite, or has exploded: above EXPLODED x the first window's loss of
      the run and above the floor (classification: 10 x ln(classes), ten times the loss of a uniform guess; the
      autoencoder: an MSE of 10, ten times that of an all-zero reconstruction of standardized images). Normal
      training, noisy as it is, stays within a few times its first loss; a real explosion passes 1e3 within steps;
    - a weight or buffer (batch norm's running statistics) of the model is NaN or infinite (checked with the loss,
      one device sync per log window: with one step per epoch it shows before the validation does);
    - the validation loss is NaN or infinite, or exploded by the same rule (epoch_end, before the other components
      see it: with one step per epoch, weights that are finite but far off show only there)."""

    name = "divergence"
    EXPLODED = 100.0

    def __init__(self, floor: float):
        self.floor, self.first = floor, None  # first: the first log window's mean training loss

    def after_log(self, run, window: dict) -> End | None:
        loss = window["loss"]
        if not math.isfinite(loss):
            return self._end(run, f"the training loss became {loss}")
        if self.first is None:
            self.first = loss
        elif loss > max(self.EXPLODED * self.first, self.floor):
            return self._end(run, f"the training loss exploded to {loss:.4g} (it started at {self.first:.4g}; the "
                             f"limit is {self.EXPLODED:g}x that and at least {self.floor:.3g})")
        bad = non_finite(run.model)
        return self._end(run, f"weights became NaN or infinite ({bad})") if bad else None

    def epoch_end(self, run, epoch, val) -> End | None:
        bad = [f"{k} became {v}" for k, v in val.items() if not math.isfinite(v)]
        if not bad and self.first is not None and val.get("loss", 0.0) > max(self.EXPLODED * self.first, self.floor):
            bad = [f"loss exploded to {val['loss']:.4g} (the training loss started at {self.first:.4g})"]
        if not bad:
            return None
        run.state.history.pop()  # the run stands where its last checkpoint does
        return self._end(run, "the validation " + ", ".join(bad))

    @staticmethod
    def _end(run, what: str) -> End:
        message = (f"training diverged in epoch {run.state.epoch + 1} (step {run.state.step}): {what}. Nothing was saved from "
                   "this epoch. Lower optimizer.lr, add a warmup (schedule.warmup_epochs) or clip gradients "
                   "(regularization=[...,grad_clip]), and start afresh with trainer.resume=never or in a new run "
                   "directory.")
        log.error(message)
        return End("diverged", message)

    def state_dict(self) -> dict:
        return {"first": self.first}

    def load_state_dict(self, state: dict) -> None:
        self.first = state["first"]


def non_finite(model: torch.nn.Module) -> str:
    """The names of the model's NaN or infinite parameters and floating buffers (a few), or "" when all are finite;
    one device sync."""
    tensors = [(n, t) for n, t in model.state_dict().items() if t.is_floating_point()]
    if not tensors:
        return ""
    finite = torch.stack([torch.isfinite(t).all() for _, t in tensors]).tolist()
    bad = [n for (n, _), ok in zip(tensors, finite, strict=True) if not ok]
    return ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")


class SweepReport(Component):
    """In a trial of an Optuna sweep: report the epoch (its history entry: val_acc, val_loss, ...) after every
    epoch; the sweep's pruner, reading the value of the study's metric, may end the trial (status `pruned`)."""

    def __init__(self, report):
        self.report = report  # (epoch, history entry) -> "prune" | None

    def epoch_end(self, run, epoch, val) -> End | None:
        if self.report(epoch + 1, run.state.history[-1]) != "prune":
            return None
        message = f"pruned by the sweep's pruner after epoch {epoch + 1} (val acc {val.get('acc', float('nan')):.4f})"
        log.info(message)
        return End("pruned", message)


def build_components(cfg, run, ema, freezer, probe, extra=()) -> list[Component]:
    """The components `cfg` asks for, in the order their hooks run (averaging before diagnostics after a step;
    early stopping before the sweep's report after validation), then `extra` (e.g. a SweepReport)."""
    floor = 10 * math.log(max(2, len(run.splits.classes))) if run.objective.has_accuracy else 10.0
    components: list[Component] = [Divergence(floor)]
    if freezer is not None:
        components.append(Freezing(freezer))
    if cfg.init.first_layer == "whiten" and cfg.init.first_layer_bias_epochs is not None:
        components.append(StemBiasHold(first_conv(run.model).bias, cfg.init.first_layer_bias_epochs))
    pruning = build.build_pruning(cfg, run.model, cfg.trainer.epochs, run.steps_per_epoch)
    if pruning is not None:  # before averaging: the average sees the masked weights
        components.append(pruning)
    if ema is not None:
        components.append(Averaging(ema))
    if probe is not None:
        components.append(Diagnostics(probe))
    # the regularizers acting in the loop, each its table's component built with its keys (in the table's order:
    # gradient clipping after the diagnostics, which measure the gradients before clipping)
    for name, regularizer in in_loop(cfg.regularization):
        components.append(get_class(regularizer.component)(**component_keys(cfg.regularization, name)))
    if cfg.schedule.snapshot_ensemble:
        total = run.steps_per_epoch * cfg.trainer.epochs
        components.append(Snapshots(schedules.cycle_ends(run.scheduler, total), cfg.trainer.epochs))
    if cfg.norm.reestimate_batches > 0:  # after early stopping, which puts the best weights back first
        components.append(BatchNormReestimate(cfg.norm.reestimate_batches))
    evaluation = cfg.evaluation
    if evaluation.sharpness_samples or evaluation.hessian_iters:
        components.append(Sharpness(evaluation.sharpness_samples, evaluation.sharpness_radius,
                                    evaluation.sharpness_images, evaluation.hessian_iters, cfg.seed))
    if cfg.export.enabled:
        components.append(Export(cfg.export.latency_batch_sizes, cfg.export.latency_repeats))
    refused = [type(c).__name__ for c in extra if not isinstance(c, Component)]
    if refused:  # its hooks would not be checked against the declared ones
        raise TypeError(f"extra components must subclass runner.engine.hooks.Component: {', '.join(refused)}")
    return [*components, *extra]
