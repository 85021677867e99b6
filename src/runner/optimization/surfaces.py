"""Optimizers on 2-D surfaces, as the lecture pictures them: an ill-conditioned quadratic (SGD zigzags across the
steep direction and crawls along the shallow one) and a saddle point (SGD stalls where the gradient vanishes,
momentum escapes), each also with Gaussian noise added to every gradient, as a mini-batch gradient would have.
`trajectory` runs any optimizer config on one of them; `python -m runner.pictures` draws the paths. torch is
imported by `trajectory` alone, so that the picture command's config errors stay instant."""

import math

START = (-0.15, 0.05)  # where every path starts (the saddle's paths at y = 1e-3, just off the ridge)
SADDLE_START = (-0.15, 1e-3)
# The region is about as wide as the adaptive optimizers' lecture lrs (~1e-3 per step) cover in a few hundred
# steps; SGD's dynamics on a quadratic do not depend on the scale at all.
EXTENT = ((-0.2, 0.2), (-0.12, 0.12))


def quadratic(x, y):
    """0.5 * (x^2 + 18 y^2): condition number 18; SGD at lr 0.1 takes 1.8 * y across the valley each step."""
    return 0.5 * (x * x + 18.0 * y * y)


def saddle(x, y):
    """0.5 x^2 - 0.05 y^2 + 4 y^4: a saddle at the origin, minima at (0, +-0.079). Near y = 0 the downhill
    gradient is -0.1 y, so plain SGD at lr 0.1 grows y by only 1% per step: from 1e-3 to 7e-3 in 200 steps."""
    return 0.5 * x * x - 0.05 * y * y + 4.0 * y ** 4


SURFACES = {"ill-conditioned quadratic": (quadratic, START, False),
            "saddle point": (saddle, SADDLE_START, False),
            "noisy quadratic": (quadratic, START, True),
            "noisy saddle point": (saddle, SADDLE_START, True)}


def trajectory(make_optimizer, surface, start, steps: int, noise_std: float, seed: int) -> list[tuple[float, float]]:
    """The (x, y) points the optimizer `make_optimizer([point])` visits from `start` over `steps` steps on
    `surface`; with noise_std > 0 each gradient gets N(0, noise_std^2) noise per coordinate, from a generator seeded
    with `seed`."""
    import torch

    point = torch.tensor(start, dtype=torch.float64, requires_grad=True)
    opt = make_optimizer([point])
    generator = torch.Generator().manual_seed(seed)
    path = [tuple(point.tolist())]
    for _ in range(steps):
        opt.zero_grad()
        surface(point[0], point[1]).backward()
        if noise_std > 0:
            point.grad += noise_std * torch.randn(2, generator=generator, dtype=torch.float64)
        opt.step()
        xy = tuple(point.tolist())
        if not all(math.isfinite(v) for v in xy):
            break
        path.append(xy)
    return path
