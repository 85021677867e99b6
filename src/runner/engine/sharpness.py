"""How sharp the minimum a run ended in is (nndl ch. 7; Keskar et al. 2017: large batches tend to sharp minima
that generalize worse), measured on the final model at the end of the run, on a fixed set of training images:

- evaluation.sharpness_samples=K: the mean (and largest) increase of the training loss over K random perturbations
  of the weights, each parameter tensor w moved by a Gaussian direction scaled to sharpness_radius x ||w|| (relative
  to each tensor's norm, so that a net's scale does not decide; Li et al. 2018 normalize the same way per filter);
- evaluation.hessian_iters=N: the top eigenvalue of the loss's Hessian by N power iterations of Hessian-vector
  products (double backward; Yao et al. 2020, PyHessian).

The model is measured in eval mode (batch norm's running statistics, no dropout): the function the test sees.
Reported as sharpness/* in TensorBoard and sharpness_* in metrics.json, so a sweep over trainer.batch_size shows it.
"""

import logging
from collections.abc import Callable, Iterable

import torch
from torch import nn

from runner.engine.hooks import Component

log = logging.getLogger("runner")

Losses = Callable[[], Iterable[torch.Tensor]]  # yields one loss per batch (the mean over the batches is the loss)


def _mean_loss(losses: Losses) -> float:
    values = [loss.detach() for loss in losses()]
    return torch.stack(values).mean().item()


@torch.no_grad()
def loss_increase(losses: Losses, params: list[nn.Parameter], radius: float, samples: int,
                  generator: torch.Generator) -> dict[str, float]:
    """The loss at the weights, and the mean and largest increase over `samples` random perturbations, each tensor
    p moved by d ~ N(0, I) rescaled to ||d|| = radius ||p||. The weights are put back exactly afterwards."""
    saved = [p.detach().clone() for p in params]
    base = _mean_loss(losses)
    increases = []
    try:
        for _ in range(samples):
            for p, w in zip(params, saved, strict=True):
                d = torch.randn(p.shape, generator=generator, device=p.device, dtype=p.dtype)
                p.copy_(w + d * (radius * w.norm() / d.norm().clamp_min(1e-12)))
            increases.append(_mean_loss(losses) - base)
    finally:
        for p, w in zip(params, saved, strict=True):
            p.copy_(w)
    return {"loss": base, "loss_increase": sum(increases) / len(increases), "loss_increase_max": max(increases)}


def top_hessian_eigenvalue(losses: Losses, params: list[nn.Parameter], iters: int, generator: torch.Generator,
                           tol: float = 1e-4) -> float:
    """The Hessian's eigenvalue of largest magnitude by power iteration: v <- Hv / ||Hv||, with Hv the mean over
    the batches of the Hessian-vector product (the gradient of g . v, g = dL/dw with its graph kept); stops early once
    the estimate v.Hv changes by less than tol (relative)."""
    v = [torch.randn(p.shape, generator=generator, device=p.device, dtype=p.dtype)
         for p in params]
    norm = torch.sqrt(sum((x * x).sum() for x in v))
    v = [x / norm for x in v]
    estimate = 0.0
    for _ in range(iters):
        hv = [torch.zeros_like(p) for p in params]
        batches = 0
        for loss in losses():
            grads = torch.autograd.grad(loss, params, create_graph=True)
            products = torch.autograd.grad(sum((g * x).sum() for g, x in zip(grads, v, strict=True)), params)
            for h, p in zip(hv, products, strict=True):
                h += p.detach()
            batches += 1
        hv = [h / batches for h in hv]
        new = sum((h * x).sum() for h, x in zip(hv, v, strict=True)).item()  # Rayleigh quotient, ||v|| = 1
        norm = torch.sqrt(sum((h * h).sum() for h in hv))
        v = [h / norm.clamp_min(1e-30) for h in hv]
        if abs(new - estimate) <= tol * abs(new):
            return new
        estimate = new
    return estimate


class Sharpness(Component):
    """The sharpness measures of the final model, as test scores (sharpness/* tags)."""

    def __init__(self, samples: int, radius: float, images: int, hessian_iters: int, seed: int):
        self.samples, self.radius, self.images, self.hessian_iters, self.seed = (samples, radius, images,
                                                                                 hessian_iters, seed)

    def test_scores(self, run) -> dict:
        model = run.model
        params = [p for p in model.parameters() if p.requires_grad]
        x, y = run.splits.train_x[:self.images], run.splits.train_y[:self.images]
        batch = run.cfg.trainer.eval_batch_size

        def losses():
            for xb, yb in zip(x.split(batch), y.split(batch), strict=True):
                inputs = run.speed.layout(run.preprocess(xb))
                yield run.objective.loss(model(inputs).float(), inputs, yb)

        was_training = model.training
        model.eval()
        generator = torch.Generator(device=run.device).manual_seed(self.seed)
        out = {}
        try:
            if self.samples:
                scores = loss_increase(losses, params, self.radius, self.samples, generator)
                out.update({f"sharpness/{k}": v for k, v in scores.items() if k != "loss"})
                log.info("sharpness: the training loss %.4f on %d images rises by %.4g on average (at most %.4g) "
                         "under %d random weight perturbations of relative size %g", scores["loss"], len(y),
                         scores["loss_increase"], scores["loss_increase_max"], self.samples, self.radius)
            if self.hessian_iters:
                top = top_hessian_eigenvalue(losses, params, self.hessian_iters, generator)
                out["sharpness/hessian_top"] = top
                log.info("sharpness: top Hessian eigenvalue %.4g (power iteration, at most %d iterations, %d "
                         "training images)", top, self.hessian_iters, len(y))
        finally:
            model.train(was_training)
        return out
