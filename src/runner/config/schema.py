"""The config's schema: each group's keys, what values they allow, and the group's default for a key that only some
of its option files set, declared once. `complete_and_check` walks a config against it: it fills those defaults in
(so a run's config.yaml records every value used) and checks every key, refusing unknown ones. The checks that tie
several keys together are runner.config.rules.

Defaults an option file sets stay in its YAML; a key every option (or config.yaml) sets is `required` here.
Keys starting with `_` (`_target_`, `_partial_`) are Hydra's and allowed in every group."""

import difflib
import math
import re
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from runner.config import lr as auto_lr
from runner.config import option_keys
from runner.config.errors import ConfigError
from runner.config.keys import (
    CONFIG_DIR,
    OPTIONAL,
    PAD_MODES,
    REQUIRED,
    VAL_METRICS,
    Key,
    any_option,
    boolean,
    either,
    integer,
    is_int,
    list_of,
    number,
    one_of,
    option_names,
    options,
    required,
    runners,
    text,
)
from runner.config.regularizers import REGULARIZERS

CIFAR10_TRAIN_IMAGES = 50_000
CIFAR10_FOLDER = "cifar-10-batches-py"  # the official archive's folder, which data.root holds

_POSITIVE_INT, _POSITIVE = integer("(0, inf)"), number("(0, inf)")
_SEED = integer("[0, inf)")
_ON_OFF_AUTO = one_of({"auto": "on for CUDA only", True: "", False: ""})
_WIDTHS = list_of(_POSITIVE_INT, "a list of positive integers, not empty")
_FRACTION = number("[0, 1]")

_TORCHVISION_WEIGHTS = re.compile(r"torchvision:\w+_Weights\.\w+")


def _weights(value) -> str | None:
    """model.pretrained: null, a path that exists, or torchvision's weights by name."""
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        return "must be null, a path, or torchvision:<Weights>"
    if value.startswith("torchvision:"):
        return None if _TORCHVISION_WEIGHTS.fullmatch(value) else \
            "torchvision weights are named like torchvision:ResNet18_Weights.IMAGENET1K_V1"
    return None if Path(value).exists() else \
        "no such file or directory (a runner run directory, a checkpoint or a state dict file)"


def _auto_lr(value) -> str | None:
    """optimizer.auto_lr: the peak lr of optimizer.lr=auto with batch norm and without (runner.config.lr)."""
    ok = isinstance(value, DictConfig) and set(value) == {"batch", "other"} and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in value.values())
    return None if ok else "must be {batch: <lr>, other: <lr>}, two positive numbers"


class Some(dict):
    """A node holding some of these sub-nodes: regularization holds the chosen regularizers only."""


SCHEMA = {
    **required(
        seed=_SEED,
        # a device index past any machine's (torch.device overflows on 20 digits) is refused here, in words
        device=text(r"auto|cpu|mps|cuda(:(0|[1-9]\d{0,2}))?", "allowed: auto, cpu, cuda, cuda:N, mps (N: the GPU's "
                    "index, 0..999)")),
    "trainer": required(
        epochs=_POSITIVE_INT, batch_size=_POSITIVE_INT, eval_batch_size=_POSITIVE_INT, log_every_steps=_POSITIVE_INT,
        resume=text(message="must be auto, never, or a run directory or checkpoint to continue"),
        resume_allow=list_of(text(r"[\w.]+", "must be a config key or group, e.g. optimizer.lr or averaging"),
                             "a list of config keys or groups, e.g. [averaging,schedule]", length=(0, math.inf)),
        save_best=boolean(), deterministic=boolean(), progress=one_of("auto", True, False),
        progress_every_s=number("[0, inf)"),
        lr_reference_batch_size=integer("(0, inf)", null=True), norm_bias_lr_factor=_POSITIVE,
        precision=one_of({"auto": "bf16/fp16 on CUDA, fp32 elsewhere", "fp32": "", "bf16": "", "fp16": ""}),
        channels_last=_ON_OFF_AUTO, compile=_ON_OFF_AUTO, fused_optimizer=_ON_OFF_AUTO, sync_batch_norm=boolean()),
    "data": {
        **required(
            name=options("data"), val_size=integer("[0, inf)"), split_seed=_SEED,
            train_size=integer("(0, inf)", null=True), num_classes=integer("[2, inf)"),
            classes=list_of(integer("[0, inf)"), "null or a list of at least two class indices, e.g. [0,1,2,3,4]",
                            length=(2, math.inf), null=True),
            train_half=one_of(None, "first", "second"),
            per_class=integer("(0, inf)", null=True, why="labelled images per class")),
        "root": text(), "cache_dir": text(null=True, message="must be null or a directory"), "download": boolean(),
        "train_examples": _POSITIVE_INT, "test_examples": _POSITIVE_INT, "noise": number("[0, inf)"),
        "generator_seed": _SEED, "difficulty": _FRACTION, "label_noise": _FRACTION,
    },
    "model": {
        **required(_target_=text(), pretrained=runners("the weights to start from (build_pretrained)", Key(_weights))),
        "widths": _WIDTHS, "fc_widths": list_of(_POSITIVE_INT, "a list of positive integers", length=(0, math.inf)),
        "stages": list_of(_WIDTHS, "1 to 5 stages (each halves 32x32 images), e.g. [[64],[128]]", length=(1, 5)),
        "depth": integer("[0, inf)", why="the number of hidden layers"), "width": _POSITIVE_INT,
        "convs_per_stage": _POSITIVE_INT, "blocks_per_stage": _POSITIVE_INT,
        "stem_width": _POSITIVE_INT, "stem_kernel": _POSITIVE_INT, "head_scale": _POSITIVE,
        "pool": one_of({"max": "2x2 max-pool", "avg": "2x2 average pool",
                        "fractional": "fractional max-pooling by pool_ratio"}),
        "pool_ratio": number("(0.5, 1)", why="each side shrinks to int(side * pool_ratio); Graham 2014's "
                             "1/sqrt(2) = 0.7071 is the default"),
    },
    "activation": {
        **required(_target_=text()),
        "pieces": integer("[2, inf)", why="the linear pieces of a Maxout unit"), "negative_slope": number(),
        "init": number(), "num_parameters": _POSITIVE_INT, "alpha": number(),
        "approximate": one_of("none", "tanh"), "lower": number("[0, inf)"), "upper": number("[0, inf)"),
    },
    "init": {
        **required(name=options("init")),
        "std": _POSITIVE, "bound": _POSITIVE, "value": number(), "bias": number(),
        "mode": one_of({"fan_in": "keeps the forward variance", "fan_out": "the backward one"}),
        "gain": either(one_of("auto"), _POSITIVE, "must be auto (matching activation=) or a positive number"),
        "first_layer": one_of({"same": "like the other layers", "whiten": "whiten the training patches"},
                              default="same"),
        "first_layer_trainable": boolean(default=True),
        "first_layer_bias_epochs": runners("the epochs a whitened first layer's bias trains (the loop)", integer(
            "[0, inf)", null=True, why="null: trained all run", default=None)),
        # any scheme may whiten its first layer (init.first_layer=whiten), so every init= option takes these
        **any_option(whiten_epsilon=_POSITIVE, whiten_images=runners(
            "the images a whitened first layer is fitted on (init_inputs)", _POSITIVE_INT)),
    },
    "norm": {
        **required(name=options("norm"), position=one_of("before", "after")),
        "momentum": number("(0, 1]"), "groups": _POSITIVE_INT, "eps": number("(0, 1]"),
        "learn_scale": one_of({True: "a learnt scale", False: "fixed at 1"}),
        "reestimate_batches": runners("batch norm statistics recomputed after training (BatchNormReestimate)",
                                      integer("[0, inf)", why="training batches to recompute batch norm statistics "
                                              "over after training; 0: off", default=0)),
    },
    "optimizer": {
        **required(_target_=text(), lr=_POSITIVE, impl=runners(
            "torch's class or the lecture's rule (make_optimizer)",
            one_of({"torch": "torch.optim", "reference": "runner.optimization.reference"}))),
        "bias_correction": runners("an argument of the lecture's Adam and AdamW only (make_optimizer)", boolean()),
        "momentum": number("[0, 1)"), "alpha": number("[0, 1)"),
        "betas": list_of(number("[0, 1)"), "a list of two numbers in [0, 1), e.g. [0.9,0.999]", length=(2, 2)),
        "eps": _POSITIVE, "nesterov": boolean(), "momentum_decay": number("[0, inf)"),
        # optimizer.lr=auto's table and runner's record of its choice (runner.config.lr), for any optimizer
        **any_option(
            auto_lr=runners("the peak lr of optimizer.lr=auto, with batch norm and without (config.lr)",
                            Key(_auto_lr)),
            lr_auto=runners("which auto_lr entry optimizer.lr=auto chose (config.lr; the start-up log)",
                            one_of({"batch": "auto chose auto_lr.batch", "other": "auto chose auto_lr.other"}))),
    },
    "schedule": {
        **required(name=options("schedule"), warmup_epochs=runners(
            "a linear warmup in front of any schedule (schedule_factor)", number("[0, inf)"))),
        "step_epochs": _POSITIVE, "scale_epochs": _POSITIVE, "cycle_epochs": _POSITIVE,
        "half_cycle_epochs": _POSITIVE, "exponent": _POSITIVE,
        "gamma": number("(0, 1]"), "gamma_per_epoch": number("(0, 1]"),
        "factor": number("(0, 1)"), "min_factor": _FRACTION,
        "milestone_epochs": list_of(_POSITIVE, "an ascending list of positive epochs, e.g. [5,8]", ascending=True),
        "cycle_mult": integer("[1, inf)"),
        "peak_fraction": _FRACTION, "start_factor": _FRACTION, "end_factor": _FRACTION,
        "pct_start": number("(0, 1)"), "div_factor": number("[1, inf)"), "final_div_factor": number("[1, inf)"),
        "metric": one_of(VAL_METRICS), "patience_epochs": integer("[0, inf)"), "threshold": number("[0, inf)"),
        "snapshot_ensemble": runners("a snapshot at every cycle end (the loop)", boolean(default=False)),
    },
    "regularization": Some({name: r.keys for name, r in REGULARIZERS.items()}),
    "augmentation": {
        **required(name=options("augmentation")),
        "padding": integer("[0, inf)", default=0),
        "pad_mode": one_of(PAD_MODES, default="zeros"),
        "flip": one_of({True: "", False: "", "alternate": "each image mirrored in every other epoch"}, default=False),
        "cutout_pixels": integer("[0, 32]", default=0),
        "brightness": _FRACTION, "contrast": _FRACTION, "saturation": _FRACTION,
        "min_area_fraction": number("(0, 1]"),
        "aspect_ratio": list_of(_POSITIVE, "[low, high] with 0 < low <= high, e.g. [0.75,1.3333]", length=(2, 2),
                                ascending=True),
    },
    "preprocess": {
        **required(name=options("preprocess")),
        "components": integer("[1, 3072]", why="3 x 32 x 32 pixels"), "epsilon": _POSITIVE,
    },
    "averaging": {
        **required(name=options("averaging")),
        "decay": number("(0, 1)"), "every_steps": _POSITIVE_INT, "ramp_power": number("[0, inf)"),
    },
    "transfer": {
        **required(name=options("transfer")),
        "lr_mult": runners("the lr factor of the reused layers (build_optimizer)", _POSITIVE),
        "unfreeze_every_epochs": _POSITIVE_INT,
        "freeze_until": text(message="must be the name of the last frozen layer, e.g. features.1 or blocks.3"),
        "layer": runners("the layer a linear probe reads its features from (cut_for_probe)", Key(
            lambda v: None if v is None or is_int(v) or (isinstance(v, str) and v) else
            "must be null (the whole body), a layer's name (e.g. features.2) or its index (0: the first)")),
    },
    "objective": {**required(name=options("objective")), "decoder_width": integer("[8, inf)"),
                  "lr_factor": number("(0, inf)", null=True,
                                      why="the optimizer's lr is multiplied by it; null: 0.25 for SGD, 1 otherwise")},
    "evaluation": required(
        tta_flip=boolean(), tta_translate=integer("[0, 8]", why="pixels; 0: off"),
        tta_pad_mode=one_of(PAD_MODES),
        tta_average=one_of({"probs": "the weighted mean of the views' softmax",
                            "logits": "the softmax of the weighted mean of their logits (airbench94)"}),
        tta_translate_weight=number("[0, 1]", null=True,
                                    why="the translated views' share; null: every view weighs the same"),
        mc_dropout_passes=integer("[0, inf)", why="0: off"),
        ece_bins=_POSITIVE_INT, sharpness_samples=integer("[0, inf)", why="0: off"),
        sharpness_radius=_POSITIVE, sharpness_images=_POSITIVE_INT,
        hessian_iters=integer("[0, inf)", why="0: off")),
    "prune": {
        **required(_target_=text(), name=options("prune")),
        "sparsity": number("[0, 1)", why="the fraction of conv/linear weights set to 0"),
        "scope": one_of({"global": "the smallest weights of the whole net", "layer": "the same fraction per layer"}),
        "when": one_of({"after": "one-shot, then fine_tune_epochs", "during": "a gradual schedule"}),
        "fine_tune_epochs": integer("[0, inf)"), "start_epoch": integer("[0, inf)"), "every_steps": _POSITIVE_INT,
        "ramp": one_of({"cubic": "Zhu & Gupta 2017", "linear": ""}),
    },
    "export": required(
        enabled=boolean(),
        latency_batch_sizes=list_of(_POSITIVE_INT, "a list of positive batch sizes, e.g. [1,256]"),
        latency_repeats=integer("[2, inf)", why="timed calls per measurement")),
    "diagnostics": required(every_steps=integer("[0, inf)", why="0: off"), histograms=boolean()),
}

# Top-level keys that are not runner's: the sweeper validates configs that still hold Hydra's own node.
_NOT_RUNNERS = ("hydra",)

# Keys of an option that runner reads itself, not arguments of its `_target_` (runner.engine.build.option leaves
# them out), and where they act.
RUNNER_KEYS = {key: rule.runner for spec in SCHEMA.values() if type(spec) is dict
               for key, rule in spec.items() if isinstance(rule, Key) and rule.runner}


def fail(key: str, value, allowed: str, override: str | None = None) -> None:
    raise ConfigError(f"{key}={value!r} is invalid: {allowed}. Change it with `{override or key}=<value>` on the "
                      "command line.")


def complete_and_check(cfg: DictConfig) -> None:
    """Fill in the schema's defaults that `cfg` lacks and resolve optimizer.lr=auto (in place), then check every key.
    Raises ConfigError."""
    auto_lr.resolve(cfg)
    walk(cfg, SCHEMA, "")


def walk(node: DictConfig, spec: dict, path: str) -> None:
    """Complete and check `node`, the config at `path` ("" for the root, "optimizer." for a group), by `spec`: in a
    group of option files, by the keys of the option it holds (runner.config.option_keys)."""
    group = path[:-1]
    option = option_keys.option_of(group, node, spec) if option_keys.has_options(group, spec) else None
    accepted = option_keys.accepted_keys(group, option, spec) if option else list(spec)
    for key in node:
        if key in accepted or str(key).startswith("_") or (path == "" and key in _NOT_RUNNERS):
            continue
        if key in spec:
            raise ConfigError(option_keys.not_a_key(group, option, key, spec))
        raise ConfigError(option_keys.unknown(f"{path}{key}", path, accepted, list(spec)))
    if isinstance(spec, Some):
        _chosen_whole(node, spec)
    for key, rule in spec.items():
        where = f"{path}{key}"
        if key in node.keys() and OmegaConf.is_missing(node, key):
            raise ConfigError(f"{where} has no value (???): set it with `{where}=<value>`.")
        if key not in node:
            default = rule.default if isinstance(rule, Key) else (OPTIONAL if isinstance(spec, Some) else REQUIRED)
            if default is REQUIRED:
                raise ConfigError(f"{where} is missing: every config needs it; set it with `+{where}=<value>`.")
            if default is not OPTIONAL:
                with open_dict(node):
                    node[key] = default
        elif isinstance(rule, dict):
            if not isinstance(node[key], DictConfig):
                fail(where, node[key], f"must be a group of keys ({', '.join(rule)})")
            walk(node[key], rule, f"{where}.")
        else:
            _check(rule, node[key], where, where)


def _check(rule: Key, value, where: str, override: str) -> None:
    problem = rule.problem(value)
    if problem:
        fail(where, value, problem, override)
    if rule.item is not None and value is not None:
        for i, item in enumerate(value):
            _check(rule.item, item, f"{where}[{i}]", override)


def _chosen_whole(node: DictConfig, spec: Some) -> None:
    """Each regularizer in `node` (regularization) holds every key its file sets: one added key by key with `+` was
    never chosen."""
    whole = [name for name in node if name in spec and isinstance(node[name], DictConfig) and all(
        k in node[name] for k, rule in spec[name].items() if rule.default is REQUIRED)]
    for name in node:
        if name in spec and name not in whole and isinstance(node[name], DictConfig):
            missing = [k for k, rule in spec[name].items() if rule.default is REQUIRED and k not in node[name]]
            raise ConfigError(f"regularization.{name} has no {', '.join(missing)}: it is set key by key, not chosen. "
                              f"Choose it with `regularization=[{','.join([*whole, name])}]` (its file sets every "
                              "key), then change its keys without `+`.")


# Sweep functions whose arguments are options (`optimizer=choice(adam,sgd)`); glob(...) matches, it names none.
_SWEEP_FUNCTION = re.compile(r"\b(choice|sort|shuffle)\(")
# Options that may come from outside configs/: then the command line is left to Hydra.
_OTHER_SEARCH_PATHS = ("--config-dir", "-cd", "--config-path", "-cp", "hydra.searchpath")


def check_choices(args: list[str]) -> None:
    """Each `group=option` of a command line (also `+group=`, `group@pkg=`, `~group=`, sweeps `a,b`, `choice(a,b)`,
    lists `[a,b]`) names a file configs/<group>/<option>.yaml: before Hydra composes, so that a typo is one line
    with a did-you-mean, not Hydra's listing. Hydra's own groups (hydra/...) are Hydra's to check."""
    if any(arg.startswith(_OTHER_SEARCH_PATHS) for arg in args):
        return
    for arg in args:
        key, _, value = arg.partition("=")
        group = key.lstrip("+~").split("@")[0]
        if arg.startswith("-") or not value or group.startswith("hydra") or "." in group or value.startswith("glob(") \
                or not (CONFIG_DIR / group).is_dir():
            continue
        for option in re.findall(r"[^\s,\[\]()'\"]+", _SWEEP_FUNCTION.sub("(", value)):
            if "=" not in option and option != "null" and not (CONFIG_DIR / group / f"{option}.yaml").is_file():
                names = option_names(group)
                close = difflib.get_close_matches(option, names, n=3, cutoff=0.6)
                hint = f"did you mean {' or '.join(close)}? " if close else ""
                raise ConfigError(f"{group}={option} is not an option: {hint}allowed: {', '.join(names)} (the files "
                                  f"of configs/{group}/).")
