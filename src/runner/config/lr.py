"""`optimizer.lr: auto`, the SGD family's default: the peak learning rate picked for the network the config builds.

One peak lr does not fit every network. Batch norm rescales every layer's input, so a batch-normalized net takes a
large step (0.4 at batch 128 with Nesterov: the default recipe's, configs/sweep/default_recipe*.yaml) that makes
the same net without it, or with group or layer norm, diverge in its first epoch. With `lr: auto` the option file's
`auto_lr` table decides by the network's normalization:

    auto_lr: {batch: 0.4, other: 0.025}  # norm=batch (and torchvision's ResNet-18, which has its own) | the rest

`python -m runner.grid` measures the table's choice over the option grid (every entry trains; the figures and the
command are in the documentation). A number given on the command line (`optimizer.lr=0.1`) or by a sweep always
wins; the lr auto chose is written into the run's config.yaml and logged at start-up.
"""

from omegaconf import DictConfig, open_dict

from runner.config.errors import ConfigError

AUTO = "auto"


def has_batch_norm(cfg: DictConfig) -> bool:
    """Whether the network the config builds normalizes with batch norm."""
    return cfg.norm.get("name") == "batch" or str(cfg.model.get("_target_", "")).endswith(".torchvision_resnet18")


def auto_lr(optimizer: DictConfig, batch_norm: bool) -> float:
    """The entry of the option's auto_lr table for a network with (batch_norm=True) or without batch norm."""
    table = optimizer.get("auto_lr")
    if table is None or "batch" not in table or "other" not in table:
        raise ConfigError("optimizer.lr=auto needs the option's auto_lr table ({batch: <lr>, other: <lr>}); give a "
                          "number instead, e.g. optimizer.lr=0.05.")
    return float(table.batch if batch_norm else table.other)


def resolve(cfg: DictConfig) -> None:
    """Replace optimizer.lr=auto by the auto_lr entry for cfg's network, in place, and mark it (optimizer.lr_auto:
    the table entry used, for the start-up log). Nothing for a numeric lr."""
    optimizer = cfg.get("optimizer")
    if not isinstance(optimizer, DictConfig) or optimizer.get("lr") != AUTO or "norm" not in cfg or "model" not in cfg:
        return
    family = "batch" if has_batch_norm(cfg) else "other"
    lr = auto_lr(optimizer, family == "batch")
    with open_dict(optimizer):
        optimizer.lr, optimizer.lr_auto = lr, family
