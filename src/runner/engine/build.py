"""Where the config becomes objects: the model, its preprocessor, the optimizer, the schedule, the loss and the
weight average.

Each function takes only the sub-configs it needs. To see what `optimizer=adam` turns into, start here.
"""

import logging
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from runner.config.regularizers import decays_decoupled
from runner.data import preprocess
from runner.nets import layers
from runner.nets.init import initialize
from runner.optimization import optimizers as optim
from runner.optimization import schedules as schedule


def build_model(cfg, num_classes: int, inputs=None) -> nn.Module:
    """The network of `model=`, with the activation of `activation=`, the normalization of `norm=`, the in-network
    regularizers of `regularization=` (dropout family, DropConnect, stochastic depth), initialized by `init=`.
    inputs: preprocessed training images for a data-dependent init (init.first_layer=whiten), see init_inputs."""
    act = instantiate(cfg.activation, _convert_="all")
    drop = layers.Drop.from_config(cfg.regularization)
    architecture = OmegaConf.masked_copy(cfg.model, [k for k in cfg.model if k != "pretrained"])
    model = instantiate(architecture, _convert_="all")(num_classes=num_classes, act=act, norm=cfg.norm, drop=drop)
    initialize(model, cfg.init, cfg.activation, inputs)
    return model


def build_pretrained(cfg, model: nn.Module, run_dir=None) -> set[str]:
    """Load the weights of `model.pretrained=` into `model` (matched by name and shape, the output layer replaced),
    and report what was loaded, skipped and newly initialized (log; run_dir/pretrained.json). Returns the names of
    the reused parameters (for transfer.lr_mult); empty without model.pretrained."""
    if cfg.model.pretrained is None:
        return set()
    from runner.engine import checkpoint
    from runner.nets import transfer

    report = transfer.load_pretrained(model, str(cfg.model.pretrained))
    logging.getLogger("runner").info(report.summary())
    if run_dir is not None:
        checkpoint.write_json(report.as_dict(), Path(run_dir) / "pretrained.json")
    return {n for n, _ in model.named_parameters() if n in set(report.loaded)}


def build_freezer(cfg, model: nn.Module):
    """The transfer.Freezer of `transfer=`: which layers train in each epoch; None for transfer=none, which leaves
    every parameter's requires_grad as the model set it (e.g. a frozen whitening stem, init.first_layer_trainable)."""
    if cfg.transfer.name == "none":
        return None
    from runner.nets.transfer import Freezer

    return Freezer(model, cfg.transfer)


def init_inputs(cfg, preprocess: nn.Module, train_x):
    """What a data-dependent init sees: the first init.whiten_images training images, preprocessed; None when
    `init=` does not need data."""
    if cfg.init.first_layer != "whiten":
        return None
    import torch

    with torch.no_grad():
        return preprocess(train_x[:cfg.init.whiten_images])


def build_optimizer(cfg, model: nn.Module, reused: set[str] = frozenset()):
    """The optimizer of `optimizer=` (torch's or, with optimizer.impl=reference, the lecture's rule) over the model's
    parameter groups, with L2, weight decay and L1 from `regularization=`, its lr scaled with the batch size when
    trainer.lr_reference_batch_size is set. reused: the parameters loaded from model.pretrained, which train at
    transfer.lr_mult times their group's lr in groups of their own (transfer.lr_groups)."""
    lr = optim.scaled_lr(cfg.optimizer.lr, cfg.trainer.batch_size, cfg.trainer.lr_reference_batch_size)
    if lr != cfg.optimizer.lr:
        logging.getLogger("runner").info("linear lr scaling: optimizer.lr %g x batch_size %d / %d = %g",
                                         cfg.optimizer.lr, cfg.trainer.batch_size,
                                         cfg.trainer.lr_reference_batch_size, lr)
    groups = optim.param_groups(model, cfg.regularization, decays_decoupled(cfg.optimizer), lr,
                                cfg.trainer.norm_bias_lr_factor)
    if reused and "lr_mult" in cfg.transfer:
        from runner.nets.transfer import lr_groups

        groups = lr_groups(model, groups, reused, cfg.transfer.lr_mult, lr)
    from runner.engine.speed import use_fused

    fused = use_fused(cfg.trainer.fused_optimizer, next(model.parameters()).device)
    optimizer = optim.make(cfg.optimizer, groups, lr=lr, fused=fused and cfg.optimizer.impl != "reference")
    optim.register_hooks(optimizer)
    if "max_norm" in cfg.regularization:
        optimizer.register_step_post_hook(layers.max_norm_hook(model, cfg.regularization.max_norm.value))
    return optimizer


def build_schedule(cfg, optimizer, total_steps: int, steps_per_epoch: int):
    return schedule.build(cfg.schedule, optimizer, total_steps, steps_per_epoch)


def build_preprocess(cfg, train_x) -> nn.Module:
    return preprocess.fit(cfg.preprocess, train_x)


def build_loss(cfg) -> nn.Module:
    """Cross-entropy, with label smoothing when `regularization=` holds label_smoothing."""
    smoothing = cfg.regularization.label_smoothing.value if "label_smoothing" in cfg.regularization else 0.0
    return nn.CrossEntropyLoss(label_smoothing=smoothing)


def build_averaging(cfg, model: nn.Module, total_steps: int = 1):
    """The EMA copy of `model` that `averaging=ema` or `averaging=lookahead` asks for, or None."""
    if cfg.averaging.name == "none":
        return None
    from runner.engine.averaging import EMA

    return EMA(model, cfg.averaging.decay, cfg.averaging.every_steps, cfg.averaging.name == "lookahead",
               total_steps, cfg.averaging.ramp_power)
