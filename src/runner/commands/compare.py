"""A fair comparison of techniques: each arm's learning rate tuned at the same budget, then every arm run on the
same seeds and compared on paired differences.

    python -m runner.compare optimizer=nesterov optimizer=adam                  # each arm's lr tuned, 3 seeds each
    python -m runner.compare activation=relu activation=selu,init=lecun_normal --seeds 0,1,2,3 -- data.root=...
    python -m runner.compare schedule=constant schedule=cosine --factors 0.3,1,3 --no-tune

Each positional argument is one arm: runner overrides joined by commas. Comparing techniques at one shared lr is
the classic pitfall (optimizer rankings flip with the tuning protocol: Wilson et al. 2017, Choi et al. 2019), so by
default every arm first searches its lr on the validation split: one run per factor x the arm's own lr (--factors),
on a seed apart from the compared ones, no test pass; the best validation accuracy wins. Then every arm runs each
seed at its lr. The table gives each arm's tuned lr and test accuracy (mean ± std over seeds); the best arm is
compared with each other arm on the per-seed differences (Student's t, corrected for the number of comparisons).
A run that diverged or stayed at chance makes the comparison inconclusive, named, as a lesson's does.

Everything goes to outputs/compare/<date>_<time>/: compare.md, compare.json, a figure, and a run directory per run
(`tensorboard --logdir` on it shows them side by side). Runner overrides after `--` apply to every run.
"""

import argparse
import math
import sys
import time
from datetime import datetime
from pathlib import Path

from omegaconf import OmegaConf

from runner.commands.lesson import gated, report, split_user
from runner.config import UserError
from runner.lessons.lab import Lab, bar_figure
from runner.lessons.verdict import Result, Stat, all_of, paired_greater

DEFAULT_FACTORS = (0.25, 0.5, 1.0, 2.0, 4.0)
TUNE_SEED = 100  # the tuning runs' seed: apart from the compared seeds, so the choice is not fitted to them


def parse(argv: list[str]) -> argparse.Namespace:
    argv, user = split_user(argv)
    ap = argparse.ArgumentParser(prog="python -m runner.compare", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("arms", nargs="+", help="one arm each: runner overrides joined by commas, e.g. "
                                            "optimizer=adam or activation=selu,init=lecun_normal")
    ap.add_argument("--seeds", default="0,1,2", help="the compared seeds, comma-separated (default 0,1,2)")
    ap.add_argument("--factors", default=",".join(f"{f:g}" for f in DEFAULT_FACTORS),
                    help="the tuned lrs: these factors x each arm's own optimizer.lr")
    ap.add_argument("--no-tune", action="store_true", help="run every arm at its own lr (no search)")
    ap.add_argument("--out", default=None, help="the directory (default outputs/compare/<date>_<time>)")
    ap.add_argument("-v", "--verbose", action="store_true", help="every run's own log lines")
    args = ap.parse_args(argv)
    try:
        args.seeds = [int(s) for s in args.seeds.split(",")]
        args.factors = [float(f) for f in args.factors.split(",")]
    except ValueError:
        ap.error(f"--seeds {args.seeds!r} / --factors {args.factors!r}: comma-separated numbers, e.g. --seeds 0,1,2")
    if any(f <= 0 for f in args.factors):
        ap.error(f"--factors {args.factors}: every factor must be positive")
    if len(args.arms) < 2:
        ap.error("give at least two arms, e.g. optimizer=nesterov optimizer=adam")
    bad = [w for arm in args.arms for w in arm.split(",") if "=" not in w]
    if bad:
        ap.error(f"{bad[0]!r} is not a runner override (key=value); an arm is overrides joined by commas")
    args.user = user
    return args


def plan(arms: list[str], seeds: list[int], factors: list[float] | None):
    """The comparison as a lesson config: one arm per argument, the tuning, the seeds."""
    claim = "the arms differ in test accuracy" + (", each at its own tuned lr" if factors else "")
    spec = {"claim": claim, "source": "python -m runner.compare", "seeds": seeds, "sizes": {"run": []},
            "arms": {arm: arm.split(",") for arm in arms}}
    if factors:
        spec["tune"] = {"factors": factors, "seed": TUNE_SEED}
    return OmegaConf.create(spec)


def compare(lesson, lab: Lab) -> Result:
    """Every arm on every seed; the best arm (highest mean test accuracy) against each other, paired by seed."""
    runs = {arm: [lab.run(arm, seed, name=_dir_name(arm)) for seed in lesson.seeds] for arm in lesson.arms}
    acc = {arm: Stat([m.get("test_acc") if m.get("test_acc") is not None else float("nan") for m in ms])
           for arm, ms in runs.items()}
    best = max(acc, key=lambda a: acc[a].mean if math.isfinite(acc[a].mean) else -1.0)  # a diverged arm is last
    others = [a for a in acc if a != best]
    verdict = all_of(*(paired_greater(acc[best], acc[a], best, a, "test accuracy", tries=len(others))
                       for a in others))
    rows = [{"arm": arm, "lr": lab.tuning[arm]["lr"] if arm in lab.tuning else
             float(lab.config(arm, lesson.seeds[0])[0].optimizer.lr),
             "test acc": acc[arm], "best val acc": Stat([m.get("best_val_acc") or 0.0 for m in runs[arm]])}
            for arm in lesson.arms]
    told = "better than every other arm" if verdict.reproduced else "not separated from every other arm"
    notes = [f"{best} has the highest mean test accuracy; it is {told} on the per-seed differences"]
    figure = bar_figure(lab.figure_path(), acc, "test accuracy",
                        "each arm at its tuned lr" if "tune" in lesson else "each arm at its own lr")
    return Result(["arm", "lr", "test acc", "best val acc"], rows, verdict, notes, figure)


def _dir_name(arm: str) -> str:
    return "".join(c if c.isalnum() or c in "._=-" else "_" for c in arm.replace(",", "__"))


def main(argv: list[str] | None = None) -> int:
    import json
    import logging


    args = parse(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    lesson = plan(args.arms, args.seeds, None if args.no_tune else args.factors)
    out = Path(args.out or Path("outputs/compare") / datetime.now().strftime("%Y-%m-%d_%H-%M-%S"))
    lab = Lab(lesson, out, "run", list(args.user), "compare", args.verbose)
    try:
        for arm in lesson.arms:  # a bad override is one line before anything runs or is written
            lab.config(arm, args.seeds[0])
        out.mkdir(parents=True, exist_ok=True)
        print(f"compare {len(lesson.arms)} arms on seeds {args.seeds}"
              + ("" if args.no_tune else f", each arm's lr tuned first (x {args.factors})") + f"; runs in {out}",
              flush=True)
        started = time.perf_counter()
        result = compare(lesson, lab)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    gated(result, lab, "compare")
    command = "python -m runner.compare " + " ".join(sys.argv[1:] if argv is None else argv)
    text = report("compare", lesson, result, "run", time.perf_counter() - started, command, out, lab.runs_done)
    (out / "compare.md").write_text(text)
    (out / "compare.json").write_text(json.dumps({
        "arms": list(lesson.arms), "seeds": args.seeds, "verdict": result.verdict.verdict,
        "reason": result.verdict.reason, "tuning": lab.tuning, "run_records": lab.records,
        "rows": [{k: (v.values if isinstance(v, Stat) else v) for k, v in r.items()} for r in result.rows]},
        indent=2))
    print(text, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
