"""The start-up checks that tie several config keys together (each key on its own is runner.config.schema's).
They run on a config the schema has completed and checked, so every key they read is there and well typed."""

import ast
import functools
import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from runner.config.errors import ConfigError
from runner.config.regularizers import (
    DROPOUTS,
    MC_DROPOUT_KINDS,
    REGULARIZERS,
    chosen,
    coupled_l2,
    decays_decoupled,
)
from runner.config.schema import CIFAR10_FOLDER, CIFAR10_TRAIN_IMAGES, fail


def check(cfg: DictConfig) -> None:
    """Raises ConfigError for the first rule `cfg` breaks."""
    _data(cfg.data)
    _network(cfg)
    _training(cfg)
    _transfer(cfg)
    _unlabelled(cfg)
    _compression(cfg)
    _resume_allow(cfg)


def _data(data: DictConfig) -> None:
    root = Path(str(data.root)).expanduser() if data.name == "cifar10" else None
    if root is not None and (root.name == CIFAR10_FOLDER or (root / "batches.meta").is_file()):
        # runner would look for the folder inside itself, find nothing, and download CIFAR-10 into it
        fail("data.root", str(data.root), f"that is the '{CIFAR10_FOLDER}' folder itself; data.root is the "
             f"directory that holds it, here data.root={root.parent}")
    if data.name == "cifar10" and data.num_classes != 10:
        fail("data.num_classes", data.num_classes, "data=cifar10 has 10 classes (choose some with data.classes)")
    total = CIFAR10_TRAIN_IMAGES if data.name == "cifar10" else data.train_examples
    if not data.val_size < total:
        fail("data.val_size", data.val_size, f"must be an integer in [0, {total}) for data={data.name} ({total} "
             "training images)")
    left, half = total - data.val_size, ""
    if data.train_half is not None and data.classes is None:  # (a class subset's count is known once loaded)
        left = left // 2 if data.train_half == "first" else left - left // 2  # the first half is the smaller
        half = f" and train_half={data.train_half}"
    if data.train_size is not None and not data.train_size <= left:
        fail("data.train_size", data.train_size, f"must be null or an integer in [1, {left}] (training images left "
             f"after val_size={data.val_size}{half})")
    classes = data.classes
    if classes is not None and (len(set(classes)) != len(classes) or max(classes) >= data.num_classes):
        fail("data.classes", classes, f"must be null or a list of at least two distinct class indices in "
             f"[0, {data.num_classes}), e.g. [0,1,2,3,4]")


def _network(cfg: DictConfig) -> None:
    activation = cfg.activation
    if "lower" in activation and not activation.lower <= activation.upper:
        fail("activation.lower", activation.lower, f"must satisfy 0 <= lower <= upper (upper={activation.upper})")

    init = cfg.init
    if init.first_layer == "whiten":
        for key in ("whiten_epsilon", "whiten_images"):
            if key not in init:
                raise ConfigError(f"init.first_layer=whiten needs init.{key}: add `+init.{key}=<value>` (init=dirac "
                                  "has them: whiten_epsilon=5e-4, whiten_images=5000).")
    elif init.first_layer_bias_epochs is not None:
        raise ConfigError(f"init.first_layer_bias_epochs={init.first_layer_bias_epochs} is for the whitening layer: "
                          "set init.first_layer=whiten, or init.first_layer_bias_epochs=null.")

    regularization = cfg.regularization
    idle = [name for name in regularization if name in REGULARIZERS and not REGULARIZERS[name].acts]
    if idle:
        raise ConfigError(f"regularization={idle[0]} acts nowhere: configs/regularization/{idle[0]}.yaml names no "
                          "component (`_target_:` a runner.engine.hooks.Component taking its keys); add one, or leave "
                          f"{idle[0]} out of regularization=.")
    dropouts = chosen(regularization, "dropout")
    if len(dropouts) > 1:
        raise ConfigError(f"regularization={dropouts} combines {len(dropouts)} kinds of dropout: choose one of "
                          f"{', '.join(DROPOUTS)}, e.g. `regularization=[l2,{dropouts[0]}]`.")
    _pooling(cfg.model)
    batches = cfg.norm.reestimate_batches
    if batches > 0 and cfg.norm.name != "batch":
        raise ConfigError(f"norm.reestimate_batches={batches} recomputes batch norm statistics, but norm="
                          f"{cfg.norm.name} keeps none: use norm=batch, or norm.reestimate_batches=0.")
    if batches > 0 and cfg.trainer.sync_batch_norm:
        raise ConfigError(f"norm.reestimate_batches={batches} runs on the first process alone after training, "
                          "which synchronized batch norm cannot: set trainer.sync_batch_norm=false or "
                          "norm.reestimate_batches=0.")
    for name in chosen(regularization, "depth"):
        if "blocks_per_stage" not in cfg.model:
            raise ConfigError(f"regularization={name} drops residual blocks: it needs a residual network "
                              "(model=resnet or model=resnet18).")
    if cfg.model._target_.endswith(".torchvision_resnet18") and (
            not cfg.activation._target_.endswith(".ReLU") or cfg.norm.name != "batch"):
        raise ConfigError("model=torchvision_resnet18 is torchvision's network with its own ReLU and batch norm: "
                          "use activation=relu norm=batch (the defaults).")


IMAGE_SIDE = 32  # CIFAR-10's and the synthetic data's images are 32x32


def pooled_sides(side: int, stages: int, pool: str, ratio: float) -> list[int]:
    """The image side before and after each of `stages` pooling layers (models.pooling): halved (max, avg), or
    int(side * ratio) as torch's FractionalMaxPool2d computes it (fractional)."""
    sides = [side]
    for _ in range(stages):
        sides.append(int(sides[-1] * ratio) if pool == "fractional" else sides[-1] // 2)
    return sides


def _pooling(model: DictConfig) -> None:
    """model.pool and pool_ratio belong to the models that pool between stages (cnn, vgg), and every stage must
    leave at least one pixel."""
    if "pool" not in model and "pool_ratio" not in model:
        return
    name = model._target_.rsplit(".", 1)[-1]
    if name not in ("CNN", "VGG"):
        raise ConfigError(f"model.pool is for the models that pool between stages (model=cnn, model=vgg), not "
                          f"{model._target_}: remove the model.pool/model.pool_ratio override.")
    stages = len(model.widths) if name == "CNN" else len(model.stages)
    pool, ratio = model.get("pool", "max"), model.get("pool_ratio", 0.7071)
    sides = pooled_sides(IMAGE_SIDE, stages, pool, ratio)
    if sides[-1] < 1:
        shown = " -> ".join(map(str, sides))
        how = f"model.pool=fractional with pool_ratio={ratio}" if pool == "fractional" else f"model.pool={pool}"
        fix = "raise model.pool_ratio or use fewer stages" if pool == "fractional" else "use fewer stages"
        raise ConfigError(f"{how} over {stages} stages shrinks 32x32 images to nothing ({shown}): {fix}.")


# The lecture's update rules (optimizer.impl=reference), read from the source: importing it would import torch.
_REFERENCE = Path(__file__).resolve().parents[1] / "optimization" / "reference.py"


@functools.cache
def reference_rules() -> list[str]:
    """The optimizers runner.optimization.reference writes out: its public classes, named as torch.optim's."""
    tree = ast.parse(_REFERENCE.read_text())
    return [n.name for n in tree.body if isinstance(n, ast.ClassDef) and not n.name.startswith("_")]


def _training(cfg: DictConfig) -> None:
    optimizer, regularization = cfg.optimizer, cfg.regularization
    name = str(optimizer._target_).rsplit(".", 1)[-1]
    if optimizer.impl == "reference" and name not in reference_rules():
        raise ConfigError(f"optimizer.impl=reference: runner.optimization.reference has no rule for {name} "
                          f"({optimizer._target_}); it has {', '.join(reference_rules())}. Use optimizer.impl=torch.")
    if "bias_correction" in optimizer and not optimizer.bias_correction and optimizer.impl != "reference":
        raise ConfigError("optimizer.bias_correction=false needs the lecture's update rule: add "
                          "optimizer.impl=reference (torch.optim always corrects the bias).")
    coupled = coupled_l2(regularization)
    if decays_decoupled(optimizer) and coupled:
        raise ConfigError(f"optimizer=adamw decays the weights decoupled from the gradient; regularization={coupled} "
                          "would add a coupled L2 penalty beside it (that is Adam + L2, not AdamW). Use "
                          "`optimizer=adamw regularization=[weight_decay]`, or `optimizer=adam regularization=[l2]`.")
    world = int(os.environ.get("WORLD_SIZE", 1))
    batch = cfg.trainer.batch_size
    if world > 1 and batch % world:
        raise ConfigError(f"trainer.batch_size={batch} is the global batch of {world} processes and must be "
                          f"divisible by {world}: set trainer.batch_size={batch // world * world}.")

    schedule = cfg.schedule
    if not schedule.warmup_epochs < cfg.trainer.epochs:
        fail("schedule.warmup_epochs", schedule.warmup_epochs, f"must be a number in [0, {cfg.trainer.epochs}) "
             "(trainer.epochs)")
    monitors = [("schedule", schedule)] if "metric" in schedule else []
    monitors += [(f"regularization.{name}", regularization[name]) for name in chosen(regularization, "stopping")]
    for where, node in monitors:
        if cfg.data.val_size == 0:
            raise ConfigError(f"{where} watches {node.metric}, but data.val_size=0 leaves no validation split: "
                              "set data.val_size=<images held out>.")

    passes = cfg.evaluation.mc_dropout_passes
    stochastic = [k for k in chosen(regularization, *MC_DROPOUT_KINDS)
                  if any(regularization[k][rate] > 0 for rate in ("p", "conv_p", "beta", "conv_beta")
                         if rate in regularization[k])]
    if passes > 0 and not stochastic:
        raise ConfigError(f"evaluation.mc_dropout_passes={passes} needs dropout in the model (a rate p > 0): add one "
                          f"of {', '.join(chosen(REGULARIZERS, *MC_DROPOUT_KINDS))}, e.g. "
                          "`regularization=[l2,dropout]`, or set evaluation.mc_dropout_passes=0.")


def _transfer(cfg: DictConfig) -> None:
    transfer = cfg.transfer
    if transfer.name != "none" and cfg.model.pretrained is None:
        raise ConfigError(f"transfer={transfer.name} reuses trained layers, but model.pretrained is null: give the "
                          "weights, e.g. `model.pretrained=outputs/<date>/<run>`, or use transfer=none.")
    layer = transfer.get("layer")  # transfer=linear_probe's alone (runner.config.option_keys)
    if layer is not None and int(os.environ.get("WORLD_SIZE", 1)) > 1:
        raise ConfigError(f"transfer.layer={layer} cuts the network after it is wrapped for data-parallel "
                          "training: run it in one process (python -m runner), or use transfer.layer=null.")
    if cfg.objective.name == "autoencoder" and transfer.name != "none":
        raise ConfigError(f"objective=autoencoder pretrains all layers without labels; transfer={transfer.name} "
                          "belongs to the later run that reuses them: use transfer=none here.")


def _unlabelled(cfg: DictConfig) -> None:
    """objective=autoencoder reads no labels and measures no accuracy: the options that need either are refused."""
    if cfg.objective.name != "autoencoder":
        return
    regularization, evaluation = cfg.regularization, cfg.evaluation
    watching = [("schedule", cfg.schedule), *((f"regularization.{name}", regularization[name])
                                              for name in chosen(regularization, "stopping"))]
    watchers = [(f"{where}.metric", node.metric) for where, node in watching
                if "metric" in node and node.metric != "val_loss"]
    for key, metric in watchers:
        fail(key, metric, "objective=autoencoder measures no accuracy: watch val_loss (the reconstruction error)")
    for name in chosen(regularization, "target"):
        raise ConfigError(f"regularization={name} smooths the labels, which objective=autoencoder never reads: "
                          "leave it out of regularization=.")
    asked = [k for k, off in (("tta_flip", False), ("tta_translate", 0), ("mc_dropout_passes", 0))
             if evaluation[k] != off]
    if asked:
        raise ConfigError(f"evaluation.{asked[0]}={evaluation[asked[0]]} scores a classifier's test predictions; "
                          "objective=autoencoder has none (its test is the reconstruction error): leave it off.")


def _compression(cfg: DictConfig) -> None:
    """prune= and export.enabled: what they need of the run."""
    prune, epochs = cfg.prune, cfg.trainer.epochs
    if prune.name != "none":
        if not prune.fine_tune_epochs < epochs:
            fail("prune.fine_tune_epochs", prune.fine_tune_epochs, f"must be an integer in [0, {epochs}) "
                 "(trainer.epochs, which counts the fine-tuning epochs)")
        end = epochs - prune.fine_tune_epochs
        if prune.when == "during" and not prune.start_epoch < end:
            fail("prune.start_epoch", prune.start_epoch, f"must be an integer in [0, {end}) (the ramp ends at "
                 f"trainer.epochs - prune.fine_tune_epochs = {end})")
        for name in chosen(cfg.regularization, "stopping"):
            raise ConfigError(f"prune={prune.name} with regularization={name}: early stopping would put back the "
                              f"weights of an epoch before the pruning, dense; leave {name} out of regularization=, "
                              "or use prune=none.")
    if cfg.export.enabled and cfg.objective.name == "autoencoder":
        raise ConfigError("export.enabled=true exports a classifier (images in, logits out); objective=autoencoder "
                          "has none: set export.enabled=false.")


def _resume_allow(cfg: DictConfig) -> None:
    """trainer.resume_allow names groups or keys of this config: a name that is neither would allow nothing."""
    absent = object()
    unknown = [str(name) for name in cfg.trainer.resume_allow
               if OmegaConf.select(cfg, str(name), default=absent) is absent]
    if unknown:
        groups = ", ".join(k for k in cfg if OmegaConf.is_dict(cfg[k]))
        fail("trainer.resume_allow", list(cfg.trainer.resume_allow), f"{', '.join(unknown)} is no group or key of "
             f"this config; allowed: a group ({groups}) or a key of one, e.g. optimizer.lr")
