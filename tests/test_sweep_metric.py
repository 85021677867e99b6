"""A sweep's metric and direction (hydra.sweeper.metric, direction), its deferred test pass (test_trials=best), the
per-trial start-up figures, its HPARAMS columns without an empty TensorBoard run, the data kept in memory across
trials, and the bench's same-images copies for the reference scripts."""

import csv
import json
import pickle
from pathlib import Path

import numpy as np
import optuna
import pytest

from conftest import choices_of, compose_config, run_cli
from runner.config import ConfigError
from runner.data import loading as data
from runner.engine import records, train
from runner.sweeps import study as glue
from runner.sweeps import testing
from test_sweep import FAST, read_table

optuna.logging.set_verbosity(optuna.logging.WARNING)


# ---------------------------------------------------------------------------------------------------------------
# Settings

@pytest.mark.parametrize(("settings", "message"), [
    (("val_acc", "maximize", "all", 3), "hydra.sweeper.metric='val_acc' is not a number of metrics.json"),
    (("test_acc", "maximize", "all", 3), "never by the test split"),
    (("best_val_acc", "up", "all", 3), "hydra.sweeper.direction='up' is invalid: maximize or minimize"),
    (("best_val_acc", "maximize", "some", 3), "hydra.sweeper.test_trials='some' is invalid"),
    (("best_val_acc", "maximize", "best", 0), "hydra.sweeper.test_best=0 is invalid"),
])
def test_bad_metric_direction_or_test_setting_is_one_line(settings, message):
    with pytest.raises(ValueError, match=message) as err:
        glue.check_settings(*settings)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(("metric", "direction", "says"), [
    ("final_val_loss", "maximize", "the highest final_val_loss"),  # the default direction, metric alone changed
    ("final_train_loss", "maximize", "the highest final_train_loss"),
    ("best_val_acc", "minimize", "the lowest best_val_acc"),
    ("final_val_acc", "minimize", "the lowest final_val_acc"),
    ("final_val_loss", "minimize", None), ("best_val_acc", "maximize", None), ("wall_time_s", "minimize", None),
])
def test_a_sweep_that_looks_for_the_worst_trials_says_so_in_one_line_at_its_start(metric, direction, says, caplog):
    from hydra_plugins.runner_optuna_sweeper.optuna_sweeper import OptunaSweeper

    sweeper = OptunaSweeper(sampler=None, pruner=None, metric=metric, direction=direction)
    with caplog.at_level("WARNING"):
        sweeper._check_settings()
    lines = [r.getMessage() for r in caplog.records]
    if says is None:
        assert lines == []
        return
    [line] = lines
    other = "minimize" if direction == "maximize" else "maximize"
    assert says in line and "the worst" in line and f"hydra.sweeper.direction={other}" in line and "\n" not in line


def test_every_rankable_metric_is_a_declared_metrics_json_key_with_an_epoch_value_where_it_has_one():
    records.check_metrics(dict.fromkeys(glue.RANKABLE, 0.0))  # raises for an undeclared key
    assert glue.epoch_key("best_val_acc") == "val_acc" and glue.epoch_key("final_val_loss") == "val_loss"
    assert glue.epoch_key("wall_time_s") is None


def test_a_bad_metric_stops_the_sweep_before_any_trial_in_one_line(tmp_path):
    proc = run_cli(["-m", *FAST, "seed=0,1", "hydra.sweeper.metric=val_accuracy", f"hydra.sweep.dir={tmp_path / 's'}"],
                   cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]  # one line
    assert "hydra.sweeper.metric='val_accuracy'" in proc.stderr and "best_val_acc" in proc.stderr
    assert not (tmp_path / "s" / "000_seed=0").exists()


# ---------------------------------------------------------------------------------------------------------------
# A real sweep: minimize the final validation loss, test only the best trial at the end

@pytest.mark.slow  # over 2 s on 2 idle cores: `make test-all` and CI run it
def test_a_sweep_minimizing_val_loss_ranks_prunes_and_tests_its_best_trial_once_at_the_end(tmp_path):
    sweep_dir = tmp_path / "sweep"
    proc = run_cli(["-m", *FAST, "optimizer.lr=0.3,0.003", "hydra.sweeper.metric=final_val_loss",
                    "hydra.sweeper.direction=minimize", "hydra.sweeper.test_trials=best", "hydra.sweeper.test_best=1",
                    f"hydra.sweep.dir={sweep_dir}"], cwd=tmp_path)
    out = proc.stdout + proc.stderr
    rows = read_table(sweep_dir)
    assert [r["status"] for r in rows] == ["completed"] * 2
    by_loss = sorted(rows, key=lambda r: float(r["final_val_loss"]))
    assert [r["rank"] for r in by_loss] == ["1", "2"]  # the lowest loss first
    assert f"best: trial {by_loss[0]['trial']}, final_val_loss" in out

    study = optuna.load_study(study_name="sweep", storage=glue.open_storage(str(sweep_dir / glue.JOURNAL)))
    assert study.direction.name == "MINIMIZE"
    for trial, row in zip(study.trials, rows, strict=True):
        history = json.loads((sweep_dir / row["job_dir"] / "metrics.json").read_text())["history"]
        # the pruner was shown the metric's value after each epoch: the validation loss
        assert trial.intermediate_values == {h["epoch"]: pytest.approx(h["val_loss"]) for h in history}

    # Only the best trial was tested, once, after all had run; the others skipped the test pass.
    for row in rows:
        metrics = json.loads((sweep_dir / row["job_dir"] / "metrics.json").read_text())
        assert metrics["test_deferred"] is True
        tested = row["rank"] == "1"
        assert ("test_acc" in metrics) == tested and (row["test_acc"] != "") == tested
        if tested:
            assert float(row["test_acc"]) == metrics["test_acc"] and metrics["test_checkpoint"] == "checkpoints/last.pt"
    assert out.count("tested: test_acc") == 1

    # TensorBoard: the tested trial's run has test/acc; the HPARAMS columns lie in one trial's run and list it;
    # the sweep directory itself has no event file (an empty run in TensorBoard).
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import metadata

    assert not list(sweep_dir.glob("events.out.tfevents.*"))
    best = EventAccumulator(str(sweep_dir / by_loss[0]["job_dir"]))
    best.Reload()
    assert best.Scalars("test/acc")[-1].value == pytest.approx(float(by_loss[0]["test_acc"]))
    holders = list(sweep_dir.glob(f"*/events.out.tfevents.*{glue.EXPERIMENT_SUFFIX}"))
    assert len(holders) == 1
    events = EventAccumulator(str(holders[0].parent))
    events.Reload()
    experiment = metadata.parse_experiment_plugin_data(
        events.SummaryMetadata(metadata.EXPERIMENT_TAG).plugin_data.content)
    assert "test/acc" in {m.name.tag for m in experiment.metric_infos}
    lrs = next(h for h in experiment.hparam_infos if h.name == "optimizer.lr")
    assert lrs.type == 3  # DATA_TYPE_FLOAT64

    # Start-up per trial: from the trial's own start, never from the process's
    times = [json.loads((sweep_dir / r["job_dir"] / "metrics.json").read_text()) for r in rows]
    for before, after in zip(times, times[1:], strict=False):
        assert after["first_step_at"] - after["startup_s"] > before["first_step_at"]
    for m in times:
        assert m["startup_s"] == pytest.approx(sum(m["startup"].values()), abs=0.05)
        assert min(m["startup"].values()) >= 0


@pytest.mark.slow
def test_a_study_refuses_to_resume_under_another_metric(tmp_path):
    sweep_dir = tmp_path / "sweep"
    args = ["-m", *FAST, "seed=0", f"hydra.sweep.dir={sweep_dir}"]
    run_cli(args, cwd=tmp_path)
    proc = run_cli([*args, "hydra.sweeper.metric=final_val_loss", "hydra.sweeper.direction=minimize"], cwd=tmp_path,
                   check=False)
    assert proc.returncode == 2 and "ranks its trials by best_val_acc (maximize)" in proc.stderr


# ---------------------------------------------------------------------------------------------------------------
# In-process pieces

@pytest.mark.slow  # over 2 s on 2 idle cores: `make test-all` and CI run it
def test_a_deferred_test_from_last_pt_scores_what_the_trial_would_have_scored_at_its_end(tmp_path):
    overrides = ["averaging=ema", "evaluation.tta_flip=true", "trainer.epochs=1", "data.train_examples=500",
                 "data.test_examples=200", "diagnostics.every_steps=0"]
    cfg, choices = compose_config(overrides), choices_of(overrides)
    tested = train.fit(cfg, tmp_path / "tested", choices)
    deferred = train.fit(compose_config(overrides), tmp_path / "deferred", choices, test=False)
    assert deferred["test_deferred"] is True and "test_acc" not in deferred
    assert testing.needs_test(tmp_path / "deferred")
    later = testing.test_trial(tmp_path / "deferred")
    for key in ("test_acc", "test_loss", "test_ece", "test_acc_ema", "test_acc_tta"):
        assert later[key] == pytest.approx(tested[key], abs=1e-6), key
    assert json.loads((tmp_path / "deferred" / "metrics.json").read_text())["test_acc"] == later["test_acc"]
    assert not testing.needs_test(tmp_path / "deferred")  # tested once


def test_a_deferred_test_builds_nothing_a_trials_config_names(tmp_path):
    """A sweep directory may come from someone else: the test pass rebuilds a trial's config from runner's option
    files, so an edited `_target_` is refused in one line and never called."""
    overrides = ["trainer.epochs=1", "data.train_examples=500", "data.test_examples=100", "diagnostics.every_steps=0"]
    job = tmp_path / "trial"
    train.fit(compose_config(overrides), job, choices_of(overrides), test=False)
    marker = tmp_path / "written-by-the-config"
    text = (job / "config.yaml").read_text()
    edited = text.replace("  _target_: torch.nn.ReLU\n  _partial_: true\n",
                          f"  _target_: runner.data.checkpoint.write_text\n  text: pwned\n  path: {marker}\n")
    assert edited != text
    (job / "config.yaml").write_text(edited)
    with pytest.raises(ConfigError, match="activation._target_=runner.data.checkpoint.write_text is none of the "
                                          "options of configs/activation/"):
        testing.test_trial(job)
    assert not marker.exists() and testing.needs_test(job)


def test_the_same_data_is_loaded_once_per_process_and_read_only(monkeypatch):
    cfg = compose_config(["data.generator_seed=12345"]).data  # a key no other test loaded
    made = []
    real = data.make_synthetic
    monkeypatch.setattr(data, "make_synthetic", lambda *a, **k: made.append(1) or real(*a, **k))
    first = data.load_splits(cfg, "cpu")
    second = data.load_splits(cfg, "cpu")
    assert len(made) == 1
    arrays, _ = data.load_arrays(cfg)
    assert not arrays["test_x"].flags.writeable
    second.test_x[0] = 0  # a run's tensors are its own copies
    assert np.array_equal(first.test_x.numpy(), arrays["test_x"]) and arrays["test_x"][0].any()


def test_report_ranks_by_the_sweeps_rank_column(tmp_path):
    from runner.commands import report

    columns = glue.table_columns(["optimizer.lr"], "final_val_loss")
    rows = [{"trial": 0, "status": "completed", "rank": 2, "optimizer.lr": 0.1, "final_val_loss": 0.9,
             "best_val_acc": 0.9},
            {"trial": 1, "status": "completed", "rank": 1, "optimizer.lr": 0.01, "final_val_loss": 0.5,
             "best_val_acc": 0.8},
            {"trial": 2, "status": "pruned", "rank": "", "optimizer.lr": 1.0, "final_val_loss": 2.0,
             "best_val_acc": 0.1}]
    with (tmp_path / glue.TABLE).open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    loaded, _, keys = report.load(tmp_path)
    assert keys == ["optimizer.lr"]
    assert [r["trial"] for r in report.ranked(loaded)] == [1, 0, 2]


# ---------------------------------------------------------------------------------------------------------------
# The bench's copies of CIFAR-10 for the reference scripts

def _fake_cifar(root: Path, per_batch: int = 8) -> None:
    folder = root / data.CIFAR10_FOLDER
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in (*data.TRAIN_BATCHES, data.TEST_BATCH):
        batch = {"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                 "labels": rng.integers(0, 10, per_batch).tolist()}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    (folder / "batches.meta").write_bytes(pickle.dumps({"num_cases_per_batch": per_batch}, protocol=2))


def test_the_reference_scripts_copy_puts_runners_training_images_where_the_script_takes_its_own(tmp_path):
    from runner.commands import bench

    _fake_cifar(tmp_path / "cifar")
    arrays = data.read_cifar10(tmp_path / "cifar")
    mine = data.split(arrays, data.CIFAR10_CLASSES, 0, 12, 0, "cpu")  # data.val_size=0 data.train_size=12
    positions = np.random.default_rng(1).permutation(40)[:12]  # where a script takes its 12 images
    for bytes_keys in (False, True):  # as baseline_cnn.py and airbench_ref.py unpickle
        root = bench._subset_root(tmp_path / "cifar", tmp_path, f"copy{bytes_keys}", positions, bytes_keys)
        with (root / data.CIFAR10_FOLDER / data.TRAIN_BATCHES[0]).open("rb") as f:
            assert set(pickle.load(f, encoding="bytes" if bytes_keys else "latin1")) == (
                {b"data", b"labels"} if bytes_keys else {"data", "labels"})
    copy = data.read_cifar10(root)
    assert np.array_equal(copy["train_x"][positions], mine.train_x.numpy())
    assert np.array_equal(copy["train_y"][positions], mine.train_y.numpy())
    assert sorted(copy["train_x"].reshape(40, -1).tolist()) == sorted(arrays["train_x"].reshape(40, -1).tolist())
    assert np.array_equal(copy["test_x"], arrays["test_x"])
