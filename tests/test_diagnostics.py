"""Diagnostics: dead and saturated units on constructed inputs, gradient norms and update ratios against a manual
SGD step, the symmetry detector, the initial-loss check, batch norm's train/eval gap, hooks only on diagnostic
steps, and the tags a real run writes."""

import logging
import math
from types import SimpleNamespace

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

from conftest import choices_of, compose_config
from runner.engine import train
from runner.engine.build import build_model
from runner.nets.diagnostics import Probe, batch_norm_losses, dead_fraction, saturated_fraction


class FakeTracker:
    """Records what the probe writes."""

    def __init__(self):
        self.values, self.histograms, self.figures = {}, {}, {}
        self.writer = SimpleNamespace(add_histogram_raw=self._histogram)

    def scalars(self, values, step):
        for tag, value in values.items():
            self.scalar(tag, value, step)

    def scalar(self, tag, value, step):
        self.values.setdefault(tag, {})[step] = value

    def figure(self, tag, figure, step):
        self.figures[tag] = figure

    def _histogram(self, tag, **kw):
        self.histograms.setdefault(tag, {})[kw["global_step"]] = kw


def _probe(model, every=1, histograms=True):
    tracker = FakeTracker()
    return Probe(model, SimpleNamespace(every_steps=every, histograms=histograms), tracker), tracker


def _sgd_step(model, probe, step, lr=0.1, batch=16):
    """One training step as train_one_epoch does it, with the probe's three calls."""
    torch.manual_seed(step)
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    diagnose = probe.start(step)
    logits = model(x)
    loss = nn.functional.cross_entropy(logits, y)
    optimizer.zero_grad()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    if diagnose:
        probe.gradients()
    optimizer.step()
    out = probe.finish(step, x, logits, y) if diagnose else None
    return out, grads, weights


def test_dead_fraction_counts_units_never_positive_on_the_batch():
    y = torch.rand(8, 4, 3, 3)
    y[:, 1] = 0.0  # channel 1 dead everywhere
    y[:, 3] = 0.0
    y[5, 3, 2, 2] = 0.7  # channel 3 alive at one position of one example: not dead
    assert dead_fraction(y).item() == pytest.approx(0.25)
    assert dead_fraction(torch.zeros(5, 10)).item() == 1.0


def test_saturated_fraction_counts_values_with_a_vanishing_derivative():
    tanh = torch.tensor([0.99, 0.5, -0.96, 0.0, -0.3, 0.94])  # 1 - y^2 < 0.1 where |y| > 0.949
    assert saturated_fraction(tanh, "tanh").item() == pytest.approx(2 / 6)
    sigmoid = torch.tensor([0.01, 0.5, 0.99, 0.9])  # 4 y (1 - y) < 0.1 where y < 0.026 or y > 0.974
    assert saturated_fraction(sigmoid, "sigmoid").item() == pytest.approx(2 / 4)


def test_probe_measures_activations_gradients_and_update_ratios():
    cfg = compose_config(["model=mlp", "model.depth=2", "model.width=32", "norm=none", "activation=tanh"])
    model = build_model(cfg, 10)
    probe, tracker = _probe(model)
    out, grads, weights = _sgd_step(model, probe, step=0, lr=0.1)
    first = "hidden.0.linear"
    g = grads[f"{first}.weight"]
    assert out[f"diag/grad_norm/{first}"] == pytest.approx(g.norm().item(), rel=1e-5)
    # Plain SGD: dW = -lr g, so the ratio is lr ||g|| / ||W||.
    assert out[f"diag/update_ratio/{first}"] == pytest.approx(0.1 * g.norm().item()
                                                              / weights[f"{first}.weight"].norm().item(), rel=1e-4)
    for layer in ("hidden.0.act", "hidden.1.act"):
        assert {f"diag/act_mean/{layer}", f"diag/act_std/{layer}", f"diag/saturated_frac/{layer}"} <= out.keys()
    assert "diag/dead_frac/hidden.0.act" not in out  # tanh units do not die
    assert "diag/bn_train_eval_gap" not in out  # no batch norm
    # At step 0: the std over depth as a figure (x = layer, not a step), its points the per-layer values.
    figure = tracker.figures["diag/act_std_by_layer"]
    assert list(figure.axes[0].lines[0].get_ydata()) == pytest.approx([out["diag/act_std/hidden.0.act"],
                                                                       out["diag/act_std/hidden.1.act"]])
    assert "layer" in figure.axes[0].get_xlabel() and "diag/act_std_by_layer" not in tracker.values
    # Histograms wait for a second diagnostic step (a lone slice says nothing), then both steps are written.
    assert tracker.histograms == {}
    _sgd_step(model, probe, step=1, lr=0.1)
    for layer in ("hidden.0.act", "hidden.1.act"):
        hists = tracker.histograms[f"diag/activations/{layer}"]
        assert sorted(hists) == [1, 2]
        assert all(sum(h["bucket_counts"]) == h["num"] == 16 * 32 for h in hists.values())


def test_hooks_are_attached_only_for_a_diagnostic_step():
    model = build_model(compose_config(["model.widths=[4,8]"]), 10)
    probe, tracker = _probe(model, every=3)
    acts = [m for _, m in probe.activations]
    assert len(acts) == 2
    assert probe.start(1) is False and not any(m._forward_hooks for m in acts)
    assert probe.start(3) is True and all(m._forward_hooks for m in acts)
    model(torch.randn(4, 3, 32, 32)).sum().backward()
    probe.gradients()
    assert not any(m._forward_hooks for m in acts)  # removed in the same step
    off, _ = _probe(model, every=0)
    assert off.start(0) is False


def test_dead_relu_fraction_is_measured_in_a_real_model():
    model = build_model(compose_config(["model=mlp", "model.depth=1", "model.width=20", "norm=none"]), 10)
    with torch.no_grad():
        model.hidden[0].linear.bias[:5] = -1e3  # 5 of 20 units can never be positive
    probe, _ = _probe(model)
    out, _, _ = _sgd_step(model, probe, step=0)
    assert out["diag/dead_frac/hidden.0.act"] == pytest.approx(0.25)


@pytest.mark.parametrize("init, fires", [("constant", True), ("he_normal", False)])
def test_symmetry_detector_fires_for_constant_init_and_not_for_he(init, fires, caplog):
    model = build_model(compose_config(["model=mlp", "model.depth=2", "model.width=16", f"init={init}"]), 10)
    probe, _ = _probe(model)
    with caplog.at_level(logging.WARNING, logger="runner"):
        _sgd_step(model, probe, step=0)
        _sgd_step(model, probe, step=1)
    warned = [r.getMessage() for r in caplog.records if "identical" in r.getMessage()]
    if fires:
        # Both hidden layers (the head's units get different gradients per class); reported once each.
        assert len(warned) == 2 and "hidden.0.linear" in warned[0] and "hidden.1.linear" in warned[1]
    else:
        assert warned == []


def test_initial_loss_is_checked_against_ln_classes(caplog):
    model = build_model(compose_config(["model=mlp", "model.depth=1", "model.width=16", "norm=none"]), 10)
    nn.init.zeros_(model.head.weight)
    nn.init.zeros_(model.head.bias)
    probe, _ = _probe(model)
    with caplog.at_level(logging.INFO, logger="runner"):
        out, _, _ = _sgd_step(model, probe, step=0)
    assert out["diag/initial_loss"] == pytest.approx(math.log(10), rel=1e-6)  # uniform predictions
    assert "far from ln(10)" not in caplog.text
    with torch.no_grad():
        model.head.weight.normal_(0, 10.0)  # huge logits: confidently wrong
    probe, _ = _probe(model)
    with caplog.at_level(logging.INFO, logger="runner"):
        out, _, _ = _sgd_step(model, probe, step=0)
    assert out["diag/initial_loss"] > 2 * math.log(10)
    assert "far from ln(10)" in caplog.text


def test_batch_norm_gap_compares_batch_and_running_statistics_and_changes_nothing():
    torch.manual_seed(0)
    model = build_model(compose_config(["model.widths=[4,8]", "regularization=[dropout]"]), 10)
    x, y = 3.0 + torch.randn(32, 3, 32, 32), torch.randint(0, 10, (32,))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batch, running = batch_norm_losses(model, x, y)
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # running stats restored
    # The references: the whole model in eval mode, and in train mode with only dropout off.
    model.eval()
    assert running.item() == pytest.approx(nn.functional.cross_entropy(model(x), y).item(), rel=1e-5)
    model.train()
    model.drop.eval()
    assert batch.item() == pytest.approx(nn.functional.cross_entropy(model(x), y).item(), rel=1e-5)
    model.load_state_dict(before)
    # Fresh running statistics (mean 0, var 1) on inputs of mean 3: the two modes really differ.
    assert abs(running.item() - batch.item()) > 1e-3
    assert batch_norm_losses(build_model(compose_config(["norm=none", "model.widths=[4]"]), 10), x, y) is None


@pytest.mark.slow  # over 2 s on 2 idle cores: `make test-all` and CI run it
def test_a_run_writes_diagnostics_and_model_size_to_tensorboard(tmp_path):
    overrides = ["trainer.epochs=1", "diagnostics.every_steps=4", "model.widths=[8,16]"]
    train.fit(compose_config(overrides), tmp_path, choices_of(overrides))
    events = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0, "histograms": 0})
    events.Reload()
    scalars = events.Tags()["scalars"]
    assert {"model/params", "model/flops_per_image", "diag/initial_loss", "diag/bn_train_eval_gap",
            "diag/grad_norm/head", "diag/update_ratio/features.0.conv",
            "diag/dead_frac/features.0.act"} <= set(scalars)
    # measured at step 0 and every 4 (10 steps), logged after each at the count of steps done
    assert [e.step for e in events.Scalars("diag/update_ratio/head")] == [1, 5, 9]
    assert [e.step for e in events.Histograms("diag/activations/features.0.act")] == [1, 5, 9]
    assert "diag/act_std_by_layer" in events.Tags()["images"]
    params = build_model(compose_config(overrides), 10)
    assert events.Scalars("model/params")[0].value == sum(p.numel() for p in params.parameters())
