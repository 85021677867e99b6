"""The training engine: one run, from the config to a run directory holding checkpoints, TensorBoard events and
metrics.json. `fit` builds the run, resumes it, loops over epochs and tests; the techniques that keep state are
components (runner.engine.components) called at their hooks; the run's objects and state are runner.engine.run."""

import contextlib
import json
import logging
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from runner.config import UserError
from runner.data import checkpoint
from runner.data import loading as data
from runner.engine import distributed, records
from runner.engine.components import End
from runner.engine.run import Run, pick_device  # noqa: F401 (the engine's public names)
from runner.engine.rundir import (  # noqa: F401 (the engine's public names)
    BEST,
    LAST,
    LOCK,
    WRITE_ERRNOS,
    OutputError,
    output_error,
    resume_path,
)
from runner.engine.speed import EpochTimer, StepClock
from runner.engine.tracking import flat_hparams, record_run, start_pictures
from runner.optimization import optimizers, regularizers, schedules

log = logging.getLogger("runner")


def fit(cfg, run_dir: Path, choices: dict[str, str], extra_components=(), command: str | None = None,
        started_at: float | None = None, sweep_trial: bool = False, test: bool = True, on_accept=None) -> dict:
    """Train, validate every epoch, checkpoint every epoch, test at the end. Returns the final metrics, also
    written to run_dir/metrics.json, whose status says how the run ended: completed, diverged, interrupted (SIGINT
    or SIGTERM: the run stops after the step it is taking), pruned, or failed (an unexpected error: recorded, then
    raised). extra_components: components from outside the engine (a sweep's report). command: the command that
    resumes this run, for the messages (the job knows it; None: "the same command"). started_at: time.time() when
    the job started, the origin of startup_s (None: now). sweep_trial: a trial of a sweep, whose HPARAMS columns
    the sweep writes for all its trials together. test=False: no test pass (a sweep tests its best trials at its
    end, runner.sweeps.testing); metrics.json says test_deferred. on_accept: called once the run has passed its
    checks, before it writes its first file (the job writes Hydra's record then): a run refused at start-up writes
    nothing. A failure never writes over the metrics.json of an earlier run that this one has not gone beyond."""
    started_at = time.time() if started_at is None else started_at
    again = _diverged_already(cfg, Path(run_dir))
    if again is not None:
        return again
    # owns the run directory from here on
    run = Run(cfg, run_dir, choices, extra_components, started_at=started_at, sweep_trial=sweep_trial, test=test,
              on_accept=on_accept)
    try:
        with _stop_signals(run.stop_signal):
            return _train(run, command)
    except UserError as err:
        if isinstance(err, OutputError):
            _record_failure(run, str(err))
        raise
    except OSError as err:
        if err.errno not in WRITE_ERRNOS:
            _record_failure(run, f"failed: {type(err).__name__}: {' '.join(str(err).split())}")
            raise
        error = output_error(err, Path(err.filename or run.run_dir))
        _record_failure(run, str(error))
        raise error from None
    except Exception as err:
        _record_failure(run, f"failed: {type(err).__name__}: {' '.join(str(err).split())}")
        raise
    finally:
        run.release()


def _train(run: Run, command: str | None) -> dict:
    cfg = run.cfg
    if run.resume_from is not None:
        run.resume()
        done = _already_completed(run)
        if done is not None:
            return done
    _start(run)
    end = None
    try:
        for epoch in range(run.state.epoch, cfg.trainer.epochs):
            if run.state.stop_before_next_epoch or run.stop_signal:
                break
            run.state.epoch = epoch
            for hook in run.hooks("epoch_start"):
                hook(run, epoch)
            result, end = train_one_epoch(run)
            if end is not None:
                run.state.unfinished_images = result.images  # trained on, though the epoch is not kept
                break
            val = _validate(run, result)
            end = _epoch_end(run, epoch, val)
            if end is not None and end.status == "diverged":
                break
            _keep_best(run, val)
            run.save_last()
            _log_epoch(run, result, val)
            if end is not None:
                break
    except KeyboardInterrupt:  # a second Ctrl-C, or one before the handlers were in place
        run.stop_signal.append(signal.SIGINT)
    if run.stop_signal:
        end = _interrupted(run, command)
    if end is not None and end.status != "completed":
        return finish(run, end.status, end.message)
    if not run.world.main:  # rank 0 alone tests and writes the final metrics
        return finish(run, "completed")
    for hook in run.hooks("finish"):
        hook(run)
    if not run.test:
        log.info("test pass left to the end of the sweep (hydra.sweeper.test_trials)")
        return finish(run, "completed")
    return _test(run)


def _epoch_end(run: Run, epoch: int, val: dict) -> End | None:
    """The components' epoch_end hooks in order. A diverged End ends the run at once, before the later hooks and
    the checkpoints see this epoch; other Ends (early stopping, a sweep's pruner) end it after the epoch is saved."""
    ends = []
    for hook in run.hooks("epoch_end"):
        end = hook(run, epoch, val)
        if end is not None and end.status == "diverged":
            return end
        if end is not None:
            ends.append(end)
    return ends[0] if ends else None


# ---------------------------------------------------------------------------------------------------------------
# Stopping on a signal, and failing

@contextlib.contextmanager
def _stop_signals(received: list[int]):
    """SIGINT and SIGTERM only set a flag (`received` gets the signal's number), which the loop reads after each
    step: the step in progress finishes, and checkpoints/last.pt stays the last complete epoch's. A second SIGINT
    raises KeyboardInterrupt as usual. The previous handlers are put back at the end. Only the main thread may set
    handlers (a sweep's job in a thread keeps the default ones)."""
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def handler(signum, frame):
        if received and signum == signal.SIGINT:
            raise KeyboardInterrupt
        received.append(signum)
        log.warning("%s received: stopping after this step", signal.Signals(signum).name)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _interrupted(run: Run, command: str | None) -> End:
    run.progress.close()
    name = signal.Signals(run.stop_signal[0]).name
    last = run.run_dir / LAST
    kept = (f"{last} holds epoch {run.state.epochs_done}, untouched" if last.is_file()
            else "no epoch had finished, so there is no checkpoint to resume from yet")
    how = command or f"the same command with hydra.run.dir={run.run_dir}"
    message = (f"interrupted by {name} in epoch {run.state.epoch + 1} at step {run.state.step}; {kept}. To resume: {how} "
               f"(without hydra.run.dir a run starts afresh in a new directory)")
    log.warning(message)
    return End("interrupted", message)


def _record_failure(run: Run, message: str) -> None:
    """metrics.json with status failed and the one-line message, where it can still be written; the checkpoints
    already saved are left as they are. The metrics.json of an earlier run in the directory (completed,
    interrupted, ...) stays as it is unless this run has trained beyond it: a failed resume loses nothing."""
    log.error(message)
    earlier = earlier_metrics(run.run_dir)
    done = earlier.get("epochs_completed") if earlier is not None else None
    if earlier is not None and run.state.epochs_done <= (done if isinstance(done, int) else 0):
        log.error("metrics.json of the earlier run in %s is kept as it was (this attempt trained no further)",
                  run.run_dir)
    else:
        with contextlib.suppress(Exception):
            run.accept()  # not a refusal: the failure is recorded where the run was to be
            finish(run, "failed", message)
    with contextlib.suppress(Exception):
        run.tracker.close()


def earlier_metrics(run_dir: Path) -> dict | None:
    """The metrics.json a run directory holds (a process before this one wrote it), or None."""
    with contextlib.suppress(OSError, ValueError):
        metrics = json.loads((Path(run_dir) / "metrics.json").read_text())
        return metrics if isinstance(metrics, dict) else None
    return None


def _diverged_already(cfg, run_dir: Path) -> dict | None:
    """A run directory whose run diverged, run again with trainer.resume=auto: its metrics and the same status,
    with no file touched (resuming would diverge again in the same way)."""
    done = run_dir / "metrics.json"
    if cfg.trainer.resume != "auto" or not done.is_file():
        return None
    with contextlib.suppress(OSError, ValueError):
        metrics = json.loads(done.read_text())
        if metrics.get("status") == "diverged":
            log.error("this run diverged already: %s", metrics.get("message"))
            return metrics
    return None


# ---------------------------------------------------------------------------------------------------------------
# One epoch of training

@dataclass
class EpochResult:
    loss: float
    acc: float | None  # None for an objective without accuracy (autoencoder)
    images: int
    seconds: float


class _Sums:
    """An epoch's training loss and correct predictions, step by step: each step's values stay on the device until
    its log window ends, then all of them are read back at once (one read, one GPU sync, however long the window),
    go to TensorBoard step by step, and, as the window's mean, to the after_log hooks."""

    def __init__(self, device: torch.device):
        self.clock = StepClock(device)
        self.clock.start()  # and again by `start`, just before the epoch's first step
        self.losses, self.corrects, self.sizes = [], [], []  # this window's steps: mean loss, correct, images
        self.loss_sum = self.correct_sum = 0.0  # the epoch's read windows, summed over their images and the ranks
        self.seen = 0  # this rank's images in the epoch's read windows
        self.world = 1  # ranks, as the last read saw them

    def start(self) -> None:
        """Just before the epoch's first step (the clock's origin)."""
        self.clock.start()

    def add(self, loss: torch.Tensor, correct: torch.Tensor | None, n: int) -> None:
        self.losses.append(loss.detach())
        if correct is not None:
            self.corrects.append(correct)
        self.sizes.append(n)
        self.clock.lap()

    def read(self, world, accuracy: bool) -> tuple[dict, dict[str, list[float]]]:
        """The window's mean loss (and accuracy) over every rank, and each of its steps' values by TensorBoard tag
        (train/loss, train/acc, perf/img_per_s); the window then starts again."""
        losses, corrects = self._window(accuracy, world_sum=True)
        sizes = [n * world.size for n in self.sizes]  # images of each step over the ranks
        losses = [v / world.size for v in losses]
        steps = {"train/loss": losses,
                 "perf/img_per_s": [n / max(t, 1e-9) for n, t in zip(sizes, self.clock.read(), strict=True)]}
        images = sum(sizes)
        window = {"loss": sum(v * n for v, n in zip(losses, sizes, strict=True)) / images}
        self.loss_sum += window["loss"] * images
        if accuracy:
            steps["train/acc"] = [c / n for c, n in zip(corrects, sizes, strict=True)]
            window["acc"] = sum(corrects) / images
            self.correct_sum += sum(corrects)
        self.seen += sum(self.sizes)
        self.world = world.size
        self.losses, self.corrects, self.sizes = [], [], []
        return window, steps

    def running(self, accuracy: bool) -> tuple[float, float | None]:
        """The epoch so far: the mean loss (and accuracy), for the progress display (the window's steps of this rank
        only). One read back (a sync), so only when the display is due."""
        loss, correct = self.loss_sum / self.world, self.correct_sum / self.world
        if self.losses:
            losses, corrects = self._window(bool(self.corrects), world_sum=False)
            loss += sum(v * n for v, n in zip(losses, self.sizes, strict=True))
            correct += sum(corrects or [])
        n = max(1, self.seen + sum(self.sizes))
        return loss / n, (correct / n if accuracy else None)

    def _window(self, accuracy: bool, world_sum: bool) -> tuple[list[float], list[float] | None]:
        """This window's per-step losses (each rank's mean over its batch) and correct counts, read back in one
        transfer; summed over the ranks when `world_sum` (an all-reduce every rank must join)."""
        values = torch.stack(self.losses).float()  # (steps,)
        if accuracy:
            values = torch.stack([values, torch.stack(self.corrects).to(values.dtype)])  # (2, steps)
        if world_sum:
            distributed.sum_(values)
        rows = values.tolist()
        return rows if accuracy else (rows, None)

    def epoch(self, accuracy: bool) -> tuple[float, float | None]:
        """The epoch's mean loss (and accuracy) over every rank, once its last window is read."""
        images = max(1, self.seen * self.world)
        return self.loss_sum / images, (self.correct_sum / images if accuracy else None)


def train_one_epoch(run: Run) -> tuple[EpochResult, End | None]:
    """One shuffled pass over the training split; every trainer.log_every_steps steps the window's losses are read
    back, logged step by step and, as their mean, shown to the after_log hooks (divergence is detected there). Under torchrun every rank
    augments the whole global batch with the shared generator, then keeps its shard: the same images and views as
    one process with the same batch size (images counts the global batch)."""
    cfg, world, objective, state = run.cfg, run.world, run.objective, run.state
    run.model.train()
    step = _Step(run)
    sums, images = _Sums(run.device), 0
    train_x = run.augmentation.epoch_view(run.splits.train_x, state.epoch)
    timer = EpochTimer(run.device)
    timer.start()
    sums.start()
    start = time.perf_counter()
    progress = run.progress
    progress.start_epoch(state.epoch, state.step)
    for i, (x, y) in enumerate(data.train_batches(train_x, run.splits.train_y, cfg.trainer.batch_size,
                                                  run.generator)):
        outputs, loss, y = step(x, y)
        images += len(y) * world.size
        sums.add(loss, objective.correct(outputs, y) if objective.has_accuracy else None, len(y))
        if progress.due():  # a clock read; the figures (a sync) at most every few seconds
            progress.show(state.step, i + 1, images, *sums.running(objective.has_accuracy))
        if run.stop_signal and world.size == 1:  # SIGINT/SIGTERM: stop here, nothing of this epoch is saved
            return EpochResult(float("nan"), None, images, time.perf_counter() - start), End("interrupted", "")
        if (i + 1) % cfg.trainer.log_every_steps == 0 or i + 1 == run.steps_per_epoch:
            if world.size > 1 and _signalled_anywhere(run):  # every rank stops at the same step
                return EpochResult(float("nan"), None, images, time.perf_counter() - start), End("interrupted", "")
            window, steps = sums.read(world, objective.has_accuracy)
            ends = [e for hook in step.after_log if (e := hook(run, {
                **window, "steps": i + 1, "img_per_s": images / (time.perf_counter() - start)}))]
            if ends:
                return EpochResult(window["loss"], None, images, time.perf_counter() - start), ends[0]
            run.tracker.series(steps, state.step - len(steps["train/loss"]) + 1)
    seconds = timer.seconds()
    loss, acc = sums.epoch(objective.has_accuracy)
    result = EpochResult(loss, acc, images, seconds)
    progress.end_epoch(state.step, images, result.loss, acc)
    return result, None


class _Step:
    """One training step of `run`, with the components' step hooks looked up once an epoch: augment and preprocess
    the batch (then this rank's shard), forward, backward, the optimizer's step, the schedule's; each step's lr of
    every parameter group goes to TensorBoard."""

    def __init__(self, run: Run):
        self.run = run
        self.before_step, self.after_backward = run.hooks("before_step"), run.hooks("after_backward")
        self.after_step, self.after_log = run.hooks("after_step"), run.hooks("after_log")
        self.uncompiled = getattr(run.net, "_orig_mod", run.net)
        self.groups = [g.get("name", str(i)) for i, g in enumerate(run.optimizer.param_groups)]

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x: a batch of uint8 training images (global batch), y: their labels. Returns the outputs, the loss and
        this rank's labels."""
        run = self.run
        speed, world, optimizer = run.speed, run.world, run.optimizer
        x = speed.layout(distributed.shard(run.preprocess(run.augmentation(x, run.generator)), world))
        y = distributed.shard(y, world)
        plain = [hook(run) for hook in self.before_step]
        net = self.uncompiled if any(plain) else run.net
        with speed.autocast():
            outputs = net(x)
            loss = run.objective.loss(outputs, x, y)
        optimizer.zero_grad(set_to_none=True)
        speed.backward(loss)
        for hook in self.after_backward:
            hook(run)
        speed.step(optimizer)
        for hook in self.after_step:
            hook(run, x, outputs, y)
        lrs = [g["lr"] for g in optimizer.param_groups]  # the lrs this step used
        run.scheduler.step()
        run.state.took_step()
        run.tracker.scalars({f"lr/{name}": lr for name, lr in zip(self.groups, lrs, strict=True)}, run.state.step)
        run.tracker.drain()  # one step's values of the last log window, while the device runs this step
        return outputs, loss, y


def _signalled_anywhere(run: Run) -> bool:
    """Under torchrun: whether any rank got SIGINT/SIGTERM (one all-reduce per log window), so that all stop at the
    same step rather than some waiting forever in the next all-reduce."""
    flag = torch.tensor(float(run.stop_signal[0] if run.stop_signal else 0), device=run.device)
    distributed.sum_(flag)
    if flag.item() and not run.stop_signal:
        run.stop_signal.append(signal.SIGTERM)  # another rank's signal (a scheduler stops all ranks)
    return bool(flag.item())


# ---------------------------------------------------------------------------------------------------------------
# The phases around the epochs

def _already_completed(run: Run) -> dict | None:
    """A completed run run again with the same config and epochs: its metrics, with no file touched."""
    done = run.run_dir / "metrics.json"
    if run.state.epoch < run.cfg.trainer.epochs or run.resume_from.parent.parent != run.run_dir or not done.is_file():
        return None
    metrics = json.loads(done.read_text())
    if metrics.get("status") != "completed":
        return None
    log.info("this run completed all %d epochs already (test acc %s): nothing to do. To train it again use "
             "trainer.resume=never, or raise trainer.epochs to continue it", run.cfg.trainer.epochs,
             metrics.get("test_acc"))
    return metrics


def _start(run: Run) -> None:
    """Record the run (config.yaml, environment.json), open TensorBoard, and at a fresh start draw what the run
    will do (model summary, planned lr, augmented and preprocessed images)."""
    run.accept()
    if run.world.main:
        record_run(run.cfg, run.run_dir, run.device, world_size=run.world.size)
    run.open_tracker()
    if run.resume_from is None and run.world.main:
        start_pictures(run)
    for hook in run.hooks("start"):
        hook(run)


def _validate(run: Run, result: EpochResult) -> dict:
    """Evaluate on the validation split (rank 0's numbers on every rank, so that all take the same decisions);
    record the epoch in TensorBoard and the history; feed a plateau schedule."""
    cfg = run.cfg
    run.tracker.flush()  # the epoch's last training steps, before its validation
    run.progress.phase(f"validating ({len(run.splits.val_y):,} images)")
    began = time.perf_counter()
    with run.speed.autocast():
        val = distributed.from_main(run.objective.evaluate(run.model, run.preprocess, run.splits.val_x,
                                                           run.splits.val_y, cfg.trainer.eval_batch_size))
    val_s = time.perf_counter() - began  # .item() in evaluate has waited for the device
    img_per_s = result.images / result.seconds
    run.tracker.scalars({**{f"val/{k}": v for k, v in val.items()}, "perf/epoch_s": result.seconds},
                        run.state.step)
    entry = {"epoch": run.state.epoch + 1, "train_loss": result.loss}
    if result.acc is not None:
        entry["train_acc"] = result.acc
    entry.update({f"val_{k}": v for k, v in val.items()})
    entry.update({"lr": run.optimizer.param_groups[0]["lr"], "epoch_s": result.seconds, "img_per_s": img_per_s,
                  "images": result.images, "val_s": val_s})
    run.state.finished_epoch(entry)
    run.tracker.scalars(regularizers.sparsity(optimizers.split_decay(run.model)[0]), run.state.step)
    schedules.observe(run.scheduler, {f"val_{k}": v for k, v in val.items()})
    return val


def _keep_best(run: Run, val: dict) -> None:
    if run.state.keep_best(val) and run.cfg.trainer.save_best:
        run.save_weights(run.run_dir / BEST, run.state.epoch + 1)


def _log_epoch(run: Run, result: EpochResult, val: dict) -> None:
    train = f"train loss {result.loss:.4f}" + (f" acc {result.acc:.4f}" if result.acc is not None else "")
    if not len(run.splits.val_y):
        shown = "no val split"
    else:
        shown = "val " + " ".join(f"{k} {v:.4f}" for k, v in val.items())
    log.info("epoch %d/%d  %s  %s  lr %.3g  %.1fs  %.0f img/s", run.state.epoch + 1, run.cfg.trainer.epochs, train, shown,
             run.optimizer.param_groups[0]["lr"], result.seconds, result.images / result.seconds)


def _test(run: Run) -> dict:
    """The final evaluation on the test split, logged; then finish."""
    test, extra = test_scores(run)
    return finish(run, "completed", test=test, extra=extra)


def test_scores(run: Run) -> tuple[dict, dict]:
    """The final evaluation on the test split: the objective's scores and the components' (snapshots, ...), keyed
    as the objective gives them (acc, loss) and by TensorBoard tag (the others). Logged."""
    cfg = run.cfg
    run.progress.phase(f"testing ({len(run.splits.test_y):,} images)")
    snapshots = [state for hook in run.hooks("snapshots") for state in hook(run)]
    with run.speed.autocast():
        test, extra = run.objective.test(run.model, run.preprocess, run.splits, cfg.evaluation,
                                         cfg.trainer.eval_batch_size, cfg.seed, run.ema, snapshots)
    for hook in run.hooks("test_scores"):
        extra.update(hook(run))
    shown = "  ".join(f"{k} {v:.4f}" for k, v in sorted(test.items(), key=lambda kv: kv[0] != "loss"))
    best = run.state.best
    validated = best["epoch"] >= 0 and len(run.splits.val_y)
    best = f"  (best val acc {best['acc']:.4f} at epoch {best['epoch']})" if validated else ""
    log.info("test %s%s", shown, best)
    if extra:
        log.info("test %s", "  ".join(f"{tag.removeprefix('test/')} {value:.4g}" for tag, value in extra.items()))
    if run.world.main:
        for tag, pictures in run.objective.pictures(run.model, run.preprocess, run.splits.val_x[:8]).items():
            run.tracker.writer.add_images(tag, pictures, run.state.step)
    return test, extra


def finish(run: Run, status: str, message: str | None = None, test: dict | None = None,
           extra: dict | None = None) -> dict:
    """metrics.json (its keys: records.METRICS) and the HPARAMS entry; closes TensorBoard. Returns the metrics."""
    metrics = final_metrics(run, status, message, test, extra)
    records.check_metrics(metrics)
    if run.world.main:
        checkpoint.write_json(metrics, run.run_dir / "metrics.json")
    best = run.state.best
    scalars = {f"test/{k}": v for k, v in (test or {}).items()}
    scalars.update(extra or {})
    if best["epoch"] >= 0:
        scalars["val/best_acc"] = best["acc"]
    if run.tracker.writer is not None:
        run.tracker.hparams({**flat_hparams(run.cfg, run.choices), "status": status}, scalars, run.state.step,
                            experiment=not run.sweep_trial)
    run.tracker.close()
    run.progress.close()
    if run.world.main and status != "interrupted":  # an interrupted run's last line is the command that resumes it
        log.info("%s: metrics.json, checkpoints/ and the TensorBoard events are in %s; see the curves with "
                 "`tensorboard --logdir %s` (curves/loss and curves/acc: train and validation, one colour each)", status, run.run_dir,
                 run.run_dir)
    return metrics


def final_metrics(run: Run, status: str, message: str | None = None, test: dict | None = None,
                  extra: dict | None = None) -> dict:
    """What metrics.json holds at the end of `run` (records.METRICS says what each key means)."""
    state = run.state
    best, history, first_step_at = state.best, state.history, state.first_step_at
    metrics = {
        "status": status,
        "objective": run.objective.name,
        "epochs_completed": len(history),
        "steps": state.step,
        "best_val_acc": best["acc"] if best["epoch"] >= 0 else None,
        "best_epoch": best["epoch"] if best["epoch"] >= 0 else None,
        "wall_time_s": state.seconds(),
        "first_step_at": first_step_at,
        "startup_s": None if first_step_at is None else first_step_at - run.started_at,
        "startup": None if first_step_at is None else {
            "setup_s": run.data_began_at - run.started_at, **run.startup,
            "first_step_s": first_step_at - run.built_at},
        "history": history,
        "images_seen": sum(h.get("images", 0) for h in history) + state.unfinished_images,
        "world_size": run.world.size,
        "precision": run.speed.precision,
        "model_params": run.n_params,
        "model_flops_per_image": run.flops,
    }
    if history:
        metrics.update({f"final_{k}": v for k, v in history[-1].items() if k != "epoch"})
    if test:
        metrics.update({f"test_{k}": v for k, v in test.items()})
    elif status == "completed" and not run.test:
        metrics["test_deferred"] = True
    metrics.update({tag.replace("/", "_"): v for tag, v in (extra or {}).items()})
    for hook in run.hooks("summary"):
        metrics[hook.__self__.name] = hook()
    if state.resumes:
        metrics["resumes"] = state.resumes
    if message:
        metrics["message"] = message
    if status == "interrupted" and run.stop_signal:
        metrics["signal"] = signal.Signals(run.stop_signal[0]).name
    return metrics
