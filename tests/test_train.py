"""The engine: it learns, it is deterministic, it resumes exactly after a kill, it stops cleanly on divergence."""

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from conftest import choices_of, compose_config, run_cli
from runner.config import ConfigError, validate
from runner.data import checkpoint
from runner.engine import records, train
from test_golden import comparable, differences

# A run killed after epoch 2 of 3 (averaging=ema, regularization=[l2,grad_clip,early_stopping], a CNN of widths
# [4,8] on 200 synthetic training images), its checkpoint as runner wrote it before the run's position moved into
# RunState (runner.engine.state), and the metrics of the same run uninterrupted, on the machine that wrote both.
OLD_CHECKPOINT = Path(__file__).parent / "golden" / "resume"


def _fit(tmp_path, overrides=()):
    cfg = compose_config(overrides)
    return train.fit(cfg, tmp_path, choices_of(overrides))


@pytest.mark.slow  # over 2 s on 2 idle cores: `make test-all` and CI run it
def test_loss_falls_and_accuracy_rises_well_above_chance(tmp_path):
    metrics = _fit(tmp_path, ["trainer.epochs=3"])
    history = metrics["history"]
    assert metrics["status"] == "completed"
    assert history[-1]["train_loss"] < 0.5 * history[0]["train_loss"]
    assert metrics["test_acc"] > 0.6  # chance is 0.1
    assert metrics["best_val_acc"] == max(h["val_acc"] for h in history)
    assert json.loads((tmp_path / "metrics.json").read_text())["test_acc"] == metrics["test_acc"]


@pytest.mark.slow  # over 2 s on 2 idle cores: `make test-all` and CI run it
def test_same_seed_same_metrics_other_seed_other_metrics(tmp_path):
    a = _fit(tmp_path / "a", ["seed=3", "trainer.epochs=1"])
    b = _fit(tmp_path / "b", ["seed=3", "trainer.epochs=1"])
    c = _fit(tmp_path / "c", ["seed=4", "trainer.epochs=1"])
    keys = ("train_loss", "val_loss", "val_acc")
    assert [a["history"][0][k] for k in keys] == [b["history"][0][k] for k in keys]
    assert a["test_loss"] == b["test_loss"]
    assert a["history"][0]["train_loss"] != c["history"][0]["train_loss"]


def test_divergence_ends_the_run_with_status_diverged(tmp_path):
    metrics = _fit(tmp_path, ["optimizer.lr=1e6", "norm=none", "schedule=constant"])
    assert metrics["status"] == "diverged"
    assert "diverged" in metrics["message"] and "optimizer.lr" in metrics["message"]
    assert json.loads((tmp_path / "metrics.json").read_text())["status"] == "diverged"


@pytest.mark.slow  # over 2 s on 2 idle cores: `make test-all` and CI run it
def test_checkpoint_holds_everything_needed_to_resume(tmp_path):
    _fit(tmp_path, ["trainer.epochs=1"])
    state = checkpoint.load(tmp_path / train.LAST)
    assert {"model", "preprocess", "optimizer", "scheduler", "rng", "epoch", "step", "best", "history"} <= state.keys()
    assert state["epoch"] == 1 and state["step"] == 10  # 1000 training images / batch 100
    assert {"python", "torch", "data"} <= state["rng"].keys()
    assert (tmp_path / train.BEST).is_file()


@pytest.mark.slow  # over 2 s on 2 idle cores: `make test-all` and CI run it
def test_resume_an_already_completed_run_trains_no_further(tmp_path):
    """Running a completed run again reports its metrics and rewrites nothing (no second HPARAMS entry)."""
    first = _fit(tmp_path, ["trainer.epochs=1"])
    files = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file() and p.name != train.LOCK}
    again = _fit(tmp_path, ["trainer.epochs=1"])
    assert again["steps"] == first["steps"] and again["history"] == first["history"]
    assert again["test_acc"] == first["test_acc"]
    assert {p: p.stat().st_mtime_ns for p in files} == files  # only the lock records its new owner


@pytest.mark.slow  # over 2 s on 2 idle cores: `make test-all` and CI run it
def test_resume_from_other_run_directory(tmp_path):
    _fit(tmp_path / "a", ["trainer.epochs=1"])
    metrics = _fit(tmp_path / "b", ["trainer.epochs=2", f"trainer.resume={tmp_path / 'a'}"])
    assert metrics["epochs_completed"] == 2 and metrics["steps"] == 20


def test_a_checkpoint_of_an_earlier_runner_resumes_to_the_uninterrupted_run(tmp_path):
    """The checkpoint's layout (its top-level step, best, history, elapsed, resumes; the components' states) is read
    as it was written: resumed now, the run ends where the uninterrupted one did, within the golden tolerance."""
    saved = checkpoint.load(OLD_CHECKPOINT / "last.pt")
    assert saved["format"] == 2 and saved["step"] == 8 and len(saved["history"]) == 2
    cfg = OmegaConf.create(saved["config"])  # the run's own config, as it recorded it
    validate(cfg)
    (tmp_path / "checkpoints").mkdir()
    shutil.copy(OLD_CHECKPOINT / "last.pt", tmp_path / train.LAST)
    metrics = train.fit(cfg, tmp_path, {})
    assert metrics["status"] == "completed"
    assert [(r["epoch"], r["step"]) for r in metrics["resumes"]] == [(2, 8)]
    assert metrics["history"][:2] == saved["history"]  # the checkpoint's epochs, as they were
    uninterrupted = json.loads((OLD_CHECKPOINT / "uninterrupted.json").read_text())
    assert {"early_stopping", "test_acc_ema"} <= uninterrupted.keys()  # the components' states were read back
    assert differences(uninterrupted, comparable(metrics)) == []


def test_resume_path_without_checkpoint_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="trainer.resume"):
        _fit(tmp_path, [f"trainer.resume={tmp_path / 'nowhere'}"])


def test_pick_device():
    assert train.pick_device("cpu") == torch.device("cpu")
    assert train.pick_device("auto").type in ("cuda", "mps", "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match=r"device='cuda:1' is not present.*device=auto"):
            train.pick_device("cuda:1")


KILL_ARGS = ["data.train_examples=3000", "trainer.epochs=3", "trainer.batch_size=50", "seed=5"]


# slow (two 3-epoch CLI runs and a kill): resume equality runs fast in-process in test_train_techniques
@pytest.mark.slow
def test_killed_mid_epoch_then_resumed_equals_uninterrupted_run(tmp_path):
    """SIGKILL during epoch 2, re-run the same command in the same run directory: the final metrics equal
    those of a run that was never interrupted."""
    from conftest import TINY

    whole = tmp_path / "whole"
    run_cli([*TINY, *KILL_ARGS, f"hydra.run.dir={whole}"], cwd=tmp_path)

    killed = tmp_path / "killed"
    args = [sys.executable, "-m", "runner", *TINY, *KILL_ARGS, f"hydra.run.dir={killed}"]
    proc = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (killed / train.LAST).is_file() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "metrics.json").exists(), "the run finished before it could be killed"
    assert checkpoint.load(killed / train.LAST)["epoch"] == 1

    run_cli([*TINY, *KILL_ARGS, f"hydra.run.dir={killed}"], cwd=tmp_path)
    a = json.loads((whole / "metrics.json").read_text())
    b = json.loads((killed / "metrics.json").read_text())
    assert b["status"] == "completed"
    assert (b["test_acc"], b["test_loss"]) == (a["test_acc"], a["test_loss"])
    for ha, hb in zip(a["history"], b["history"], strict=True):
        assert (ha["train_loss"], ha["val_loss"], ha["val_acc"]) == (hb["train_loss"], hb["val_loss"], hb["val_acc"])


# ---------------------------------------------------------------------------------------------------------------
# One run state: what a checkpoint was made from, and continuing it

def _scalars(run_dir, tag):
    return records.read_scalars(run_dir, tag)


@pytest.mark.slow  # over 2 s on 2 idle cores: `make test-all` and CI run it
def test_resuming_under_another_optimizer_is_refused_with_the_differing_keys(tmp_path):
    """On main this crashed with KeyError: 'step' (Adam's state read from SGD's checkpoint)."""
    _fit(tmp_path, ["trainer.epochs=1", "optimizer=sgd"])
    with pytest.raises(ConfigError) as err:
        _fit(tmp_path, ["trainer.epochs=2", "optimizer=adam"])
    message = str(err.value)
    assert "optimizer._target_: torch.optim.SGD -> torch.optim.Adam" in message
    assert "trainer.resume=never" in message and "hydra.run.dir" in message and "\n" not in message
    assert "trainer.resume_allow=[optimizer]" in message  # the explicit way to allow the change


def test_a_changed_data_size_is_not_reported_as_the_old_run(tmp_path):
    """On main a completed run re-run with data.train_size changed answered 'nothing to do' with the old metrics."""
    _fit(tmp_path, ["trainer.epochs=1", "data.train_size=500"])
    with pytest.raises(ConfigError, match=r"data.train_size: 500 -> 600"):
        _fit(tmp_path, ["trainer.epochs=1", "data.train_size=600"])


@pytest.mark.slow  # over 2 s on 2 idle cores: `make test-all` and CI run it
def test_more_epochs_continue_on_the_replanned_schedule(tmp_path):
    """Raising trainer.epochs re-plans the schedule: the first new step uses the new plan's lr at that step (on
    main it used the old plan's last lr, 25x-1000x smaller for onecycle)."""
    from runner.engine.build import schedule_factor

    first = _fit(tmp_path, ["trainer.epochs=1", "schedule=onecycle"])
    assert first["steps"] == 10
    cfg = compose_config(["trainer.epochs=3", "schedule=onecycle"])
    train.fit(cfg, tmp_path, {})
    lrs = dict(_scalars(tmp_path, "lr/decay"))
    assert lrs[11] == pytest.approx(cfg.optimizer.lr * schedule_factor(cfg.schedule, 30, 10)(10))  # the lr step 10 used, logged after it at step 11
    assert lrs[11] > 10 * lrs[10]


@pytest.mark.slow  # over 2 s on 2 idle cores: `make test-all` and CI run it
def test_tensorboard_holds_every_epochs_scalars_once_after_a_resume(tmp_path):
    """On main the resumed run's purge_step deleted the last checkpointed epoch's val scalars."""
    _fit(tmp_path, ["trainer.epochs=1"])
    _fit(tmp_path, ["trainer.epochs=2"])
    assert [step for step, _ in _scalars(tmp_path, "val/acc")] == [10, 20]
    steps = [step for step, _ in _scalars(tmp_path, "lr/decay")]
    assert steps == list(range(1, 21))
    assert [step for step, _ in _scalars(tmp_path, "train/loss")] == list(range(1, 21))  # train/ purges too


def test_the_autoencoder_trains_on_the_same_loop_with_its_options(tmp_path):
    """On main the autoencoder's own loop ignored gradient clipping, averaging and early stopping."""
    metrics = _fit(tmp_path, ["objective=autoencoder", "model.widths=[4,8]", "objective.decoder_width=8",
                              "regularization=[grad_clip,early_stopping]", "regularization.early_stopping.metric=val_loss",
                              "averaging=ema", "averaging.decay=0.5", "trainer.epochs=2"])
    assert metrics["status"] == "completed" and metrics["objective"] == "autoencoder"
    assert "val_loss_ema" in metrics["history"][-1] and "test_loss" in metrics
    assert metrics["early_stopping"]["best_epoch"] >= 1
    assert len(_scalars(tmp_path, "train/grad_norm")) == 2 * 2  # log_every_steps=5 over 10 steps, 2 epochs


def test_records_refuse_an_undeclared_tag_even_one_that_starts_like_a_declared_one():
    from runner.engine import records

    records.check_tag("diag/act_std/features.0.act")
    with pytest.raises(KeyError, match="not declared"):
        records.check_tag("train/loss_typo")
    with pytest.raises(KeyError, match="not declared"):
        records.check_metrics({"status": "completed", "test_acc": 0.5, "tset_acc": 0.5})
