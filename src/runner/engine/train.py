"""The training engine: one run, from the config to a run directory holding checkpoints, TensorBoard events and
metrics.json. Reads top to bottom: set-up, resume, the epoch loop, the final test evaluation."""

import json
import logging
import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

import runner
from runner.config import ConfigError
from runner.data import loading as data
from runner.data.augment import alternating_flip, augment, augmented_grid
from runner.data.preprocess import input_grid
from runner.engine import checkpoint, distributed, evaluation, speed
from runner.engine.build import (
    build_averaging,
    build_freezer,
    build_loss,
    build_model,
    build_optimizer,
    build_preprocess,
    build_pretrained,
    build_schedule,
    init_inputs,
)
from runner.engine.tracking import Progress, Tracker, flat_hparams, record_run
from runner.nets.diagnostics import Probe
from runner.nets.init import consistency_warnings, first_conv
from runner.nets.models import flops_per_image
from runner.optimization import optimizers as optim
from runner.optimization import regularizers as regularize
from runner.optimization import schedules as schedule
from runner.optimization.regularizers import clip_gradients
from runner.sweeps import study as sweep

log = logging.getLogger("runner")

LAST, BEST = "checkpoints/last.pt", "checkpoints/best.pt"


# ---------------------------------------------------------------------------------------------------------------
# Device and seeding

def pick_device(name: str) -> torch.device:
    """`auto` takes cuda, then mps, then cpu; an explicit device must be present."""
    cuda, mps = torch.cuda.is_available(), torch.backends.mps.is_available()
    if name == "auto":
        return torch.device("cuda" if cuda else "mps" if mps else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and (not cuda or (device.index or 0) >= torch.cuda.device_count()):
        found = f"{torch.cuda.device_count()} CUDA device(s)" if cuda else "no CUDA device"
        raise ConfigError(f"device={name!r} is not present on this machine ({found}). Use device=auto or device=cpu.")
    if device.type == "mps" and not mps:
        raise ConfigError(f"device={name!r} is not present on this machine (no Apple MPS). Use device=auto or device=cpu.")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)  # seeds every CUDA device too


def rng_states(generator: torch.Generator) -> dict:
    states = {"python": random.getstate(), "torch": torch.get_rng_state(), "data": generator.get_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict, generator: torch.Generator) -> None:
    random.setstate(states["python"])
    torch.set_rng_state(states["torch"])
    generator.set_state(states["data"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


# ---------------------------------------------------------------------------------------------------------------
# One epoch of training, one evaluation

@dataclass
class EpochResult:
    loss: float
    acc: float
    images: int
    seconds: float
    first_step_at: float  # time.time() when the first optimizer step of the epoch had finished
    diverged: bool = False


def train_one_epoch(model, preprocess, splits, optimizer, scheduler, loss_fn, cfg, generator, tracker, step,
                    epoch, progress, probe=None, ema=None, speedup=None, net=None, world=None) -> EpochResult:
    """Train over one shuffled pass of the training split. Running sums stay on the device and are read back
    only every log_every_steps steps (a read forces a GPU sync), which is also when divergence is detected.
    probe: a diagnostics.Probe, measuring the network at its diagnostic steps. ema: an averaging.EMA, updated
    after every step. Gradients are clipped between backward and the step when `regularization=` has grad_clip.
    speedup: a speed.Speed (autocast, channels_last, fp16 gradient scaling); net: the module of the forward pass
    (`model` inside DistributedDataParallel and/or torch.compile); world: a distributed.World, whose rank trains on
    its shard of every global batch (images counts the global batch)."""
    model.train()
    device = splits.train_x.device
    speedup = speed.Speed(device) if speedup is None else speedup
    net = model if net is None else net  # (a compiled module has no truth value)
    world = distributed.World() if world is None else world
    every = cfg.trainer.log_every_steps
    total_loss = torch.zeros((), device=device)
    total_correct = torch.zeros((), device=device, dtype=torch.long)
    window_loss, window_correct, window_n, images = total_loss.clone(), total_correct.clone(), 0, 0
    clip = cfg.regularization.get("grad_clip")
    params, window_grad_norm = list(model.parameters()), total_loss.clone()
    steps = data.steps_per_epoch(len(splits.train_x), cfg.trainer.batch_size)
    train_x = splits.train_x
    if cfg.augmentation.get("flip") == "alternate":
        train_x = alternating_flip(train_x, epoch, cfg.seed)
    timer = speed.EpochTimer(device)
    timer.start()
    start = time.perf_counter()
    for i, (x, y) in enumerate(data.train_batches(train_x, splits.train_y, cfg.trainer.batch_size, generator)):
        # Every rank augments the whole global batch with the shared generator, then keeps its shard: the same
        # images and views as one process with the same batch size.
        x = speedup.layout(distributed.shard(preprocess(augment(x, cfg.augmentation, generator)), world))
        y = distributed.shard(y, world)
        diagnose = probe is not None and probe.start(step)
        forward = getattr(net, "_orig_mod", net) if diagnose else net  # hooks would recompile a compiled net
        with speedup.autocast():
            logits = forward(x)
            loss = loss_fn(logits, y)
        optimizer.zero_grad(set_to_none=True)
        speedup.backward(loss)
        if diagnose:
            probe.gradients()
        if clip is not None:
            speedup.unscale(optimizer)
            window_grad_norm += clip_gradients(params, clip.by, clip.threshold)
        speedup.step(optimizer)
        if ema is not None:
            ema.update()
        if diagnose:
            probe.finish(step, x, logits, y)
        tracker.scalar("lr", optimizer.param_groups[0]["lr"], step)
        scheduler.step()
        step += 1
        if i == 0:
            first_step_at = time.time()

        n = len(y)
        images += n * world.size
        with torch.no_grad():
            batch_loss = loss.detach() * n
            batch_correct = (logits.argmax(1) == y).sum()
        window_loss += batch_loss
        window_correct += batch_correct
        window_n += n
        if (i + 1) % every == 0 or i + 1 == steps:
            distributed.sum_(window_loss, window_correct)  # over the ranks; window_n counted this rank's images
            window_n *= world.size
            mean_loss = window_loss.item() / window_n
            if not math.isfinite(mean_loss):
                return EpochResult(mean_loss, float("nan"), images, time.perf_counter() - start, first_step_at,
                                   diverged=True)
            tracker.scalars({"train/loss": mean_loss, "train/acc": window_correct.item() / window_n}, step)
            if clip is not None:
                tracker.scalar("train/grad_norm", window_grad_norm.item() * len(y) * world.size / window_n, step)
                window_grad_norm.zero_()
            progress.update(epoch, i + 1, mean_loss, images / (time.perf_counter() - start))
            total_loss += window_loss
            total_correct += window_correct
            window_loss.zero_()
            window_correct.zero_()
            window_n = 0
    seconds = timer.seconds()
    progress.end_epoch()
    return EpochResult(total_loss.item() / images, total_correct.item() / images, images, seconds, first_step_at)


@torch.inference_mode()
def evaluate(model: nn.Module, preprocess: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> dict:
    """Mean cross-entropy and accuracy over a split, in eval mode (batch norm uses its running statistics)."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=x.device)
    correct = torch.zeros((), device=x.device, dtype=torch.long)
    for xb, yb in data.eval_batches(x, y, batch_size):
        logits = model(preprocess(xb))
        loss_sum += nn.functional.cross_entropy(logits.float(), yb, reduction="sum")
        correct += (logits.argmax(1) == yb).sum()
    model.train(was_training)
    n = max(1, len(y))
    return {"loss": loss_sum.item() / n, "acc": correct.item() / n}


# ---------------------------------------------------------------------------------------------------------------
# Resume

def resume_path(cfg, run_dir: Path) -> Path | None:
    """The checkpoint to continue from: trainer.resume=auto finds this run directory's own; a path names a run
    directory or a checkpoint file."""
    resume = cfg.trainer.resume
    if resume in (None, "never", False):
        return None
    if resume == "auto":
        path = run_dir / LAST
        return path if path.is_file() else None
    path = Path(str(resume))
    if path.is_dir():
        path = path / LAST
    if not path.is_file():
        raise ConfigError(f"trainer.resume={resume!r}: no checkpoint at {path}. Give a run directory holding "
                          f"{LAST}, a checkpoint file, or trainer.resume=never.")
    return path


# ---------------------------------------------------------------------------------------------------------------
# Pictures at the start of a run

def _start_pictures(tracker, cfg, train_x, preprocess, lr: float, steps_per_epoch: int) -> None:
    """TensorBoard images of what the run will do: the planned lr curve, augmented training images, and what the
    network sees after preprocessing."""
    total = steps_per_epoch * cfg.trainer.epochs
    lrs = schedule.planned_lrs(cfg.schedule, lr, total, steps_per_epoch)
    title = f"schedule={cfg.schedule.name}" + (" (drops follow val metric)" if cfg.schedule.name == "plateau" else "")
    tracker.writer.add_figure("schedule/lr_plan", schedule.plan_figure(lrs, steps_per_epoch, title), 0)
    sample = train_x[:16]
    tracker.writer.add_image("augmentation/original_then_augmented", augmented_grid(sample, cfg.augmentation, cfg.seed),
                             0)
    tracker.writer.add_image("preprocess/original_then_input", input_grid(preprocess, sample), 0)


# ---------------------------------------------------------------------------------------------------------------
# The run

def fit(cfg, run_dir: Path, choices: dict[str, str]) -> dict:
    """Train, validate every epoch, checkpoint every epoch, test at the end. Returns the final metrics, also
    written to run_dir/metrics.json."""
    run_dir = Path(run_dir)
    world = distributed.world()  # under torchrun: this rank's place; rank 0 of 1 otherwise
    if world.size > 1:
        distributed.init()
    device = pick_device(cfg.device)
    if world.size > 1 and device.type == "cuda":
        device = torch.device("cuda", world.local_rank % torch.cuda.device_count())
    resume_from = resume_path(cfg, run_dir)
    if cfg.trainer.deterministic:
        torch.use_deterministic_algorithms(True)
    seed_everything(cfg.seed)
    wall_start = time.perf_counter()
    consistency_warnings(cfg.activation, cfg.init, cfg.norm, cfg.regularization)

    splits = data.load_splits(cfg.data, device)
    log.info("data=%s: %d train, %d val, %d test images on %s", cfg.data.name, len(splits.train_y),
             len(splits.val_y), len(splits.test_y), device)

    preprocess = build_preprocess(cfg, splits.train_x).to(device)
    speedup = speed.setup(cfg.trainer, device)
    model = speed.prepare(build_model(cfg, len(splits.classes), init_inputs(cfg, preprocess, splits.train_x)).to(device),
                          speedup)
    net = model
    if world.size > 1:
        model, net = distributed.wrap(model, world, device, cfg.trainer.sync_batch_norm)
    net = speed.compiled(net, speedup)
    reused = build_pretrained(cfg, model, run_dir if world.main else None)
    optimizer = build_optimizer(cfg, model, reused)  # before freezing: gradual unfreezing needs every parameter in it
    freezer = build_freezer(cfg, model)
    bias_epochs = cfg.init.get("first_layer_bias_epochs")
    stem_bias = first_conv(model).bias if cfg.init.get("first_layer") == "whiten" and bias_epochs is not None else None
    steps = data.steps_per_epoch(len(splits.train_x), cfg.trainer.batch_size)
    scheduler = build_schedule(cfg, optimizer, steps * cfg.trainer.epochs, steps)
    loss_fn = build_loss(cfg)
    ema = build_averaging(cfg, model, steps * cfg.trainer.epochs)
    stopper = (regularize.EarlyStopping(**cfg.regularization.early_stopping)
               if "early_stopping" in cfg.regularization else None)
    snapshot_ends = (schedule.cycle_ends(scheduler, steps * cfg.trainer.epochs)
                     if cfg.schedule.get("snapshot_ensemble") else [])
    if cfg.schedule.get("snapshot_ensemble") and len(snapshot_ends) < 2:
        log.warning("schedule.snapshot_ensemble: only %d cycle(s) end within %d epochs, so there is no ensemble of "
                    "snapshots to report; use more epochs or shorter cycles", len(snapshot_ends), cfg.trainer.epochs)
    generator = torch.Generator(device=device)
    generator.manual_seed(cfg.seed)
    n_params = sum(p.numel() for p in model.parameters())
    flops = flops_per_image(model, tuple(splits.train_x.shape[1:]))
    log.info("model=%s: %s parameters, %.1f MFLOPs per image", choices.get("model", "?"), f"{n_params:,}",
             flops / 1e6)

    start_epoch, step, best, history, elapsed = 0, 0, {"acc": -1.0, "epoch": -1}, [], 0.0
    first_step_at = None  # time.time() of this process's first finished training step
    if resume_from is not None:
        state = checkpoint.load(resume_from, map_location=device)
        model.load_state_dict(state["model"])
        preprocess.load_state_dict(state["preprocess"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(scheduler, state["scheduler"])
        set_rng_states(state["rng"], generator)
        if ema is not None:  # a run that had no EMA yet starts its average at the loaded weights
            ema.load_state_dict(state.get("ema", state["model"]))
        if speedup.scaler is not None and "scaler" in state:
            speedup.scaler.load_state_dict(state["scaler"])
        if stopper is not None and "early_stopping" in state:
            stopper.load_state_dict(state["early_stopping"])
        start_epoch, step, best, history, elapsed = (state["epoch"], state["step"], state["best"], state["history"],
                                                     state["elapsed"])
        log.info("resumed from %s at epoch %d (step %d)", resume_from, start_epoch, step)
        done = run_dir / "metrics.json"
        if start_epoch >= cfg.trainer.epochs and resume_from.parent.parent == run_dir and done.is_file():
            metrics = json.loads(done.read_text())
            if metrics.get("status") == "completed":  # nothing left to do: keep its files (and HPARAMS entry) as they are
                log.info("this run completed all %d epochs already (test acc %s): nothing to do. To train it again "
                         "use trainer.resume=never, or raise trainer.epochs to continue it", cfg.trainer.epochs,
                         metrics.get("test_acc"))
                return metrics

    if world.main:
        record_run(cfg, run_dir, device, world_size=world.size)
    tracker = Tracker(run_dir, purge_step=step if resume_from else None, enabled=world.main)
    if resume_from is None and world.main:
        tracker.scalars({"model/params": n_params, "model/flops_per_image": flops}, 0)
        tracker.writer.add_text("model", f"{n_params:,} parameters, {flops / 1e6:.1f} MFLOPs per image\n\n"
                                + "\n".join("    " + line for line in str(model).splitlines()), 0)
        _start_pictures(tracker, cfg, splits.train_x, preprocess, scheduler.base_lrs[0], steps)
    probe = Probe(model, cfg.diagnostics, tracker) if world.main else None
    tty = world.main and (sys.stderr.isatty() if cfg.trainer.progress == "auto" else bool(cfg.trainer.progress))
    progress = Progress(tty, steps, cfg.trainer.epochs)
    report_to_sweep = sweep.trial_reporter()  # None unless this run is a trial of an Optuna sweep

    def finish(status: str, message: str | None = None, test: dict | None = None, extra: dict | None = None) -> dict:
        metrics = {
            "status": status,
            "epochs_completed": len(history),
            "steps": step,
            "best_val_acc": best["acc"] if best["epoch"] >= 0 else None,
            "best_epoch": best["epoch"] if best["epoch"] >= 0 else None,
            "wall_time_s": elapsed + time.perf_counter() - wall_start,
            "first_step_at": first_step_at,
            "startup_s": None if first_step_at is None else first_step_at - runner.IMPORTED_AT,
            "history": history,
            "images_seen": sum(h.get("images", 0) for h in history),
            "world_size": world.size,
            "precision": speedup.precision,
        }
        if history:
            metrics.update({f"final_{k}": v for k, v in history[-1].items() if k != "epoch"})
        if test:
            metrics.update({"test_acc": test["acc"], "test_loss": test["loss"]})
        metrics.update({tag.replace("/", "_"): v for tag, v in (extra or {}).items()})
        if stopper is not None:
            metrics["early_stopping"] = {k: v for k, v in stopper.state_dict().items() if k != "best_weights"}
        if message:
            metrics["message"] = message
        if world.main:
            checkpoint.write_json(metrics, run_dir / "metrics.json")
        scalars = {"test/acc": test["acc"], "test/loss": test["loss"], **(extra or {})} if test else {}
        if best["epoch"] >= 0:
            scalars["val/best_acc"] = best["acc"]
        tracker.hparams({**flat_hparams(cfg, choices), "status": status}, scalars, step)
        tracker.close()
        return metrics

    def save(state: dict, path: Path) -> None:
        if world.main:
            checkpoint.save(state, path)

    def weights(epoch: int) -> dict:
        """What a model checkpoint (best, snapshot, last) holds to be evaluated or transferred on its own."""
        return {"model": model.state_dict(), "preprocess": preprocess.state_dict(), "epoch": epoch}

    try:
        for epoch in range(start_epoch, cfg.trainer.epochs):
            if stopper is not None and stopper.stopped:
                break  # resumed from a run that had already stopped early
            if freezer is not None:
                freezer.set_epoch(epoch, tracker, step)
            if stem_bias is not None:
                optim.hold(optimizer, [stem_bias] if epoch >= bias_epochs else [])
                if epoch == bias_epochs:
                    log.info("epoch %d: the whitening layer's bias stays as it is from now on "
                             "(init.first_layer_bias_epochs=%d)", epoch + 1, bias_epochs)
            result = train_one_epoch(model, preprocess, splits, optimizer, scheduler, loss_fn, cfg, generator,
                                     tracker, step, epoch, progress, probe, ema, speedup, net, world)
            step += data.steps_per_epoch(len(splits.train_x), cfg.trainer.batch_size)
            if first_step_at is None:
                first_step_at = result.first_step_at
            if result.diverged:
                message = (f"training diverged in epoch {epoch + 1}: the loss became {result.loss}. "
                           "Lower optimizer.lr, add a warmup (schedule.warmup_epochs) or clip gradients.")
                log.error(message)
                return finish("diverged", message)
            with speedup.autocast():
                val = distributed.from_main(  # rank 0's, so that every rank takes the same decisions
                    evaluate(model, preprocess, splits.val_x, splits.val_y, cfg.trainer.eval_batch_size))
            img_per_s = result.images / result.seconds
            tracker.scalars({"val/loss": val["loss"], "val/acc": val["acc"], "perf/img_per_s": img_per_s,
                             "perf/epoch_s": result.seconds}, step)
            history.append({"epoch": epoch + 1, "train_loss": result.loss, "train_acc": result.acc,
                            "val_loss": val["loss"], "val_acc": val["acc"], "lr": optimizer.param_groups[0]["lr"],
                            "epoch_s": result.seconds, "img_per_s": img_per_s, "images": result.images})
            tracker.scalars(regularize.sparsity(optim.split_decay(model)[0]), step)
            if ema is not None:
                with speedup.autocast():
                    val_ema = evaluate(ema.model, preprocess, splits.val_x, splits.val_y, cfg.trainer.eval_batch_size)
                tracker.scalars({"val/loss_ema": val_ema["loss"], "val/acc_ema": val_ema["acc"]}, step)
                history[-1].update(val_loss_ema=val_ema["loss"], val_acc_ema=val_ema["acc"])
            val_metrics = {"val_acc": val["acc"], "val_loss": val["loss"]}
            schedule.observe(scheduler, val_metrics)
            if stopper is not None:
                stopper.observe(val_metrics, epoch + 1, model)
            for k, end in enumerate(snapshot_ends, 1):
                if step - steps < end <= step:  # the k-th cycle ended in this epoch
                    save(weights(epoch + 1), run_dir / f"checkpoints/snapshot_{k}.pt")
            improved = val["acc"] > best["acc"]
            if improved:
                best = {"acc": val["acc"], "epoch": epoch + 1}
                if cfg.trainer.save_best:
                    save(weights(epoch + 1), run_dir / BEST)
            save({
                **weights(epoch + 1),
                "optimizer": optimizer.state_dict(),
                "scheduler": schedule.state_dict(scheduler),
                "rng": rng_states(generator), "step": step, "best": best, "history": history,
                "elapsed": elapsed + time.perf_counter() - wall_start,
                **({"ema": ema.state_dict()} if ema is not None else {}),
                **({"early_stopping": stopper.state_dict()} if stopper is not None else {}),
                **({"scaler": speedup.scaler.state_dict()} if speedup.scaler is not None else {}),
            }, run_dir / LAST)
            val_text = f"val loss {val['loss']:.4f} acc {val['acc']:.4f}" if len(splits.val_y) else "no val split"
            log.info("epoch %d/%d  train loss %.4f acc %.4f  %s  lr %.3g  %.1fs  %.0f img/s", epoch + 1,
                     cfg.trainer.epochs, result.loss, result.acc, val_text, optimizer.param_groups[0]["lr"],
                     result.seconds, img_per_s)
            if report_to_sweep is not None and report_to_sweep(epoch + 1, val["acc"]) == "prune":
                message = f"pruned by the sweep's pruner after epoch {epoch + 1} (val acc {val['acc']:.4f})"
                log.info(message)
                return finish("pruned", message)
            if stopper is not None and stopper.stopped:
                log.info("early stopping after epoch %d: %s has not improved for %d epochs (best %.4f at epoch %d)",
                         epoch + 1, stopper.metric, stopper.bad_epochs, stopper.best, stopper.best_epoch)
    except KeyboardInterrupt:
        progress.end_epoch()
        message = f"interrupted after {len(history)} epoch(s); run the same command again to resume"
        log.warning(message)
        return finish("interrupted", message)

    if not world.main:  # rank 0 alone tests and writes the final metrics
        return finish("completed")
    if stopper is not None and stopper.best_weights is not None:
        stopper.restore(model)  # early stopping returns the weights of the best validation epoch
        checkpoint.save({**checkpoint.load(run_dir / LAST, map_location=device), "model": model.state_dict()},
                        run_dir / LAST)
        log.info("restored the weights of epoch %d (%s %.4f)", stopper.best_epoch, stopper.metric, stopper.best)
    snapshots = [checkpoint.load(run_dir / f"checkpoints/snapshot_{k}.pt", map_location=device)["model"]
                 for k in range(1, len(snapshot_ends) + 1) if (run_dir / f"checkpoints/snapshot_{k}.pt").is_file()]
    with speedup.autocast():  # one pass over the test set gives test/acc, test/loss (the NLL) and test/ece
        probs = evaluation.probabilities(model, preprocess, splits.test_x, cfg.trainer.eval_batch_size)
        test = evaluation.scores(probs, splits.test_y, cfg.evaluation.ece_bins)
        test["loss"] = test.pop("nll")
        extra = evaluation.final_scores(model, preprocess, splits.test_x, splits.test_y, cfg.evaluation,
                                        cfg.trainer.eval_batch_size, cfg.seed, ema, snapshots, probs)
    log.info("test loss %.4f acc %.4f%s", test["loss"], test["acc"],
             f"  (best val acc {best['acc']:.4f} at epoch {best['epoch']})" if len(splits.val_y) else "")
    log.info("test %s", "  ".join(f"{tag[5:]} {value:.4f}" for tag, value in extra.items()))
    return finish("completed", test=test, extra=extra)
