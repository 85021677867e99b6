"""`python -m runner.report [SWEEP_DIR]` (`make report`): what a sweep found, from its trials.csv.

Prints the trials ranked by the sweep's metric (by non-domination rank for a multi-objective sweep), the mean +-
std over seeds of each configuration, and a warning when the best value of a searched parameter lies near the edge
of its range (the lecture: then widen the range and search again). Writes PNG plots to SWEEP_DIR/report/: every
trial's validation curve, and the best validation accuracy against each searched parameter (log axis for a
log-uniform one); for a multi-objective sweep, its Pareto front (a table and front.png: every completed trial, the
front's marked and numbered); when the trials' models differ in size (an architecture search), the Pareto front of
accuracy against parameters and FLOPs (a table and pareto.png). Trials with equal values sit side by side in a
plot, never one on another. Without SWEEP_DIR: the most recent sweep under outputs/.
"""

import argparse
import csv
import json
import math
import statistics
import sys
from pathlib import Path

from runner.sweeps.study import SPACE, STATUSES, TABLE, is_outcome_column

EDGE = 0.1  # "near the edge": in the outer 10% of the range (of log10 of it for a log-uniform parameter)
SEED_KEYS = ("seed", "+seed", "++seed")


# ---------------------------------------------------------------------------------------------------------------
# Reading a sweep directory

def _number(text: str):
    """A CSV cell as a number when it is one; the text otherwise."""
    try:
        value = float(text)
    except ValueError:
        return text
    return int(value) if value.is_integer() and "." not in text and "e" not in text.lower() else value


def load(sweep_dir: Path) -> tuple[list[dict], dict, list[str]]:
    """The trials (rows of trials.csv, numbers parsed), the search space (search_space.json; empty when the
    sweep has none) and the searched parameters' names, in the table's order."""
    table = sweep_dir / TABLE
    if not table.is_file():
        raise SystemExit(f"error: no {TABLE} in {sweep_dir}: give the directory of a sweep "
                         "(`python -m runner -m ...` writes it there).")
    with table.open(newline="") as f:
        reader = csv.DictReader(f)
        keys = [c for c in reader.fieldnames if not is_outcome_column(c)]
        rows = [{k: (v if k in ("status", "job_dir", "message") else _number(v)) for k, v in row.items()}
                for row in reader]
    space_file = sweep_dir / SPACE
    space = json.loads(space_file.read_text()) if space_file.is_file() else {}
    return rows, space, keys


def objectives(sweep_dir: Path) -> list[tuple[str, str]]:
    """(metric, direction) of each objective of the sweep's study, as its multirun.yaml records them (read as plain
    data); [(best_val_acc, maximize)] where it records none (a sweep of an older runner)."""
    import yaml

    try:
        sweeper = yaml.safe_load((sweep_dir / "multirun.yaml").read_text())["hydra"]["sweeper"]
        metric, direction = sweeper["metric"], sweeper["direction"]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return [("best_val_acc", "maximize")]
    metrics = metric if isinstance(metric, list) else [metric]
    directions = direction if isinstance(direction, list) else [direction]
    if len(metrics) != len(directions) or not all(isinstance(x, str) for x in metrics + directions):
        return [("best_val_acc", "maximize")]
    return list(zip(metrics, directions, strict=True))


def on_front(row: dict) -> bool:
    """Whether trials.csv marks the trial as on the Pareto front of a multi-objective sweep."""
    return str(row.get("on_front")) == "True"


def latest_sweep(root: Path = Path("outputs")) -> Path:
    tables = sorted(root.rglob(TABLE), key=lambda p: p.stat().st_mtime)
    if not tables:
        raise SystemExit(f"error: no sweep found under {root}/. Give its directory: python -m runner.report <dir>")
    return tables[-1].parent


# ---------------------------------------------------------------------------------------------------------------
# Tables

def _score(row: dict) -> float:
    """Higher is better: the sweep's rank by its study's metric (hydra.sweeper.metric), else best_val_acc (a table
    written before trials were ranked); -inf for a trial that did not complete."""
    if row["status"] != "completed":
        return -math.inf
    if "rank" in row:
        return -row["rank"] if isinstance(row["rank"], int) else -math.inf
    value = row.get("best_val_acc")
    return value if isinstance(value, (int, float)) else -math.inf


def ranked(rows: list[dict]) -> list[dict]:
    """Completed trials by their rank (the study's metric), best first; then the others (pruned, diverged,
    failed)."""
    order = {status: i for i, status in enumerate(STATUSES)}

    def partial(row):  # a pruned trial's best validation accuracy before it stopped
        value = row.get("best_val_acc")
        return value if isinstance(value, (int, float)) else -math.inf

    return sorted(rows, key=lambda r: (-_score(r), order.get(r["status"], len(order)), -partial(r), r["trial"]))


def by_configuration(rows: list[dict], keys: list[str]) -> list[dict]:
    """Trials grouped by every searched parameter but the seed: n, mean and (sample) std of the completed ones'
    best_val_acc and test_acc, and how many ended otherwise. Best mean first."""
    config_keys = [k for k in keys if k not in SEED_KEYS]
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in config_keys), []).append(row)
    out = []
    for config, members in groups.items():
        done = [r for r in members if _score(r) > -math.inf]
        entry = {"config": dict(zip(config_keys, config, strict=True)), "n": len(done),
                 "other": {s: sum(r["status"] == s for r in members) for s in STATUSES[1:]}}
        for metric in ("best_val_acc", "test_acc"):
            values = [r[metric] for r in done if isinstance(r[metric], (int, float))]
            entry[metric] = (statistics.fmean(values) if values else None,
                             statistics.stdev(values) if len(values) > 1 else None)
        out.append(entry)
    return sorted(out, key=lambda e: -(e["best_val_acc"][0] if e["best_val_acc"][0] is not None else -1.0))


def edge_warnings(best: dict, space: dict, rows: list[dict]) -> list[str]:
    """A warning per searched parameter whose best value lies in the outer EDGE of its interval, or at the first
    or last of three or more numeric choices: the optimum may lie outside what was searched."""
    warnings = []
    for key, value in best.items():
        spec = space.get(key, {})
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        if spec.get("kind") in ("float", "int"):
            low, high, log = spec["low"], spec["high"], spec["log"]
            span = (math.log10(high) - math.log10(low)) if log else (high - low)
            where = ((math.log10(value) - math.log10(low)) if log else (value - low)) / span
            scale = "log-uniform " if log else ""
            if where < EDGE:
                warnings.append(f"the best {key}={value:.3g} lies near the low end of its {scale}range "
                                f"[{low:.3g}, {high:.3g}]: widen the range below {low:.3g} and search again.")
            elif where > 1 - EDGE:
                warnings.append(f"the best {key}={value:.3g} lies near the high end of its {scale}range "
                                f"[{low:.3g}, {high:.3g}]: widen the range above {high:.3g} and search again.")
        else:
            choices = sorted({r[key] for r in rows if isinstance(r[key], (int, float))})
            if len(choices) >= 3 and value in (choices[0], choices[-1]):
                end = "smallest" if value == choices[0] else "largest"
                warnings.append(f"the best {key}={value:.3g} is the {end} of the values tried {choices}: "
                                "extend the grid past it and search again.")
    return warnings


def _fmt(value, digits: int = 4) -> str:
    if value is None or value == "":
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _param(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _text_table(header: list[str], lines: list[list[str]]) -> str:
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h) for i, h in enumerate(header)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [header, ["-" * w for w in widths], *lines]
    return "\n".join(fmt.format(*line).rstrip() for line in lines)


def render(rows: list[dict], space: dict, keys: list[str], goals: list[tuple[str, str]] | None = None) -> str:
    goals = goals or [("best_val_acc", "maximize")]
    multi = len(goals) > 1
    counts = {s: sum(r["status"] == s for r in rows) for s in STATUSES}
    parts = [f"{len(rows)} trials: " + ", ".join(f"{n} {s}" for s, n in counts.items())]
    extra = [m for m, _ in goals if m != "best_val_acc"]
    header = ["rank", "trial", "status", "best_val_acc", *extra, "test_acc", "epochs", *(["front"] if multi else []),
              *keys]
    lines = [[(str(r["rank"]) if multi else str(i + 1)) if _score(r) > -math.inf else "-", str(r["trial"]),
              r["status"], _fmt(r["best_val_acc"]), *(_fmt(r.get(m)) for m in extra), _fmt(r["test_acc"]),
              _fmt(r["epochs_completed"]), *(["*" if on_front(r) else ""] if multi else []),
              *(_param(r[k]) for k in keys)]
             for i, r in enumerate(ranked(rows))]
    best = "by non-domination rank (1: the Pareto front, marked *)" if multi else "best first"
    parts += ["", f"Trials, {best}:", _text_table(header, lines)]
    if multi:
        parts += render_front(rows, goals, keys)
    groups = by_configuration(rows, keys)
    if any(k in SEED_KEYS for k in keys) or any(g["n"] > 1 for g in groups):
        header = ["configuration", "n", "best_val_acc mean +- std", "test_acc mean +- std", "not completed"]
        lines = []
        for g in groups:
            stats = []
            for metric in ("best_val_acc", "test_acc"):
                mean, std = g[metric]
                stats.append("-" if mean is None else f"{mean:.4f} +- {std:.4f}" if std is not None else f"{mean:.4f}")
            other = ", ".join(f"{n} {s}" for s, n in g["other"].items() if n) or "-"
            config = " ".join(f"{k}={_param(v)}" for k, v in g["config"].items()) or "(all trials)"
            lines.append([config, str(g["n"]), *stats, other])
        parts += ["", "Over seeds, per configuration:", _text_table(header, lines)]
    if searches_size(rows):
        parts += render_pareto(rows, keys)
    if any("prune_reached" in r for r in rows):
        parts += render_sparsity(rows)
    best_group = next((g for g in groups if g["best_val_acc"][0] is not None), None)
    if best_group is not None:
        parts += [""] + [f"WARNING: {w}" for w in edge_warnings(best_group["config"], space, rows)]
    return "\n".join(parts).rstrip() + "\n"


# ---------------------------------------------------------------------------------------------------------------
# A multi-objective sweep: its Pareto front (hydra.sweeper.metric a list)

def render_front(rows: list[dict], goals: list[tuple[str, str]], keys: list[str]) -> list[str]:
    """The trials on the study's Pareto front, by their first objective, best first."""
    metric, direction = goals[0]
    sign = -1 if direction == "maximize" else 1
    front = sorted((r for r in rows if on_front(r)), key=lambda r: (sign * r[metric], r["trial"]))
    header = ["trial", *(m for m, _ in goals), "test_acc", *keys]
    lines = [[str(r["trial"]), *(_fmt(r[m]) for m, _ in goals), _fmt(r["test_acc"]), *(_param(r[k]) for k in keys)]
             for r in front]
    done = sum(r["status"] == "completed" for r in rows)
    wanted = ", ".join(f"{'max' if d == 'maximize' else 'min'} {m}" for m, d in goals)
    return ["", f"Pareto front ({wanted}): {len(front)} of {len(rows)} trials ({done} completed), none of them beaten "
            "on every objective by another (front.png):", _text_table(header, lines)]


def plot_front(sweep_dir: Path, rows: list[dict], goals: list[tuple[str, str]], path: Path) -> Path:
    """The first objective against each other one: every completed trial a dot (equal ones side by side), the
    front's trials a star with their number, joined in order of the other objective."""
    import matplotlib.pyplot as plt

    done = [r for r in rows if r["status"] == "completed" and all(isinstance(r.get(m), (int, float)) for m, _ in goals)]
    (y_key, y_way), others = goals[0], goals[1:]
    fig, axes = plt.subplots(1, len(others), figsize=(6.5 * len(others), 4.8), squeeze=False)
    for ax, (x_key, x_way) in zip(axes[0], others, strict=True):
        xs, ys = [r[x_key] for r in done], [r[y_key] for r in done]
        log = bool(xs) and min(xs) > 0 and max(xs) / min(xs) >= 100
        xs = _dodge(xs, ys, log)
        star = [i for i, r in enumerate(done) if on_front(r)]
        ax.scatter(xs, ys, s=28, color="tab:blue", alpha=0.6, label="trial", zorder=2)
        ax.scatter([xs[i] for i in star], [ys[i] for i in star], s=150, marker="*", color="tab:red",
                   edgecolors="black", linewidths=0.6, label="on the Pareto front", zorder=3)
        for i in star:
            ax.annotate(str(done[i]["trial"]), (xs[i], ys[i]), textcoords="offset points", xytext=(5, 5), fontsize=8)
        if len(goals) == 2 and star:
            order = sorted(star, key=lambda i: xs[i])
            ax.step([xs[i] for i in order], [ys[i] for i in order], where="post", color="tab:red", lw=1, alpha=0.6,
                    zorder=1)
        if log:
            ax.set_xscale("log")
        ax.set(xlabel=f"{x_key} ({'lower' if x_way == 'minimize' else 'higher'} is better"
                      f"{', log scale' if log else ''})",
               ylabel=f"{y_key} ({'lower' if y_way == 'minimize' else 'higher'} is better)",
               title=f"{y_key} against {x_key}")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.suptitle(f"{sweep_dir.name}: the Pareto front of {len(done)} completed trials")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _dodge(xs: list, ys: list, log: bool = False, width: float = 0.02) -> list:
    """x positions at which trials with the same (x, y) sit side by side, centred on their common x, each a dot of
    its own (drawn on one another, two trials read as one): offsets of `width` of the x span (of log10 x on a log
    axis; 1 when all x are equal)."""
    def t(x):
        return math.log10(x) if log else x

    spread = [t(x) for x in xs]
    span = (max(spread) - min(spread)) if spread else 0
    step = width * (span or 1)
    groups: dict[tuple, list[int]] = {}
    for i, key in enumerate(zip(xs, ys, strict=True)):
        groups.setdefault(key, []).append(i)
    out = list(xs)
    for members in groups.values():
        for j, i in enumerate(members):
            shifted = t(xs[i]) + (j - (len(members) - 1) / 2) * step
            out[i] = 10 ** shifted if log else shifted
    return out


# ---------------------------------------------------------------------------------------------------------------
# Accuracy against size: the Pareto front (an architecture search, configs/sweep/architecture.yaml)

COSTS = {"model_params": "parameters", "model_flops_per_image": "FLOPs per image"}


def add_costs(sweep_dir: Path, rows: list[dict]) -> None:
    """Each trial's model size from its metrics.json (model_params, model_flops_per_image), into its row; absent
    where the trial recorded none (it failed before building, or an older runner ran it)."""
    for row in rows:
        for cost in COSTS:  # an empty cell of trials.csv (a multi-objective sweep's) is no size
            if not isinstance(row.get(cost), (int, float)):
                row.pop(cost, None)
        try:
            metrics = json.loads((sweep_dir / row["job_dir"] / "metrics.json").read_text())
        except (OSError, ValueError, TypeError):
            continue
        row.update({k: metrics[k] for k in COSTS if isinstance(metrics.get(k), (int, float))})


def _accuracy(row: dict) -> float:
    value = row.get("best_val_acc")
    return value if row["status"] == "completed" and isinstance(value, (int, float)) else -math.inf


def pareto_front(rows: list[dict], cost: str) -> list[dict]:
    """The completed trials that no other completed trial beats on both counts (best_val_acc at least as high with
    `cost` at most as low, one of them strictly), cheapest first: the best accuracy each size can buy."""
    done = sorted((r for r in rows if _accuracy(r) > -math.inf and cost in r), key=lambda r: (r[cost], -_accuracy(r)))
    front, best = [], -math.inf
    for row in done:  # by cost, ascending: a trial is on the front when it beats every cheaper one
        if _accuracy(row) > best:
            front.append(row)
            best = _accuracy(row)
    return front


def searches_size(rows: list[dict]) -> bool:
    """Whether the trials differ in size (an architecture search), so that a Pareto front says something."""
    return len({r.get("model_params") for r in rows if "model_params" in r}) > 1


def render_pareto(rows: list[dict], keys: list[str]) -> list[str]:
    fronts = {cost: {id(r) for r in pareto_front(rows, cost)} for cost in COSTS}
    on_front = [r for r in rows if any(id(r) in f for f in fronts.values())]
    header = ["trial", "params", "MFLOPs", "best_val_acc", "test_acc", "front", *keys]
    lines = [[str(r["trial"]), f"{r['model_params']:,}", f"{r.get('model_flops_per_image', 0) / 1e6:.1f}",
              _fmt(r["best_val_acc"]), _fmt(r["test_acc"]),
              "+".join(("params", "flops")[i] for i, f in enumerate(fronts.values()) if id(r) in f),
              *(_param(r[k]) for k in keys)]
             for r in sorted(on_front, key=lambda r: r["model_params"])]
    return ["", "Pareto front, best_val_acc against parameters and FLOPs (no other completed trial is as accurate "
            "for fewer):", _text_table(header, lines)]


# ---------------------------------------------------------------------------------------------------------------
# Accuracy against sparsity (prune=magnitude, configs/sweep/sparsity.yaml)

def add_sparsity(sweep_dir: Path, rows: list[dict]) -> None:
    """Each pruned trial's reached sparsity and model sizes from its metrics.json (`prune`), into its row."""
    for row in rows:
        try:
            prune = json.loads((sweep_dir / row["job_dir"] / "metrics.json").read_text()).get("prune") or {}
        except (OSError, ValueError, TypeError):
            continue
        row.update({f"prune_{k}": prune[k] for k in ("reached", "dense_bytes", "sparse_bytes", "gzip_bytes")
                    if isinstance(prune.get(k), (int, float))})


def render_sparsity(rows: list[dict]) -> list[str]:
    """The test accuracy at each reached sparsity (the pruned model's, after fine-tuning), with the file sizes."""
    done = sorted((r for r in rows if "prune_reached" in r and r["status"] == "completed"),
                  key=lambda r: r["prune_reached"])
    lines = [[f"{r['prune_reached']:.4f}", _fmt(r["test_acc"]), _fmt(r.get("final_val_acc")),
              f"{r.get('prune_dense_bytes', 0):,}", f"{r.get('prune_gzip_bytes', 0):,}",
              f"{r.get('prune_sparse_bytes', 0):,}", str(r["trial"])] for r in done]
    header = ["sparsity", "test_acc", "final_val_acc", "dense bytes", "gzip bytes", "sparse bytes", "trial"]
    return ["", "Accuracy against the sparsity reached (prune=; accuracy_vs_sparsity.png):", _text_table(header, lines)]


def plot_sparsity(sweep_dir: Path, rows: list[dict], path: Path) -> Path:
    """Test accuracy against the sparsity reached, one point per completed trial, the mean per sparsity joined."""
    import matplotlib.pyplot as plt

    done = [r for r in rows if "prune_reached" in r and r["status"] == "completed"
            and isinstance(r["test_acc"], (int, float))]
    fig, ax = plt.subplots(figsize=(6, 4))
    ys = [r["test_acc"] for r in done]
    ax.scatter(_dodge([r["prune_reached"] for r in done], ys), ys, s=25, alpha=0.8, label="trial")
    means: dict[float, list[float]] = {}
    for r in done:
        means.setdefault(round(r["prune_reached"], 3), []).append(r["test_acc"])
    xs = sorted(means)
    ax.plot(xs, [statistics.fmean(means[x]) for x in xs], color="black", lw=1.5, label="mean")
    ax.set(xlabel="sparsity reached (fraction of conv/linear weights at 0)", ylabel="test accuracy",
           title=f"{sweep_dir.name}: accuracy vs sparsity")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------------------------
# Plots

def _history(sweep_dir: Path, row: dict) -> list[dict]:
    try:
        return json.loads((sweep_dir / row["job_dir"] / "metrics.json").read_text()).get("history", [])
    except (OSError, ValueError):
        return []


LINE_STYLES = {"completed": "-", "pruned": "--", "diverged": ":", "failed": "-."}


def _value_colors(rows: list[dict], key: str | None, spec: dict, fig, ax):
    """How the curves of a panel are coloured by the trials' values of `key`: a colour scale with a colorbar for
    numbers (log-scaled for a log-uniform parameter or values spanning 100x), one colour per value otherwise (with
    legend entries). Returns (row -> colour, legend handles)."""
    import matplotlib.cm
    import matplotlib.colors
    import matplotlib.lines

    values = [r[key] for r in rows] if key else []
    numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if key and len(set(numbers)) > 1 and len(numbers) == len(values):
        low, high = min(numbers), max(numbers)
        log = low > 0 and (spec.get("log") or high / low >= 100)
        norm = matplotlib.colors.LogNorm(low, high) if log else matplotlib.colors.Normalize(low, high)
        scale = matplotlib.cm.ScalarMappable(norm=norm, cmap="viridis")
        fig.colorbar(scale, ax=ax, label=f"{key}{' (log scale)' if log else ''}")
        return (lambda row: scale.to_rgba(row[key])), []
    distinct = list(dict.fromkeys(str(v) for v in values)) or [""]
    palette = matplotlib.colormaps["tab10" if len(distinct) <= 10 else "tab20"]
    color = {v: palette(i % palette.N) for i, v in enumerate(distinct)}
    handles = [matplotlib.lines.Line2D([], [], color=color[v], label=f"{key}={v}") for v in distinct] if key else []
    return (lambda row: color[str(row[key]) if key else ""]), handles


STATUS_COLORS = {"completed": "tab:blue", "pruned": "tab:orange", "diverged": "tab:red", "failed": "tab:gray"}


def plot(sweep_dir: Path, rows: list[dict], space: dict, keys: list[str],
         goals: list[tuple[str, str]] | None = None) -> list[Path]:
    """Every figure of the report under <sweep_dir>/report: the curves, one per searched parameter, the front."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed

    out_dir = sweep_dir / "report"
    out_dir.mkdir(exist_ok=True)
    written = [plot_curves(sweep_dir, rows, space, keys, out_dir / "curves.png")]
    for key in (k for k in keys if k not in SEED_KEYS):
        safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in key)
        written.append(plot_param(sweep_dir, rows, space.get(key, {}), key, out_dir / f"param_{safe}.png"))
    if len(goals or []) > 1:
        written.append(plot_front(sweep_dir, rows, goals, out_dir / "front.png"))
    if searches_size(rows):
        written.append(plot_pareto(sweep_dir, rows, STATUS_COLORS, out_dir / "pareto.png"))
    if any("prune_reached" in r for r in rows):
        written.append(plot_sparsity(sweep_dir, rows, out_dir / "accuracy_vs_sparsity.png"))
    return written


def plot_curves(sweep_dir: Path, rows: list[dict], space: dict, keys: list[str], path: Path) -> Path:
    """One panel per searched parameter (the seed aside, 4 at most), each trial's curve coloured by its value there."""
    import matplotlib.lines
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    order = ranked(rows)
    best = order[0] if order and _score(order[0]) > -math.inf else None
    panels = [k for k in keys if k not in SEED_KEYS][:4] or keys[:1]
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(6.5 * max(1, len(panels)), 4.8), sharey=True,
                             squeeze=False)
    for ax, key in zip(axes[0], panels or [None], strict=True):
        color_of, handles = _value_colors(rows, key, space.get(key, {}), fig, ax)
        for row in reversed(order):
            history = _history(sweep_dir, row)
            if history:
                is_best = row is best
                ax.plot([h["epoch"] for h in history], [h["val_acc"] for h in history], color=color_of(row),
                        ls=LINE_STYLES.get(row["status"], "-"), lw=2.8 if is_best else 1.3, marker="o", ms=3,
                        alpha=1 if is_best else 0.75, zorder=3 if is_best else 2)
                if is_best:
                    ax.annotate(f"best: trial {row['trial']}", (history[-1]["epoch"], history[-1]["val_acc"]),
                                textcoords="offset points", xytext=(-10, 8), ha="right", fontsize=8)
        handles += [matplotlib.lines.Line2D([], [], color="gray", ls=LINE_STYLES[s], label=s)
                    for s in STATUSES if s in LINE_STYLES and any(r["status"] == s for r in rows)]
        if best is not None:
            handles.append(matplotlib.lines.Line2D([], [], color="gray", lw=2.8, label="best trial (thick)"))
        ax.legend(handles=handles, fontsize=8, loc="lower right")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set(xlabel="epoch", title=f"coloured by {key}" if key else "")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("validation accuracy (fraction correct)")
    fig.suptitle(f"{sweep_dir.name}: validation accuracy after each epoch, one line per trial")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_param(sweep_dir: Path, rows: list[dict], spec: dict, key: str, path: Path) -> Path:
    """Best validation accuracy against one searched parameter, a point per trial (equal ones side by side)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    values = [r[key] for r in rows]
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    positive = numeric and all(v > 0 for v in values)
    log_axis = spec.get("log", False) or (positive and spec.get("kind") == "categorical"
                                          and max(values) / min(values) >= 100)
    labels = list(dict.fromkeys(str(v) for v in values))
    ys_all = [r["best_val_acc"] if isinstance(r["best_val_acc"], (int, float)) else 0.0 for r in rows]
    xs_all = _dodge([r[key] if numeric else labels.index(str(r[key])) for r in rows], ys_all,
                    log_axis and numeric and positive)
    for status, color in STATUS_COLORS.items():
        chosen = [i for i, r in enumerate(rows) if r["status"] == status]
        if chosen:
            ax.scatter([xs_all[i] for i in chosen], [ys_all[i] for i in chosen], color=color, label=status,
                       marker="x" if status == "diverged" else "o", s=25, alpha=0.8)
    if log_axis:
        ax.set_xscale("log")
    if not numeric:
        ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    if spec.get("kind") in ("float", "int"):
        for i, edge in enumerate((spec["low"], spec["high"])):
            ax.axvline(edge, color="gray", ls=":", lw=1,
                       label=f"search range [{spec['low']:.3g}, {spec['high']:.3g}]" if i == 0 else None)
    ax.set(xlabel=f"{key} ({'log scale' if log_axis else 'searched value'})",
           ylabel="best validation accuracy (fraction correct)",
           title=f"{sweep_dir.name}: best validation accuracy vs {key}\n(one point per trial; diverged and failed "
                 "at 0)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_pareto(sweep_dir: Path, rows: list[dict], colors: dict, path: Path) -> Path:
    """best_val_acc against parameters and against FLOPs per image (log axes), each trial a point by status, the
    Pareto front joined by a step line and labelled with its trial numbers."""
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for ax, (cost, what) in zip(axes, COSTS.items(), strict=True):
        shown = [r for r in rows if cost in r and isinstance(r["best_val_acc"], (int, float))]
        xs = _dodge([r[cost] for r in shown], [r["best_val_acc"] for r in shown], log=True)
        for status, color in colors.items():
            chosen = [i for i, r in enumerate(shown) if r["status"] == status]
            if chosen:
                ax.scatter([xs[i] for i in chosen], [shown[i]["best_val_acc"] for i in chosen], color=color, s=25,
                           label=status, alpha=0.8)
        front = pareto_front(rows, cost)
        if front:
            ax.step([r[cost] for r in front], [r["best_val_acc"] for r in front], where="post", color="black",
                    lw=1.5, label="Pareto front")
            for r in front:
                ax.annotate(str(r["trial"]), (r[cost], r["best_val_acc"]), textcoords="offset points",
                            xytext=(4, 4), fontsize=8)
        ax.set_xscale("log")
        ax.xaxis.set_minor_locator(matplotlib.ticker.LogLocator(subs=(2, 5)))  # labelled 1, 2, 5 per decade
        ax.xaxis.set_major_formatter(matplotlib.ticker.EngFormatter())  # 20k, 50k, 100k, 20M
        ax.xaxis.set_minor_formatter(matplotlib.ticker.EngFormatter())
        ax.set(xlabel=f"{what} (log scale)", title=f"best_val_acc vs {what}")
        ax.grid(alpha=0.3, which="both")
        if ax.get_legend_handles_labels()[0]:  # a panel of a cost no trial recorded is left empty
            ax.legend(fontsize=8)
    axes[0].set_ylabel("best validation accuracy")
    fig.suptitle(f"{sweep_dir.name}: accuracy against model size")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m runner.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_dir", nargs="?", type=Path, help="a sweep directory (default: the latest one)")
    args = parser.parse_args(argv)
    sweep_dir = args.sweep_dir or latest_sweep()
    rows, space, keys = load(sweep_dir)
    add_costs(sweep_dir, rows)
    add_sparsity(sweep_dir, rows)
    goals = objectives(sweep_dir)
    text = render(rows, space, keys, goals)
    print(f"Sweep {sweep_dir}\n{text}", end="")
    written = plot(sweep_dir, rows, space, keys, goals)
    (sweep_dir / "report" / "report.txt").write_text(text)
    print(f"\nPlots: {', '.join(str(p) for p in written)}", file=sys.stdout)


if __name__ == "__main__":
    main()
