"""Lessons on hyperparameter search: how the points a search tries decide what it can find."""

import math
import re
import statistics

from omegaconf import OmegaConf

from runner.config import CONFIG_DIR, ConfigError
from runner.lessons.lab import Lab, save_figure
from runner.lessons.verdict import Result, Stat, all_of, greater, less

_LOG_INTERVAL = re.compile(r"tag\(\s*log\s*,\s*interval\(\s*([^,\s]+)\s*,\s*([^)\s]+)\s*\)\s*\)")


def sweep_spaces(grid_name: str, random_name: str) -> tuple[dict[str, list[float]], dict[str, tuple[float, float]],
                                                             int]:
    """The grid's values per hyperparameter, the random search's log-uniform ranges and its number of trials, as
    configs/sweep/<name>.yaml declare them (the sweeper's own files: the lesson searches what they search)."""
    grid = OmegaConf.load(CONFIG_DIR / "sweep" / f"{grid_name}.yaml").hydra.sweeper.params
    rand = OmegaConf.load(CONFIG_DIR / "sweep" / f"{random_name}.yaml").hydra.sweeper
    points = {k: [float(v) for v in str(values).split(",")] for k, values in grid.items()}
    ranges = {}
    for k, text in rand.params.items():
        found = _LOG_INTERVAL.fullmatch(str(text).strip())
        if found is None:
            raise ConfigError(f"configs/sweep/{random_name}.yaml: {k}: {text!r} is not tag(log, interval(a, b)), the "
                              "only form this lesson reads")
        ranges[k] = (float(found.group(1)), float(found.group(2)))
    if set(points) != set(ranges):
        raise ConfigError(f"the grid searches {sorted(points)} but the random search {sorted(ranges)}: the two "
                          "halves of one comparison search the same hyperparameters")
    return points, ranges, int(rand.n_trials)


def score(values: dict[str, float], best: dict[str, float], widths: dict[str, float]) -> float:
    """A validation-accuracy-like score (1 at the optimum): a Gaussian bump in log10 space around `best`, one width
    per hyperparameter; width inf: that hyperparameter does not matter."""
    return math.exp(-0.5 * sum(((math.log10(values[k]) - math.log10(best[k])) / widths[k]) ** 2
                               for k in values if math.isfinite(widths[k])))


def grid_points(points: dict[str, list[float]]) -> list[dict[str, float]]:
    import itertools

    keys = list(points)
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(points[k] for k in keys))]


def random_points(ranges: dict[str, tuple[float, float]], n: int, rng) -> list[dict[str, float]]:
    """n points drawn log-uniformly in each range, as the sweeper's random sampler draws tag(log, interval(a, b))."""
    return [{k: 10 ** rng.uniform(math.log10(lo), math.log10(hi)) for k, (lo, hi) in ranges.items()}
            for _ in range(n)]


def random_vs_grid(lesson, lab: Lab) -> Result:
    import numpy as np

    points, ranges, trials = sweep_spaces(lesson.grid_sweep, lesson.random_sweep)
    grid = grid_points(points)
    if len(grid) != trials:
        raise ConfigError(f"the grid has {len(grid)} points but the random search {trials} trials: the comparison "
                          "needs the same budget")
    important = lesson.important
    if important not in ranges:
        raise ConfigError(f"important={important} is not searched; the sweeps search {', '.join(ranges)}")
    widths = {k: float(lesson.width_decades) if k == important else math.inf for k in ranges}
    regret = {"grid": [], "random": []}
    distinct = {"grid": len(points[important]), "random": []}
    repeats = [(seed, r) for seed in lesson.seeds for r in range(int(lesson.repeats))]
    for seed, r in repeats:
        # One repeat: the problem (where the important hyperparameter's optimum lies, log-uniform in its range)
        # and the random search's draw both come from (seed, r); the grid is the same in every repeat.
        rng = np.random.default_rng([seed, r])
        lo, hi = ranges[important]
        best = {k: 10 ** rng.uniform(math.log10(lo), math.log10(hi)) for k in ranges}
        drawn = random_points(ranges, trials, rng)
        for name, tried in (("grid", grid), ("random", drawn)):
            regret[name].append(1.0 - max(score(p, best, widths) for p in tried))
        distinct["random"].append(len({round(math.log10(p[important]), 9) for p in drawn}))
    stats = {k: Stat(v) for k, v in regret.items()}
    others = [k for k in ranges if k != important]
    verdict = all_of(
        less(stats["random"], stats["grid"], "random search", "grid search",
             f"regret (1 - best score found) over {len(repeats)} repeats of {trials} trials"),
        greater(Stat([float(v) for v in distinct["random"]]), Stat([float(distinct["grid"])] * len(repeats)),
                "random search", "grid search", f"distinct values of {important} tried"))
    rows = [{"search": name, "trials": trials, f"distinct {important}": distinct[name] if name == "grid"
             else Stat([float(v) for v in distinct["random"]]), "regret": stats[name],
             "median regret": statistics.median(regret[name])} for name in ("grid", "random")]
    figure = _figure(lab.figure_path(), regret, trials, important)
    notes = [f"the search spaces are configs/sweep/{lesson.grid_sweep}.yaml and {lesson.random_sweep}.yaml: "
             f"{' x '.join(str(len(v)) for v in points.values())} grid points vs {trials} log-uniform draws",
             f"the objective is synthetic, so that {len(repeats)} repeats take seconds: a bump of width "
             f"{lesson.width_decades} decades in {important} around an optimum drawn anew each repeat, and "
             f"{', '.join(others)} without any effect (Bergstra & Bengio 2012, fig. 1); real runs add noise to each "
             "score but not to where the points lie",
             f"the grid spends its {trials} trials on {distinct['grid']} values of {important}, each repeated for "
             f"every value of {', '.join(others)}; random search tries {trials} different values of every "
             "hyperparameter"]
    return Result(["search", "trials", f"distinct {important}", "regret", "median regret"], rows, verdict, notes,
                  figure)


def _figure(path, regret: dict[str, list[float]], trials: int, important: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    top = max(max(v) for v in regret.values())
    bins = [top * i / 30 for i in range(31)] if top > 0 else 10
    for j, (name, values) in enumerate(regret.items()):
        ax.hist(values, bins=bins, alpha=0.6, color=f"C{j}",
                label=f"{name}: mean {statistics.fmean(values):.3f}")
    ax.set_xlabel(f"regret: 1 - best score found ({important} matters, the rest does not)")
    ax.set_ylabel("repeats of the search")
    ax.set_title(f"grid vs random search, {trials} trials each", fontsize=9)
    ax.legend(fontsize=8)
    return save_figure(fig, path)
