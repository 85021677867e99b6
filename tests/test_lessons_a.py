"""Lessons on initialization and optimization (runner.lessons.init, runner.lessons.optimization): each lesson run at
--size test asserts the verdict it computes and a number of its table; the measuring functions are checked on
small networks built here, against what the formulas say."""

import math

import pytest
import torch
from torch import nn

from runner.lesson import run_lesson
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
    step = opt_lessons.lr_curve(lab, "step", per_epoch=10)  # 4 epochs, x0.1 after 2
    assert len(step) == 40 and step[0] == step[19] == pytest.approx(0.05) and step[20] == pytest.approx(0.005)
    cosine = opt_lessons.lr_curve(lab, "cosine", per_epoch=10)
    assert cosine[0] == pytest.approx(0.05) and cosine[-1] < 1e-3 and cosine[20] == pytest.approx(0.025, rel=0.1)


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
    gap = {r["batch size"]: r["|loss(batch stats) - loss(running stats)|"] for r in result.rows}
    assert min(gap[16].values) > 0 and min(gap[128].values) > 0
    assert result.verdict.reproduced == (gap[16].mean > gap[128].mean + 2 * math.hypot(gap[16].se(), gap[128].se()))


@pytest.mark.slow
def test_linear_scaling(tmp_path):
    result = run_lesson("linear_scaling", [], "test", out=tmp_path)
    steps = {r["arm"]: r["steps"] for r in result.rows}
    assert abs(steps["batch_32"] / steps["batch_128"] - 4) < 0.2  # equal epochs: 4x fewer steps (last batch rounds)
    assert _row(result, "arm", "batch_512")["lr"] == "0.16"
    assert result.verdict.reproduced


@pytest.mark.slow
def test_warmup_large_batch(tmp_path):
    from runner.lessons.verdict import accuracy_noise, greater

    result = run_lesson("warmup_large_batch", [], "test", out=tmp_path)
    rows = {r["arm"]: r for r in result.rows}
    assert rows["warmup"]["lr"] == rows["no_warmup"]["lr"] == "1.6"  # 0.2 x 256 / 32: the linear scaling rule
    warm, cold = rows["warmup"]["final val acc"], rows["no_warmup"]["final val acc"]
    # the verdict is the one the numbers give (at the test size the spread of 2 seeds may not separate them)
    expected = greater(warm, cold, "warmup", "no_warmup", "acc", floor=accuracy_noise(warm.mean, 300))
    assert result.verdict.reproduced == (expected.reproduced and warm.mean > 0.1 + 0.05)  # and it must learn


@pytest.mark.slow
def test_lr_schedules(tmp_path):
    result = run_lesson("lr_schedules", [], "test", out=tmp_path)
    assert {r["schedule"] for r in result.rows} == {"constant", "step", "exponential", "cosine", "onecycle"}
    assert (tmp_path / "lr_schedules.png").is_file()
    # require=any: reproduced exactly when some decaying schedule beats constant beyond the spread
    assert result.verdict.reproduced == any(r["beats constant"] == "yes" for r in result.rows)
