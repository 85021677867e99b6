"""The learning-rate range test (runner.lr_find): the exponential lr at its first, middle and last step, the
bias-corrected smoothing against its formula, the suggestions on a curve of known shape, the key checks, and the
test itself on a tiny run (a rising loss stops it; its files and the printed command)."""

import csv
import json
import logging
import math
import random
import re
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from conftest import TINY
from runner.commands import lr_find
from runner.config import CONFIG_DIR, ConfigError, UserError, validate

TEST = ["model.widths=[4,8]", "trainer.batch_size=20", "data.train_examples=300", "data.val_size=100"]


def settings(**changes):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("lr_find", overrides=[*TINY, *TEST, *(f"lr_find.{k}={v}" for k, v in changes.items())])
    return cfg


def test_the_lr_rises_exponentially_from_start_to_end():
    assert lr_find.lr_at(0, 101, 1e-6, 10.0) == pytest.approx(1e-6)
    assert lr_find.lr_at(50, 101, 1e-6, 10.0) == pytest.approx(10 ** -2.5)  # halfway in log scale
    assert lr_find.lr_at(100, 101, 1e-6, 10.0) == pytest.approx(10.0)


def test_smoothing_is_the_bias_corrected_moving_average():
    losses, beta = [4.0, 2.0, 3.0], 0.9
    out = lr_find.smoothed(losses, beta)
    assert out[0] == pytest.approx(4.0)  # corrected: the first value is the first loss, not 0.1 x it
    avg = 0.0
    for i, loss in enumerate(losses):
        avg = beta * avg + (1 - beta) * loss
        assert out[i] == pytest.approx(avg / (1 - beta ** (i + 1)))


def test_suggestions_read_the_turning_point_and_the_steepest_descent():
    lrs = [10 ** (-5 + 0.05 * i) for i in range(121)]  # 1e-5 .. 10
    # flat, then falling fastest at lr 1e-2 (a tanh step), lowest at 1, rising after it
    curve = [2.0 - math.tanh(2 * (math.log10(lr) + 2)) + 4 * max(0.0, math.log10(lr)) ** 2 for lr in lrs]
    found = lr_find.suggest(lrs, curve, 10.0, 3.0)
    assert found["min_loss_lr"] == pytest.approx(1.0, rel=0.13)
    assert found["steepest_lr"] == pytest.approx(1e-2, rel=0.13)
    assert found["lr"] == pytest.approx(found["min_loss_lr"] / 10)
    assert found["onecycle_max_lr"] == pytest.approx(found["min_loss_lr"] / 3)


def test_the_steepest_descent_ignores_the_noisy_start():
    """On main a real test printed `steepest descent at lr 1.1e-06`: the slope of the moving average of its first
    two noisy losses. fastai reads it past the first tenth of the steps, as runner does now."""
    steps = 300
    lrs = [lr_find.lr_at(i, steps, 1e-6, 10.0) for i in range(steps)]
    rng = random.Random(0)
    # flat at ln 10, falling fastest at lr 1e-2, lowest near 0.3, then diverging; each step's loss noisy
    true = [2.3 - 0.8 * (1 + math.tanh(1.5 * (math.log10(lr) + 2))) + 3 * max(0.0, math.log10(lr) + 0.5) ** 2
            for lr in lrs]
    curve = lr_find.smoothed([t + rng.gauss(0, 0.15) for t in true], 0.95)
    low = min(range(steps), key=curve.__getitem__)
    lrs, curve = lrs[:low + 20], curve[:low + 20]  # the test stops once the loss has turned up
    assert lr_find.suggest(lrs, curve, 10.0, 3.0)["steepest_lr"] < 2e-6  # read from the first steps: noise
    found = lr_find.suggest(lrs, curve, 10.0, 3.0, lr_find.skipped_steps(steps))
    assert 5e-3 < found["steepest_lr"] < 5e-2  # the descent (the moving average lags it a little)
    assert found["min_loss_lr"] == pytest.approx(lrs[low])


def test_no_steepest_descent_when_the_loss_is_lowest_within_the_skipped_start():
    lrs = [10 ** (-3 + i / 10) for i in range(40)]
    curve = [2.0 - 0.1 * i if i < 8 else 1.2 + (i - 8) for i in range(40)]
    found = lr_find.suggest(lrs, curve, 10.0, 3.0, skip_start=10)
    assert found["steepest_lr"] is None and found["min_loss_lr"] == pytest.approx(lrs[8])


def test_the_test_shows_its_progress(caplog):
    cfg = settings(steps=12, start_lr=1e-3, end_lr=1e-1)
    cfg.trainer.progress, cfg.trainer.progress_every_s = "auto", 1e-9  # off a terminal: a line each time it is due
    run_cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "lr_find"])
    validate(run_cfg)
    with caplog.at_level(logging.INFO, logger="runner"):
        rows = lr_find.run_test(run_cfg, cfg.lr_find)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("lr range test  step ")]
    assert len(lines) == len(rows) == 12
    assert re.match(r"lr range test  step 12/12  lr 0\.1 smoothed loss \d\.\d{4}  elapsed \d\d:\d\d", lines[-1])


def test_a_loss_that_rises_at_once_asks_for_a_lower_start():
    with pytest.raises(UserError, match="lower lr_find.start_lr"):
        lr_find.suggest([1.0, 2.0, 3.0], [1.0, 5.0, 9.0], 10.0, 3.0)


@pytest.mark.parametrize("changes, words", [
    ({"start_lr": 0}, "lr_find.start_lr=0 is invalid: must be a positive number"),
    ({"start_lr": 1.0, "end_lr": 0.1}, "lr_find.end_lr=0.1 is invalid: must be above lr_find.start_lr=1.0"),
    ({"steps": 5}, "lr_find.steps=5 is invalid: must be an integer >= 10"),
    ({"stop_factor": 1}, "lr_find.stop_factor=1 is invalid: must be a number > 1"),
    ({"smoothing": 1.0}, "lr_find.smoothing=1.0 is invalid: must be a number in [0, 1)"),
])
def test_bad_keys_are_one_line(changes, words):
    with pytest.raises(ConfigError) as err:
        lr_find.check(settings(**changes).lr_find)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_the_test_runs_the_configured_training_and_stops_when_the_loss_turns_up():
    cfg = settings(steps=14, start_lr=1e-3, end_lr=1e6, stop_factor=2, smoothing=0.5)
    run_cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "lr_find"])
    validate(run_cfg)
    rows = lr_find.run_test(run_cfg, cfg.lr_find)
    lrs = [r["lr"] for r in rows]
    assert len(rows) < 14  # a lr of 1e6 makes SGD blow up before the last step
    assert lrs == pytest.approx([lr_find.lr_at(i, 14, 1e-3, 1e6) for i in range(len(rows))])
    assert [r["smoothed_loss"] for r in rows] == pytest.approx(lr_find.smoothed([r["loss"] for r in rows], 0.5))
    last, lowest = rows[-1]["smoothed_loss"], min(r["smoothed_loss"] for r in rows[:-1])
    assert not math.isfinite(last) or last > 2 * lowest  # stopped where it passed 2x its lowest
    assert all(r["smoothed_loss"] <= 2 * lowest for r in rows[:-1])


def test_the_files_hold_the_curve_and_the_suggestion(tmp_path):
    rows = [{"step": i, "lr": 10 ** (-4 + i / 10), "loss": 2 + (i - 30) ** 2 / 400,
             "smoothed_loss": 2 + (i - 30) ** 2 / 400} for i in range(50)]
    found = lr_find.suggest([r["lr"] for r in rows], [r["smoothed_loss"] for r in rows], 10.0, 3.0)
    assert found["min_loss_lr"] == pytest.approx(0.1)
    paths = lr_find.write(rows, found, tmp_path, settings().lr_find, "title")
    with paths[0].open() as f:
        assert [float(r["lr"]) for r in csv.DictReader(f)] == pytest.approx([r["lr"] for r in rows])
    assert paths[1].stat().st_size > 10_000
    assert json.loads(paths[2].read_text())["lr"] == pytest.approx(0.01)


def test_the_printed_command_keeps_the_overrides_and_sets_the_lr():
    command = lr_find.train_command(["model=resnet", "lr_find.steps=100", "optimizer.lr=1", "+seed=3"], 0.0321)
    assert command == "python -m runner model=resnet +seed=3 optimizer.lr=0.0321"


@pytest.mark.slow
def test_the_command_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "runner.lr_find", *TINY, *TEST, "lr_find.steps=15",
                           f"hydra.run.dir={tmp_path}"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "train with it (schedule=onecycle): python -m runner" in proc.stderr + proc.stdout
    assert {"lr_find.csv", "lr_find.png", "lr_find.json"} <= {p.name for p in tmp_path.iterdir()}
    bad = subprocess.run([sys.executable, "-m", "runner.lr_find", "lr_find.steps=3"], capture_output=True, text=True,
                         timeout=120, cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("error: lr_find.steps=3 is invalid")


@pytest.mark.parametrize("where", [None, "made/run", "kept"])
def test_a_refused_test_creates_nothing(tmp_path, where):
    """On main a refused `python -m runner.lr_find` left outputs/lr_find/<date>/<time>/ holding Hydra's record and
    an empty log (or rewrote the record in the run directory given)."""
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "notes.txt").write_text("mine")
    before = sorted((str(p), p.stat().st_mtime_ns) for p in tmp_path.rglob("*"))
    args = [*TINY, "lr_find.steps=3", *([f"hydra.run.dir={tmp_path / where}"] if where else [])]
    proc = subprocess.run([sys.executable, "-m", "runner.lr_find", *args], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert proc.stderr.startswith("error: lr_find.steps=3 is invalid")
    assert sorted((str(p), p.stat().st_mtime_ns) for p in tmp_path.rglob("*")) == before


@pytest.mark.parametrize("override, message", [
    ("+optimizer.momentum=0.9", "optimizer.momentum is not a key of optimizer=adam"),
    ("trainer.epoch=3", "trainer.epoch is not a config key: did you mean trainer.epochs?"),
    ("optimzer=sgd", "optimzer is not a config group or key: did you mean optimizer?"),
    ("data.noise=-1", "data.noise=-1 is invalid"),
], ids=["a key of another option", "a misspelled key", "a misspelled group", "a bad value"])
def test_a_config_mistake_is_one_line_before_anything_is_written(tmp_path, override, message):
    """The run's keys are checked as `python -m runner` checks them (per option, Hydra's errors in one line), not
    left to Hydra's multi-line errors or to torch after the data has loaded."""
    args = [*TINY, "optimizer=adam", override] if "momentum" in override else [*TINY, override]
    proc = subprocess.run([sys.executable, "-m", "runner.lr_find", *args], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith(f"error: {message}"), proc.stderr
    assert list(tmp_path.iterdir()) == []
