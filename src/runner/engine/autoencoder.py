"""Unsupervised pretraining (`objective=autoencoder`), the lecture's autoencoder: the model up to its output layer
is the encoder, a small decoder rebuilds the preprocessed image from the encoder's feature vector, and both learn
by mean squared error on training images whose labels are never read. The checkpoint keeps the encoder under the
classifier's own parameter names, so a later run transfers it with few labels:

    python -m runner objective=autoencoder data.classes=[0,1,2,3,4] trainer.epochs=10
    python -m runner model.pretrained=<that run dir> transfer=linear_probe data.classes=[5,6,7,8,9] data.per_class=20
"""

import logging
import time
from pathlib import Path

import torch
from torch import nn

from runner.config import ConfigError
from runner.data import loading as data
from runner.data.augment import augment
from runner.engine import checkpoint
from runner.engine.build import build_model, build_optimizer, build_preprocess, build_schedule
from runner.engine.tracking import Tracker, record_run
from runner.nets.transfer import output_layer

log = logging.getLogger("runner")


class Decoder(nn.Module):
    """Feature vector (B, F) -> image (B, 3, 32, 32): a linear layer to a (width, 4, 4) map, then three times a 2x
    nearest upsampling and a 3x3 conv block halving the channels (4 -> 8 -> 16 -> 32), then a 3x3 conv to 3 channels."""

    def __init__(self, in_features: int, width: int):
        super().__init__()
        self.width = width
        self.fc = nn.Sequential(nn.Linear(in_features, width * 16), nn.ReLU())
        layers, c = [], width
        for _ in range(3):
            layers += [nn.Upsample(scale_factor=2), nn.Conv2d(c, c // 2, 3, padding=1, bias=False),
                       nn.BatchNorm2d(c // 2), nn.ReLU()]
            c //= 2
        self.up = nn.Sequential(*layers)
        self.out = nn.Conv2d(c, 3, 3, padding=1)

    def forward(self, z):  # z: (B, F) -> (B, 3, 32, 32)
        return self.out(self.up(self.fc(z).view(len(z), self.width, 4, 4)))


class AutoEncoder(nn.Module):
    """The classifier `model` as the encoder (its output layer's input is the code) and a Decoder."""

    def __init__(self, model: nn.Module, decoder_width: int):
        super().__init__()
        self.encoder = model
        head = model.get_submodule(output_layer(model))
        self._code = None
        head.register_forward_hook(self._keep_code)
        self.decoder = Decoder(head.in_features, decoder_width)

    def _keep_code(self, module, inputs, output):
        self._code = inputs[0]

    def forward(self, x):  # x: (B, 3, 32, 32) preprocessed -> reconstruction (B, 3, 32, 32)
        self.encoder(x)
        return self.decoder(self._code.flatten(1))


@torch.no_grad()
def reconstruction_loss(net: AutoEncoder, preprocess: nn.Module, x: torch.Tensor, batch_size: int) -> float:
    """Mean squared error per pixel over the images x (uint8), in eval mode."""
    was_training = net.training
    net.eval()
    total = torch.zeros((), device=x.device)
    for xb, _ in data.eval_batches(x, x, batch_size):
        inputs = preprocess(xb)
        total += nn.functional.mse_loss(net(inputs), inputs, reduction="sum")
    net.train(was_training)
    return total.item() / max(1, x.numel())


def pretrain(cfg, run_dir: Path, choices: dict[str, str]) -> dict:
    """Train the autoencoder for trainer.epochs on the training images; checkpoints/last.pt holds the encoder as
    "model" (what model.pretrained reads). TensorBoard: ae/train_loss, ae/val_loss, original and reconstructed
    images. Resumes from its own checkpoint like a classifier run (trainer.resume). Returns the metrics, also in
    run_dir/metrics.json."""
    from runner.engine.train import (
        LAST,
        pick_device,
        resume_path,
        rng_states,
        seed_everything,
        set_rng_states,
    )
    from runner.optimization import schedules as schedule

    run_dir = Path(run_dir)
    device = pick_device(cfg.device)
    seed_everything(cfg.seed)
    start = time.perf_counter()
    splits = data.load_splits(cfg.data, device)
    log.info("objective=autoencoder on %d unlabelled training images (%d held out)", len(splits.train_x),
             len(splits.val_x))
    preprocess = build_preprocess(cfg, splits.train_x).to(device)
    net = AutoEncoder(build_model(cfg, len(splits.classes)), cfg.objective.decoder_width).to(device)
    optimizer = build_optimizer(cfg, net)
    steps = data.steps_per_epoch(len(splits.train_x), cfg.trainer.batch_size)
    scheduler = build_schedule(cfg, optimizer, steps * cfg.trainer.epochs, steps)
    generator = torch.Generator(device=device)
    generator.manual_seed(cfg.seed)
    history, step, start_epoch = [], 0, 0
    resume_from = resume_path(cfg, run_dir)
    if resume_from is not None:
        state = checkpoint.load(resume_from, map_location=device)
        if "optimizer" not in state:
            raise ConfigError(f"trainer.resume: {resume_from} is not an autoencoder checkpoint to continue "
                              "(objective=autoencoder); use trainer.resume=never to start afresh.")
        net.encoder.load_state_dict(state["model"])
        net.decoder.load_state_dict(state["decoder"])
        preprocess.load_state_dict(state["preprocess"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(scheduler, state["scheduler"])
        set_rng_states(state["rng"], generator)
        start_epoch, step, history = state["epoch"], state["step"], state["history"]
        log.info("resumed from %s at epoch %d (step %d)", resume_from, start_epoch, step)
    record_run(cfg, run_dir, device)
    tracker = Tracker(run_dir, purge_step=step if resume_from else None)

    for epoch in range(start_epoch, cfg.trainer.epochs):
        net.train()
        total, images = torch.zeros((), device=device), 0
        for x, _ in data.train_batches(splits.train_x, splits.train_y, cfg.trainer.batch_size, generator):
            inputs = preprocess(augment(x, cfg.augmentation, generator))
            loss = nn.functional.mse_loss(net(inputs), inputs)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            total += loss.detach() * len(x)
            images += len(x)
        train_loss = total.item() / images
        val_loss = reconstruction_loss(net, preprocess, splits.val_x, cfg.trainer.eval_batch_size)
        tracker.scalars({"ae/train_loss": train_loss, "ae/val_loss": val_loss}, step)
        history.append({"epoch": epoch + 1, "train_loss": train_loss, "val_loss": val_loss})
        checkpoint.save({"model": net.encoder.state_dict(), "decoder": net.decoder.state_dict(),
                         "preprocess": preprocess.state_dict(), "epoch": epoch + 1, "step": step,
                         "optimizer": optimizer.state_dict(), "scheduler": schedule.state_dict(scheduler),
                         "rng": rng_states(generator), "history": history}, run_dir / LAST)
        log.info("epoch %d/%d  reconstruction mse: train %.4f  val %.4f", epoch + 1, cfg.trainer.epochs, train_loss,
                 val_loss)
    tracker.writer.add_images("ae/original_then_reconstructed", _picture(net, preprocess, splits.val_x[:8]), step)
    tracker.close()
    metrics = {"status": "completed", "objective": "autoencoder", "epochs_completed": len(history), "steps": step,
               "final_train_loss": history[-1]["train_loss"], "final_val_loss": history[-1]["val_loss"],
               "best_val_acc": None, "wall_time_s": time.perf_counter() - start, "history": history}
    checkpoint.write_json(metrics, run_dir / "metrics.json")
    return metrics


@torch.no_grad()
def _picture(net: AutoEncoder, preprocess: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Originals above their reconstructions (16, 3, 32, 32) in [0, 1], each image min-max scaled as the network
    sees it (preprocessed)."""
    net.eval()
    inputs = preprocess(x)
    both = torch.cat([inputs, net(inputs)]).float()
    low = both.amin(dim=(1, 2, 3), keepdim=True)
    high = both.amax(dim=(1, 2, 3), keepdim=True)
    return ((both - low) / (high - low).clamp_min(1e-8)).cpu()
