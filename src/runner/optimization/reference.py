"""The lecture's update rules, written out one parameter at a time as torch optimizers (`optimizer.impl=reference`).

Readable rather than fast: a Python loop over the parameters where torch.optim fuses them. Each class has the name
and the keyword arguments of its torch.optim twin, so every `optimizer=` config runs with either implementation;
tests/test_reference_optim.py checks that both follow the same trajectory wherever the two rules are equivalent.
Notation: x the parameter, g its gradient, t the step count from 1.
"""

import torch


class _Reference(torch.optim.Optimizer):
    """One loop for all rules: g gets the coupled L2 term weight_decay * x (the gradient of the penalty
    (weight_decay / 2) * |x|^2), then `update` moves x."""

    def __init__(self, params, defaults: dict):
        super().__init__(params, {**defaults, "weight_decay": defaults.get("weight_decay", 0.0)})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for x in group["params"]:
                if x.grad is None:
                    continue
                g = self.decay(x, x.grad, group)
                state = self.state[x]
                state["step"] = state.get("step", 0) + 1
                self.update(x, g, state, group)
        return loss

    def decay(self, x: torch.Tensor, g: torch.Tensor, group: dict) -> torch.Tensor:
        return g + group["weight_decay"] * x if group["weight_decay"] else g

    def update(self, x: torch.Tensor, g: torch.Tensor, state: dict, group: dict) -> None:
        raise NotImplementedError


class SGD(_Reference):
    """Vanilla:  x -= lr * g.
    Momentum:  v = rho * v + g;  x -= lr * v  (v starts at 0).
    Nesterov, in the change-of-variables form that evaluates the gradient at x itself (CS231n; Sutskever et al.
    2013):  v_prev = v;  v = rho * v - lr * g;  x += -rho * v_prev + (1 + rho) * v.
    Here v holds the lr, so it equals torch's nesterov=True exactly only while lr is constant."""

    def __init__(self, params, lr: float = 1e-3, momentum: float = 0.0, nesterov: bool = False,
                 weight_decay: float = 0.0):
        super().__init__(params, {"lr": lr, "momentum": momentum, "nesterov": nesterov, "weight_decay": weight_decay})

    def update(self, x, g, state, group):
        lr, rho = group["lr"], group["momentum"]
        if rho == 0:
            x.add_(g, alpha=-lr)
            return
        v = state.setdefault("velocity", torch.zeros_like(x))
        if group["nesterov"]:
            v_prev = v.clone()
            v.mul_(rho).add_(g, alpha=-lr)
            x.add_(v_prev, alpha=-rho).add_(v, alpha=1 + rho)
        else:
            v.mul_(rho).add_(g)
            x.add_(v, alpha=-lr)


class Adagrad(_Reference):
    """AdaGrad (Duchi et al. 2011):  cache += g^2;  x -= lr * g / (sqrt(cache) + eps)."""

    def __init__(self, params, lr: float = 1e-2, eps: float = 1e-10, weight_decay: float = 0.0):
        super().__init__(params, {"lr": lr, "eps": eps, "weight_decay": weight_decay})

    def update(self, x, g, state, group):
        cache = state.setdefault("cache", torch.zeros_like(x))
        cache.add_(g * g)
        x.add_(-group["lr"] * g / (cache.sqrt() + group["eps"]))


class RMSprop(_Reference):
    """RMSProp (Tieleman & Hinton 2012):  cache = alpha * cache + (1 - alpha) * g^2;
    x -= lr * g / (sqrt(cache) + eps). alpha is the lecture's decay_rate (torch's keyword)."""

    def __init__(self, params, lr: float = 1e-2, alpha: float = 0.99, eps: float = 1e-8, weight_decay: float = 0.0):
        super().__init__(params, {"lr": lr, "alpha": alpha, "eps": eps, "weight_decay": weight_decay})

    def update(self, x, g, state, group):
        alpha = group["alpha"]
        cache = state.setdefault("cache", torch.zeros_like(x))
        cache.mul_(alpha).add_((1 - alpha) * g * g)
        x.add_(-group["lr"] * g / (cache.sqrt() + group["eps"]))


class Adam(_Reference):
    """Adam (Kingma & Ba 2015):  m = b1 * m + (1 - b1) * g;  v = b2 * v + (1 - b2) * g^2;
    with bias_correction  m_hat = m / (1 - b1^t),  v_hat = v / (1 - b2^t)  (else m_hat = m, v_hat = v);
    x -= lr * m_hat / (sqrt(v_hat) + eps).
    Without the correction both moments start biased towards 0, v far more (1 - b2 = 0.001 against 1 - b1 = 0.1):
    the first step is lr * (1 - b1) / sqrt(1 - b2) * g / |g|, 3.16 lr at the defaults instead of lr, a large first
    step where v is still near 0 (the lecture's reason for the correction; runner.pictures.adam_first_step measures
    it). On a constant gradient the uncorrected step is (1 - b1^t) / sqrt(1 - b2^t) lr: 3.16 lr at t = 1, 6.5 lr
    near t = 10, still 1.26 lr at t = 1000."""

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, bias_correction: bool = True):
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay,
                                  "bias_correction": bias_correction})

    def update(self, x, g, state, group):
        (b1, b2), t = group["betas"], state["step"]
        m = state.setdefault("m", torch.zeros_like(x))
        v = state.setdefault("v", torch.zeros_like(x))
        m.mul_(b1).add_((1 - b1) * g)
        v.mul_(b2).add_((1 - b2) * g * g)
        m_hat, v_hat = (m / (1 - b1 ** t), v / (1 - b2 ** t)) if group["bias_correction"] else (m, v)
        x.add_(-group["lr"] * m_hat / (v_hat.sqrt() + group["eps"]))


class AdamW(Adam):
    """AdamW (Loshchilov & Hutter 2019): Adam whose weight_decay is decoupled from the gradient:
    x -= lr * weight_decay * x, then the Adam step on the raw g."""

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, bias_correction: bool = True):
        super().__init__(params, lr, betas, eps, weight_decay, bias_correction)

    def decay(self, x, g, group):
        x.mul_(1 - group["lr"] * group["weight_decay"])
        return g


class Adamax(_Reference):
    """Adamax (Kingma & Ba 2015, sec. 7.1), Adam with the infinity norm:  m = b1 * m + (1 - b1) * g;
    u = max(b2 * u, |g| + eps);  x -= lr / (1 - b1^t) * m / u."""

    def __init__(self, params, lr: float = 2e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay})

    def update(self, x, g, state, group):
        (b1, b2), t = group["betas"], state["step"]
        m = state.setdefault("m", torch.zeros_like(x))
        u = state.setdefault("u", torch.zeros_like(x))
        m.mul_(b1).add_((1 - b1) * g)
        torch.maximum(u * b2, g.abs() + group["eps"], out=u)
        x.add_(-group["lr"] / (1 - b1 ** t) * m / u)


class NAdam(_Reference):
    """NAdam (Dozat 2016): Adam with Nesterov momentum. With the momentum schedule
    mu_t = b1 * (1 - 0.5 * 0.96^(t * momentum_decay)) and the products P_t = mu_1 ... mu_t:
    m = b1 * m + (1 - b1) * g;  v = b2 * v + (1 - b2) * g^2;  v_hat = v / (1 - b2^t);
    x -= lr * [(1 - mu_t) / (1 - P_t) * g + mu_{t+1} / (1 - P_{t+1}) * m] / (sqrt(v_hat) + eps)."""

    def __init__(self, params, lr: float = 2e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, momentum_decay: float = 4e-3):
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay,
                                  "momentum_decay": momentum_decay})

    def update(self, x, g, state, group):
        (b1, b2), t, psi = group["betas"], state["step"], group["momentum_decay"]
        mu = b1 * (1 - 0.5 * 0.96 ** (t * psi))
        mu_next = b1 * (1 - 0.5 * 0.96 ** ((t + 1) * psi))
        product = state.get("mu_product", 1.0) * mu
        state["mu_product"] = product
        m = state.setdefault("m", torch.zeros_like(x))
        v = state.setdefault("v", torch.zeros_like(x))
        m.mul_(b1).add_((1 - b1) * g)
        v.mul_(b2).add_((1 - b2) * g * g)
        denom = (v / (1 - b2 ** t)).sqrt() + group["eps"]
        direction = (1 - mu) / (1 - product) * g + mu_next / (1 - product * mu_next) * m
        x.add_(-group["lr"] * direction / denom)

