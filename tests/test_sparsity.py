"""Magnitude pruning (runner.nets.sparsity, runner.engine.pruning): the masks reach exactly the sparsity asked, the
smallest weights go first, Zhu & Gupta's ramp, the sparse file restores the model, and inside a run the sparsity is
reached, held through fine-tuning, recorded, and survives a kill and resume."""

import json
import math
from types import SimpleNamespace

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import choices_of, compose_config
from runner.config import CheckpointError, ConfigError
from runner.data import checkpoint
from runner.engine import train
from runner.engine.pruning import SPARSE_FILE, Pruning
from runner.nets import sparsity as sp

FAST = ["model.widths=[8,16]", "data.train_examples=700", "data.test_examples=100", "diagnostics.every_steps=0"]


def _weights(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"a": torch.randn(16, 3, 3, 3, generator=g), "b": 0.1 * torch.randn(40, 16, generator=g),
            "c": torch.randn(10, 40, generator=g)}


@pytest.mark.parametrize("target", [0.0, 0.3, 0.9, 0.999])
def test_global_masks_prune_exactly_the_smallest_weights(target):
    weights = _weights()
    masks = sp.magnitude_masks(weights, target, "global")
    total = sum(w.numel() for w in weights.values())
    pruned = sum((~m).sum().item() for m in masks.values())
    assert pruned == round(target * total)
    kept = torch.cat([w[m].abs() for w, m in zip(weights.values(), masks.values(), strict=True)])
    gone = torch.cat([w[~m].abs() for w, m in zip(weights.values(), masks.values(), strict=True)])
    if len(gone) and len(kept):
        assert gone.max() <= kept.min()


def test_global_scope_takes_more_from_the_layer_of_small_weights_and_layer_scope_the_same_from_each():
    weights = _weights()
    glob = sp.magnitude_masks(weights, 0.5, "global")
    assert (~glob["b"]).float().mean() > 0.9  # b's weights are 10x smaller: nearly all of them go first
    layer = sp.magnitude_masks(weights, 0.5, "layer")
    for name, w in weights.items():
        assert (~layer[name]).sum().item() == round(0.5 * w.numel())


def test_the_gradual_ramp_follows_zhu_and_gupta():
    final, start, end = 0.9, 100, 1100
    assert sp.ramp(start, start, end, final) == 0.0
    assert sp.ramp(end, start, end, final) == final
    assert sp.ramp(5000, start, end, final) == final
    assert math.isclose(sp.ramp(600, start, end, final), final * (1 - 0.5 ** 3))  # s_f (1 - (1 - t)^3), t = 1/2
    assert math.isclose(sp.ramp(600, start, end, final, "linear"), final / 2)
    values = [sp.ramp(s, start, end, final) for s in range(start, end + 1, 50)]
    assert values == sorted(values)


def test_the_sparse_encoding_restores_the_weights_exactly_and_is_smaller():
    state = {f"{k}.weight": w for k, w in _weights().items()} | {"c.bias": torch.randn(10)}
    masks = sp.magnitude_masks({k: v for k, v in state.items() if k != "c.bias"}, 0.9, "global")
    for k, m in masks.items():
        state[k] = state[k] * m
    pruned = list(masks)
    decoded = sp.decode(sp.encode(state, pruned))
    assert decoded.keys() == state.keys()
    assert all(torch.equal(decoded[k], state[k]) for k in state)
    sizes = sp.sizes(state, pruned)
    assert sizes["sparse_bytes"] < sizes["dense_bytes"] / 2
    assert sizes["gzip_bytes"] < sizes["dense_bytes"]


@pytest.mark.parametrize("tamper, message", [
    # 2^45 weights claimed by a mask of 120 bytes: 128 TiB to allocate
    (lambda s: s.update(shape=[2**15, 2**15, 2**15]), r"'c.weight' claims 35,184,372,088,832 weights, but its mask has "
                                                      r"bits for 400"),
    (lambda s: s.update(bits=s["bits"][:-1]), r"'c.weight' claims 400 weights, but its mask has bits for 392"),
    (lambda s: s.update(values=s["values"][:-1]), r"'c.weight' keeps \d+ weights, but holds \d+ values"),
    (lambda s: s.update(shape=[10, "40"]), r"'c.weight' has no shape"),
])
def test_a_sparse_file_claiming_more_than_it_carries_is_refused_in_one_line(tmp_path, tamper, message):
    state = {f"{k}.weight": w for k, w in _weights().items()}
    masks = sp.magnitude_masks(state, 0.9, "global")
    encoded = sp.encode({k: w * masks[k] for k, w in state.items()}, list(state))
    tamper(encoded["sparse"]["c.weight"])
    path = tmp_path / "sparse.pt"
    checkpoint.save(encoded, path)
    with pytest.raises(CheckpointError, match=message) as err:
        sp.decode(checkpoint.load(path), str(path))
    assert str(err.value).startswith(f"{path} is not a sparse encoding runner wrote: ") and "\n" not in str(err.value)
    assert "checkpoints/last.pt" in str(err.value)


@pytest.mark.parametrize("override, message", [
    ("prune.sparsity=1", r"prune.sparsity=1 is invalid: must be a number in \[0, 1\)"),
    ("prune.scope=net", r"prune.scope='net' is invalid: allowed: global"),
    ("prune.when=before", r"prune.when='before' is invalid: allowed: after"),
    ("prune.fine_tune_epochs=2", r"prune.fine_tune_epochs=2 is invalid: must be an integer in \[0, 2\)"),
])
def test_bad_pruning_settings_are_one_line_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        compose_config(["prune=magnitude", override])


def test_pruning_with_early_stopping_is_refused():
    with pytest.raises(ConfigError, match="early stopping would put back"):
        compose_config(["prune=magnitude", "prune.fine_tune_epochs=1", "regularization=[l2,early_stopping]"])


def test_pruned_weights_stay_zero_through_optimizer_steps_and_the_masks_survive_the_state_dict():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(20, 30), torch.nn.ReLU(), torch.nn.Linear(30, 5))
    pruning = Pruning(0.6, "global", "during", 0, 0, 2, "cubic", model=model, epochs=2, steps_per_epoch=5)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    run = SimpleNamespace(state=SimpleNamespace(step=0))
    for _ in range(10):  # the ramp spans steps 0..10, masks renewed every 2 steps
        loss = model(torch.randn(8, 20)).square().mean()
        optimizer.zero_grad()
        loss.backward()
        pruning.after_backward(run)
        for n, w in pruning.weights.items() if pruning.masks else ():
            assert (w.grad[~pruning.masks[n]] == 0).all()  # no gradient reaches a pruned weight
        optimizer.step()
        pruning.after_step(run, None, None, None)
        run.state.step += 1
        zeros = sum((w == 0).sum().item() for w in pruning.weights.values())
        assert zeros >= round(pruning.target * 750)  # 20x30 + 30x5 weights; the mask holds after each step
    assert pruning.target == 0.6
    fresh = Pruning(0.6, "global", "during", 0, 0, 2, "cubic", model=model, epochs=2, steps_per_epoch=5)
    fresh.load_state_dict(pruning.state_dict())
    assert fresh.target == 0.6 and all(torch.equal(fresh.masks[n], pruning.masks[n]) for n in pruning.masks)


def test_the_prune_options_build_the_component_or_nothing():
    from runner.engine import build
    from runner.nets import layers, models

    model = models.CNN([4, 8], 1, num_classes=10, act=torch.nn.ReLU, norm=layers.BatchNorm())
    pruning = build.build_pruning(compose_config(["prune=magnitude", "prune.sparsity=0.5", "prune.fine_tune_epochs=1"]), model, 2, 5)
    assert isinstance(pruning, Pruning) and pruning.sparsity == 0.5
    assert list(pruning.weights) == ["features.0.conv", "features.2.conv", "head"]  # convs and the head; no norms
    assert build.build_pruning(compose_config(), model, 2, 5) is None


def _fit(path, overrides):
    return train.fit(compose_config(overrides), path, choices_of(overrides))


def _zero_fraction(state: dict, names) -> float:
    return sum((state[n] == 0).sum().item() for n in names) / sum(state[n].numel() for n in names)


@pytest.mark.slow  # a run: about 5 s of CPU
def test_one_shot_pruning_reaches_the_sparsity_holds_it_through_fine_tuning_and_records_it(tmp_path):
    overrides = [*FAST, "prune=magnitude", "prune.sparsity=0.7", "prune.fine_tune_epochs=1"]
    metrics = _fit(tmp_path, overrides)
    prune = metrics["prune"]
    assert abs(prune["reached"] - 0.7) <= 1 / prune["weights"]  # round(0.7 x weights) of them, exactly
    names = [f"{layer}.weight" for layer in prune["per_layer"]]
    state = checkpoint.load(tmp_path / train.LAST)["model"]
    assert _zero_fraction(state, names) == prune["reached"]  # the fine-tuned weights kept the mask
    assert prune["val_acc_before_prune"] is not None and prune["val_acc_after_prune"] is not None
    restored = sp.decode(checkpoint.load(tmp_path / SPARSE_FILE))
    assert all(torch.equal(restored[k], state[k]) for k in state)
    assert prune["sparse_bytes"] < prune["dense_bytes"]
    assert json.loads((tmp_path / "metrics.json").read_text())["prune"]["reached"] == prune["reached"]
    events = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0}).Reload()
    tags = set(events.Tags()["scalars"])
    assert {"prune/sparsity", "prune/target"} | {f"prune/sparsity/{layer}" for layer in prune["per_layer"]} <= tags
    assert [e.value for e in events.Scalars("prune/target")] == pytest.approx([0.0, 0.7])  # at epoch 2's start


@pytest.mark.slow  # three runs
def test_gradual_pruning_survives_a_kill_and_resumes_to_the_same_model(tmp_path, monkeypatch):
    overrides = [*FAST, "prune=magnitude", "prune.when=during", "prune.sparsity=0.8", "prune.fine_tune_epochs=0",
                 "prune.every_steps=2", "prune.scope=layer"]
    whole = _fit(tmp_path / "whole", overrides)

    real = train.train_one_epoch

    def killed_in_epoch_2(run):
        if run.state.epoch == 1:  # mid-ramp: the masks of epoch 1 must come back from the checkpoint
            raise KeyboardInterrupt
        return real(run)

    monkeypatch.setattr(train, "train_one_epoch", killed_in_epoch_2)
    assert _fit(tmp_path / "resumed", overrides)["status"] == "interrupted"
    saved = checkpoint.load(tmp_path / "resumed" / train.LAST)["components"]["prune"]
    assert 0 < saved["target"] < 0.8 and saved["masks"]
    monkeypatch.setattr(train, "train_one_epoch", real)
    resumed = _fit(tmp_path / "resumed", overrides)
    assert resumed["test_acc"] == whole["test_acc"]
    assert resumed["prune"]["per_layer"] == whole["prune"]["per_layer"]
    for layer, fraction in whole["prune"]["per_layer"].items():
        n = dict(checkpoint.load(tmp_path / "whole" / train.LAST)["model"])[f"{layer}.weight"].numel()
        assert abs(fraction - 0.8) <= 1 / n  # scope=layer: every layer at the target
    a, b = (checkpoint.load(tmp_path / r / train.LAST)["model"] for r in ("whole", "resumed"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_report_plots_test_accuracy_against_the_sparsity_reached(tmp_path):
    from runner.commands import report

    rows = []
    for trial, (reached, acc) in enumerate([(0.0, 0.80), (0.5, 0.79), (0.9, 0.70)]):
        (tmp_path / str(trial)).mkdir()
        (tmp_path / str(trial) / "metrics.json").write_text(json.dumps(
            {"prune": {"reached": reached, "dense_bytes": 1000, "sparse_bytes": 600, "gzip_bytes": 900}}))
        rows.append({"trial": trial, "status": "completed", "test_acc": acc, "final_val_acc": acc, "job_dir": str(trial)})
    report.add_sparsity(tmp_path, rows)
    assert [r["prune_reached"] for r in rows] == [0.0, 0.5, 0.9]
    table = "\n".join(report.render_sparsity(rows))
    assert table.splitlines()[-1].split()[:2] == ["0.9000", "0.7000"]
    path = report.plot_sparsity(tmp_path, rows, tmp_path / "accuracy_vs_sparsity.png")
    assert path.stat().st_size > 1000


def test_what_pruning_export_and_sharpness_record_is_declared():
    from runner.engine import records

    for tag in ("prune/target", "prune/sparsity", "prune/sparsity/features.0.conv", "test/acc_folded",
                "inference/fold_max_abs_diff", "inference/latency_ms/folded/batch_1", "sharpness/loss_increase",
                "sharpness/loss_increase_max", "sharpness/hessian_top"):
        records.check_tag(tag)
    records.check_metrics({"prune": {}, "export": {}, "test_acc_folded": 0.5, "inference_fold_max_abs_diff": 0.0,
                           "inference_latency_ms_folded_batch_1": 1.0, "sharpness_hessian_top": 1.0})
    with pytest.raises(KeyError):
        records.check_tag("prune/sparsity/features.0.conv/extra")
