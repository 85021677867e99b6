"""Optimizers: every option file builds (torch and reference), lowers a small quadratic; the parameter groups carry
each regularizer where it belongs; L1 makes exact zeros with its proximal step; linear lr scaling."""

import pytest
import torch
from omegaconf import OmegaConf

from conftest import compose_config
from runner.config import CONFIG_DIR, ConfigError, validate
from runner.config.rules import reference_rules
from runner.engine.build import build_optimizer, make_optimizer
from runner.optimization import optimizers as optim

OPTIMIZERS = sorted(p.stem for p in (CONFIG_DIR / "optimizer").glob("*.yaml"))


def _quadratic_problem(seed=0):
    """f(x) = 0.5 x^T A x - b^T x with A symmetric positive definite (eigenvalues 0.5..2), minimum at A^-1 b,
    about 0.1 from the start at 0: in reach of the adaptive optimizers, whose steps are about lr (1e-3) each."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(5, 5, generator=g, dtype=torch.float64))
    a = q @ torch.diag(torch.linspace(0.5, 2.0, 5, dtype=torch.float64)) @ q.T
    b = 0.1 * torch.randn(5, generator=g, dtype=torch.float64)
    return a, b, lambda x: 0.5 * x @ a @ x - b @ x


def _has_reference(name: str) -> bool:
    target = OmegaConf.load(CONFIG_DIR / "optimizer" / f"{name}.yaml")._target_
    return target.rsplit(".", 1)[-1] in reference_rules()


# An optimizer is one option file: its torch.optim class is tested here at once; a reference rule
# (runner.optimization.reference) is optional, and without one optimizer.impl=reference is refused at start-up.
@pytest.mark.parametrize("name, impl", [(n, i) for n in OPTIMIZERS for i in ("torch", "reference")
                                        if i == "torch" or _has_reference(n)])
def test_every_optimizer_option_composes_builds_and_lowers_a_quadratic(name, impl):
    cfg = compose_config([f"optimizer={name}", f"optimizer.impl={impl}", "regularization=[]"])
    validate(cfg)
    a, b, f = _quadratic_problem()
    x = torch.zeros(5, dtype=torch.float64, requires_grad=True)
    opt = make_optimizer(cfg.optimizer, [x])
    expected_module = "torch.optim" if impl == "torch" else "runner.optimization.reference"
    assert type(opt).__module__.startswith(expected_module)
    assert type(opt).__name__ == cfg.optimizer._target_.rsplit(".", 1)[-1]
    start = f(x).item()
    for _ in range(300):
        opt.zero_grad()
        f(x).backward()
        opt.step()
    optimum = f(torch.linalg.solve(a, b)).item()
    assert f(x).item() < start - 0.5 * (start - optimum), f"{name}/{impl} did not cover half the way down"


def _model():
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3), torch.nn.Linear(3, 2))


def test_param_groups_put_each_regularizer_on_the_weights_only():
    reg = OmegaConf.create({"l2": {"value": 1e-3, "decay_norm_and_bias": False},
                            "weight_decay": {"value": 0.02, "decay_norm_and_bias": True},
                            "l1": {"value": 1e-4, "proximal": True, "decay_norm_and_bias": False},
                            "elastic_net": {"l1": 2e-4, "l2": 3e-3, "proximal": False, "decay_norm_and_bias": False}})
    model = _model()
    decay, no_decay = optim.param_groups(model, reg)
    assert decay["name"] == "decay" and len(decay["params"]) == 2  # the two Linear weights
    assert len(no_decay["params"]) == 4  # two biases, the norm's weight and bias
    assert decay["weight_decay"] == pytest.approx(1e-3 + 3e-3)  # l2 + elastic net's l2, coupled
    assert decay["decoupled_decay"] == 0.02 and no_decay["decoupled_decay"] == 0.02  # decay_norm_and_bias: true
    assert decay["l1_proximal"] == 1e-4 and decay["l1_subgradient"] == 2e-4
    assert no_decay["weight_decay"] == 0 and no_decay["l1_proximal"] == 0 and no_decay["l1_subgradient"] == 0


def test_adamw_takes_the_decoupled_coefficient_as_its_own_weight_decay():
    reg = OmegaConf.create({"weight_decay": {"value": 0.05, "decay_norm_and_bias": False}})
    decay = optim.param_groups(_model(), reg, decoupled_native=True)[0]
    assert decay["weight_decay"] == 0.05 and decay["decoupled_decay"] == 0.0


@pytest.mark.parametrize("name", ["adam", "nadam", "sgd"])
def test_l2_and_decoupled_decay_together_step_as_their_formulas(name):
    """torch's Adam and NAdam read a group key "decoupled_weight_decay" as a switch: ours must not collide with it.
    One step from x with gradient g: x' = step_rule(x * (1 - lr * wd), g + l2 * x)."""
    overrides = [f"optimizer={name}", "regularization=[l2,weight_decay]", "regularization.l2.value=0.1",
                 "regularization.weight_decay.value=0.2"]
    cfg = compose_config(overrides)
    model = torch.nn.Linear(3, 1, bias=False)
    x0 = model.weight.detach().clone()
    opt = build_optimizer(cfg, model)
    model.weight.grad = torch.ones_like(x0)
    opt.step()
    twin = torch.nn.Parameter(x0 * (1 - cfg.optimizer.lr * 0.2))
    twin.grad = torch.ones_like(x0) + 0.1 * twin.detach()  # the coupled term sees the decayed weights
    reference = make_optimizer(cfg.optimizer, [twin])
    reference.step()
    assert torch.allclose(model.weight, twin, atol=1e-7)


def _sparse_regression(regularization: dict, steps=400):
    """Least squares on 40 features of which 5 matter, trained by SGD with the given regularization."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 40, generator=g)
    w_true = torch.zeros(40)
    w_true[:5] = torch.tensor([2.0, -1.5, 1.0, 0.8, -0.5])
    y = x @ w_true + 0.1 * torch.randn(256, generator=g)
    model = torch.nn.Linear(40, 1, bias=False)
    torch.nn.init.normal_(model.weight, std=0.3, generator=g)
    opt = torch.optim.SGD(optim.param_groups(model, OmegaConf.create(regularization)), lr=0.05)
    optim.register_hooks(opt)
    for _ in range(steps):
        opt.zero_grad()
        ((model(x).squeeze(1) - y) ** 2).mean().backward()
        opt.step()
    w = model.weight.detach().flatten()
    return int((w == 0).sum()), int((w.abs() < 1e-3).sum()), w


def test_l1_proximal_makes_exact_zeros_where_l2_makes_none():
    l2_zeros, l2_near, _ = _sparse_regression({"l2": {"value": 0.05, "decay_norm_and_bias": False}})
    l1_zeros, _, w = _sparse_regression({"l1": {"value": 0.05, "proximal": True, "decay_norm_and_bias": False}})
    assert l2_zeros == 0 and l2_near < 5
    assert l1_zeros >= 30  # most of the 35 irrelevant weights are exactly 0.0
    assert bool((w[:5] != 0).all())  # the 5 that matter survive


def test_l1_as_a_loss_subgradient_jitters_near_zero_without_exact_zeros():
    """Honest about the plain penalty: sign(w) steps overshoot zero, so weights land near 0, not on it."""
    zeros, near_subgradient, _ = _sparse_regression(
        {"l1": {"value": 0.05, "proximal": False, "decay_norm_and_bias": False}})
    _, near_l2, _ = _sparse_regression({"l2": {"value": 0.05, "decay_norm_and_bias": False}})
    assert zeros <= 2
    assert near_subgradient > near_l2


def test_linear_scaling_rule_multiplies_lr_by_batch_over_reference():
    cfg = compose_config(["optimizer=momentum", "trainer.batch_size=512", "trainer.lr_reference_batch_size=128"])
    opt = build_optimizer(cfg, torch.nn.Linear(2, 2))
    assert opt.param_groups[0]["lr"] == pytest.approx(cfg.optimizer.lr * 4)
    assert optim.scaled_lr(0.1, 256, None) == 0.1


@pytest.mark.parametrize("overrides, key", [
    (["optimizer=adamw"], "optimizer=adamw"),  # beside the default regularization=[l2]
    (["optimizer=adam", "optimizer.bias_correction=false"], "optimizer.bias_correction"),
    (["optimizer=adam", "optimizer.impl=fast"], "optimizer.impl"),
    (["optimizer=adam", "optimizer.betas=[0.9,1.5]"], "optimizer.betas[1]"),
    (["optimizer=momentum", "optimizer.momentum=1.0"], "optimizer.momentum"),
    (["trainer.lr_reference_batch_size=0"], "trainer.lr_reference_batch_size"),
])
def test_bad_optimizer_settings_are_refused_at_start_up(overrides, key):
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        validate(compose_config(overrides, checked=False))


def test_adamw_with_decoupled_weight_decay_is_accepted():
    validate(compose_config(["optimizer=adamw", "regularization=[weight_decay]"], checked=False))
    validate(compose_config(["optimizer=adam", "optimizer.impl=reference", "optimizer.bias_correction=false"],
                            checked=False))


def test_norm_bias_lr_factor_gives_batch_norm_biases_their_own_group():
    from runner.engine.build import build_model

    cfg = compose_config(["model=airbench", "model.widths=[4,4,4]", "optimizer=nesterov",
                          "trainer.norm_bias_lr_factor=64"])
    model = build_model(cfg, 10)
    opt = build_optimizer(cfg, model)
    groups = {g["name"]: g for g in opt.param_groups}
    assert groups["norm_bias"]["lr"] == pytest.approx(64 * groups["decay"]["lr"])
    assert {id(p) for p in groups["norm_bias"]["params"]} == {id(p) for p in optim.norm_biases(model)}
    assert not any(id(p) in {id(q) for q in groups["norm_bias"]["params"]} for p in groups["no_decay"]["params"])


def test_norm_bias_lr_factor_speeds_up_the_gradient_step_but_not_the_decay():
    """With decay_norm_and_bias, a norm bias and a plain bias start equal, get the same gradient and the same
    coupled L2: after one SGD step the norm bias moved `factor` times as far along the gradient, and both shrank
    by the same lr * l2."""
    factor, lr, l2 = 8.0, 0.1, 0.05
    reg = OmegaConf.create({"l2": {"value": l2, "decay_norm_and_bias": True}})
    model = _model()
    groups = {g["name"]: g for g in optim.param_groups(model, reg, lr=lr, norm_bias_lr_factor=factor)}
    assert groups["norm_bias"]["weight_decay"] == pytest.approx(l2 / factor)
    assert groups["no_decay"]["weight_decay"] == pytest.approx(l2)
    norm_bias, plain_bias = model[1].bias, model[2].bias
    with torch.no_grad():
        norm_bias.fill_(1.0)
        plain_bias.fill_(1.0)
    opt = torch.optim.SGD(list(groups.values()), lr=lr)
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.5)
    opt.step()
    assert norm_bias[0].item() == pytest.approx(1.0 - lr * l2 - factor * lr * 0.5)
    assert plain_bias[0].item() == pytest.approx(1.0 - lr * l2 - lr * 0.5)

