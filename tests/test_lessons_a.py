"""Lessons on initialization and optimization (runner.lessons.init, runner.lessons.optimization): each lesson run at
--size test asserts the verdict it computes and a number of its table; the measuring functions are checked on
small networks built here, against what the formulas say."""

import math

import pytest
import torch
from torch import nn

from runner.commands.lesson import run_lesson
from runner.lessons import init as init_lessons
from runner.lessons import optimization as opt_lessons


def _row(result, key: str, value: str) -> dict:
    return next(r for r in result.rows if r[key] == value)


# ---- measuring functions (fast) ---------------------------------------------------------------------------------

def _mlp(depth: int, width: int, act, std=None) -> nn.Sequential:
    layers = []
    for _ in range(depth):
        linear = nn.Linear(width, width, bias=False)
        nn.init.normal_(linear.weight, 0.0, std(width) if std else 0.01)
        layers += [linear, act()]
    return nn.Sequential(*layers, nn.Linear(width, 10))


def test_depth_stds_follow_the_variance_formulas():
    torch.manual_seed(0)
    x = torch.randn(512, 256)
    he_relu = init_lessons.depth_stds(_mlp(8, 256, nn.ReLU, lambda n: math.sqrt(2 / n)), x)
    xavier_relu = init_lessons.depth_stds(_mlp(8, 256, nn.ReLU, lambda n: math.sqrt(1 / n)), x)
    small = init_lessons.depth_stds(_mlp(8, 256, nn.Tanh), x)
    assert len(he_relu) == 8
    assert 0.8 < (he_relu[-1] / he_relu[0]) ** (1 / 7) < 1.2
    # Xavier with ReLU keeps half the variance per layer: std x 1/sqrt(2)
    assert abs((xavier_relu[-1] / xavier_relu[0]) ** (1 / 7) - 1 / math.sqrt(2)) < 0.05
    # std 0.01 with tanh (near-linear at 0): x 0.01 sqrt(256) = 0.16 per layer
    assert abs((small[-1] / small[0]) ** (1 / 7) - 0.16) < 0.02


def test_unit_spread_is_zero_only_for_identical_units():
    net = nn.Sequential(nn.Linear(20, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    with torch.no_grad():
        for m in net:
            if isinstance(m, nn.Linear):
                m.weight.fill_(0.3)
        net[-1].weight.normal_()  # the output layer is not a hidden layer: not counted
    assert init_lessons.unit_spread(net) == 0.0
    with torch.no_grad():
        net[2].weight[3, 0] += 0.1
    assert init_lessons.unit_spread(net) > 0.01


def test_activation_outputs_sees_every_activation_in_order():
    net = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 5), nn.Sigmoid(), nn.Linear(5, 2))
    outs = init_lessons.activation_outputs(net, torch.randn(3, 4))
    assert [k for _, k, _ in outs] == ["tanh", "sigmoid", "logits"]
    assert outs[-1][2].shape == (3, 2) and outs[0][2].abs().max() < 1 and (outs[1][2] > 0).all()


def test_outcome_of_a_diverged_run_is_chance_and_infinite_loss():
    diverged = opt_lessons._outcome({"status": "diverged", "history": []})
    assert diverged["diverged"] and diverged["val_acc"] == 0.1 and math.isinf(diverged["train_loss"])
    done = opt_lessons._outcome({"status": "completed", "final_train_loss": 0.5, "test_acc": 0.8,
                                 "history": [{"val_acc": 0.6, "train_loss": 1.0}, {"val_acc": 0.7,
                                                                                   "train_loss": 0.5}]})
    assert done["val_acc"] == 0.7 and done["best_val_acc"] == 0.7 and done["train_loss"] == 0.5
    assert opt_lessons._show([1.0, math.inf]) == "1, diverged"
    assert opt_lessons._stat([done, diverged], "train_loss").values == [0.5]


def test_lr_curve_is_the_runs_schedule(tmp_path):
    from runner import lessons
    from runner.lessons.lab import Lab

    lab = Lab(lessons.load("lr_schedules"), tmp_path, "test")
    step = opt_lessons.lr_curve(lab, "step", per_epoch=10)  # 6 epochs, x0.1 after 3
    assert len(step) == 60 and step[0] == step[29] == pytest.approx(0.025) and step[30] == pytest.approx(0.0025)
    cosine = opt_lessons.lr_curve(lab, "cosine", per_epoch=10)
    assert cosine[0] == pytest.approx(0.025) and cosine[-1] < 1e-3 and cosine[30] == pytest.approx(0.0125, rel=0.1)
    lab.tuning["cosine"] = {"lr": 0.2}  # a tuned arm's curve peaks at its tuned lr
    assert opt_lessons.lr_curve(lab, "cosine", per_epoch=10)[0] == pytest.approx(0.2)


def _bn_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, 64), nn.BatchNorm1d(64),
                         nn.ReLU(), nn.Linear(64, 10))


def test_per_image_bn_gap_is_the_noise_of_the_batch_statistics():
    from runner.nets.layers import reestimate_batch_norm

    net = _bn_net()
    x, y = torch.randn(2048, 20) * 3 + 1, torch.randint(0, 10, (2048,))
    reestimate_batch_norm(net, [x])  # the population statistics are exactly these images'
    before = [b.clone() for b in net.modules() if isinstance(b, nn.BatchNorm1d) for b in b.buffers()]
    gaps = opt_lessons.per_image_bn_gap(net, x, y, [2048, 16, 256])
    # a batch that is the whole population: only the biased vs unbiased variance differs (a factor 2048/2047)
    assert gaps[2048] < 1e-3
    # the noise of a mean over B images is sigma / sqrt(B): 16 times the batch, about a quarter of the gap
    assert 2.5 < gaps[16] / gaps[256] < 5.5
    after = [b for b in net.modules() if isinstance(b, nn.BatchNorm1d) for b in b.buffers()]
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))  # measuring changes nothing
    assert net.training


def test_per_image_gap_does_not_let_a_batchs_images_cancel():
    """The gap is each image's own |loss difference|, averaged; the difference of a batch's mean losses lets opposite
    shifts of its images cancel (the more, the larger the batch), so it is much smaller."""
    import torch.nn.functional as F

    from runner.nets.layers import reestimate_batch_norm

    net = _bn_net()
    x, y = torch.randn(1024, 20), torch.randint(0, 10, (1024,))
    reestimate_batch_norm(net, [x])
    per_image = opt_lessons.per_image_bn_gap(net, x, y, [128])[128]
    with torch.no_grad():
        net.eval()
        running = F.cross_entropy(net(x), y, reduction="none").view(8, 128)
        for m in net.modules():
            if isinstance(m, nn.BatchNorm1d):
                m.train()
                m.momentum = 0.0  # the running statistics stay as they are
        batch = torch.stack([F.cross_entropy(net(xb), yb, reduction="none")
                             for xb, yb in zip(x.split(128), y.split(128), strict=True)])
    assert per_image == pytest.approx((batch - running).abs().mean().item(), rel=1e-5)
    assert per_image > 2 * (batch.mean(1) - running.mean(1)).abs().mean().item()


def test_log_slope_of_a_power_law():
    assert opt_lessons.log_slope([16, 64, 256], [1 / 4, 1 / 8, 1 / 16]) == pytest.approx(-0.5)
    assert opt_lessons.log_slope([1, 10], [3.0, 3.0]) == pytest.approx(0.0)


def _m(acc, status="completed"):
    return {"status": status, "test_acc": acc if status == "completed" else None}


def test_paired_accuracy_comparisons_name_runs_that_did_not_complete():
    good = [_m(0.50), _m(0.52), _m(0.51)]
    worse = [_m(0.47), _m(0.50), _m(0.48)]
    verdict = opt_lessons._paired_acc(opt_lessons.paired_greater, good, worse, "a", "b")
    assert verdict.reproduced and "paired by seed" in verdict.reason
    broken = [_m(0.47), _m(None, "failed"), _m(0.48)]
    verdict = opt_lessons._paired_acc(opt_lessons.paired_greater, good, broken, "a", "b")
    assert not verdict.reproduced and "not compared" in verdict.reason and "1 failed" in verdict.reason
    assert opt_lessons._acc_cell(broken) == "0.47, failed, 0.48"  # no number stands in for the failed run


def test_a_diverged_run_counts_as_going_wrong_and_the_others_are_compared():
    good = [_m(0.50), _m(0.52), _m(0.51), _m(0.49)]
    bad = [_m(None, "diverged"), _m(0.45), _m(0.46), _m(0.44)]
    verdict = opt_lessons._goes_wrong(good, bad, "warm", "cold", [0, 1, 2, 3])
    assert verdict.reproduced and verdict.reason.startswith("cold diverged at seed(s) 0; the other seeds")
    every = opt_lessons._goes_wrong(good, [_m(None, "diverged")] * 4, "warm", "cold", [0, 1, 2, 3])
    assert every.reproduced and "diverged at every seed" in every.reason
    level = opt_lessons._goes_wrong(good, [_m(0.50), _m(0.52), _m(0.51), _m(0.49)], "warm", "cold", [0, 1, 2, 3])
    assert not level.reproduced


# ---- lessons without training (pictures API, untrained networks) -------------------------------------------------

def test_optimizers_bowl(tmp_path):
    result = run_lesson("optimizers_bowl", [], "test", out=tmp_path)
    assert result.verdict.reproduced
    steps = {r["optimizer"]: r["steps to tol"] for r in result.rows}
    assert steps["nesterov"] < steps["momentum"] < steps["sgd"]
    assert (tmp_path / "optimizers_bowl.png").is_file()


def test_saddle_point(tmp_path):
    result = run_lesson("saddle_point", [], "test", out=tmp_path)
    assert result.verdict.reproduced
    assert _row(result, "optimizer", "sgd")["steps to tol"] == "never in 300"


def test_momentum_too_high(tmp_path):
    result = run_lesson("momentum_too_high", [], "test", out=tmp_path)
    assert result.verdict.reproduced
    assert _row(result, "optimizer", "momentum_99")["overshoot along x1"] > \
        _row(result, "optimizer", "momentum")["overshoot along x1"]


def test_adagrad_vs_rmsprop(tmp_path):
    result = run_lesson("adagrad_vs_rmsprop", ["steps=400"], "test", out=tmp_path)
    assert result.verdict.reproduced
    assert math.isclose(_row(result, "optimizer", "adagrad")["step 400 / lr"], 1 / 20, rel_tol=1e-3)
    # a short run: RMSProp (alpha 0.99) has not settled at lr after 100 steps (1 / sqrt(1 - 0.99^100) = 1.26)
    short = run_lesson("adagrad_vs_rmsprop", ["steps=100"], "test", out=tmp_path / "short")
    assert not short.verdict.reproduced and "rmsprop" in short.verdict.reason


def test_adam_bias_correction(tmp_path):
    result = run_lesson("adam_bias_correction", [], "test", out=tmp_path)
    assert result.verdict.reproduced
    assert math.isclose(_row(result, "Adam", "uncorrected")["step 1 / lr"], 0.1 / math.sqrt(0.001), rel_tol=1e-6)
    assert math.isclose(_row(result, "Adam", "bias-corrected")["step 1 / lr"], 1.0, rel_tol=1e-6)


@pytest.mark.slow
def test_init_depth_std(tmp_path):
    result = run_lesson("init_depth_std", ["seeds=[0,1]"], "test", out=tmp_path)
    assert result.verdict.reproduced
    factor = {r["init x activation"]: r["factor, layers 6-10"].mean for r in result.rows}
    assert abs(factor["xavier_relu"] - 1 / math.sqrt(2)) < 0.05 and factor["normal_0.01_relu"] < 0.2


@pytest.mark.slow
def test_initial_loss(tmp_path):
    result = run_lesson("initial_loss", ["seeds=[0,1,2]"], "test", out=tmp_path)
    assert result.verdict.reproduced
    assert abs(_row(result, "init", "small_normal_0.01")["initial loss"].mean - math.log(10)) < 0.02
    assert _row(result, "init", "large_normal_1")["initial loss"].mean > 2 * math.log(10)


@pytest.mark.slow
def test_saturation(tmp_path):
    result = run_lesson("saturation", ["seeds=[0,1]"], "test", out=tmp_path)
    assert result.verdict.reproduced
    assert _row(result, "init x activation", "large_tanh")["saturated fraction"].mean > 0.5


# ---- lessons that train (real runs: slow) ------------------------------------------------------------------------

@pytest.mark.slow
def test_constant_init(tmp_path):
    result = run_lesson("constant_init", [], "test", out=tmp_path)
    assert result.verdict.reproduced
    assert max(_row(result, "init", "constant")["unit distance / unit norm"].values) <= 1e-5


@pytest.mark.slow
def test_dead_relu(tmp_path):
    result = run_lesson("dead_relu", [], "test", out=tmp_path)
    assert result.verdict.reproduced
    assert _row(result, "lr", "high_lr")["dead ReLU fraction"].mean > 0.05


@pytest.mark.slow
def test_lr_too_high_low(tmp_path):
    result = run_lesson("lr_too_high_low", [], "test", out=tmp_path)
    assert result.verdict.reproduced
    assert _row(result, "arm", "too_high")["status"] == "2 diverged"


@pytest.mark.slow
def test_bn_high_lr(tmp_path):
    result = run_lesson("bn_high_lr", [], "test", out=tmp_path)
    assert result.verdict.reproduced
    assert _row(result, "arm", "batch_norm")["final val acc"].mean > 0.3


@pytest.mark.slow
def test_bn_train_eval_gap(tmp_path):
    result = run_lesson("bn_train_eval_gap", [], "test", out=tmp_path)
    assert result.verdict.reproduced, result.verdict.reason
    gap = {r["batch size"]: r["per-image gap, population stats"] for r in result.rows}
    # 16 times the batch: about a quarter of the gap (1/sqrt(B)), seed by seed
    assert all(2.5 < a / b < 6 for a, b in zip(gap[16].values, gap[256].values, strict=True))
    # with the running averages of training the gap at the largest batch is mostly their lag, not batch noise
    lagged = _row(result, "batch size", 256)["per-image gap, running averages"]
    assert lagged.mean > gap[256].mean


@pytest.mark.slow
def test_linear_scaling(tmp_path):
    result = run_lesson("linear_scaling", ["seeds=[0,1,2]"], "test", out=tmp_path)
    rows = {r["arm"]: r for r in result.rows}
    assert abs(rows["batch_32"]["steps"] / rows["batch_512"]["steps"] - 16) < 1  # equal epochs: 16x fewer steps
    assert rows["batch_512"]["lr"] == "0.2" and rows["batch_512_unscaled"]["lr"] == "0.0125"  # 0.0125 x 512 / 32
    assert result.verdict.reproduced, result.verdict.reason
    assert rows["batch_2048"]["- batch_32 (paired)"].mean < -0.02


@pytest.mark.slow
def test_warmup_large_batch(tmp_path):
    result = run_lesson("warmup_large_batch", ["seeds=[0,1,2]"], "test", out=tmp_path)
    rows = {r["arm"]: r for r in result.rows}
    assert rows["batch_512_warmup"]["lr"] == rows["batch_512"]["lr"] == "0.2"  # the linear scaling rule
    assert rows["batch_512_warmup"]["warmup epochs"] == 3 and rows["batch_512"]["warmup epochs"] == 0
    assert result.verdict.reproduced, result.verdict.reason
    assert rows["batch_512_warmup"]["test acc"].mean > rows["batch_512"]["test acc"].mean


@pytest.mark.slow
def test_lr_schedules(tmp_path):
    result = run_lesson("lr_schedules", ["seeds=[0,1,2]", "tune.factors=[0.5,2]"], "test", out=tmp_path)
    rows = {r["schedule"]: r for r in result.rows}
    assert set(rows) == {"constant", "step", "exponential", "cosine", "onecycle"}
    assert all(float(r["peak lr (tuned)"]) in (0.0125, 0.05) for r in rows.values())  # each at its own tuned lr
    assert (tmp_path / "lr_schedules.png").is_file()
    assert "corrected for 4 tries" in result.verdict.reason  # "any of 4": the Bonferroni bar
    # 6 short epochs on the hardest synthetic task: the run is far from its noise floor, and every decay, which gives
    # up its lr early, ends below the constant lr tuned at the same budget
    assert not result.verdict.reproduced
    assert all(rows[arm]["- constant (paired)"].mean < 0 for arm in ("step", "exponential", "cosine"))
    assert rows["constant"]["test acc"].mean > 0.3
