"""Where the configs live, the resolvers they use, and the start-up checks of user input.

Everything here is plain Python: the checks run before torch is imported or any data is read, so a typo
costs a fraction of a second, not a data load.
"""

import os
import re
import secrets
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

CONFIG_DIR = Path(__file__).resolve().parents[3] / "configs"

# The borders a padded image can have (augmentation.pad_mode, evaluation.tta_pad_mode; augment.pad draws them).
PAD_MODES = ("zeros", "reflect")

# One token per process: `${now:}` alone lets two jobs started in the same second share a run directory.
_PROCESS_UID = f"{os.getpid() % 100000:05d}{secrets.token_hex(2)}"


class UserError(Exception):
    """Something the user can fix: reported as one line, without a traceback."""


class ConfigError(UserError, ValueError):
    """A bad value in the user's config: the message names the key, the value, what is allowed."""


class DataError(UserError, RuntimeError):
    """Data that cannot be used as it is: the message names the file and what to do."""


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("runner_uid"):
        OmegaConf.register_new_resolver("runner_uid", lambda: _PROCESS_UID)


def _fail(key: str, value, allowed: str) -> None:
    raise ConfigError(f"{key}={value!r} is invalid: {allowed}. Change it with `{key}=<value>` on the command line.")


def _positive(cfg: DictConfig, key: str, integer: bool = False) -> None:
    value = OmegaConf.select(cfg, key)
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or value <= 0:
        _fail(key, value, "must be a positive " + ("integer" if integer else "number"))


_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def validate(cfg: DictConfig) -> None:
    """Check the values a user can get wrong, before anything heavy happens. Raises ConfigError."""
    _positive(cfg, "trainer.epochs", integer=True)
    _positive(cfg, "trainer.batch_size", integer=True)
    _positive(cfg, "trainer.eval_batch_size", integer=True)
    _positive(cfg, "trainer.log_every_steps", integer=True)
    _positive(cfg, "optimizer.lr")
    if not isinstance(cfg.seed, int) or isinstance(cfg.seed, bool):
        _fail("seed", cfg.seed, "must be an integer")
    if not isinstance(cfg.device, str) or not _DEVICE.match(cfg.device):
        _fail("device", cfg.device, "allowed: auto, cpu, cuda, cuda:N, mps")
    if cfg.trainer.progress not in ("auto", True, False):
        _fail("trainer.progress", cfg.trainer.progress, "allowed: auto, true, false")

    data = cfg.data
    total = 50_000 if data.name == "cifar10" else data.train_examples
    if data.name == "synthetic":
        _positive(cfg, "data.train_examples", integer=True)
        _positive(cfg, "data.test_examples", integer=True)
    val = data.val_size
    if isinstance(val, bool) or not isinstance(val, int) or not 0 <= val < total:
        _fail("data.val_size", val, f"must be an integer in [0, {total}) for data={data.name} ({total} training images)")
    if data.train_size is not None:
        size = data.train_size
        if isinstance(size, bool) or not isinstance(size, int) or not 0 < size <= total - val:
            _fail("data.train_size", size, f"must be null or an integer in [1, {total - val}] (training images left after val_size={val})")

    for name, node in cfg.regularization.items():
        if "value" in node and (not isinstance(node.value, (int, float)) or node.value < 0):
            _fail(f"regularization.{name}.value", node.value, "must be a number >= 0")

    _validate_network(cfg)
    _validate_training(cfg)
    _validate_transfer(cfg)


# ---------------------------------------------------------------------------------------------------------------
# The network: model, activation, init, norm, the in-network regularizers, diagnostics

def _options(group: str) -> list[str]:
    """The options of a config group: its file names (the folder is the registry)."""
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _rate(key: str, value) -> None:
    if not _is_number(value) or not 0 <= value < 1:
        _fail(key, value, "must be a probability in [0, 1)")


def _int_list(key: str, value, empty: bool = False) -> None:
    if not OmegaConf.is_list(value) or (not empty and len(value) == 0) or not all(
            _is_int(v) and v > 0 for v in value):
        _fail(key, value, "must be a list of positive integers" + ("" if empty else ", not empty"))


def _validate_network(cfg: DictConfig) -> None:
    model = cfg.model
    if "depth" in model and (not _is_int(model.depth) or model.depth < 0):
        _fail("model.depth", model.depth, "must be an integer >= 0 (the number of hidden layers)")
    for key in ("width", "convs_per_stage", "blocks_per_stage"):
        if key in model and (not _is_int(model[key]) or model[key] <= 0):
            _fail(f"model.{key}", model[key], "must be a positive integer")
    if "widths" in model:
        _int_list("model.widths", model.widths)
    if "fc_widths" in model:
        _int_list("model.fc_widths", model.fc_widths, empty=True)
    if "stages" in model:
        if not OmegaConf.is_list(model.stages) or not 1 <= len(model.stages) <= 5:
            _fail("model.stages", model.stages, "must be 1 to 5 stages (each halves 32x32 images), e.g. [[64],[128]]")
        for i, stage in enumerate(model.stages):
            _int_list(f"model.stages[{i}]", stage)

    activation = cfg.activation
    if "pieces" in activation and (not _is_int(activation.pieces) or activation.pieces < 2):
        _fail("activation.pieces", activation.pieces, "must be an integer >= 2 (the linear pieces of a Maxout unit)")
    if "negative_slope" in activation and not _is_number(activation.negative_slope):
        _fail("activation.negative_slope", activation.negative_slope, "must be a number")
    if "lower" in activation and not (_is_number(activation.lower) and _is_number(activation.upper)
                                      and 0 <= activation.lower <= activation.upper):
        _fail("activation.lower", activation.lower, f"must satisfy 0 <= lower <= upper (upper={activation.upper})")

    init = cfg.init
    if init.scheme not in _options("init"):
        _fail("init.scheme", init.scheme, f"allowed: {', '.join(_options('init'))}")
    for key in ("std", "bound"):
        if key in init and (not _is_number(init[key]) or init[key] <= 0):
            _fail(f"init.{key}", init[key], "must be a positive number")
    for key in ("value", "bias"):
        if key in init and not _is_number(init[key]):
            _fail(f"init.{key}", init[key], "must be a number")
    if "mode" in init and init.mode not in ("fan_in", "fan_out"):
        _fail("init.mode", init.mode, "allowed: fan_in (keeps the forward variance), fan_out (the backward one)")
    if "gain" in init and init.gain != "auto" and (not _is_number(init.gain) or init.gain <= 0):
        _fail("init.gain", init.gain, "must be auto (matching activation=) or a positive number")
    if init.get("first_layer", "same") not in ("same", "whiten"):
        _fail("init.first_layer", init.first_layer, "allowed: same (like the other layers), whiten (whiten the "
              "training patches)")
    if init.get("first_layer") == "whiten":
        for key in ("whiten_epsilon", "whiten_images"):
            if key not in init:
                raise ConfigError(f"init.first_layer=whiten needs init.{key}: add `+init.{key}=<value>` (init=dirac "
                                  "has them: whiten_epsilon=5e-4, whiten_images=5000).")
        _number_in("init.whiten_epsilon", init.whiten_epsilon, 0, float("inf"), low_open=True)
        if not _is_int(init.whiten_images) or init.whiten_images < 1:
            _fail("init.whiten_images", init.whiten_images, "must be a positive integer")
    bias_epochs = init.get("first_layer_bias_epochs")
    if bias_epochs is not None:
        if init.get("first_layer") != "whiten":
            raise ConfigError(f"init.first_layer_bias_epochs={bias_epochs} is for the whitening layer: set "
                              "init.first_layer=whiten, or init.first_layer_bias_epochs=null.")
        if not _is_int(bias_epochs) or bias_epochs < 0:
            _fail("init.first_layer_bias_epochs", bias_epochs, "must be null (trained all run) or an integer >= 0")

    norm = cfg.norm
    if norm.kind not in _options("norm"):
        _fail("norm.kind", norm.kind, f"allowed: {', '.join(_options('norm'))}")
    if norm.position not in ("before", "after"):
        _fail("norm.position", norm.position, "allowed: before, after (the activation)")
    if "momentum" in norm and (not _is_number(norm.momentum) or not 0 < norm.momentum <= 1):
        _fail("norm.momentum", norm.momentum, "must be a number in (0, 1]")
    if "groups" in norm and (not _is_int(norm.groups) or norm.groups <= 0):
        _fail("norm.groups", norm.groups, "must be a positive integer")
    if "eps" in norm:
        _number_in("norm.eps", norm.eps, 0, 1, low_open=True)
    if "learn_scale" in norm and not isinstance(norm.learn_scale, bool):
        _fail("norm.learn_scale", norm.learn_scale, "allowed: true (a learnt scale), false (fixed at 1)")

    regularization = cfg.regularization
    dropouts = [k for k in ("dropout", "gaussian_dropout", "alpha_dropout") if k in regularization]
    if len(dropouts) > 1:
        raise ConfigError(f"regularization={dropouts} combines {len(dropouts)} kinds of dropout: choose one, "
                          f"e.g. `regularization=[l2,{dropouts[0]}]`.")
    for name in (*dropouts, "dropconnect", "stochastic_depth"):
        for key in ("p", "conv_p"):
            if name in regularization and key in regularization[name]:
                _rate(f"regularization.{name}.{key}", regularization[name][key])
    if "stochastic_depth" in regularization and "blocks_per_stage" not in cfg.model:
        raise ConfigError("regularization=stochastic_depth drops residual blocks: it needs a residual network "
                          "(model=resnet or model=resnet18).")
    if "max_norm" in regularization:
        value = regularization.max_norm.value
        if not _is_number(value) or value <= 0:
            _fail("regularization.max_norm.value", value, "must be a positive number (the largest norm of a unit's "
                  "incoming weights)")

    diagnostics = cfg.diagnostics
    if not _is_int(diagnostics.every_steps) or diagnostics.every_steps < 0:
        _fail("diagnostics.every_steps", diagnostics.every_steps, "must be an integer >= 0 (0: off)")
    if not isinstance(diagnostics.histograms, bool):
        _fail("diagnostics.histograms", diagnostics.histograms, "allowed: true, false")


# ---------------------------------------------------------------------------------------------------------------
# Training techniques: optimizer, schedule, the loop's regularizers, augmentation, preprocessing, averaging,
# evaluation

_METRICS = "allowed: val_acc (higher is better), val_loss (lower is better)"


def _number_in(key: str, value, low: float, high: float, low_open: bool = False, high_open: bool = False) -> None:
    """value must be a number in the interval from low to high, open at the ends the flags say."""
    ok = _is_number(value) and (value > low if low_open else value >= low) and (
        value < high if high_open else value <= high)
    if not ok:
        _fail(key, value, f"must be a number in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}")


def _validate_speed(cfg: DictConfig) -> None:
    """trainer's speed and data-parallel keys; under torchrun (WORLD_SIZE set) the global batch must split evenly."""
    trainer = cfg.trainer
    if trainer.get("precision", "auto") not in ("auto", "fp32", "bf16", "fp16"):
        _fail("trainer.precision", trainer.precision, "allowed: auto (bf16/fp16 on CUDA, fp32 elsewhere), fp32, "
              "bf16, fp16")
    for key in ("channels_last", "compile", "fused_optimizer"):
        if key in trainer and trainer[key] != "auto" and not isinstance(trainer[key], bool):
            _fail(f"trainer.{key}", trainer[key], "allowed: auto (on for CUDA only), true, false")
    if "sync_batch_norm" in trainer and not isinstance(trainer.sync_batch_norm, bool):
        _fail("trainer.sync_batch_norm", trainer.sync_batch_norm, "allowed: true, false")
    if "norm_bias_lr_factor" in trainer:
        _number_in("trainer.norm_bias_lr_factor", trainer.norm_bias_lr_factor, 0, float("inf"), low_open=True)
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world > 1 and trainer.batch_size % world:
        raise ConfigError(f"trainer.batch_size={trainer.batch_size} is the global batch of {world} processes and "
                          f"must be divisible by {world}: set trainer.batch_size={trainer.batch_size // world * world}.")


def _validate_training(cfg: DictConfig) -> None:
    optimizer = cfg.optimizer
    if optimizer.get("impl", "torch") not in ("torch", "reference"):
        _fail("optimizer.impl", optimizer.impl, "allowed: torch (torch.optim), reference (runner.optimization.reference)")
    if "bias_correction" in optimizer and not isinstance(optimizer.bias_correction, bool):
        _fail("optimizer.bias_correction", optimizer.bias_correction, "allowed: true, false")
    if optimizer.get("bias_correction", True) is False and optimizer.get("impl", "torch") != "reference":
        raise ConfigError("optimizer.bias_correction=false needs the lecture's update rule: add "
                          "optimizer.impl=reference (torch.optim always corrects the bias).")
    if "momentum" in optimizer:
        _number_in("optimizer.momentum", optimizer.momentum, 0, 1, high_open=True)
    if "alpha" in optimizer:
        _number_in("optimizer.alpha", optimizer.alpha, 0, 1, high_open=True)
    if "betas" in optimizer:
        if not OmegaConf.is_list(optimizer.betas) or len(optimizer.betas) != 2:
            _fail("optimizer.betas", optimizer.betas, "must be a list of two numbers in [0, 1), e.g. [0.9,0.999]")
        for i, beta in enumerate(optimizer.betas):
            _number_in(f"optimizer.betas[{i}]", beta, 0, 1, high_open=True)
    if "eps" in optimizer:
        _number_in("optimizer.eps", optimizer.eps, 0, float("inf"), low_open=True)
    regularization = cfg.regularization
    coupled = [k for k in ("l2", "elastic_net") if k in regularization]
    if optimizer._target_.endswith(".AdamW") and coupled:
        raise ConfigError(f"optimizer=adamw decays the weights decoupled from the gradient; regularization={coupled} "
                          "would add a coupled L2 penalty beside it (that is Adam + L2, not AdamW). Use "
                          "`optimizer=adamw regularization=[weight_decay]`, or `optimizer=adam regularization=[l2]`.")
    _validate_speed(cfg)
    reference = cfg.trainer.get("lr_reference_batch_size")
    if reference is not None and (not _is_int(reference) or reference <= 0):
        _fail("trainer.lr_reference_batch_size", reference, "must be null or a positive integer")

    schedule = cfg.schedule
    epochs = cfg.trainer.epochs
    _number_in("schedule.warmup_epochs", schedule.warmup_epochs, 0, epochs, high_open=True)
    for key in ("step_epochs", "scale_epochs", "cycle_epochs", "half_cycle_epochs", "exponent"):
        if key in schedule:
            _number_in(f"schedule.{key}", schedule[key], 0, float("inf"), low_open=True)
    for key in ("gamma", "gamma_per_epoch"):
        if key in schedule:
            _number_in(f"schedule.{key}", schedule[key], 0, 1, low_open=True)
    if "factor" in schedule:
        _number_in("schedule.factor", schedule.factor, 0, 1, low_open=True, high_open=True)
    if "min_factor" in schedule:
        _number_in("schedule.min_factor", schedule.min_factor, 0, 1)
    if "milestone_epochs" in schedule:
        milestones = schedule.milestone_epochs
        if not OmegaConf.is_list(milestones) or not all(_is_number(m) and m > 0 for m in milestones) or list(
                milestones) != sorted(milestones):
            _fail("schedule.milestone_epochs", milestones, "must be an ascending list of positive epochs, e.g. [5,8]")
    if "cycle_mult" in schedule and (not _is_int(schedule.cycle_mult) or schedule.cycle_mult < 1):
        _fail("schedule.cycle_mult", schedule.cycle_mult, "must be an integer >= 1")
    for key in ("peak_fraction", "start_factor", "end_factor"):
        if key in schedule:
            _number_in(f"schedule.{key}", schedule[key], 0, 1)
    if "pct_start" in schedule:
        _number_in("schedule.pct_start", schedule.pct_start, 0, 1, low_open=True, high_open=True)
    for key in ("div_factor", "final_div_factor"):
        if key in schedule:
            _number_in(f"schedule.{key}", schedule[key], 1, float("inf"))
    if "threshold" in schedule:
        _number_in("schedule.threshold", schedule.threshold, 0, float("inf"))
    if "patience_epochs" in schedule and (not _is_int(schedule.patience_epochs) or schedule.patience_epochs < 0):
        _fail("schedule.patience_epochs", schedule.patience_epochs, "must be an integer >= 0")
    if "snapshot_ensemble" in schedule and not isinstance(schedule.snapshot_ensemble, bool):
        _fail("schedule.snapshot_ensemble", schedule.snapshot_ensemble, "allowed: true, false")
    monitors = [("schedule", schedule)] if "metric" in schedule else []
    if "early_stopping" in regularization:
        monitors.append(("regularization.early_stopping", regularization.early_stopping))
    for where, node in monitors:
        if node.metric not in ("val_acc", "val_loss"):
            _fail(f"{where}.metric", node.metric, _METRICS)
        if cfg.data.val_size == 0:
            raise ConfigError(f"{where} watches {node.metric}, but data.val_size=0 leaves no validation split: "
                              "set data.val_size=<images held out>.")

    if "elastic_net" in regularization:
        for key in ("l1", "l2"):
            _number_in(f"regularization.elastic_net.{key}", regularization.elastic_net[key], 0, float("inf"))
    for name in ("l1", "elastic_net"):
        if name in regularization and not isinstance(regularization[name].proximal, bool):
            _fail(f"regularization.{name}.proximal", regularization[name].proximal, "allowed: true, false")
    if "label_smoothing" in regularization:
        _number_in("regularization.label_smoothing.value", regularization.label_smoothing.value, 0, 1, high_open=True)
    if "grad_clip" in regularization:
        clip = regularization.grad_clip
        if clip.by not in ("norm", "value"):
            _fail("regularization.grad_clip.by", clip.by, "allowed: norm (global L2 norm), value (each entry)")
        _number_in("regularization.grad_clip.threshold", clip.threshold, 0, float("inf"), low_open=True)
    if "early_stopping" in regularization:
        stop = regularization.early_stopping
        if not _is_int(stop.patience_epochs) or stop.patience_epochs < 1:
            _fail("regularization.early_stopping.patience_epochs", stop.patience_epochs, "must be an integer >= 1")
        _number_in("regularization.early_stopping.min_delta", stop.min_delta, 0, float("inf"))

    augmentation = cfg.augmentation
    if "padding" in augmentation and (not _is_int(augmentation.padding) or augmentation.padding < 0):
        _fail("augmentation.padding", augmentation.padding, "must be an integer >= 0")
    if augmentation.get("pad_mode", "zeros") not in PAD_MODES:
        _fail("augmentation.pad_mode", augmentation.pad_mode, "allowed: zeros (a black border), reflect (the image "
              "mirrored at its edge)")
    if "flip" in augmentation and not isinstance(augmentation.flip, bool) and augmentation.flip != "alternate":
        _fail("augmentation.flip", augmentation.flip, "allowed: true, false, alternate (each image mirrored in every "
              "other epoch)")
    for key in ("brightness", "contrast", "saturation"):
        if key in augmentation:
            _number_in(f"augmentation.{key}", augmentation[key], 0, 1)
    if "cutout_pixels" in augmentation and (not _is_int(augmentation.cutout_pixels)
                                            or not 0 <= augmentation.cutout_pixels <= 32):
        _fail("augmentation.cutout_pixels", augmentation.cutout_pixels, "must be an integer in [0, 32]")
    if "min_area_fraction" in augmentation:
        _number_in("augmentation.min_area_fraction", augmentation.min_area_fraction, 0, 1, low_open=True)
    if "aspect_ratio" in augmentation:
        ratio = augmentation.aspect_ratio
        if not OmegaConf.is_list(ratio) or len(ratio) != 2 or not all(_is_number(r) and r > 0 for r in ratio) or (
                ratio[0] > ratio[1]):
            _fail("augmentation.aspect_ratio", ratio, "must be [low, high] with 0 < low <= high, e.g. [0.75,1.3333]")

    preprocess = cfg.preprocess
    if "components" in preprocess and (not _is_int(preprocess.components) or not 1 <= preprocess.components <= 3072):
        _fail("preprocess.components", preprocess.components, "must be an integer in [1, 3072] (3 x 32 x 32 pixels)")
    if "epsilon" in preprocess:
        _number_in("preprocess.epsilon", preprocess.epsilon, 0, float("inf"), low_open=True)

    if "decay" in cfg.averaging:
        _number_in("averaging.decay", cfg.averaging.decay, 0, 1, low_open=True, high_open=True)
    if "ramp_power" in cfg.averaging:
        _number_in("averaging.ramp_power", cfg.averaging.ramp_power, 0, float("inf"))
    if "every_steps" in cfg.averaging and (not _is_int(cfg.averaging.every_steps) or cfg.averaging.every_steps < 1):
        _fail("averaging.every_steps", cfg.averaging.every_steps, "must be a positive integer")
    translate = cfg.evaluation.get("tta_translate", 0)
    if not _is_int(translate) or not 0 <= translate <= 8:
        _fail("evaluation.tta_translate", translate, "must be an integer in [0, 8] (pixels; 0: off)")

    evaluation = cfg.evaluation
    if evaluation.get("tta_pad_mode", "zeros") not in PAD_MODES:
        _fail("evaluation.tta_pad_mode", evaluation.tta_pad_mode, "allowed: zeros, reflect (the border of translated "
              "views)")
    if not isinstance(evaluation.tta_flip, bool):
        _fail("evaluation.tta_flip", evaluation.tta_flip, "allowed: true, false")
    if not _is_int(evaluation.ece_bins) or evaluation.ece_bins < 1:
        _fail("evaluation.ece_bins", evaluation.ece_bins, "must be a positive integer")
    passes = evaluation.mc_dropout_passes
    if not _is_int(passes) or passes < 0:
        _fail("evaluation.mc_dropout_passes", passes, "must be an integer >= 0 (0: off)")
    stochastic = [k for k in ("dropout", "gaussian_dropout", "alpha_dropout", "dropconnect") if k in regularization
                  and any(regularization[k].get(rate, 0) > 0 for rate in ("p", "conv_p"))]
    if passes > 0 and not stochastic:
        raise ConfigError(f"evaluation.mc_dropout_passes={passes} needs dropout in the model (a rate p > 0): add one, "
                          "e.g. `regularization=[l2,dropout]`, or set evaluation.mc_dropout_passes=0.")


# ---------------------------------------------------------------------------------------------------------------
# Transfer learning: the task split, the weights to start from, what trains (runner/transfer.py)

_TORCHVISION_WEIGHTS = re.compile(r"^torchvision:\w+_Weights\.\w+$")


def _validate_transfer(cfg: DictConfig) -> None:
    data = cfg.data
    classes = data.get("classes")
    if classes is not None:
        n = data.num_classes
        if not OmegaConf.is_list(classes) or len(classes) < 2 or not all(_is_int(c) and 0 <= c < n for c in classes) \
                or len(set(classes)) != len(classes):
            _fail("data.classes", classes, f"must be null or a list of at least two distinct class indices in "
                  f"[0, {n}), e.g. [0,1,2,3,4]")
    if data.get("train_half") not in (None, "first", "second"):
        _fail("data.train_half", data.train_half, "allowed: null, first, second")
    per_class = data.get("per_class")
    if per_class is not None and (not _is_int(per_class) or per_class <= 0):
        _fail("data.per_class", per_class, "must be null or a positive integer (labelled images per class)")

    source = cfg.model.get("pretrained")
    if source is not None:
        if not isinstance(source, str) or not source:
            _fail("model.pretrained", source, "must be null, a path, or torchvision:<Weights>")
        if source.startswith("torchvision:"):
            if not _TORCHVISION_WEIGHTS.match(source):
                _fail("model.pretrained", source, "torchvision weights are named like "
                      "torchvision:ResNet18_Weights.IMAGENET1K_V1")
        elif not Path(source).exists():
            _fail("model.pretrained", source, "no such file or directory (a runner run directory, a checkpoint or a "
                  "state dict file)")

    if cfg.model._target_.endswith(".torchvision_resnet18") and (
            not cfg.activation._target_.endswith(".ReLU") or cfg.norm.kind != "batch"):
        raise ConfigError("model=torchvision_resnet18 is torchvision's network with its own ReLU and batch norm: "
                          "use activation=relu norm=batch (the defaults).")

    transfer = cfg.transfer
    if transfer.name not in _options("transfer"):
        _fail("transfer.name", transfer.name, f"allowed: {', '.join(_options('transfer'))}")
    if transfer.name != "none" and source is None:
        raise ConfigError(f"transfer={transfer.name} reuses trained layers, but model.pretrained is null: give the "
                          "weights, e.g. `model.pretrained=outputs/<date>/<run>`, or use transfer=none.")
    if "lr_mult" in transfer:
        _number_in("transfer.lr_mult", transfer.lr_mult, 0, float("inf"), low_open=True)
    if transfer.name == "freeze_until" and (OmegaConf.is_missing(transfer, "freeze_until")
                                       or not isinstance(transfer.freeze_until, str)):
        raise ConfigError("transfer=freeze_until needs the last frozen layer: `transfer.freeze_until=<layer>`, "
                          "e.g. features.1 or blocks.3 (a wrong name is answered with the model's layers).")
    if "unfreeze_every_epochs" in transfer and (not _is_int(transfer.unfreeze_every_epochs)
                                                or transfer.unfreeze_every_epochs <= 0):
        _fail("transfer.unfreeze_every_epochs", transfer.unfreeze_every_epochs, "must be a positive integer")

    objective = cfg.objective
    if objective.name not in _options("objective"):
        _fail("objective.name", objective.name, f"allowed: {', '.join(_options('objective'))}")
    if "decoder_width" in objective and (not _is_int(objective.decoder_width) or objective.decoder_width < 8):
        _fail("objective.decoder_width", objective.decoder_width, "must be an integer >= 8")
    if objective.name == "autoencoder" and transfer.name != "none":
        raise ConfigError(f"objective=autoencoder pretrains all layers without labels; transfer={transfer.name} "
                          "belongs to the later run that reuses them: use transfer=none here.")
