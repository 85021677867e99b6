"""The training engine: one run, from the config to a run directory holding checkpoints, TensorBoard events and
metrics.json. Reads top to bottom: set-up, resume, the epoch loop, the final test evaluation."""

import logging
import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch import nn

from runner import checkpoint, data
from runner.augment import augment
from runner.build import build_model, build_optimizer, build_preprocess, build_schedule
from runner.config import ConfigError
from runner.tracking import Progress, Tracker, environment, flat_hparams

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
    diverged: bool = False


def train_one_epoch(model, preprocess, splits, optimizer, scheduler, loss_fn, cfg, generator, tracker, step,
                    epoch, progress) -> EpochResult:
    """Train over one shuffled pass of the training split. Running sums stay on the device and are read back
    only every log_every_steps steps (a read forces a GPU sync), which is also when divergence is detected."""
    model.train()
    device = splits.train_x.device
    every = cfg.trainer.log_every_steps
    total_loss = torch.zeros((), device=device)
    total_correct = torch.zeros((), device=device, dtype=torch.long)
    window_loss, window_correct, window_n, images = total_loss.clone(), total_correct.clone(), 0, 0
    steps = data.steps_per_epoch(len(splits.train_x), cfg.trainer.batch_size)
    start = time.perf_counter()
    for i, (x, y) in enumerate(data.train_batches(splits.train_x, splits.train_y, cfg.trainer.batch_size, generator)):
        x = preprocess(augment(x, cfg.augmentation, generator))
        logits = model(x)
        loss = loss_fn(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        tracker.scalar("lr", optimizer.param_groups[0]["lr"], step)
        scheduler.step()
        step += 1

        n = len(y)
        images += n
        with torch.no_grad():
            batch_loss = loss.detach() * n
            batch_correct = (logits.argmax(1) == y).sum()
        window_loss += batch_loss
        window_correct += batch_correct
        window_n += n
        if (i + 1) % every == 0 or i + 1 == steps:
            mean_loss = window_loss.item() / window_n
            if not math.isfinite(mean_loss):
                return EpochResult(mean_loss, float("nan"), images, time.perf_counter() - start, diverged=True)
            tracker.scalars({"train/loss": mean_loss, "train/acc": window_correct.item() / window_n}, step)
            progress.update(epoch, i + 1, mean_loss, images / (time.perf_counter() - start))
            total_loss += window_loss
            total_correct += window_correct
            window_loss.zero_()
            window_correct.zero_()
            window_n = 0
    seconds = time.perf_counter() - start
    progress.end_epoch()
    return EpochResult(total_loss.item() / images, total_correct.item() / images, images, seconds)


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

def _resume_path(cfg, run_dir: Path) -> Path | None:
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
# The run

def fit(cfg, run_dir: Path, choices: dict[str, str]) -> dict:
    """Train, validate every epoch, checkpoint every epoch, test at the end. Returns the final metrics, also
    written to run_dir/metrics.json."""
    run_dir = Path(run_dir)
    device = pick_device(cfg.device)
    resume_from = _resume_path(cfg, run_dir)
    if cfg.trainer.deterministic:
        torch.use_deterministic_algorithms(True)
    seed_everything(cfg.seed)
    wall_start = time.perf_counter()

    arrays, classes = data.load_arrays(cfg.data)
    splits = data.split(arrays, classes, cfg.data.val_size, cfg.data.train_size, cfg.data.split_seed, device)
    del arrays
    log.info("data=%s: %d train, %d val, %d test images on %s", cfg.data.name, len(splits.train_y),
             len(splits.val_y), len(splits.test_y), device)

    preprocess = build_preprocess(cfg, splits.train_x).to(device)
    model = build_model(cfg, len(classes)).to(device)
    optimizer = build_optimizer(cfg, model)
    steps = data.steps_per_epoch(len(splits.train_x), cfg.trainer.batch_size)
    scheduler = build_schedule(cfg, optimizer, steps * cfg.trainer.epochs, steps)
    loss_fn = nn.CrossEntropyLoss()
    generator = torch.Generator(device=device)
    generator.manual_seed(cfg.seed)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("model=%s: %s parameters", choices.get("model", "?"), f"{n_params:,}")

    start_epoch, step, best, history, elapsed = 0, 0, {"acc": -1.0, "epoch": -1}, [], 0.0
    if resume_from is not None:
        state = checkpoint.load(resume_from, map_location=device)
        model.load_state_dict(state["model"])
        preprocess.load_state_dict(state["preprocess"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_states(state["rng"], generator)
        start_epoch, step, best, history, elapsed = (state["epoch"], state["step"], state["best"], state["history"],
                                                     state["elapsed"])
        log.info("resumed from %s at epoch %d (step %d)", resume_from, start_epoch, step)

    checkpoint.write_json(environment(device), run_dir / "environment.json")
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    tracker = Tracker(run_dir, purge_step=step if resume_from else None)
    tty = sys.stderr.isatty() if cfg.trainer.progress == "auto" else bool(cfg.trainer.progress)
    progress = Progress(tty, steps, cfg.trainer.epochs)

    def finish(status: str, message: str | None = None, test: dict | None = None) -> dict:
        metrics = {
            "status": status,
            "epochs_completed": len(history),
            "steps": step,
            "best_val_acc": best["acc"] if best["epoch"] >= 0 else None,
            "best_epoch": best["epoch"] if best["epoch"] >= 0 else None,
            "wall_time_s": elapsed + time.perf_counter() - wall_start,
            "history": history,
        }
        if history:
            metrics.update({f"final_{k}": v for k, v in history[-1].items() if k != "epoch"})
        if test:
            metrics.update({"test_acc": test["acc"], "test_loss": test["loss"]})
        if message:
            metrics["message"] = message
        checkpoint.write_json(metrics, run_dir / "metrics.json")
        scalars = {"test/acc": test["acc"], "test/loss": test["loss"]} if test else {}
        if best["epoch"] >= 0:
            scalars["val/best_acc"] = best["acc"]
        tracker.hparams(flat_hparams(cfg, choices), scalars, step)
        tracker.close()
        return metrics

    try:
        for epoch in range(start_epoch, cfg.trainer.epochs):
            result = train_one_epoch(model, preprocess, splits, optimizer, scheduler, loss_fn, cfg, generator,
                                     tracker, step, epoch, progress)
            step += data.steps_per_epoch(len(splits.train_x), cfg.trainer.batch_size)
            if result.diverged:
                message = (f"training diverged in epoch {epoch + 1}: the loss became {result.loss}. "
                           "Lower optimizer.lr, add a warmup (schedule.warmup_epochs) or clip gradients.")
                log.error(message)
                return finish("diverged", message)
            val = evaluate(model, preprocess, splits.val_x, splits.val_y, cfg.trainer.eval_batch_size)
            img_per_s = result.images / result.seconds
            tracker.scalars({"val/loss": val["loss"], "val/acc": val["acc"], "perf/img_per_s": img_per_s,
                             "perf/epoch_s": result.seconds}, step)
            history.append({"epoch": epoch + 1, "train_loss": result.loss, "train_acc": result.acc,
                            "val_loss": val["loss"], "val_acc": val["acc"], "lr": optimizer.param_groups[0]["lr"],
                            "epoch_s": result.seconds, "img_per_s": img_per_s})
            improved = val["acc"] > best["acc"]
            if improved:
                best = {"acc": val["acc"], "epoch": epoch + 1}
                if cfg.trainer.save_best:
                    checkpoint.save({"model": model.state_dict(), "preprocess": preprocess.state_dict(),
                                     "epoch": epoch + 1}, run_dir / BEST)
            checkpoint.save({
                "model": model.state_dict(), "preprocess": preprocess.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": {**scheduler.state_dict(), "lr_lambdas": [None] * len(scheduler.lr_lambdas)},
                "rng": rng_states(generator), "epoch": epoch + 1, "step": step, "best": best, "history": history,
                "elapsed": elapsed + time.perf_counter() - wall_start,
            }, run_dir / LAST)
            log.info("epoch %d/%d  train loss %.4f acc %.4f  val loss %.4f acc %.4f  lr %.3g  %.1fs  %.0f img/s",
                     epoch + 1, cfg.trainer.epochs, result.loss, result.acc, val["loss"], val["acc"],
                     optimizer.param_groups[0]["lr"], result.seconds, img_per_s)
    except KeyboardInterrupt:
        progress.end_epoch()
        message = f"interrupted after {len(history)} epoch(s); run the same command again to resume"
        log.warning(message)
        return finish("interrupted", message)

    test = evaluate(model, preprocess, splits.test_x, splits.test_y, cfg.trainer.eval_batch_size)
    log.info("test loss %.4f acc %.4f  (best val acc %.4f at epoch %d)", test["loss"], test["acc"], best["acc"],
             best["epoch"])
    return finish("completed", test=test)
