"""Sharpness (runner.engine.sharpness) on quadratics whose Hessian is known: power iteration finds the top
eigenvalue, random perturbations raise the loss by the formula's amount, a sharp minimum ranks above a flat one,
and a run reports both measures."""

import math

import pytest
import torch
from torch import nn

from conftest import choices_of, compose_config
from runner.config import ConfigError
from runner.engine import train
from runner.engine.sharpness import loss_increase, top_hessian_eigenvalue


def _matrix(eigenvalues, seed=0) -> torch.Tensor:
    """A symmetric matrix with these eigenvalues, in a random basis."""
    q, _ = torch.linalg.qr(torch.randn(len(eigenvalues), len(eigenvalues), generator=torch.Generator().manual_seed(seed),
                                       dtype=torch.float64))
    return q @ torch.diag(torch.tensor(eigenvalues, dtype=torch.float64)) @ q.T


def _quadratic(matrices, centre):
    """losses() of L(w) = mean over batches of 1/2 (w - c)' A_b (w - c), and its parameter w (at the minimum c)."""
    w = nn.Parameter(centre.clone())

    def losses():
        for a in matrices:
            d = w - centre
            yield 0.5 * d @ a @ d
    return losses, w


def test_power_iteration_finds_the_top_eigenvalue_of_a_known_hessian():
    a = _matrix([10.0, 4.0, 3.0, 1.0, 0.5, 0.1, 0.0, 0.0])
    losses, w = _quadratic([a], torch.ones(8, dtype=torch.float64))
    top = top_hessian_eigenvalue(losses, [w], 100, torch.Generator().manual_seed(0), tol=1e-10)
    assert math.isclose(top, 10.0, rel_tol=1e-6)


def test_the_hessian_is_the_mean_over_the_batches():
    a1, a2 = _matrix([6.0, 1.0, 0.0], seed=1), _matrix([2.0, 2.0, 1.0], seed=2)
    losses, w = _quadratic([a1, a2], torch.ones(3, dtype=torch.float64))
    top = top_hessian_eigenvalue(losses, [w], 200, torch.Generator().manual_seed(0), tol=1e-12)
    assert math.isclose(top, torch.linalg.eigvalsh((a1 + a2) / 2).max().item(), rel_tol=1e-6)


def test_random_perturbations_raise_the_loss_by_the_formula_and_rank_sharp_above_flat():
    n, radius, centre = 50, 0.1, torch.full((50,), 2.0, dtype=torch.float64)
    flat = _matrix(torch.linspace(0.1, 1.0, n).tolist())
    sharp = 10 * flat
    scores = {}
    for name, a in (("flat", flat), ("sharp", sharp)):
        losses, w = _quadratic([a], centre)
        scores[name] = loss_increase(losses, [w], radius, 400, torch.Generator().manual_seed(0))
        assert torch.equal(w.detach(), centre)  # the weights are put back exactly
    # E[d'Ad / 2] for d uniform on the sphere of radius r ||w||: (r ||w||)^2 tr(A) / (2n)
    expected = (radius * centre.norm().item()) ** 2 * torch.trace(flat).item() / (2 * n)
    assert scores["flat"]["loss"] == 0.0
    assert math.isclose(scores["flat"]["loss_increase"], expected, rel_tol=0.1)
    assert scores["flat"]["loss_increase_max"] >= scores["flat"]["loss_increase"]
    # the same directions (same seed): the sharp minimum's increase is exactly 10x the flat one's
    assert math.isclose(scores["sharp"]["loss_increase"], 10 * scores["flat"]["loss_increase"], rel_tol=1e-9)


@pytest.mark.parametrize("override, message", [
    ("evaluation.sharpness_radius=0", r"evaluation.sharpness_radius=0 is invalid: must be a positive number"),
    ("evaluation.hessian_iters=-1", r"evaluation.hessian_iters=-1 is invalid: must be an integer >= 0"),
])
def test_bad_sharpness_settings_are_one_line_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        compose_config([override])


@pytest.mark.slow  # a run: about 5 s of CPU
def test_a_run_reports_its_sharpness(tmp_path):
    overrides = ["model.widths=[8,16]", "data.train_examples=700", "data.test_examples=100", "trainer.epochs=1",
                 "diagnostics.every_steps=0", "evaluation.sharpness_samples=2", "evaluation.sharpness_images=200",
                 "evaluation.hessian_iters=3"]
    metrics = train.fit(compose_config(overrides), tmp_path, choices_of(overrides))
    assert metrics["sharpness_loss_increase_max"] >= metrics["sharpness_loss_increase"]
    assert metrics["sharpness_hessian_top"] > 0  # near a minimum the top curvature is positive
    assert all(math.isfinite(metrics[k]) for k in ("sharpness_loss_increase", "sharpness_hessian_top"))
