"""Lessons on the batch and the loss landscape (runner.lessons.batch): each measuring function checked against a
formula or a known case on a tiny net built here, and each lesson run at --size test with the verdict it computes
asserted (slow: they train several networks)."""

import math
import statistics
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from runner.commands.lesson import run_lesson
from runner.engine.objectives import Classify
from runner.lessons import batch


def _lesson(name, tmp_path, *overrides):
    return run_lesson(name, list(overrides), "test", user=[], out=tmp_path)


def _row(result, arm):
    return next(r for r in result.rows if r.get("arm") == arm)


# ---------------------------------------------------------------------------------------------------------------
# Measuring functions (fast)

def test_minibatch_gradient_variance_of_a_linear_model_is_its_trace_over_b():
    """Least squares y = w.x + noise: the per-example gradient is 2 (w.x - y) x, so tr(Sigma) is known exactly and
    E ||g_B - g||^2 (drawn with replacement) must be tr(Sigma) / B at every B; the log-log slope is -1."""
    torch.manual_seed(0)
    x = torch.randn(300, 6)
    y = x @ torch.randn(6, 1) + 0.5 * torch.randn(300, 1)
    model = nn.Linear(6, 1, bias=False)
    per_example = 2 * (x @ model.weight.detach().T - y) * x  # (300, 6)
    trace = (per_example - per_example.mean(0)).pow(2).sum(1).mean().item()
    found = batch.minibatch_gradient_variance(model, x, y, [1, 4, 16, 64], images=4096, min_draws=400,
                                              generator=torch.Generator().manual_seed(1),
                                              loss_fn=nn.functional.mse_loss, chunk=64)
    for b, f in found.items():
        assert f["draws"] == max(400, 4096 // b)
        assert abs(f["mean"] - trace / b) < 4 * f["se"], (b, f, trace / b)
        assert abs(f["mean"] * b / trace - 1) < 0.15
    assert batch.log_slope(list(found), [f["mean"] for f in found.values()]) == pytest.approx(-1, abs=0.05)
    assert model.training  # put back as it was


def test_minibatch_gradient_variance_is_measured_in_eval_mode():
    """With batch norm in eval mode the examples' gradients are independent: a batch of one example has a finite
    gradient (in training mode batch norm of one example would fail) and the mode is restored."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3)).train()
    x, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
    found = batch.minibatch_gradient_variance(model, x, y, [1, 8], images=64, min_draws=8,
                                              generator=torch.Generator().manual_seed(0),
                                              loss_fn=nn.functional.cross_entropy)
    assert all(math.isfinite(f["mean"]) and f["mean"] > 0 for f in found.values())
    assert found[1]["mean"] > found[8]["mean"] and model.training


def test_log_slope_recovers_power_laws():
    sizes = [1, 4, 16, 64]
    assert batch.log_slope(sizes, [3.0 / b for b in sizes]) == pytest.approx(-1.0)
    assert batch.log_slope(sizes, [3.0 / math.sqrt(b) for b in sizes]) == pytest.approx(-0.5)


@pytest.mark.parametrize("name, momentum", [("sgd", 0.0), ("momentum", 0.9)])
def test_stability_bound_is_where_heavy_ball_on_a_quadratic_turns_unstable(name, momentum):
    """On 0.5 h w^2 torch's SGD (with its momentum) converges for a curvature h just below the bound and blows up
    just above it."""
    lr = 0.1
    bound = batch.stability_bound(name, lr, momentum)
    assert bound == pytest.approx(2 * (1 + momentum) / lr)

    def final(h):
        w = torch.tensor([1.0], requires_grad=True)
        opt = torch.optim.SGD([w], lr=lr, momentum=momentum)
        for _ in range(2000):
            opt.zero_grad()
            (0.5 * h * w * w).sum().backward()
            opt.step()
        return abs(w.item())

    assert final(0.98 * bound) < 1e-3 and not final(1.02 * bound) < 1e3  # nan or inf: blown up
    assert batch.stability_bound("adam", lr) == math.inf


def _exact_permutation_p(a, b):
    """The share of the splits of the pooled deviations from each group's mean whose difference in means is at least
    the measured one (by enumeration)."""
    from itertools import combinations

    dev = [abs(v - statistics.fmean(a)) for v in a] + [abs(v - statistics.fmean(b)) for v in b]
    total, n = sum(dev), len(a)
    measured = statistics.fmean(dev[:n]) - statistics.fmean(dev[n:])
    splits = [statistics.fmean([dev[i] for i in c]) - (total - sum(dev[i] for i in c)) / (len(dev) - n)
              for c in combinations(range(len(dev)), n)]
    return sum(d >= measured - 1e-12 for d in splits) / len(splits)


def test_spread_greater_compares_deviations_by_exact_permutation():
    """The permutation p is the enumerated share of splits; fully apart deviations give its smallest value,
    1 / C(8, 4); Brown-Forsythe is a t-test on the deviations from the medians, the F-test the F tail."""
    from scipy import stats

    wide = [1.0, 3.0, -2.0, 4.0]
    narrow = [0.1, 0.12, 0.08, 0.11]
    found = batch.spread_greater(wide, narrow)
    assert found["p_permutation"] == pytest.approx(1 / math.comb(8, 4)) == pytest.approx(
        _exact_permutation_p(wide, narrow))
    deviations = [[abs(v - statistics.median(g)) for v in g] for g in (wide, narrow)]
    assert found["p_brown_forsythe"] == pytest.approx(stats.ttest_ind(*deviations, alternative="greater").pvalue)
    ratio = statistics.variance(wide) / statistics.variance(narrow)
    assert found["std_ratio"] == pytest.approx(math.sqrt(ratio))
    assert found["p_f"] == pytest.approx(stats.f.sf(ratio, 3, 3))
    backwards = batch.spread_greater(narrow, wide)
    assert backwards["p_permutation"] == pytest.approx(1.0) and backwards["p_brown_forsythe"] > 0.5


def test_spread_permutation_p_on_overlapping_spreads():
    a, b = [0.5, 0.7, 0.2, 0.9, 0.4], [0.3, 0.35, 0.5, 0.25, 0.45]
    found = batch.spread_greater(a, b)
    assert found["p_permutation"] == pytest.approx(_exact_permutation_p(a, b))
    assert 0.02 < found["p_permutation"] < 0.5


def test_clipping_outcomes_need_a_trained_clipped_run_and_a_failed_or_worse_unclipped_one():
    def run(status, acc=None):
        return {"status": status, "test_acc": acc}

    clipped = [run("completed", 0.5), run("completed", 0.5), run("completed", 0.12), run("diverged"),
               run("completed", 0.5)]
    unclipped = [run("diverged"), run("completed", 0.2), run("diverged"), run("diverged"), run("completed", 0.48)]
    found = batch.clipping_outcomes(clipped, unclipped, chance=0.1, min_gain=0.05, margin=0.1)
    assert found[:2] == ["ok", "ok"]
    assert "near chance" in found[2] and found[3] == "the clipped run diverged" and "as well" in found[4]


def test_training_loss_is_the_eval_cross_entropy_of_the_first_images():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 4), nn.Dropout(0.5), nn.Linear(4, 3)).train()
    x, y = torch.randn(50, 3, 2, 2), torch.randint(0, 3, (50,))
    run = SimpleNamespace(model=model, preprocess=nn.Identity(), objective=Classify(),
                          splits=SimpleNamespace(train_x=x, train_y=y),
                          cfg=OmegaConf.create({"trainer": {"eval_batch_size": 16}}))
    model.eval()
    with torch.no_grad():
        expected = nn.functional.cross_entropy(model(x[:40]), y[:40]).item()
    model.train()
    assert batch.training_loss(run, 40) == pytest.approx(expected, rel=1e-5) and model.training


def test_scalar_series_reads_a_tag_back(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(tmp_path)
    for step, value in [(2, 1.5), (1, 2.5), (3, 0.5)]:
        writer.add_scalar("train/grad_norm", value, step)
    writer.close()
    assert batch.scalar_series(tmp_path, "train/grad_norm") == ([1, 2, 3], [2.5, 1.5, 0.5])
    assert batch.scalar_series(tmp_path, "train/loss") == ([], [])


# ---------------------------------------------------------------------------------------------------------------
# The lessons at --size test (real runs: slow)

@pytest.mark.slow
def test_sharp_minima(tmp_path):
    result = _lesson("sharp_minima", tmp_path, "seeds=[0,1,2]")
    small, large = _row(result, "small_batch"), _row(result, "large_batch")
    assert (small["batch"], large["batch"]) == (20, 250) and small["lr"] == large["lr"] == 0.1
    top_small, top_large = small["top Hessian eigenvalue"], large["top Hessian eigenvalue"]
    assert min(top_large.values) > max(top_small.values) > 0
    assert result.verdict.reproduced, result.verdict.reason
    assert (tmp_path / "sharp_minima.png").stat().st_size > 0


@pytest.mark.slow
def test_gradient_noise(tmp_path):
    result = _lesson("gradient_noise", tmp_path, "images=256", "min_draws=8")
    scaled = [r["B x E||g_B - g||^2"].mean for r in result.rows]
    assert [r["batch size"] for r in result.rows] == [4, 16, 64, 256]
    assert max(scaled) / min(scaled) < 1.3  # B x variance is about constant: 1 / B
    assert result.verdict.reproduced, result.verdict.reason


@pytest.mark.slow
def test_layer_norm_small_batch(tmp_path):
    result = _lesson("layer_norm_small_batch", tmp_path)
    assert {r["arm"]: r["norm"] for r in result.rows} == {"batch_norm_b4": "batch", "layer_norm_b4": "layer",
                                                          "batch_norm_b64": "batch", "layer_norm_b64": "layer"}
    assert _row(result, "batch_norm_b4")["lr"] == "0.00313"  # 0.05 x 4 / 64
    tiny_ln, tiny_bn = _row(result, "layer_norm_b4")["test acc"], _row(result, "batch_norm_b4")["test acc"]
    assert tiny_ln.mean > tiny_bn.mean
    assert result.verdict.reproduced, result.verdict.reason


@pytest.mark.slow
def test_grad_clipping(tmp_path):
    result = _lesson("grad_clipping", tmp_path)
    rows = {r["arm"]: r for r in result.rows}
    assert "diverged" in rows["no_clipping"]["status"]
    assert rows["clipping"]["status"] == "3 completed" and min(rows["clipping"]["test acc"].values) > 0.15
    assert result.verdict.reproduced, result.verdict.reason


@pytest.mark.slow
def test_seed_variance(tmp_path):
    result = _lesson("seed_variance", tmp_path, "seeds=[0,1,2,3]")
    rows = {r["arm"]: r for r in result.rows}
    assert rows["narrow"]["width"] < rows["wide"]["width"]
    found = batch.spread_greater(rows["narrow"]["final train loss"].values, rows["wide"]["final train loss"].values)
    assert result.verdict.reproduced == (found["p_permutation"] < 0.05)
    assert result.verdict.reproduced, result.verdict.reason
