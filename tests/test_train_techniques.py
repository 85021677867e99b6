"""The training techniques inside a real run (train.fit): what they leave in TensorBoard and metrics.json, the
snapshot ensemble, MC dropout and TTA at the end, and an exact resume with all their state (EMA weights, the
plateau schedule, early stopping's counters)."""

import json

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import choices_of, compose_config
from runner.data import checkpoint
from runner.engine import records, train

FAST = ["model.widths=[8,16]", "data.train_examples=700", "data.test_examples=100", "diagnostics.every_steps=0"]
STATEFUL = [*FAST, "trainer.epochs=3", "averaging=ema", "averaging.decay=0.8", "schedule=plateau",
            "schedule.patience_epochs=0", "schedule.metric=val_loss",
            "regularization=[l1,grad_clip,early_stopping,label_smoothing]", "regularization.l1.value=0.01",
            "regularization.early_stopping.patience_epochs=3", "augmentation=crop_flip_jitter", "preprocess=center"]


def _fit(path, overrides):
    return train.fit(compose_config(overrides), path, choices_of(overrides))


def test_techniques_show_up_in_tensorboard_and_metrics(tmp_path):
    metrics = _fit(tmp_path, STATEFUL)
    events = EventAccumulator(str(tmp_path), size_guidance={"images": 0, "scalars": 0}).Reload()
    scalars, images = set(events.Tags()["scalars"]), set(events.Tags()["images"])
    assert {"lr/decay", "lr/no_decay", "train/grad_norm", "weights/zero_fraction", "weights/near_zero_fraction",
            "test/acc_ema", "test/ece"} <= scalars
    # the weight average's validation is a run of its own beside train and validation, under the same tags
    assert [step for step, _ in records.read_scalars(tmp_path, "val/acc_ema")] == [
        step for step, _ in records.read_scalars(tmp_path, "val/acc")] != []
    assert records.where("val/loss_ema") == ("validation_ema", "curves/loss")
    assert {"schedule/lr_plan", "inputs/augmentation", "inputs/preprocess"} <= images
    assert len(events.Scalars("lr/decay")) == metrics["steps"]  # the lr of every step
    assert events.Scalars("weights/zero_fraction")[-1].value > 0  # L1's proximal step made exact zeros
    assert {"test_acc_ema", "test_ece", "early_stopping"} <= metrics.keys()
    assert all("val_acc_ema" in h for h in metrics["history"])


@pytest.mark.slow  # over 2 s on 2 idle cores: `make test-all` and CI run it
def test_resume_with_every_stateful_technique_equals_an_uninterrupted_run(tmp_path, monkeypatch):
    whole = _fit(tmp_path / "whole", STATEFUL)

    real = train.train_one_epoch

    def killed_in_epoch_3(run):
        if run.state.epoch == 2:  # interrupted before the third epoch's first step
            raise KeyboardInterrupt
        return real(run)

    monkeypatch.setattr(train, "train_one_epoch", killed_in_epoch_3)
    assert _fit(tmp_path / "resumed", STATEFUL)["status"] == "interrupted"
    monkeypatch.setattr(train, "train_one_epoch", real)
    resumed = _fit(tmp_path / "resumed", STATEFUL)

    def measured(history):  # all but the timings
        return [{k: v for k, v in h.items() if k not in ("epoch_s", "img_per_s", "val_s")} for h in history]

    assert measured(resumed["history"]) == measured(whole["history"])
    for key in ("test_acc", "test_loss", "test_acc_ema", "test_ece", "early_stopping"):
        assert resumed[key] == whole[key], key
    a, b = (checkpoint.load(tmp_path / run / train.LAST) for run in ("whole", "resumed"))
    assert a["scheduler"]["plateau"] == b["scheduler"]["plateau"]
    ema_a, ema_b = a["components"]["ema"], b["components"]["ema"]
    assert all(torch.equal(ema_a[k], ema_b[k]) for k in ema_a)


def test_snapshot_ensemble_mc_dropout_and_tta_are_reported(tmp_path):
    overrides = [*FAST, "trainer.epochs=4", "schedule=cyclic", "schedule.half_cycle_epochs=1",
                 "regularization=[dropout]", "evaluation.mc_dropout_passes=3", "evaluation.tta_flip=true"]
    metrics = _fit(tmp_path, overrides)
    snapshots = sorted(p.name for p in (tmp_path / "checkpoints").glob("snapshot_*.pt"))
    assert snapshots == ["snapshot_1.pt", "snapshot_2.pt"]  # cycles end after epochs 2 and 4
    assert checkpoint.load(tmp_path / "checkpoints/snapshot_1.pt")["epoch"] == 2
    assert metrics["test_acc_snapshot_2"] == metrics["test_acc"]  # the last snapshot is the final model
    assert {"test_acc_snapshot_ensemble", "test_mc_acc", "test_mc_nll", "test_mc_ece", "test_acc_tta"} <= set(metrics)
    assert 0 <= metrics["test_mc_ece"] <= 1 and metrics["test_mc_nll"] > 0
    assert json.loads((tmp_path / "metrics.json").read_text())["test_acc_tta"] == metrics["test_acc_tta"]
    events = EventAccumulator(str(tmp_path)).Reload()
    assert events.Scalars("test/acc_snapshot_ensemble")[-1].value == pytest.approx(
        metrics["test_acc_snapshot_ensemble"])


@pytest.mark.slow
def test_the_brief_s_combination_runs_from_the_cli(tmp_path):
    from conftest import TINY, run_cli

    run = tmp_path / "run"
    run_cli([*TINY, "optimizer=nadam", "schedule=cosine_restarts", "regularization=[l1,grad_clip,early_stopping]",
             "augmentation=cutout", "preprocess=zca", f"hydra.run.dir={run}"], cwd=tmp_path)
    assert json.loads((run / "metrics.json").read_text())["status"] == "completed"


def test_a_run_can_continue_another_that_had_none_of_the_techniques(tmp_path):
    _fit(tmp_path / "plain", [*FAST, "trainer.epochs=1"])
    overrides = [*FAST, "trainer.epochs=2", "averaging=ema", "schedule=plateau",
                 "regularization=[early_stopping]", f"trainer.resume={tmp_path / 'plain'}",
                 "trainer.resume_allow=[averaging,schedule,regularization]"]
    metrics = _fit(tmp_path / "more", overrides)
    assert metrics["status"] == "completed" and metrics["epochs_completed"] == 2
    ema = checkpoint.load(tmp_path / "more" / train.LAST)["components"]["ema"]
    first = checkpoint.load(tmp_path / "plain" / train.LAST)["model"]
    assert not torch.equal(ema["head.weight"], first["head.weight"])  # averaged on from the loaded weights


@pytest.mark.slow  # over 2 s on 2 idle cores: `make test-all` and CI run it
def test_the_fast_preset_runs_from_the_cli_with_every_piece_in_place(tmp_path):
    """+experiment=fast end to end (small widths, synthetic data): the norm scales stay 1, the norm shifts train at
    64x the lr, the run directory's config records the fixed scale, and the TTA accuracy is reported."""
    from conftest import TINY, run_cli

    run = tmp_path / "run"
    run_cli([*TINY, "+experiment=fast", "model.widths=[8,16,16]", "init.whiten_images=200", "trainer.batch_size=200",
             "trainer.epochs=2", f"hydra.run.dir={run}"], cwd=tmp_path)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "completed" and "test_acc_tta" in metrics
    state = checkpoint.load(run / train.LAST)
    scales = [v for k, v in state["model"].items() if k.endswith(("norm1.weight", "norm2.weight"))]
    shifts = [v for k, v in state["model"].items() if k.endswith(("norm1.bias", "norm2.bias"))]
    assert len(scales) == 6 and all(torch.equal(s, torch.ones_like(s)) for s in scales)
    assert any(s.abs().sum() > 0 for s in shifts)
    groups = {g["name"]: g for g in state["optimizer"]["param_groups"]}
    assert groups["norm_bias"]["initial_lr"] == pytest.approx(64 * groups["decay"]["initial_lr"])
    assert (run / "config.yaml").read_text().count("learn_scale: false") == 1
