"""The lecture's update rules (optimizer.impl=reference) follow torch.optim's trajectory wherever the two rules are
equivalent, and Adam without bias correction follows its own formula."""

import pytest
import torch

from runner.optimization import reference as reference_optim


def _loss(params):
    """A small non-quadratic objective with different curvature per coordinate (and a mini-batch-like wobble)."""
    w, b = params
    return ((w ** 2) * torch.tensor([1.0, 10.0, 0.1])).sum() + (w.sin() * b).sum() + (b - 1.0).pow(2).sum()


def _trajectory(cls, steps=25, **kwargs):
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(3, dtype=torch.float64)),
              torch.nn.Parameter(torch.randn(3, dtype=torch.float64))]
    opt = cls(params, **kwargs)
    points = []
    for _ in range(steps):
        opt.zero_grad()
        _loss(params).backward()
        opt.step()
        points.append(torch.cat([p.detach().clone() for p in params]))
    return torch.stack(points)


CASES = [
    ("SGD", {"lr": 0.05}),
    ("SGD", {"lr": 0.05, "weight_decay": 0.1}),
    ("SGD", {"lr": 0.02, "momentum": 0.9}),  # v = rho v + g; x -= lr v
    ("SGD", {"lr": 0.02, "momentum": 0.9, "nesterov": True}),  # change of variables == torch's form at fixed lr
    ("Adagrad", {"lr": 0.1, "eps": 1e-10}),
    ("RMSprop", {"lr": 0.01, "alpha": 0.99, "eps": 1e-8, "weight_decay": 0.01}),
    ("Adam", {"lr": 0.01, "betas": (0.9, 0.999), "eps": 1e-8}),
    ("Adam", {"lr": 0.01, "betas": (0.8, 0.99), "eps": 1e-8, "weight_decay": 0.05}),
    ("AdamW", {"lr": 0.01, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.1}),
    ("Adamax", {"lr": 0.02, "betas": (0.9, 0.999), "eps": 1e-8}),
    ("NAdam", {"lr": 0.02, "betas": (0.9, 0.999), "eps": 1e-8, "momentum_decay": 4e-3}),
]


@pytest.mark.parametrize("name, kwargs", CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)])
def test_reference_follows_torch_trajectory(name, kwargs):
    ours = _trajectory(getattr(reference_optim, name), **kwargs)
    theirs = _trajectory(getattr(torch.optim, name), **kwargs)
    assert torch.allclose(ours, theirs, rtol=1e-8, atol=1e-8), (ours - theirs).abs().max()  # float64 rounding
    assert (ours[-1] - ours[0]).abs().max() > 1e-2  # it moved: the comparison is not of two standing points


def test_nesterov_change_of_variables_differs_from_torch_once_lr_changes():
    """The velocity of the change-of-variables form carries the lr, torch's does not: equal only at a fixed lr."""

    def run(cls):
        torch.manual_seed(0)
        x = torch.nn.Parameter(torch.randn(3, dtype=torch.float64))
        opt = cls([x], lr=0.05, momentum=0.9, nesterov=True)
        for step in range(10):
            opt.param_groups[0]["lr"] = 0.05 if step < 5 else 0.01
            opt.zero_grad()
            (x ** 2).sum().backward()
            opt.step()
        return x.detach()

    assert not torch.allclose(run(reference_optim.SGD), run(torch.optim.SGD))


def test_adam_without_bias_correction_follows_its_formula():
    """First step, m = (1 - b1) g and v = (1 - b2) g^2: the step is lr (1 - b1) / sqrt(1 - b2) * sign(g), about
    3.2 lr for the defaults, instead of lr with the correction."""
    lr, b1, b2 = 0.01, 0.9, 0.999
    for correction, expected in ((False, lr * (1 - b1) / (1 - b2) ** 0.5), (True, lr)):
        x = torch.nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
        opt = reference_optim.Adam([x], lr=lr, betas=(b1, b2), eps=0.0, bias_correction=correction)
        x.grad = torch.tensor([0.5, -3.0], dtype=torch.float64)
        opt.step()
        step = torch.tensor([1.0, -2.0], dtype=torch.float64) - x.detach()
        assert torch.allclose(step, expected * torch.tensor([1.0, -1.0], dtype=torch.float64))


def test_adam_without_bias_correction_takes_larger_steps_not_tiny_ones():
    """On a constant gradient m_t = (1 - b1^t) g and v_t = (1 - b2^t) g^2, so the uncorrected step is
    lr (1 - b1^t) / sqrt(1 - b2^t): 3.16 lr at t = 1, about 6.5 lr near t = 10 (the docstring's figures), while
    the corrected step stays lr."""
    lr, (b1, b2), steps = 0.01, (0.9, 0.999), 30
    sizes = {}
    for correction in (True, False):
        x = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
        opt = reference_optim.Adam([x], lr=lr, betas=(b1, b2), eps=0.0, bias_correction=correction)
        sizes[correction] = []
        for _ in range(steps):
            before = x.detach().clone()
            x.grad = torch.full_like(x, 0.3)
            opt.step()
            sizes[correction].append(float((before - x.detach()).abs()))
    t = torch.arange(1, steps + 1, dtype=torch.float64)
    assert torch.allclose(torch.tensor(sizes[True], dtype=torch.float64), torch.full_like(t, lr), rtol=1e-9)
    expected = lr * (1 - b1 ** t) / (1 - b2 ** t).sqrt()
    assert torch.allclose(torch.tensor(sizes[False], dtype=torch.float64), expected, rtol=1e-9)
    assert sizes[False][0] / lr == pytest.approx(3.162, abs=1e-3) and 6.4 < sizes[False][9] / lr < 6.6


def test_reference_state_round_trips_through_a_checkpoint(tmp_path):
    """Resume needs the optimizer state: save, load into a fresh optimizer, continue identically."""
    from runner.data import checkpoint

    def make():
        torch.manual_seed(0)
        x = torch.nn.Parameter(torch.randn(3, dtype=torch.float64))
        return x, reference_optim.NAdam([x], lr=0.02)

    def steps(x, opt, n):
        for _ in range(n):
            opt.zero_grad()
            (x ** 2).sum().backward()
            opt.step()

    x, opt = make()
    steps(x, opt, 6)
    straight = x.detach().clone()
    y, opt_y = make()
    steps(y, opt_y, 3)
    checkpoint.save({"x": y.detach(), "opt": opt_y.state_dict()}, tmp_path / "s.pt")
    state = checkpoint.load(tmp_path / "s.pt")
    z, opt_z = make()
    with torch.no_grad():
        z.copy_(state["x"])
    opt_z.load_state_dict(state["opt"])
    steps(z, opt_z, 3)
    assert torch.equal(z.detach(), straight)
