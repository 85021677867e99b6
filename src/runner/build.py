"""Where the config becomes objects: the model, its preprocessor, the optimizer, the schedule, the loss and the
weight average.

Each function takes only the sub-configs it needs. To see what `optimizer=adam` turns into, start here.
"""

import logging

from hydra.utils import instantiate
from torch import nn

from runner import layers, optim, preprocess, schedule
from runner.init import initialize


def build_model(cfg, num_classes: int) -> nn.Module:
    """The network of `model=`, with the activation of `activation=`, the normalization of `norm=`, the in-network
    regularizers of `regularization=` (dropout family, DropConnect, stochastic depth), initialized by `init=`."""
    act = instantiate(cfg.activation, _convert_="all")
    drop = layers.Drop.from_config(cfg.regularization)
    model = instantiate(cfg.model, _convert_="all")(num_classes=num_classes, act=act, norm=cfg.norm, drop=drop)
    initialize(model, cfg.init, cfg.activation)
    return model


def build_optimizer(cfg, model: nn.Module):
    """The optimizer of `optimizer=` (torch's or, with optimizer.impl=reference, the lecture's rule) over the model's
    parameter groups, with L2, weight decay and L1 from `regularization=`, its lr scaled with the batch size when
    trainer.lr_reference_batch_size is set."""
    groups = optim.param_groups(model, cfg.regularization, optim.is_decoupled_native(cfg.optimizer))
    lr = optim.scaled_lr(cfg.optimizer.lr, cfg.trainer.batch_size, cfg.trainer.lr_reference_batch_size)
    if lr != cfg.optimizer.lr:
        logging.getLogger("runner").info("linear lr scaling: optimizer.lr %g x batch_size %d / %d = %g",
                                         cfg.optimizer.lr, cfg.trainer.batch_size,
                                         cfg.trainer.lr_reference_batch_size, lr)
    optimizer = optim.make(cfg.optimizer, groups, lr=lr)
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


def build_averaging(cfg, model: nn.Module):
    """The EMA copy of `model` that `averaging=ema` asks for, or None."""
    if cfg.averaging.name == "none":
        return None
    from runner.averaging import EMA

    return EMA(model, cfg.averaging.decay)
