"""The regularizers of `regularization=` (configs/regularization/<name>.yaml) in one table, REGULARIZERS: what each
is, where it acts, its kind and its keys. The config check, the rules between keys, the model builders, the
optimizer and the evaluation ask it (`chosen`, `in_loop`, `shifting_selu`), never a regularizer's name.

The table holds runner's own regularizers, declared below with their keys' types, and every other file of
configs/regularization/ as its file says it: a new regularizer that acts in the training loop is its option file,
whose `_target_` names its component (a runner.engine.hooks.Component taking the file's other keys), the component,
and its test; its keys take the values of the types the file gives them.

Plain Python: the config check imports it before torch."""

from dataclasses import dataclass

import yaml

from runner.config.keys import (
    CONFIG_DIR,
    VAL_METRICS,
    Key,
    boolean,
    integer,
    is_int,
    number,
    one_of,
    option_names,
    required,
    text,
)

# Where a regularizer acts.
NETWORK = "the network's layers"  # runner.nets.layers, placed by the model builders
OPTIMIZER = "the optimizer's parameter groups and step"  # runner.optimization.optimizers, runner.engine.build
LOSS = "the loss"  # runner.engine.build.build_objective
LOOP = "the training loop"  # a component of runner.engine.components, named in the table
END = "the end of training"

GRAD_CLIP_BY = {"norm": "the global L2 norm of all gradients", "value": "each entry"}


@dataclass(frozen=True)
class Regularizer:
    what: str
    acts: tuple[str, ...]
    kind: str  # penalty, decay, constraint, dropout (on units; one kind per network), dropconnect, depth, ...
    keys: dict[str, Key]
    component: str = ""  # acting in the LOOP: the runner.engine.hooks.Component class built with its keys
    coupled_l2: bool = False  # adds value * w to the gradient: refused beside AdamW's decoupled decay
    selu: str = ""  # "keeps": made for SELU's self-normalization; "shifts": moves the mean and variance SELU keeps


_PENALTY_KEYS = dict(value=number("[0, inf)"), decay_norm_and_bias=boolean())
# every: where the model builders put it; after_last_norm: only behind the last normalization layer (Li et al.
# 2019's way out of the variance shift between dropout and batch norm).
PLACEMENTS = {"every": "where the model builders put it", "after_last_norm": "only behind the last norm layer"}
_PLACEMENT = one_of(PLACEMENTS, default="every")
_DROPOUT_KEYS = {**required(p=number("[0, 1)"), conv_p=number("[0, 1)", why="after each conv block")),
                 "placement": _PLACEMENT}

REGULARIZERS = {
    "l2": Regularizer("penalty value/2 * |w|^2: value * w added to the gradient (coupled: Adam rescales it)",
                      (OPTIMIZER,), "penalty", required(**_PENALTY_KEYS), coupled_l2=True),
    "weight_decay": Regularizer("decoupled decay w <- w * (1 - lr * value) before each step, for any optimizer "
                                "(Loshchilov & Hutter 2019)", (OPTIMIZER,), "decay", required(**_PENALTY_KEYS)),
    "l1": Regularizer("penalty value * |w|: its subgradient, or with proximal a soft-thresholding step after each "
                      "step that leaves exact zeros", (OPTIMIZER,), "penalty",
                      required(**_PENALTY_KEYS, proximal=boolean())),
    "elastic_net": Regularizer("the L1 and L2 penalties together (Zou & Hastie 2005)", (OPTIMIZER,), "penalty",
                               required(l1=number("[0, inf)"), l2=number("[0, inf)"), proximal=boolean(),
                                        decay_norm_and_bias=boolean()), coupled_l2=True),
    "dropout": Regularizer("units zeroed with probability p in training, the others scaled by 1/(1-p) "
                           "(Srivastava et al. 2014)", (NETWORK,), "dropout", _DROPOUT_KEYS, selu="shifts"),
    "gaussian_dropout": Regularizer("units multiplied by Gaussian noise of mean 1 and variance p/(1-p)",
                                    (NETWORK,), "dropout", _DROPOUT_KEYS, selu="shifts"),
    "alpha_dropout": Regularizer("dropout that keeps SELU's mean and variance (Klambauer et al. 2017)",
                                 (NETWORK,), "dropout", _DROPOUT_KEYS, selu="keeps"),
    "uout": Regularizer("units multiplied by 1 + u, u ~ U(-beta, beta), in training (Li et al. 2019): little "
                        "variance shift before batch norm", (NETWORK,), "dropout",
                        {**required(beta=number("[0, 1)", why="the noise's half-width"),
                                    conv_beta=number("[0, 1)", why="after each conv block")), "placement": _PLACEMENT}),
    "dropconnect": Regularizer("the weights of every linear layer zeroed with probability p in training "
                               "(Wan et al. 2013)", (NETWORK,), "dropconnect", required(p=number("[0, 1)"))),
    "stochastic_depth": Regularizer("residual blocks skipped at random in training, the last with probability p "
                                    "(Huang et al. 2016)", (NETWORK,), "depth", required(p=number("[0, 1)"))),
    "max_norm": Regularizer("each unit's incoming weights put back on the ball of radius value after each step "
                            "(Srivastava et al. 2014)", (OPTIMIZER,), "constraint",
                            required(value=number("(0, inf)", why="the largest norm of a unit's incoming weights"))),
    "label_smoothing": Regularizer("targets (1 - value) * one-hot + value / classes (Szegedy et al. 2016)",
                                   (LOSS,), "target", required(value=number("[0, 1)"))),
    "grad_clip": Regularizer("the gradients clipped by their global norm or by value before each step",
                             (LOOP,), "clipping", required(by=one_of(GRAD_CLIP_BY), threshold=number("(0, inf)")),
                             "runner.engine.components.GradientClipping"),
    "early_stopping": Regularizer("training ends after patience_epochs epochs without a better val metric; the "
                                  "best epoch's weights are put back", (LOOP, END), "stopping",
                                  required(metric=one_of(VAL_METRICS), patience_epochs=integer("[1, inf)"),
                                           min_delta=number("[0, inf)")),
                                  "runner.engine.components.EarlyStopping"),
}


def _typed_like(value) -> Key:
    """The Key of a value an option file gives: its type, as a config check says it."""
    if isinstance(value, bool):
        return boolean()
    if is_int(value):
        return integer()
    if isinstance(value, float):
        return number()
    if isinstance(value, str):
        return text()
    return Key(lambda v: None)  # a list or a node: its component checks it


def _from_file(name: str) -> Regularizer:
    """The entry of a regularizer that only its option file describes: its opening comment says what it is, its
    `_target_` (if any) is the component acting in the loop, its other keys are required, of their values' types."""
    path = CONFIG_DIR / "regularization" / f"{name}.yaml"
    source = path.read_text()
    node = (yaml.safe_load(source) or {}).get(name) or {}
    comment = " ".join(line.lstrip("# ").strip() for line in source.splitlines() if line.startswith("#"))
    keys = required(**{k: _typed_like(v) for k, v in node.items() if not k.startswith("_")})
    target = node.get("_target_", "")
    return Regularizer(comment or f"configs/regularization/{name}.yaml", (LOOP,) if target else (), "other", keys,
                       target)


# The declared regularizers first (their order is their components' order in the loop), then the other files.
REGULARIZERS.update({name: _from_file(name) for name in option_names("regularization")
                     if name not in REGULARIZERS and name != "none"})

# Random in training and deterministic in eval: what MC dropout samples (runner.nets.layers.DROPOUT_TYPES).
MC_DROPOUT_KINDS = ("dropout", "dropconnect")

# The dropout kinds on units, of which a network holds one (runner.nets.layers.Drop).
DROPOUTS = tuple(name for name, r in REGULARIZERS.items() if r.kind == "dropout")


def chosen(regularization, *kinds: str) -> list[str]:
    """The regularizers in `regularization` (the config node) whose kind is one of `kinds`."""
    return [name for name, r in REGULARIZERS.items() if r.kind in kinds and name in regularization]


def in_loop(regularization) -> list[tuple[str, Regularizer]]:
    """The regularizers in `regularization` that act in the training loop, each with its table entry, in the
    table's order (the order of their components' hooks)."""
    return [(name, r) for name, r in REGULARIZERS.items() if LOOP in r.acts and name in regularization]


def coupled_l2(regularization) -> list[str]:
    """The regularizers in `regularization` that add value * w to the gradient (an L2 penalty through it)."""
    return [name for name, r in REGULARIZERS.items() if r.coupled_l2 and name in regularization]


def shifting_selu(regularization, how: str) -> list[str]:
    """The regularizers in `regularization` that `how` ("keeps" or "shifts") SELU's mean and variance."""
    return [name for name, r in REGULARIZERS.items() if r.selu == how and name in regularization]


def component_keys(regularization, name: str) -> dict:
    """The keyword arguments of regularizer `name`'s component: its keys, Hydra's `_` keys left out."""
    return {k: v for k, v in regularization[name].items() if not str(k).startswith("_")}


def decays_decoupled(optimizer) -> bool:
    """Whether the optimizer's own `weight_decay` argument is decoupled decay (AdamW), not an L2 gradient term:
    then regularization=weight_decay goes there, and a coupled L2 beside it is refused."""
    return optimizer._target_.rsplit(".", 1)[-1] == "AdamW"
