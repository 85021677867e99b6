"""The sweep report, on sweep directories built by hand: ranking, mean +- std over seeds, the edge-of-range
warning, the plots and the choice of the latest sweep."""

import csv
import json
import os
import statistics

import pytest

from runner.commands import report
from runner.sweeps.study import METRICS, write_table


def make_sweep(path, trials, space):
    """A sweep directory as the sweeper leaves it: trials.csv, search_space.json, and a job directory per trial
    with its metrics.json (validation curve included)."""
    keys = list(space) or list(trials[0][1])
    rows = []
    for number, (status, params, best) in enumerate(trials):
        job_dir = f"{number:03d}_" + ",".join(f"{k}={v}" for k, v in params.items())
        epochs = {"completed": 3, "pruned": 1, "diverged": 0, "failed": 0}[status]
        history = [{"epoch": e + 1, "val_acc": best * (e + 1) / epochs} for e in range(epochs)]
        (path / job_dir).mkdir(parents=True)
        (path / job_dir / "metrics.json").write_text(json.dumps({"status": status, "history": history}))
        row = {"trial": number, "status": status, **params, **{k: "" for k in METRICS}, "job_dir": job_dir,
               "message": ""}
        if best is not None:
            row.update(best_val_acc=best, test_acc=best - 0.01, epochs_completed=epochs)
        rows.append(row)
    # the sweeper's rank: 1 for the completed trial with the best best_val_acc (the default metric), and so on
    done = sorted((r for r in rows if r["status"] == "completed"), key=lambda r: -r["best_val_acc"])
    for rank, row in enumerate(done, start=1):
        row["rank"] = rank
    write_table(path / "trials.csv", rows, keys)
    (path / "search_space.json").write_text(json.dumps(space))
    return path


GRID = {"optimizer": {"kind": "categorical", "choices": ["sgd", "adam"]},
        "seed": {"kind": "categorical", "choices": ["0", "1", "2"]}}


@pytest.fixture
def grid_sweep(tmp_path):
    trials = [("completed", {"optimizer": "sgd", "seed": 0}, 0.50), ("completed", {"optimizer": "sgd", "seed": 1}, 0.54),
              ("completed", {"optimizer": "sgd", "seed": 2}, 0.58), ("completed", {"optimizer": "adam", "seed": 0}, 0.70),
              ("diverged", {"optimizer": "adam", "seed": 1}, None), ("completed", {"optimizer": "adam", "seed": 2}, 0.60)]
    return make_sweep(tmp_path / "grid", trials, GRID)


def test_trials_are_ranked_best_first_then_the_unfinished(grid_sweep):
    rows, _, keys = report.load(grid_sweep)
    assert keys == ["optimizer", "seed"]
    assert [r["trial"] for r in report.ranked(rows)] == [3, 5, 2, 1, 0, 4]
    assert rows[3]["best_val_acc"] == 0.70 and rows[3]["seed"] == 0  # numbers parsed back from the CSV


def test_mean_and_std_over_seeds_per_configuration(grid_sweep):
    rows, _, keys = report.load(grid_sweep)
    groups = report.by_configuration(rows, keys)
    assert [g["config"] for g in groups] == [{"optimizer": "adam"}, {"optimizer": "sgd"}]
    adam, sgd = groups
    assert adam["n"] == 2 and adam["other"]["diverged"] == 1
    assert adam["best_val_acc"] == pytest.approx((0.65, statistics.stdev([0.70, 0.60])))
    assert sgd["best_val_acc"] == pytest.approx((0.54, 0.04))  # sample std of 0.50, 0.54, 0.58
    assert sgd["test_acc"] == pytest.approx((0.53, 0.04))
    text = report.render(rows, report.load(grid_sweep)[1], keys)
    assert "optimizer=adam" in text and "0.6500 +- 0.0707" in text and "1 diverged" in text
    assert "WARNING" not in text  # categorical choices have no edge


LOG_SPACE = {"optimizer.lr": {"kind": "float", "low": 1e-6, "high": 10.0, "log": True},
             "regularization.dropout.p": {"kind": "float", "low": 0.0, "high": 0.6, "log": False}}


@pytest.mark.parametrize(("best_lr", "best_p", "expected"), [
    (2e-6, 0.3, ["optimizer.lr=2e-06 lies near the low end of its log-uniform range [1e-06, 10]"]),
    (5.0, 0.3, ["optimizer.lr=5 lies near the high end"]),
    (1e-3, 0.58, ["regularization.dropout.p=0.58 lies near the high end of its range [0, 0.6]"]),
    (1e-3, 0.3, []),  # 1e-3 is 3 of 7 decades in: well inside, though small in linear terms
])
def test_edge_warning_when_the_best_value_lies_near_the_end_of_its_range(tmp_path, best_lr, best_p, expected):
    trials = [("completed", {"optimizer.lr": best_lr, "regularization.dropout.p": best_p}, 0.8),
              ("completed", {"optimizer.lr": 0.01, "regularization.dropout.p": 0.2}, 0.6),
              ("pruned", {"optimizer.lr": 1e-5, "regularization.dropout.p": 0.1}, 0.2)]
    rows, space, keys = report.load(make_sweep(tmp_path / "s", trials, LOG_SPACE))
    warnings = report.edge_warnings(report.by_configuration(rows, keys)[0]["config"], space, rows)
    assert len(warnings) == len(expected)
    for warning, start in zip(warnings, expected, strict=True):
        assert f"the best {start}" in warning and "widen the range" in warning


def test_edge_warning_for_the_largest_of_a_numeric_grid(tmp_path):
    space = {"optimizer.lr": {"kind": "categorical", "choices": ["0.001", "0.01", "0.1"]}}
    trials = [("completed", {"optimizer.lr": lr}, acc) for lr, acc in ((0.001, 0.3), (0.01, 0.5), (0.1, 0.7))]
    rows, space, keys = report.load(make_sweep(tmp_path / "s", trials, space))
    assert report.edge_warnings({"optimizer.lr": 0.1}, space, rows) == [
        "the best optimizer.lr=0.1 is the largest of the values tried [0.001, 0.01, 0.1]: extend the grid past "
        "it and search again."]
    assert report.edge_warnings({"optimizer.lr": 0.01}, space, rows) == []


def test_main_prints_the_report_and_writes_the_plots(tmp_path, capsys):
    trials = [("completed", {"optimizer.lr": 3e-6, "regularization.dropout.p": 0.3}, 0.8),
              ("completed", {"optimizer.lr": 0.01, "regularization.dropout.p": 0.2}, 0.6),
              ("diverged", {"optimizer.lr": 5.0, "regularization.dropout.p": 0.1}, None)]
    sweep = make_sweep(tmp_path / "s", trials, LOG_SPACE)
    report.main([str(sweep)])
    out = capsys.readouterr().out
    assert "3 trials: 2 completed, 0 pruned, 1 diverged, 0 failed" in out
    assert "WARNING: the best optimizer.lr=3e-06 lies near the low end" in out
    lines = out.splitlines()
    first = lines.index("Trials, best first:") + 3
    assert lines[first].split()[:3] == ["1", "0", "completed"]
    for name in ("curves.png", "param_optimizer.lr.png", "param_regularization.dropout.p.png"):
        assert (sweep / "report" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (sweep / "report" / "report.txt").read_text().startswith("3 trials:")


def test_without_a_directory_the_latest_sweep_is_reported(tmp_path, monkeypatch):
    old = make_sweep(tmp_path / "outputs" / "sweeps" / "a", [("completed", {"seed": 0}, 0.5)], {})
    new = make_sweep(tmp_path / "outputs" / "multirun" / "b", [("completed", {"seed": 0}, 0.5)], {})
    os.utime(old / "trials.csv", (1, 1))
    monkeypatch.chdir(tmp_path)
    assert report.latest_sweep().resolve() == new.resolve()
    with pytest.raises(SystemExit, match="no trials.csv"):
        report.load(tmp_path)


def test_table_columns_are_what_the_sweeper_writes(grid_sweep):
    with (grid_sweep / "trials.csv").open(newline="") as f:
        header = next(csv.reader(f))
    assert header == ["trial", "status", "rank", "optimizer", "seed", *METRICS, "job_dir", "message"]


# ---------------------------------------------------------------------------------------------------------------
# Equal trials drawn apart; a multi-objective sweep's Pareto front

def test_trials_with_equal_values_are_drawn_side_by_side_not_one_on_another():
    xs = report._dodge([0.1, 0.1, 0.1, 0.3], [0.5, 0.5, 0.6, 0.5])
    assert xs[0] != xs[1] and xs[0] + xs[1] == pytest.approx(0.2)  # centred on their common x
    assert xs[2:] == [0.1, 0.3]  # a point alone stays where it is
    logged = report._dodge([1e3, 1e3], [0.5, 0.5], log=True)
    assert logged[0] < 1e3 < logged[1] and logged[0] * logged[1] == pytest.approx(1e6)  # symmetric in log10


def test_the_parameter_plot_shows_every_trial_of_a_repeated_configuration(tmp_path, monkeypatch):
    import matplotlib.axes

    trials = [("completed", {"optimizer": "sgd", "seed": s}, 0.5) for s in range(3)]  # three equal results
    sweep = make_sweep(tmp_path / "s", trials, GRID)
    drawn = []
    real = matplotlib.axes.Axes.scatter
    monkeypatch.setattr(matplotlib.axes.Axes, "scatter",
                        lambda ax, x, y, *a, **k: drawn.append(list(zip(x, y, strict=True))) or real(ax, x, y, *a, **k))
    rows, space, keys = report.load(sweep)
    report.plot(sweep, rows, space, keys)
    [points] = [d for d in drawn if len(d) == 3]
    assert len(set(points)) == 3


def make_multi_objective_sweep(path):
    """A sweep of a study over best_val_acc (maximized) and model_params (minimized), as the sweeper leaves it."""
    values = {0: (0.60, 9000), 1: (0.50, 3000), 2: (0.55, 9000), 3: (0.50, 3000), 4: (0.40, 2000)}
    ranks = {0: 1, 1: 1, 2: 2, 3: 1, 4: 1}
    trials = [("completed", {"model.widths": f"[{p // 1000}]"}, acc) for acc, p in values.values()]
    make_sweep(path, trials, {})
    with (path / "trials.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        acc, params = values[int(row["trial"])]
        row.update(model_params=params, rank=ranks[int(row["trial"])], on_front=ranks[int(row["trial"])] == 1)
    write_table(path / "trials.csv", rows, ["model.widths"], ["best_val_acc", "model_params"])
    (path / "multirun.yaml").write_text("hydra:\n  sweeper:\n    metric: [best_val_acc, model_params]\n"
                                        "    direction: [maximize, minimize]\n")
    return path


def test_a_multi_objective_report_lists_the_front_and_marks_its_trials(tmp_path, capsys):
    sweep = make_multi_objective_sweep(tmp_path / "mo")
    assert report.objectives(sweep) == [("best_val_acc", "maximize"), ("model_params", "minimize")]
    report.main([str(sweep)])
    out = capsys.readouterr().out
    front = out.split("Pareto front (max best_val_acc, min model_params): 4 of 5 trials")[1].splitlines()
    assert [line.split()[0] for line in front[3:7]] == ["0", "1", "3", "4"]  # by accuracy, best first
    table = out.split("Trials, by non-domination rank")[1].splitlines()
    marked = {line.split()[1] for line in table[3:8] if "*" in line.split()}
    assert marked == {"0", "1", "3", "4"}
    assert (sweep / "report" / "front.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_objectives_of_a_sweep_without_multirun_yaml_are_the_default(tmp_path):
    assert report.objectives(tmp_path) == [("best_val_acc", "maximize")]
