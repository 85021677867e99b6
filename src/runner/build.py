"""Where the config becomes objects: the model, its preprocessor, the optimizer and the schedule.

Each function takes only the sub-configs it needs. To see what `optimizer=adam` turns into, start here.
"""

from hydra.utils import instantiate
from torch import nn

from runner import optim, preprocess, schedule


def build_model(cfg, num_classes: int) -> nn.Module:
    """The network of `model=`, with the activation of `activation=` and the normalization of `norm=`."""
    act = instantiate(cfg.activation, _convert_="all")
    model = instantiate(cfg.model, _convert_="all")(num_classes=num_classes, act=act, norm=cfg.norm)
    if cfg.init.scheme != "default":
        from runner.init import initialize

        initialize(model, cfg.init)
    return model


def build_optimizer(cfg, model: nn.Module):
    """The optimizer of `optimizer=` over the model's parameter groups, with weight decay from `regularization=`."""
    groups = optim.param_groups(model, cfg.regularization)
    optimizer = instantiate(cfg.optimizer, _convert_="all")(groups)
    optimizer.register_step_pre_hook(optim.decoupled_weight_decay_hook)
    return optimizer


def build_schedule(cfg, optimizer, total_steps: int, steps_per_epoch: int):
    return schedule.build(cfg.schedule, optimizer, total_steps, steps_per_epoch)


def build_preprocess(cfg, train_x) -> nn.Module:
    return preprocess.fit(cfg.preprocess, train_x)
