"""A run directory's config.yaml, read as data and rebuilt from runner's own option files.

Run directories are shared between people (a sweep from a colleague, a downloaded result), so nothing read from one
is instantiated or trusted: `rebuilt_config` reads config.yaml as plain bounded data (`read_record`), picks each
group's option by what it records (runner.config.option_keys), composes those options from configs/, lays the
recorded values over them (a `_target_` or any Hydra key must be the option file's own), checks the result as a run's
config is checked (runner.config.validate), and bounds the data and model sizes before anything is allocated
(`check_sizes`, on torch's meta device). runner.ensemble builds its members this way, and a sweep's deferred test
pass its trials."""

import re
from pathlib import Path

import yaml
from omegaconf import DictConfig, open_dict

from runner.config import CONFIG_DIR, ConfigError, UserError, option_keys, validate
from runner.config.keys import option_names
from runner.config.schema import SCHEMA

MAX_RECORD_BYTES = 2**20  # a run's config.yaml is 3 KB, its metrics.json a few KB
MAX_LAYERS = 10_000  # layers a model's sizes ask for (a ResNet-18 has 20): more would take long just to lay out
MAX_PARAMETERS = 2 * 10**8  # weights and buffers of one member (a ResNet-18's: 1.1 x 10^7)
MAX_LAYER_OUTPUT = 2**24  # elements one layer outputs for one image (a ResNet-18's largest: 65,536)
MAX_SYNTHETIC_IMAGES = 10**6  # data=synthetic's train + test images, 3 KB each (CIFAR-10 has 60,000)
MAX_CLASSES = 1_000
NAME = re.compile(r"[A-Za-z_]\w{0,99}")  # a config key (and an option's name, a file of configs/<group>/)


def read_record(path: Path, remedy: str) -> dict:
    """config.yaml as plain data: a mapping of names to numbers, strings, lists and mappings, as runner writes it.
    Refused in one line: a file larger than runner writes, YAML anchors, aliases or tags (a few bytes of aliases
    unroll to billions of nodes), interpolations (`${...}`, which would read the environment), mappings inside
    lists, or keys that are not names."""

    def refuse(problem: str):
        raise ConfigError(f"{path} is not a config runner wrote: {problem}; {remedy}")

    try:
        size = path.stat().st_size
        text = path.read_text(encoding="utf-8") if size <= MAX_RECORD_BYTES else ""
        marked = any(isinstance(t, (yaml.AnchorToken, yaml.AliasToken, yaml.TagToken)) for t in yaml.scan(text))
        record = None if marked else yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, yaml.YAMLError, ValueError, RecursionError) as err:
        refuse(f"it cannot be read as YAML ({type(err).__name__})")
    if size > MAX_RECORD_BYTES:
        refuse(f"it is larger than {MAX_RECORD_BYTES:,} bytes (a run's is a few thousand)")
    if marked:
        refuse("it holds YAML anchors, aliases or tags, which runner never writes")
    if type(record) is not dict:
        refuse("it is not a mapping of config keys")
    todo = [(record, "")]
    while todo:
        node, where = todo.pop()
        if type(node) is dict:
            for key, value in node.items():
                if not (type(key) is str and NAME.fullmatch(key)):
                    refuse(f"a key of {where[:-1] or 'the top level'} is not a name")
                todo.append((value, f"{where}{key}."))
        elif type(node) is list:
            if any(type(item) is dict for item in node):
                refuse(f"{where[:-1]} holds a mapping inside a list")
            todo += [(item, where) for item in node]
        elif type(node) is str and "${" in node:
            refuse(f"{where[:-1]} holds an interpolation (${{...}}), which runner resolves before it writes")
        elif type(node) not in (str, int, float, bool, type(None)):
            refuse(f"{where[:-1]} holds a value of a kind runner never writes")
    return record


def _compose(overrides: list[str]) -> DictConfig:
    """The root config with `overrides` (`group=option`), as Hydra composes it for a run."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():  # inside a Hydra app (a lesson): its search path holds configs/
        return compose("config", overrides=overrides)
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("config", overrides=overrides)


def rebuilt_config(run: Path, remedy: str) -> tuple[DictConfig, int]:
    """The config of run directory `run`, rebuilt from runner's option files: each group's option is the one its
    config.yaml records (by name, or by the `_target_` and keys of an option file: runner.config.option_keys), the
    values are those it records, and the result is checked as a run's config is (runner.config.validate), and for
    sizes no run could hold. Returns it and its model's largest layer output per image (check_sizes). `remedy`
    ends every refusal: what to do instead (e.g. "leave <run> out of the ensemble.")."""
    path = run / "config.yaml"
    record = read_record(path, remedy)

    def refuse(problem: str):
        raise ConfigError(f"{path}: {problem}; runner builds only the objects its own option files (configs/) name: "
                          f"restore it, or {remedy}")

    if "hydra" in record:
        refuse("it holds a hydra mapping, which a run's config.yaml never does")
    chosen = {}
    for group, spec in SCHEMA.items():
        node = record.get(group)
        if not (group == "regularization" or option_keys.has_options(group, spec)) or node is None:
            continue  # (a group the run's version of runner did not have yet: its default option)
        if type(node) is not dict:
            refuse(f"its {group} is not a mapping")
        if group == "regularization":
            unknown = [name for name in node if name not in option_names(group)]
            if unknown:
                refuse(f"regularization.{unknown[0]} is not an option of configs/regularization/")
            chosen[group] = list(node)
        else:
            option = option_keys.option_of(group, node, spec)
            if option is None:
                target = node.get("_target_")
                shown = f"{group}._target_={target}" if type(target) is str and re.fullmatch(r"[\w.]{1,100}", target) \
                    else f"its {group} mapping"
                refuse(f"{shown} is none of the options of configs/{group}/ ({', '.join(option_names(group))})")
            chosen[group] = option
    overrides = [f"{g}=[{','.join(o)}]" if isinstance(o, list) else f"{g}={o}" for g, o in chosen.items()]
    cfg = _compose(overrides)
    _overlay(cfg, record, "", chosen, refuse)
    if cfg.model.pretrained is not None:  # the member's weights are its own last.pt, wherever it started from
        cfg.model.pretrained = str(run)
    if "download" in cfg.data:  # the data is read where it lies; a shared file never makes runner write elsewhere
        cfg.data.download = False
    try:
        validate(cfg)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err} Or {remedy}") from None

    def too_large(problem: str):
        raise ConfigError(f"{path}: {problem}, far more than any run; {remedy}")

    return cfg, check_sizes(cfg, too_large)


def _overlay(node: DictConfig, record: dict, where: str, chosen: dict, refuse) -> None:
    """Set the values `record` holds into `node`, composed from runner's option files, key by key. A Hydra key
    (`_target_`, `_partial_`, `_args_`, ...) must be the option file's own; every other value is left to the checks
    a run gets, which refuse unknown keys and values out of range."""
    for key, value in record.items():
        name = f"{where}{key}"
        if key.startswith("_"):
            mine = node.get(key) if key in node else None
            if key not in node or type(mine) is not type(value) or mine != value:
                group = name.split(".")[0]
                option = chosen.get(group)
                source = f"configs/{group}/{option}.yaml" if isinstance(option, str) else "its option file"
                refuse(f"{name} is not what {source} says")
        elif type(value) is dict:
            if not isinstance(node.get(key), DictConfig):
                with open_dict(node):
                    node[key] = {}
            _overlay(node[key], value, f"{name}.", chosen, refuse)
        else:
            with open_dict(node):
                node[key] = value


def check_sizes(cfg: DictConfig, refuse, strict: bool = True) -> int:
    """Refuse (refuse(problem)) data and models larger than any run holds, before anything is allocated: synthetic
    images and classes by their count, a model by its layers (counted from its sizes), then by its parameters and
    its largest layer output per image, measured on torch's meta device (shapes only, no memory). Returns that
    largest output. strict=False (a run's own config, which its build checks again): a model that cannot be laid out
    on the meta device is left to the build to refuse."""
    import torch

    # torch and the builders only here: runner.ensemble reads records before it needs torch
    from runner.engine.build import option
    from runner.nets.layers import Drop

    data = cfg.data
    if data.name == "synthetic" and data.train_examples + data.test_examples > MAX_SYNTHETIC_IMAGES:
        refuse(f"data.train_examples + data.test_examples is {data.train_examples + data.test_examples:,} images "
               f"(at most {MAX_SYNTHETIC_IMAGES:,})")
    if data.num_classes > MAX_CLASSES:
        refuse(f"data.num_classes is {data.num_classes:,} (at most {MAX_CLASSES:,})")
    model = cfg.model
    lists = len(model.get("widths") or []) + sum(len(s) for s in model.get("stages") or []) + \
        len(model.get("fc_widths") or []) + model.get("depth", 0) + 1
    layers = lists * model.get("convs_per_stage", 1) * model.get("blocks_per_stage", 1)
    if layers > MAX_LAYERS:
        refuse(f"the model's sizes ask for about {layers:,} layers (at most {MAX_LAYERS:,})")
    classes = len(data.classes) if data.classes is not None else data.num_classes
    outputs = []
    try:
        with torch.device("meta"):
            net = option(model, num_classes=classes, act=option(cfg.activation), norm=option(cfg.norm),
                         drop=Drop.from_config(cfg.regularization))
            parameters = sum(t.numel() for t in [*net.parameters(), *net.buffers()])
            if parameters > MAX_PARAMETERS:
                refuse(f"the model has {parameters:,} parameters (at most {MAX_PARAMETERS:,})")
            for module in net.modules():
                module.register_forward_hook(lambda m, i, out: outputs.append(out.numel() if isinstance(
                    out, torch.Tensor) else 0))
            net.eval()
            net(torch.empty(1, 3, 32, 32))
    except UserError:
        raise
    except Exception as err:  # noqa: BLE001 - sizes no option can be built or run with: say which way, in a line
        if not strict:
            return max(outputs, default=1)
        first = (str(err).strip().splitlines() or [""])[0][:160]
        refuse(f"its model cannot be built or run on a 32x32 image ({type(err).__name__}: {first})")
    largest = max(outputs, default=1)
    if largest > MAX_LAYER_OUTPUT:
        refuse(f"a layer of the model outputs {largest:,} values per image (at most {MAX_LAYER_OUTPUT:,})")
    return largest
