"""`python -m runner.report [SWEEP_DIR]` (`make report`): what a sweep found, from its trials.csv.

Prints the trials ranked by best validation accuracy, the mean +- std over seeds of each configuration, and a
warning when the best value of a searched parameter lies near the edge of its range (the lecture: then widen the
range and search again). Writes PNG plots to SWEEP_DIR/report/: every trial's validation curve, and the best
validation accuracy against each searched parameter (log axis for a log-uniform one).
Without SWEEP_DIR: the most recent sweep under outputs/.
"""

import argparse
import csv
import json
import math
import statistics
import sys
from pathlib import Path

from runner.sweeps.study import METRICS, SPACE, STATUSES, TABLE

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
        keys = [c for c in reader.fieldnames if c not in ("trial", "status", *METRICS, "job_dir", "message")]
        rows = [{k: (v if k in ("status", "job_dir", "message") else _number(v)) for k, v in row.items()}
                for row in reader]
    space_file = sweep_dir / SPACE
    space = json.loads(space_file.read_text()) if space_file.is_file() else {}
    return rows, space, keys


def latest_sweep(root: Path = Path("outputs")) -> Path:
    tables = sorted(root.rglob(TABLE), key=lambda p: p.stat().st_mtime)
    if not tables:
        raise SystemExit(f"error: no sweep found under {root}/. Give its directory: python -m runner.report <dir>")
    return tables[-1].parent


# ---------------------------------------------------------------------------------------------------------------
# Tables

def _score(row: dict) -> float:
    value = row.get("best_val_acc")
    return value if isinstance(value, (int, float)) and row["status"] == "completed" else -math.inf


def ranked(rows: list[dict]) -> list[dict]:
    """Completed trials by best validation accuracy, best first; then the others (pruned, diverged, failed)."""
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


def render(rows: list[dict], space: dict, keys: list[str]) -> str:
    counts = {s: sum(r["status"] == s for r in rows) for s in STATUSES}
    parts = [f"{len(rows)} trials: " + ", ".join(f"{n} {s}" for s, n in counts.items())]
    header = ["rank", "trial", "status", "best_val_acc", "test_acc", "epochs", *keys]
    lines = [[str(i + 1) if _score(r) > -math.inf else "-", str(r["trial"]), r["status"], _fmt(r["best_val_acc"]),
              _fmt(r["test_acc"]), _fmt(r["epochs_completed"]), *(_param(r[k]) for k in keys)]
             for i, r in enumerate(ranked(rows))]
    parts += ["", "Trials, best first:", _text_table(header, lines)]
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
    best_group = next((g for g in groups if g["best_val_acc"][0] is not None), None)
    if best_group is not None:
        parts += [""] + [f"WARNING: {w}" for w in edge_warnings(best_group["config"], space, rows)]
    return "\n".join(parts).rstrip() + "\n"


# ---------------------------------------------------------------------------------------------------------------
# Plots

def _history(sweep_dir: Path, row: dict) -> list[dict]:
    try:
        return json.loads((sweep_dir / row["job_dir"] / "metrics.json").read_text()).get("history", [])
    except (OSError, ValueError):
        return []


def plot(sweep_dir: Path, rows: list[dict], space: dict, keys: list[str]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    out_dir = sweep_dir / "report"
    out_dir.mkdir(exist_ok=True)
    written = []
    order = ranked(rows)
    best = order[0] if order and _score(order[0]) > -math.inf else None
    colors = {"completed": "tab:blue", "pruned": "tab:orange", "diverged": "tab:red", "failed": "tab:gray"}

    fig, ax = plt.subplots(figsize=(8, 5))
    for row in reversed(order):
        history = _history(sweep_dir, row)
        if history:
            is_best = row is best
            ax.plot([h["epoch"] for h in history], [h["val_acc"] for h in history],
                    color="black" if is_best else colors.get(row["status"], "tab:gray"),
                    lw=2.5 if is_best else 1, alpha=1 if is_best else 0.5, zorder=3 if is_best else 2,
                    label=f"best: trial {row['trial']}" if is_best else None)
    for status, color in colors.items():
        if any(r["status"] == status for r in rows):
            ax.plot([], [], color=color, label=status)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set(xlabel="epoch", ylabel="validation accuracy", title=f"{sweep_dir.name}: validation curves")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    written.append(out_dir / "curves.png")
    fig.savefig(written[-1], dpi=110, bbox_inches="tight")
    plt.close(fig)

    for key in (k for k in keys if k not in SEED_KEYS):
        fig, ax = plt.subplots(figsize=(6, 4))
        values = [r[key] for r in rows]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        spec = space.get(key, {})
        positive = numeric and all(v > 0 for v in values)
        log_axis = spec.get("log", False) or (positive and spec.get("kind") == "categorical"
                                              and max(values) / min(values) >= 100)
        labels = list(dict.fromkeys(str(v) for v in values))
        for status, color in colors.items():
            chosen = [r for r in rows if r["status"] == status]
            xs = [r[key] if numeric else labels.index(str(r[key])) for r in chosen]
            ys = [r["best_val_acc"] if isinstance(r["best_val_acc"], (int, float)) else 0.0 for r in chosen]
            if xs:
                ax.scatter(xs, ys, color=color, label=status, marker="x" if status == "diverged" else "o", s=25)
        if log_axis:
            ax.set_xscale("log")
        if not numeric:
            ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
        if spec.get("kind") in ("float", "int"):
            for edge in (spec["low"], spec["high"]):
                ax.axvline(edge, color="gray", ls=":", lw=1)
        ax.set(xlabel=key, ylabel="best validation accuracy", title=f"best_val_acc vs {key}")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in key)
        written.append(out_dir / f"param_{safe}.png")
        fig.savefig(written[-1], dpi=110, bbox_inches="tight")
        plt.close(fig)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m runner.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_dir", nargs="?", type=Path, help="a sweep directory (default: the latest one)")
    args = parser.parse_args(argv)
    sweep_dir = args.sweep_dir or latest_sweep()
    rows, space, keys = load(sweep_dir)
    text = render(rows, space, keys)
    print(f"Sweep {sweep_dir}\n{text}", end="")
    written = plot(sweep_dir, rows, space, keys)
    (sweep_dir / "report" / "report.txt").write_text(text)
    print(f"\nPlots: {', '.join(str(p) for p in written)}", file=sys.stdout)


if __name__ == "__main__":
    main()
