"""Ensemble the final models of several runs: `python -m runner.ensemble <run dir>... | <multirun dir>`.

Each member is a run directory holding config.yaml and checkpoints/last.pt (a multirun directory stands for all the
completed runs below it, e.g. the seeds of one `python -m runner -m seed=0,1,2,3,4`). Prints each member's test
accuracy and the accuracy, NLL and calibration error of the mean of their softmax outputs, and writes them to
<dir>/ensemble.json when one directory is given (or to --out). The members must share the data and its split.
"""

import argparse
import json
import sys
from pathlib import Path

from omegaconf import OmegaConf

from runner.config import CheckpointError, ConfigError, UserError, register_resolvers
from runner.config.schema import SCHEMA

LAST = Path("checkpoints/last.pt")


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
    try:
        return json.loads((run / "metrics.json").read_text())["status"]
    except (OSError, ValueError, KeyError):
        return "unknown (no metrics.json)"


def evaluate_ensemble(runs: list[Path], device_name: str = "auto", batch_size: int = 1024) -> dict:
    """Each member's test scores and the ensemble's, as a dict ready for JSON."""
    from runner.data import checkpoint
    from runner.data import loading as data
    from runner.data.preprocess import Preprocess
    from runner.engine import evaluation
    from runner.engine.build import build_model
    from runner.engine.train import pick_device

    configs = [OmegaConf.load(run / "config.yaml") for run in runs]
    first = OmegaConf.to_container(configs[0].data)
    for run, cfg in zip(runs, configs, strict=True):
        if OmegaConf.to_container(cfg.data) != first:
            raise ConfigError(f"{run} was trained on other data than {runs[0]} ({OmegaConf.to_container(cfg.data)} "
                              f"vs {first}): an ensemble needs one test split")
    device = pick_device(device_name)
    splits = data.load_splits(configs[0].data, device)
    members, probs = [], []
    for run, cfg in zip(runs, configs, strict=True):
        state = checkpoint.load(run / LAST, map_location=device, needs=("model", "preprocess", "epoch"),
                                remedy=f"leave {run} out of the ensemble")
        model = build_model(cfg, len(splits.classes)).to(device)
        try:
            model.load_state_dict(state["model"])
        except RuntimeError as err:  # weights of another shape or other layers than its config.yaml builds
            first = str(err).strip().splitlines()[-1].strip()[:160]
            raise CheckpointError(f"{run / LAST} does not fit the model of {run / 'config.yaml'} ({first}); leave "
                                  f"{run} out of the ensemble") from None
        preprocess = Preprocess(**state["preprocess"]).to(device)
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
