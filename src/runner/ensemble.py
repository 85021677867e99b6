"""Ensemble the final models of several runs: `python -m runner.ensemble <run dir>... | <multirun dir>`.

Each member is a run directory holding config.yaml and checkpoints/last.pt (a multirun directory stands for all the
completed runs below it, e.g. the seeds of one `python -m runner -m seed=0,1,2,3,4`). Prints each member's test
accuracy and the accuracy, NLL and calibration error of the mean of their softmax outputs, and writes them to
<dir>/ensemble.json when one directory is given (or to --out). The members must share the data and its split.

Run directories are shared between people, so nothing read from one is instantiated or trusted: each member's model
is rebuilt from runner's own option files (configs/), chosen by the options its config.yaml records and given the
values it records, after the checks a run gets (runner.config.validate). A `_target_` (or any Hydra key) other than
its option file's is refused, and so is a model or data set larger than any run's, before anything is allocated.
"""

import argparse
import json
import re
import sys
from pathlib import Path

import yaml
from omegaconf import DictConfig, OmegaConf, open_dict

from runner.config import (
    CONFIG_DIR,
    CheckpointError,
    ConfigError,
    UserError,
    option_keys,
    register_resolvers,
    validate,
)
from runner.config.keys import option_names
from runner.config.schema import SCHEMA

LAST = Path("checkpoints/last.pt")
MAX_RECORD_BYTES = 2**20  # a run's config.yaml is 3 KB, its metrics.json a few KB
MAX_LAYERS = 10_000  # layers a model's sizes ask for (a ResNet-18 has 20): more would take long just to lay out
MAX_PARAMETERS = 2 * 10**8  # weights and buffers of one member (a ResNet-18's: 1.1 x 10^7)
MAX_LAYER_OUTPUT = 2**24  # elements one layer outputs for one image (a ResNet-18's largest: 65,536)
MAX_SYNTHETIC_IMAGES = 10**6  # data=synthetic's train + test images, 3 KB each (CIFAR-10 has 60,000)
MAX_CLASSES = 1_000
EVAL_ELEMENTS = 2**26  # elements of one layer's output over an evaluation batch: the batch shrinks to stay below
_NAME = re.compile(r"[A-Za-z_]\w{0,99}")  # a config key (and an option's name, a file of configs/<group>/)


def find_runs(paths: list[str]) -> list[Path]:
    """The run directories among `paths`, each path either a run directory or a folder searched for completed
    runs (metrics.json status completed) below it."""
    runs = []
    for given in map(Path, paths):
        if (given / LAST).is_file():
            runs.append(given)
            continue
        if not given.is_dir():
            raise ConfigError(f"{given}: no such directory")
        found = sorted(p.parents[1] for p in given.rglob(str(LAST)))
        completed = [r for r in found if _status(r) == "completed"]
        for r in sorted(set(found) - set(completed)):
            print(f"skipping {r}: status {_status(r)}", file=sys.stderr)
        if not completed:
            raise ConfigError(f"{given}: no completed run below it (a run directory holds {LAST} and metrics.json)")
        runs += completed
    return runs


def _status(run: Path) -> str:
    """metrics.json's status, read only when of a size runner writes and only when a short word."""
    path = run / "metrics.json"
    try:
        if path.stat().st_size > MAX_RECORD_BYTES:
            return "unknown (metrics.json larger than runner writes)"
        status = json.loads(path.read_text()).get("status")
    except (OSError, ValueError, AttributeError, RecursionError):
        return "unknown (no metrics.json)"
    return status if type(status) is str and _NAME.fullmatch(status) else "unknown (no status in metrics.json)"


# ---------------------------------------------------------------------------------------------------------------
# A member's config, rebuilt from runner's option files by what its config.yaml records

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
                if not (type(key) is str and _NAME.fullmatch(key)):
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


def member_config(run: Path) -> tuple[DictConfig, int]:
    """The config of run directory `run`, rebuilt from runner's option files: each group's option is the one its
    config.yaml records (by name, or by the `_target_` and keys of an option file: runner.config.option_keys), the
    values are those it records, and the result is checked as a run's config is (runner.config.validate), and for
    sizes no run could hold. Returns it and its model's largest layer output per image (check_sizes)."""
    path, remedy = run / "config.yaml", f"leave {run} out of the ensemble."
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


def check_sizes(cfg: DictConfig, refuse) -> int:
    """Refuse (refuse(problem)) data and models larger than any run holds, before anything is allocated: synthetic
    images and classes by their count, a model by its layers (counted from its sizes), then by its parameters and
    its largest layer output per image, measured on torch's meta device (shapes only, no memory). Returns that
    largest output."""
    import torch

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
        refuse(f"its model's sizes ask for about {layers:,} layers (at most {MAX_LAYERS:,})")
    classes = len(data.classes) if data.classes is not None else data.num_classes
    outputs = []
    try:
        with torch.device("meta"):
            net = option(model, num_classes=classes, act=option(cfg.activation), norm=option(cfg.norm),
                         drop=Drop.from_config(cfg.regularization))
            parameters = sum(t.numel() for t in [*net.parameters(), *net.buffers()])
            if parameters > MAX_PARAMETERS:
                refuse(f"its model has {parameters:,} parameters (at most {MAX_PARAMETERS:,})")
            for module in net.modules():
                module.register_forward_hook(lambda m, i, out: outputs.append(out.numel() if isinstance(
                    out, torch.Tensor) else 0))
            net.eval()
            net(torch.empty(1, 3, 32, 32))
    except UserError:
        raise
    except Exception as err:  # noqa: BLE001 - sizes no option can be built or run with: say which way, in a line
        first = (str(err).strip().splitlines() or [""])[0][:160]
        refuse(f"its model cannot be built or run on a 32x32 image ({type(err).__name__}: {first})")
    largest = max(outputs, default=1)
    if largest > MAX_LAYER_OUTPUT:
        refuse(f"a layer of its model outputs {largest:,} values per image (at most {MAX_LAYER_OUTPUT:,})")
    return largest


# ---------------------------------------------------------------------------------------------------------------
# Evaluation

def _preprocess(state: dict, path: Path, remedy: str):
    """The checkpoint's preprocessing, refused in one line unless it is what runner saves: mean and std that
    broadcast over a 3x32x32 image, and an optional 3072 x 3072 matrix."""
    import torch

    from runner.data.preprocess import Preprocess

    saved = state["preprocess"]
    image = (1, 3, 32, 32)

    def fits(t) -> bool:
        try:
            return isinstance(t, torch.Tensor) and torch.broadcast_shapes(t.shape, image) == image
        except RuntimeError:
            return False

    if not (isinstance(saved, dict) and set(saved) in ({"mean", "std"}, {"mean", "std", "matrix"})
            and fits(saved["mean"]) and fits(saved["std"])
            and (saved.get("matrix") is None or (isinstance(saved["matrix"], torch.Tensor)
                                                 and saved["matrix"].shape == (3072, 3072)))):
        raise CheckpointError(f"{path} holds no preprocessing runner saves (mean and std of an image's shape, and "
                              f"an optional 3072 x 3072 matrix); {remedy}")
    return Preprocess(saved["mean"], saved["std"], saved.get("matrix"))


def evaluate_ensemble(runs: list[Path], device_name: str = "auto", batch_size: int = 1024) -> dict:
    """Each member's test scores and the ensemble's, as a dict ready for JSON."""
    from runner.data import checkpoint
    from runner.data import loading as data
    from runner.engine import evaluation
    from runner.engine.build import build_model
    from runner.engine.train import pick_device

    configs, largest = zip(*[member_config(run) for run in runs], strict=True)
    first = OmegaConf.to_container(configs[0].data, resolve=True)
    for run, cfg in zip(runs, configs, strict=True):
        theirs = OmegaConf.to_container(cfg.data, resolve=True)
        differ = [k for k in sorted(set(first) | set(theirs)) if first.get(k) != theirs.get(k)]
        if differ:
            shown = "; ".join(f"data.{k}: {theirs.get(k)!r} vs {first.get(k)!r}" for k in differ[:3])
            raise ConfigError(f"{run} was trained on other data than {runs[0]} ({shown}): an ensemble needs one test "
                              "split")
    batch_size = max(1, min(batch_size, EVAL_ELEMENTS // max(largest)))
    device = pick_device(device_name)
    splits = data.load_splits(configs[0].data, device)
    members, probs = [], []
    for run, cfg in zip(runs, configs, strict=True):
        remedy = f"leave {run} out of the ensemble"
        state = checkpoint.load(run / LAST, map_location=device, needs=("model", "preprocess", "epoch"),
                                remedy=remedy)
        model = build_model(cfg, len(splits.classes)).to(device)
        checkpoint.check_fits(run / LAST, state, {"model": model.state_dict()}, remedy)
        try:
            model.load_state_dict(state["model"])
        except RuntimeError as err:  # weights of another shape or other layers than its config.yaml builds
            first_line = str(err).strip().splitlines()[-1].strip()[:160]
            raise CheckpointError(f"{run / LAST} does not fit the model of {run / 'config.yaml'} ({first_line}); "
                                  f"{remedy}") from None
        if type(state["epoch"]) is not int:
            raise CheckpointError(f"{run / LAST} records no epoch (an integer); {remedy}")
        preprocess = _preprocess(state, run / LAST, remedy).to(device)
        probs.append(evaluation.probabilities(model, preprocess, splits.test_x, batch_size))
        members.append({"run": str(run), "epoch": state["epoch"], **evaluation.scores(probs[-1], splits.test_y)})
    combined = evaluation.scores(evaluation.ensemble(probs), splits.test_y)
    mean_acc = sum(m["acc"] for m in members) / len(members)
    return {"members": members, "mean_member_acc": mean_acc, "ensemble": combined, "test_images": len(splits.test_y)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m runner.ensemble", description=__doc__.split("\n\n")[0])
    parser.add_argument("dirs", nargs="+", help="run directories, or a multirun directory holding them")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    parser.add_argument("--out", default=None, help="JSON file for the results (default: <dir>/ensemble.json "
                                                    "when one directory is given)")
    args = parser.parse_args(argv)
    register_resolvers()
    try:
        problem = SCHEMA["device"].problem(args.device)
        if problem:
            raise ConfigError(f"--device {args.device}: {problem}")
        runs = find_runs(args.dirs)
        result = evaluate_ensemble(runs, args.device)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    width = max(len(m["run"]) for m in result["members"])
    print(f"{'member':<{width}}  test acc    nll    ece")
    for m in result["members"]:
        print(f"{m['run']:<{width}}  {m['acc']:8.4f} {m['nll']:6.3f} {m['ece']:6.3f}")
    e = result["ensemble"]
    print(f"{'mean of members':<{width}}  {result['mean_member_acc']:8.4f}")
    print(f"{f'ensemble of {len(runs)}':<{width}}  {e['acc']:8.4f} {e['nll']:6.3f} {e['ece']:6.3f}")
    out = Path(args.out) if args.out else (Path(args.dirs[0]) / "ensemble.json" if len(args.dirs) == 1 else None)
    if out is not None:
        from runner.data.checkpoint import write_json

        write_json(result, out)
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
