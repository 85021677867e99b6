"""EMA of the weights: it matches its formula, parameters and batch-norm statistics alike, and every option file
of the averaging group builds."""

import pytest
import torch

from conftest import compose_config
from runner.config import CONFIG_DIR, ConfigError, validate
from runner.engine.averaging import EMA
from runner.engine.build import build_averaging

OPTIONS = sorted(p.stem for p in (CONFIG_DIR / "averaging").glob("*.yaml"))


@pytest.mark.parametrize("name", OPTIONS)
def test_every_averaging_option_composes_and_builds(name):
    cfg = compose_config([f"averaging={name}"])
    validate(cfg)
    ema = build_averaging(cfg, torch.nn.Linear(2, 2))
    assert (ema is None) == (name == "none")
    if ema is not None:
        assert ema.decay == cfg.averaging.decay


def test_ema_matches_its_formula_over_a_sequence_of_weights():
    """After setting the weights to w_1 .. w_n and updating each time: ema_n = d^n w_0 + sum_t (1-d) d^(n-t) w_t."""
    d = 0.8
    model = torch.nn.Linear(3, 2)
    w0 = model.weight.detach().clone()
    ema = EMA(model, d)
    sequence = [torch.randn(2, 3) for _ in range(6)]
    for w in sequence:
        with torch.no_grad():
            model.weight.copy_(w)
        ema.update()
    n = len(sequence)
    expected = d ** n * w0 + sum((1 - d) * d ** (n - t) * w for t, w in enumerate(sequence, 1))
    assert torch.allclose(ema.model.weight, expected, atol=1e-6)
    assert not ema.model.weight.requires_grad and not ema.model.training


def test_ema_averages_batch_norm_statistics_and_copies_the_batch_count():
    model = torch.nn.BatchNorm1d(4)
    ema = EMA(model, 0.5)
    model.train()
    model(torch.randn(64, 4) * 3 + 2)
    ema.update()
    assert torch.allclose(ema.model.running_mean, 0.5 * torch.zeros(4) + 0.5 * model.running_mean)
    assert ema.model.num_batches_tracked == model.num_batches_tracked == 1


def test_ema_state_round_trips():
    model = torch.nn.Linear(2, 2)
    ema = EMA(model, 0.9)
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update()
    other = EMA(torch.nn.Linear(2, 2), 0.9)
    other.load_state_dict(ema.state_dict())
    assert torch.equal(other.model.weight, ema.model.weight)


def test_decay_outside_the_open_unit_interval_is_refused():
    with pytest.raises(ConfigError, match="averaging.decay"):
        validate(compose_config(["averaging=ema", "averaging.decay=1.0"], checked=False))


def test_lookahead_pulls_the_weights_to_the_average_every_k_steps_with_a_ramped_decay():
    model = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.zero_()
    ema = EMA(model, 0.8, every_steps=2, lookahead=True, total_steps=4, ramp_power=1)
    for step in range(1, 5):
        with torch.no_grad():
            model.weight.add_(1.0)
        ema.update()
        if step == 1:
            assert torch.equal(model.weight, torch.ones(1, 2)) and torch.equal(ema.model.weight, torch.zeros(1, 2))
    # step 2: d = 0.8 * 2/4 = 0.4: ema = 0.6 * 2 = 1.2 = weights; step 4: d = 0.8: ema = 0.8 * 1.2 + 0.2 * 3.2
    assert torch.allclose(ema.model.weight, torch.full((1, 2), 0.8 * 1.2 + 0.2 * 3.2))
    assert torch.equal(model.weight, ema.model.weight)
