"""Ensemble the final models of several runs: `python -m runner.ensemble <run dir>... | <multirun dir>`.

Each member is a run directory holding config.yaml and checkpoints/last.pt (a multirun directory stands for all the
completed runs below it, e.g. the seeds of one `python -m runner -m seed=0,1,2,3,4`). Prints each member's test
accuracy and the accuracy, NLL and calibration error of the mean of their softmax outputs, and writes them to
<dir>/ensemble.json when one directory is given (or to --out). The members must share the data and its split.

Run directories are shared between people, so nothing read from one is instantiated or trusted: each member's model
is rebuilt from runner's own option files (configs/), chosen by the options its config.yaml records and given the
values it records, after the checks a run gets (runner.engine.recorded). A `_target_` (or any Hydra key) other than
its option file's is refused, and so is a model or data set larger than any run's, before anything is allocated.
"""

import argparse
import json
import sys
from pathlib import Path

from omegaconf import OmegaConf

from runner.config import CheckpointError, ConfigError, UserError, register_resolvers
from runner.config.schema import SCHEMA
from runner.data import checkpoint
from runner.data.checkpoint import write_json
from runner.engine.recorded import MAX_RECORD_BYTES, NAME, rebuilt_config

LAST = Path("checkpoints/last.pt")
EVAL_ELEMENTS = 2**26  # elements of one layer's output over an evaluation batch: the batch shrinks to stay below


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
    return status if type(status) is str and NAME.fullmatch(status) else "unknown (no status in metrics.json)"


# ---------------------------------------------------------------------------------------------------------------
# Evaluation

def _preprocess(state: dict, path: Path, remedy: str):
    """The checkpoint's preprocessing, refused in one line unless it is what runner saves: mean and std that
    broadcast over a 3x32x32 image, and an optional 3072 x 3072 matrix."""
    import torch

    # torch only once a checkpoint is read: --help and a bad argument answer at once
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
    # torch from here on: the arguments and records are checked before it loads
    from runner.data import loading as data
    from runner.engine import evaluation
    from runner.engine.build import build_model
    from runner.engine.train import pick_device

    configs, largest = zip(*[rebuilt_config(run, f"leave {run} out of the ensemble.") for run in runs],
                           strict=True)
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
        write_json(result, out)
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
