"""The lecture's optimizer pictures: the chosen optimizers run on 2-D surfaces, their paths drawn on the contours.

    python -m runner.pictures                                   # sgd, momentum, nesterov, adagrad, rmsprop, adam
    python -m runner.pictures optimizers=[sgd,momentum,adam] steps=300 noise_std=0.1
    python -m runner.pictures optimizers=[sgd,adam] impl=reference lr=0.01

Each optimizer is built from its own `configs/optimizer/<name>.yaml`, the file `optimizer=<name>` trains with
(configs/pictures.yaml sets the run's length, the noise, and optionally one lr or impl for all). Four surfaces:
an ill-conditioned quadratic (SGD zigzags across the steep direction and crawls along the shallow one), a saddle
point (SGD stalls where the gradient vanishes, momentum escapes), and both again with Gaussian noise added to
each gradient (as a mini-batch gradient would be). Writes optimizer_pictures.png, trajectories.json and a
TensorBoard image (pictures/optimizers) into the run directory, outputs/pictures/<date>/<time>-<id>/.
"""

import json
from functools import partial
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from runner.config import CONFIG_DIR, ConfigError, register_resolvers
from runner.optimization.surfaces import EXTENT, SURFACES, trajectory

register_resolvers()

def optimizer_config(name: str):
    """The optimizer group's option file for `name`, as `optimizer=<name>` reads it."""
    path = CONFIG_DIR / "optimizer" / f"{name}.yaml"
    if not path.is_file():
        choices = ", ".join(sorted(p.stem for p in path.parent.glob("*.yaml")))
        raise ConfigError(f"optimizers: {name!r} is not an optimizer option; allowed: {choices}")
    return OmegaConf.load(path)


def figure(paths: dict[str, dict[str, list]], title: str):
    """A 2 x 2 grid, one panel per surface: log-spaced contours and each optimizer's path."""
    import numpy as np
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 9), dpi=100)
    (x0, x1), (y0, y1) = EXTENT
    gx, gy = np.meshgrid(np.linspace(x0, x1, 300), np.linspace(y0, y1, 300))
    for i, (name, (surface, start, _)) in enumerate(SURFACES.items()):
        ax = fig.add_subplot(2, 2, i + 1)
        z = surface(gx, gy)
        ax.contour(gx, gy, z - z.min(), levels=np.geomspace(1e-4, max(1e-3, float((z - z.min()).max())), 18),
                   colors="0.7", linewidths=0.6)
        for label, path in paths[name].items():
            p = np.array(path)
            ax.plot(p[:, 0], p[:, 1], "-", lw=1.3, marker=".", ms=2.5, label=label)
        ax.plot(*start, "k*", ms=9)
        ax.set(xlim=(x0, x1), ylim=(y0, y1), title=name, aspect="equal")
        if i == 0:
            ax.legend(fontsize=8, loc="upper right")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def draw(cfg: DictConfig, run_dir: Path) -> dict:
    """Run every optimizer of cfg.optimizers on every surface; write the picture and the paths into run_dir."""
    configs = {name: optimizer_config(name) for name in cfg.optimizers}
    for ocfg in configs.values():
        ocfg.impl = cfg.impl
        if "bias_correction" in ocfg and cfg.impl == "torch":
            ocfg.bias_correction = True
    from runner.engine.build import make_optimizer

    paths = {surface_name: {} for surface_name in SURFACES}
    for surface_name, (surface, start, noisy) in SURFACES.items():
        for name, ocfg in configs.items():
            paths[surface_name][name] = trajectory(partial(make_optimizer, ocfg, lr=cfg.lr), surface, start,
                                                   cfg.steps, cfg.noise_std if noisy else 0.0, cfg.seed)
    lrs = {name: cfg.lr if cfg.lr is not None else ocfg.lr for name, ocfg in configs.items()}
    title = f"{cfg.steps} steps, impl={cfg.impl}, lr " + ", ".join(f"{n} {lr:g}" for n, lr in lrs.items())
    fig = figure(paths, title)
    fig.savefig(run_dir / "optimizer_pictures.png")

    from runner.engine.tracking import Tracker

    tracker = Tracker(run_dir)
    tracker.writer.add_figure("pictures/optimizers", fig, 0)
    tracker.close()
    result = {"lr": lrs, "paths": paths,
              "final_loss": {s: {n: SURFACES[s][0](*p[-1]) for n, p in by.items()} for s, by in paths.items()}}
    (run_dir / "trajectories.json").write_text(json.dumps(result, indent=1))
    return result


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="pictures")
def main(cfg: DictConfig) -> None:
    import sys

    from hydra.core.hydra_config import HydraConfig

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        if cfg.impl not in ("torch", "reference"):
            raise ConfigError(f"impl={cfg.impl!r} is invalid: allowed: torch, reference")
        if not isinstance(cfg.steps, int) or cfg.steps <= 0:
            raise ConfigError(f"steps={cfg.steps!r} is invalid: must be a positive integer")
        draw(cfg, run_dir)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print(f"wrote {run_dir / 'optimizer_pictures.png'}")


if __name__ == "__main__":
    main()
