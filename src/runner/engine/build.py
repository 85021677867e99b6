"""Where the config becomes objects: the model, its preprocessor, the augmentation, the optimizer, the schedule,
the loss and the weight average.

Every group's option is built one way, by `option`: its `_target_` called with its keys (`_partial_: true` where
the object also needs values only the run knows: parameters, the model, steps, training images). Each function
takes only the sub-configs it needs. To see what `optimizer=adam` turns into, start here.
"""

import logging

import torch
from hydra.utils import get_class, instantiate
from omegaconf import OmegaConf
from torch import nn

from runner.config.regularizers import chosen, decays_decoupled
from runner.config.schema import RUNNER_KEYS  # keys runner reads itself, marked once in the schema
from runner.engine.speed import use_fused
from runner.nets import layers, transfer
from runner.nets.init import initialize
from runner.optimization import optimizers as optim
from runner.optimization import schedules


def option(node, *runtime_args, **runtime_kwargs):
    """The object of one group's option `node`: its `_target_` called with its keys, RUNNER_KEYS left out. A
    `_partial_` option given runtime values is then called with them; given none, it stays a factory (the
    activation, made once per layer)."""
    made = instantiate(OmegaConf.masked_copy(node, [k for k in node if k not in RUNNER_KEYS]), _convert_="all")
    if not (runtime_args or runtime_kwargs):
        return made
    if not node.get("_partial_", False):
        raise TypeError(f"{node._target_} takes no values from the run: its option has no `_partial_: true`")
    return made(*runtime_args, **runtime_kwargs)


def build_model(cfg, num_classes: int, inputs=None) -> nn.Module:
    """The network of `model=`, with the activation of `activation=`, the normalization of `norm=`, the in-network
    regularizers of `regularization=` (dropout family, DropConnect, stochastic depth), initialized by `init=`.
    inputs: preprocessed training images for a data-dependent init (init.first_layer=whiten), see init_inputs."""
    drop = layers.Drop.from_config(cfg.regularization)
    model = option(cfg.model, num_classes=num_classes, act=option(cfg.activation), norm=option(cfg.norm), drop=drop)
    if drop.placement == "after_last_norm":
        removed = layers.keep_noise_after_last_norm(model)
        logging.getLogger("runner").info("regularization.%s.placement=after_last_norm: %d %s layer(s) in front of a "
                                         "norm layer left out", drop.kind, removed, drop.kind)
    initialize(model, option(cfg.init), cfg.activation, inputs)
    return model


def build_pretrained(cfg, model: nn.Module, records: dict | None = None) -> set[str]:
    """Load the weights of `model.pretrained=` into `model` (matched by name and shape, the output layer replaced),
    and report what was loaded, skipped and newly initialized (log; records["pretrained.json"], which the run writes
    once it is accepted). Returns the names of the reused parameters (for transfer.lr_mult); empty without
    model.pretrained."""
    if cfg.model.pretrained is None:
        return set()
    report = transfer.load_pretrained(model, str(cfg.model.pretrained))
    logging.getLogger("runner").info(report.summary())
    if records is not None:
        records["pretrained.json"] = report.as_dict()
    return {n for n, _ in model.named_parameters() if n in set(report.loaded)}


def build_probe(cfg, model: nn.Module, num_classes: int) -> None:
    """transfer=linear_probe transfer.layer=<layer>: cut `model` at that layer, in place, with a new linear head on
    its pooled features (transfer.cut_at). Nothing for transfer.layer=null or another transfer= option."""
    if cfg.transfer.get("layer") is not None:
        transfer.cut_at(model, cfg.transfer.layer, num_classes)


def build_pruning(cfg, model: nn.Module, epochs: int, steps_per_epoch: int):
    """The engine.pruning.Pruning component of `prune=` over `model`'s conv/linear weights; None for prune=none."""
    return option(cfg.prune, model=model, epochs=epochs, steps_per_epoch=steps_per_epoch)


def build_freezer(cfg, model: nn.Module):
    """The transfer.Freezer of `transfer=`: which layers train in each epoch; None for transfer=none."""
    return option(cfg.transfer, model)


def init_inputs(cfg, preprocess: nn.Module, train_x):
    """What a data-dependent init sees: the first init.whiten_images training images, preprocessed; None when
    `init=` does not need data."""
    if cfg.init.first_layer != "whiten":
        return None
    with torch.no_grad():
        return preprocess(train_x[:cfg.init.whiten_images])


# objective.lr_factor=null with an SGD-family optimizer: the default recipe's peak lr 0.4 is tuned for cross-entropy,
# and an autoencoder's unbounded squared error diverges at it (0.2 and below trained); Adam-like steps are ~lr
# whatever the gradient's scale, so they keep their lr.
AUTOENCODER_SGD_LR_FACTOR = 0.25


def build_optimizer(cfg, model: nn.Module, reused: set[str] = frozenset()):
    """The optimizer of `optimizer=` (torch's or, with optimizer.impl=reference, the lecture's rule) over the model's
    parameter groups, with L2, weight decay and L1 from `regularization=`, its lr scaled with the batch size when
    trainer.lr_reference_batch_size is set, then by objective.lr_factor. reused: the parameters loaded from
    model.pretrained, which train at transfer.lr_mult times their group's lr in groups of their own
    (transfer.lr_groups)."""
    if cfg.optimizer.get("lr_auto"):
        logging.getLogger("runner").info(
            "optimizer.lr=auto: %g, the option's auto_lr.%s (%s; a number, optimizer.lr=<lr>, overrides it)",
            cfg.optimizer.lr, cfg.optimizer.lr_auto,
            "a batch-normalized network" if cfg.optimizer.lr_auto == "batch" else "a network without batch norm")
    lr = optim.scaled_lr(cfg.optimizer.lr, cfg.trainer.batch_size, cfg.trainer.lr_reference_batch_size)
    if lr != cfg.optimizer.lr:
        logging.getLogger("runner").info("linear lr scaling: optimizer.lr %g x batch_size %d / %d = %g",
                                         cfg.optimizer.lr, cfg.trainer.batch_size,
                                         cfg.trainer.lr_reference_batch_size, lr)
    factor = cfg.objective.get("lr_factor", 1.0)
    if factor is None:  # the objective's choice: the SGD family's lr is the classifier's, adaptive steps are not
        factor = AUTOENCODER_SGD_LR_FACTOR if str(cfg.optimizer._target_) == "torch.optim.SGD" else 1.0
    if factor != 1.0:
        logging.getLogger("runner").info("objective=%s: lr %g x objective.lr_factor %g = %g",
                                         cfg.objective.name, lr, factor, lr * factor)
        lr *= factor
    groups = optim.param_groups(model, cfg.regularization, decays_decoupled(cfg.optimizer), lr,
                                cfg.trainer.norm_bias_lr_factor)
    if reused and "lr_mult" in cfg.transfer:
        groups = transfer.lr_groups(model, groups, reused, cfg.transfer.lr_mult, lr)
    fused = use_fused(cfg.trainer.fused_optimizer, next(model.parameters()).device)
    optimizer = make_optimizer(cfg.optimizer, groups, lr, fused)
    optim.register_hooks(optimizer)
    for name in chosen(cfg.regularization, "constraint"):  # weights put back on their ball after each step
        optimizer.register_step_post_hook(layers.max_norm_hook(model, cfg.regularization[name].value))
    return optimizer


def make_optimizer(optimizer_cfg, params, lr: float | None = None, fused: bool = False) -> torch.optim.Optimizer:
    """The optimizer `optimizer_cfg` names over `params` (parameters or parameter-group dicts): its `_target_`, a
    torch.optim class, or with impl=reference the lecture's class of the same name (which also takes
    bias_correction). lr: in place of the config's (the linear scaling rule). fused: torch's fused kernel (one
    kernel for all parameters, CUDA) where the class has one."""
    node = optim.implementation(optimizer_cfg)
    runtime = {} if lr is None else {"lr": lr}
    if "betas" in node:
        runtime["betas"] = tuple(node.betas)
    if optimizer_cfg.impl == "reference" and "bias_correction" in optimizer_cfg:
        runtime["bias_correction"] = optimizer_cfg.bias_correction
    if fused and optim.has_fused(get_class(node._target_)):
        runtime["fused"] = True
    return option(node, params, **runtime)


def schedule_factor(schedule_cfg, total_steps: int, steps_per_epoch: int):
    """The lr multiplier of `schedule=` at each step of a run of total_steps optimizer steps: its class over the
    steps after the warmup, behind a linear warmup of schedule.warmup_epochs when that is above 0."""
    warmup = round(schedule_cfg.warmup_epochs * steps_per_epoch)
    factor = option(schedule_cfg, steps_per_epoch=steps_per_epoch, total_steps=max(1, total_steps - warmup))
    return schedules.Warmup(factor, warmup) if warmup > 0 else factor


def build_schedule(cfg, optimizer, total_steps: int, steps_per_epoch: int):
    """torch's LambdaLR over `optimizer`, stepped after every optimizer step, with the factor of schedule_factor."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule_factor(cfg.schedule, total_steps, steps_per_epoch))


def build_preprocess(cfg, train_x) -> nn.Module:
    """The Preprocess of `preprocess=`, fitted on the training images train_x (uint8) only."""
    return option(cfg.preprocess, train_x)


def build_augmentation(cfg):
    """The data.augment.Augmentation of `augmentation=`; its alternating flip is drawn from the run's seed."""
    return option(cfg.augmentation, seed=cfg.seed)


def build_objective(cfg):
    """The objective of `objective=` (runner.engine.objectives), with the label smoothing of `regularization=`."""
    smoothing = next((cfg.regularization[name].value for name in chosen(cfg.regularization, "target")), 0.0)
    return option(cfg.objective, label_smoothing=smoothing)


def build_averaging(cfg, model: nn.Module, total_steps: int = 1):
    """The EMA copy of `model` that `averaging=ema` or `averaging=lookahead` asks for over a run of total_steps
    optimizer steps; None for averaging=none."""
    return option(cfg.averaging, model, total_steps=total_steps)
