"""The lecture's 2-D loss surfaces and one optimizer's path on them (CS231n, "Training Neural Networks II":
"problems with SGD").

bowl    0.5 * (x1^2 + condition * x2^2): an ill-conditioned quadratic whose Hessian has eigenvalues 1 and
        `condition`. Gradient descent is stable only for lr < 2 / condition, so along the shallow x1 it crawls at
        (1 - lr) per step; with lr > 1 / condition it also zigzags across the steep x2.
saddle  0.5 * x1^2 + curvature * (x2^4 / 4 - x2^2 / 2): a saddle point at the origin, whose downhill direction x2
        has curvature -`curvature`; minima at (0, +-1), loss -curvature / 4. Started near the ridge x2 = 0, the
        gradient's downhill part is about curvature * x2, near zero: plain SGD grows x2 by (1 + lr * curvature) per
        step, momentum by about (1 + lr * curvature / (1 - momentum)).

Both are polynomials, so `Surface.loss` takes numpy arrays (the contours) as well as torch tensors (the paths).
`trajectory` runs any optimizer on a surface; torch is imported there alone, so config errors stay instant.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Surface:
    """A surface as the pictures need it: the loss, where paths start, the lowest loss (tolerances and the log
    scale of the loss panel are measured above it), where it is reached, and the region drawn."""

    name: str
    title: str
    loss: Callable
    start: tuple[float, float]
    minimum: float
    minima: tuple[tuple[float, float], ...]
    extent: tuple[tuple[float, float], tuple[float, float]]


def bowl(condition: float = 50.0, start=(-1.5, 0.5)) -> Surface:
    """The ill-conditioned quadratic 0.5 * (x1^2 + condition * x2^2), started at `start`."""
    return Surface("bowl", f"ill-conditioned bowl 0.5 (x1² + {condition:g} x2²), condition number {condition:g}",
                   lambda x, y: 0.5 * (x * x + condition * y * y), tuple(map(float, start)), 0.0, ((0.0, 0.0),),
                   _extent(start, 2.0, 1.0))


def saddle(curvature: float = 1.0, start=(-1.5, 1e-3)) -> Surface:
    """0.5 x1^2 + curvature * (x2^4 / 4 - x2^2 / 2), started at `start` (near the ridge x2 = 0 by default: exactly
    on it the gradient never points off the ridge and every noiseless path ends in the saddle point)."""
    return Surface("saddle", f"saddle 0.5 x1² + {curvature:g} (x2⁴/4 − x2²/2), minima at (0, ±1)",
                   lambda x, y: 0.5 * x * x + curvature * (y ** 4 / 4 - y * y / 2), tuple(map(float, start)),
                   -curvature / 4, ((0.0, 1.0), (0.0, -1.0)), _extent(start, 2.0, 1.5))


def _extent(start, width: float, height: float) -> tuple[tuple[float, float], tuple[float, float]]:
    """The region drawn: +-width by +-height around the origin, grown to hold the start with a margin."""
    w, h = max(width, 1.25 * abs(start[0])), max(height, 1.25 * abs(start[1]))
    return (-w, w), (-h, h)


SURFACES = {"bowl": bowl, "saddle": saddle}


@dataclass
class Path:
    """The points an optimizer visited (points[0] is the start), the loss at each, and the step at which the path
    diverged (None: it did not): its loss became non-finite or exceeded the bound, and it stopped there."""

    points: list[tuple[float, float]]
    losses: list[float]
    diverged_at: int | None


def trajectory(make_optimizer, surface: Surface, steps: int, noise_std: float = 0.0, seed: int = 0,
               bound: float = math.inf) -> Path:
    """The path of the optimizer `make_optimizer([point])` from surface.start over `steps` steps. noise_std > 0
    adds N(0, noise_std^2) to each gradient coordinate (as a mini-batch gradient would have), from a generator
    seeded with `seed`. The path stops at the first step whose loss is not finite or exceeds `bound`."""
    import torch

    point = torch.tensor(surface.start, dtype=torch.float64, requires_grad=True)
    opt = make_optimizer([point])
    generator = torch.Generator().manual_seed(seed)
    loss = surface.loss(point[0], point[1])
    path = Path([surface.start], [float(loss.detach())], None)
    for step in range(1, steps + 1):
        opt.zero_grad()
        loss.backward()
        if noise_std > 0:
            point.grad += noise_std * torch.randn(2, generator=generator, dtype=torch.float64)
        opt.step()
        loss = surface.loss(point[0], point[1])  # at the new point; its backward is the next step's gradient
        value, (x, y) = float(loss.detach()), point.tolist()
        if not (math.isfinite(value) and value <= bound):
            path.diverged_at = step
            if math.isfinite(x) and math.isfinite(y):  # an overflowed point cannot be drawn
                path.points.append((x, y))
                path.losses.append(value)
            break
        path.points.append((x, y))
        path.losses.append(value)
    return path
