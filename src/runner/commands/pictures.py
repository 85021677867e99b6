"""The lecture's optimizer race (CS231n, "Training Neural Networks II"): optimizers on 2-D surfaces, their paths
drawn on the contours, how fast each gets within a tolerance of the minimum, and the two step-size facts of the
adaptive methods (AdaGrad's shrinking step, Adam's bias correction).

    python -m runner.pictures                                # the race at one common lr (configs/pictures.yaml)
    python -m runner.pictures lr_mode=best                   # each optimizer at its best lr of lr_grid
    python -m runner.pictures 'optimizers=[sgd,momentum,momentum_99]' bowl.condition=100 lr=0.0125
    python -m runner.pictures saddle.start=[-1.5,0] noise_std=0   # on the ridge: every noiseless path stalls

Surfaces (runner.optimization.surfaces): the ill-conditioned `bowl` and the `saddle`, each also with Gaussian
noise on every gradient (noise_std > 0). Writes into the run directory, outputs/pictures/<date>/<time>-<id>/:
<surface>.png (paths on the contours, loss above the minimum per step), effective_steps.png, steps_to_tol.csv and
steps_to_tol.md (the table it prints), trajectories.json, and TensorBoard images pictures/<surface>.

The API the lessons call (torch only; matplotlib is imported by `figure` and `effective_steps_figure` alone).
Every default comes from configs/pictures.yaml and every argument is checked as the command line's are
(ConfigError, one line):

race(surface, optimizers, lr, steps, *, tol=None, noise_std=0.0, seed=None, impl=None, lr_grid=None,
     diverged_factor=None, **surface_kwargs) -> {optimizer: result}
    surface: "bowl" or "saddle"; surface_kwargs: its keys (bowl: condition, start; saddle: curvature, start).
    optimizers: optimizer options or variants. lr: one lr for all (the fair race), or None: each at its best lr
    of lr_grid (fewest steps to tol, then lowest final loss; diverged lrs last). Each result holds
      lr             the lr used
      path           numpy (n, 2): the start, then the point after each step (shorter if it diverged)
      losses         numpy (n,): the loss at each point
      final_loss     the loss at the last point
      final_gap      final_loss minus the surface's minimum (the bowl's is 0, the saddle's -curvature / 4)
      steps_to_tol   the first step whose loss is within tol of the minimum; None: never, or diverged
      diverged       True where the loss became non-finite or exceeded the bound (the path stops there)
      diverged_at    that step, else None
      grid           lr_mode best only: {lr: steps_to_tol, or "never" / "diverged"}
effective_steps(optimizers=("adagrad", "rmsprop"), steps=100, lr=None, grad=1.0) -> {optimizer: [float]}
    the size |dx| of each update on a constant gradient `grad` (lr None: configs/pictures.yaml's lr):
    AdaGrad's is lr / sqrt(t), RMSProp's lr / sqrt(1 - alpha^t), which settles at lr.
adam_first_step(bias_correction, lr=None, grad=1.0, betas=(0.9, 0.999), eps=1e-8) -> float
    the size of Adam's first update on the gradient `grad` (reference.Adam): lr with the correction,
    lr * (1 - b1) / sqrt(1 - b2) = 3.16 lr without.
"""

import csv
import json
from functools import partial
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from runner.config import CONFIG_DIR, ConfigError, register_resolvers
from runner.config.keys import Key, integer, list_of, number, one_of, option_names, required
from runner.config.lr import AUTO, auto_lr
from runner.config.schema import walk
from runner.optimization.surfaces import SURFACES, Surface, trajectory

register_resolvers()

_START = list_of(number(), "two numbers [x1,x2], e.g. [-1.5,0.5]", length=(2, 2))
SPEC = {
    **required(
        optimizers=list_of(Key(lambda v: None if isinstance(v, str) else "must be a name"),
                           "a list of optimizer options or variants, e.g. [sgd,momentum,adam]"),
        variants=Key(lambda v: None if OmegaConf.is_dict(v) else "must be a group of name: {option: ..., key: value}"),
        steps=integer("(0, inf)"),
        lr_mode=one_of({"common": "every optimizer at lr", "best": "each at its best lr of lr_grid",
                        "own": "each at its option file's lr"}),
        lr=number("(0, inf)"),
        lr_grid=list_of(number("(0, inf)"), "a list of positive numbers, low to high, e.g. [0.001,0.01,0.1]",
                        ascending=True),
        impl=one_of("torch", "reference"), tol=number("(0, inf)"), diverged_factor=number("(1, inf)"),
        noise_std=number("[0, inf)"), seed=integer("[0, inf)")),
    "bowl": required(condition=number("[1, inf)", why="the Hessian's largest over smallest eigenvalue"),
                     start=_START),
    "saddle": required(curvature=number("(0, inf)", why="the saddle's downhill curvature along x2"), start=_START),
}

_NOISY = "noisy_"


def defaults() -> DictConfig:
    """configs/pictures.yaml without Hydra's node."""
    cfg = OmegaConf.load(CONFIG_DIR / "pictures.yaml")
    return OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])


def check(cfg: DictConfig) -> None:
    """Every key against SPEC, then the names in optimizers and variants. Raises ConfigError (one line)."""
    walk(cfg, SPEC, "")
    options = option_names("optimizer")
    for name, variant in cfg.variants.items():
        where = f"variants.{name}"
        if not OmegaConf.is_dict(variant) or variant.get("option") not in options:
            raise ConfigError(f"{where}={variant!r} is invalid: needs option: <one of {', '.join(options)}> beside "
                              "the keys it changes. Correct it in configs/pictures.yaml.")
        known = set(OmegaConf.load(CONFIG_DIR / "optimizer" / f"{variant.option}.yaml")) | {"option", "impl"}
        for key in variant:
            if key not in known:
                raise ConfigError(f"{where}.{key} is not a key of configs/optimizer/{variant.option}.yaml: its keys "
                                  f"are {', '.join(sorted(known - {'option'}))}. Correct it in configs/pictures.yaml.")
    for name in cfg.optimizers:
        if name not in options and name not in cfg.variants:
            raise ConfigError(f"optimizers: {name!r} is neither an optimizer option nor a variant; allowed: "
                              f"{', '.join(options + list(cfg.variants))}. Change it with `optimizers=[...]`.")


def optimizer_config(name: str, cfg: DictConfig | None = None) -> DictConfig:
    """The option file `name` (configs/optimizer/<name>.yaml), or a variant of cfg.variants applied to its option,
    with cfg.impl (the variant's own impl wins)."""
    cfg = cfg if cfg is not None else defaults()
    variant = cfg.variants.get(name)
    option = variant.option if variant is not None else name
    path = CONFIG_DIR / "optimizer" / f"{option}.yaml"
    if not path.is_file():
        raise ConfigError(f"optimizers: {name!r} is not an optimizer option or variant; allowed: "
                          f"{', '.join(option_names('optimizer') + list(cfg.variants))}")
    node = OmegaConf.load(path)
    node.impl = cfg.impl
    if node.lr == AUTO:  # a 2-D surface has no batch norm: the option's lr for a network without it
        node.lr = auto_lr(node, batch_norm=False)
    if variant is not None:
        node = OmegaConf.merge(node, {k: v for k, v in variant.items() if k != "option"})
    if node.get("bias_correction") is False and node.impl != "reference":
        raise ConfigError(f"{name}: bias_correction=false needs impl=reference (torch.optim always corrects).")
    return node


def make_surface(name: str, cfg: DictConfig) -> Surface:
    """The surface `name` ("bowl", "saddle", or either with "noisy_" in front) with cfg's keys."""
    return SURFACES[name.removeprefix(_NOISY)](**OmegaConf.to_container(cfg[name.removeprefix(_NOISY)]))


def run_path(ocfg: DictConfig, lr: float, surface: Surface, cfg: DictConfig, noise_std: float) -> dict:
    """One optimizer's path on `surface` at `lr`, measured as `race` describes."""
    import numpy as np

    # torch only for the pictures that train: the others draw without it
    from runner.engine.build import make_optimizer

    start_gap = surface.loss(*surface.start) - surface.minimum
    bound = surface.minimum + cfg.diverged_factor * max(start_gap, cfg.tol)
    path = trajectory(partial(make_optimizer, ocfg, lr=lr), surface, cfg.steps, noise_std, cfg.seed, bound)
    gaps = np.array(path.losses) - surface.minimum
    reached = np.flatnonzero(gaps < cfg.tol)
    diverged = path.diverged_at is not None
    return {"lr": lr, "path": np.array(path.points), "losses": np.array(path.losses),
            "final_loss": path.losses[-1], "final_gap": float(gaps[-1]),
            "steps_to_tol": None if diverged or not len(reached) else int(reached[0]),
            "diverged": diverged, "diverged_at": path.diverged_at}


def _verdict(result: dict):
    return "diverged" if result["diverged"] else "never" if result["steps_to_tol"] is None else result["steps_to_tol"]


def best_lr(ocfg: DictConfig, surface: Surface, cfg: DictConfig, noise_std: float) -> dict:
    """The result at the lr of cfg.lr_grid that reaches tol first (then: lowest final loss; diverged last)."""
    results = [run_path(ocfg, lr, surface, cfg, noise_std) for lr in cfg.lr_grid]
    best = min(results, key=lambda r: (r["diverged"], r["steps_to_tol"] is None, r["steps_to_tol"] or 0,
                                       r["final_gap"]))
    return {**best, "grid": {r["lr"]: _verdict(r) for r in results}}


def _race(surface_name: str, cfg: DictConfig) -> dict[str, dict]:
    surface = make_surface(surface_name, cfg)
    noise_std = cfg.noise_std if surface_name.startswith(_NOISY) else 0.0
    results = {}
    for name in cfg.optimizers:
        ocfg = optimizer_config(name, cfg)
        if cfg.lr_mode == "best":
            results[name] = best_lr(ocfg, surface, cfg, noise_std)
        else:
            results[name] = run_path(ocfg, cfg.lr if cfg.lr_mode == "common" else ocfg.lr, surface, cfg, noise_std)
    return results


def race(surface: str, optimizers: list[str], lr: float | None, steps: int, *, tol: float | None = None,
         noise_std: float = 0.0, seed: int | None = None, impl: str | None = None,
         lr_grid: list[float] | None = None, diverged_factor: float | None = None, **surface_kwargs) -> dict[str, dict]:
    """The optimizers' race on one surface (see the module docstring for the arguments and the results)."""
    cfg = defaults()
    if surface not in SURFACES:
        raise ConfigError(f"surface={surface!r} is invalid: allowed: {', '.join(SURFACES)}")
    unknown = set(surface_kwargs) - set(cfg[surface])
    if unknown:
        raise ConfigError(f"{surface}: {', '.join(sorted(unknown))} is not a key of the {surface}; its keys: "
                          f"{', '.join(cfg[surface])}")
    given = {"optimizers": list(optimizers), "steps": steps, "lr_mode": "best" if lr is None else "common",
             "lr": cfg.lr if lr is None else lr, "tol": tol, "noise_std": noise_std, "seed": seed, "impl": impl,
             "lr_grid": None if lr_grid is None else list(lr_grid), "diverged_factor": diverged_factor,
             surface: {k: list(v) if isinstance(v, tuple | list) else v for k, v in surface_kwargs.items()}}
    cfg = OmegaConf.merge(cfg, {k: v for k, v in given.items() if v is not None})
    check(cfg)
    return _race(f"{_NOISY}{surface}" if cfg.noise_std > 0 else surface, cfg)


def effective_steps(optimizers=("adagrad", "rmsprop"), steps: int = 100, lr: float | None = None,
                    grad: float = 1.0) -> dict[str, list[float]]:
    """The size of each of `steps` updates on the same gradient `grad` every step, per optimizer, at `lr`
    (None: configs/pictures.yaml's common lr)."""
    import torch

    # torch only for the pictures that train: the others draw without it
    from runner.engine.build import make_optimizer

    cfg = defaults()
    cfg = OmegaConf.merge(cfg, {"optimizers": list(optimizers), "steps": steps, "lr": cfg.lr if lr is None else lr})
    check(cfg)
    sizes = {}
    for name in cfg.optimizers:
        x = torch.zeros(1, dtype=torch.float64, requires_grad=True)
        opt = make_optimizer(optimizer_config(name, cfg), [x], lr=cfg.lr)
        sizes[name] = []
        for _ in range(cfg.steps):
            before = x.detach().clone()
            x.grad = torch.full_like(x, grad)
            opt.step()
            sizes[name].append(float((x.detach() - before).abs()))
    return sizes


def adam_first_step(bias_correction: bool, lr: float | None = None, grad: float = 1.0,
                    betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> float:
    """The size of the first update of the lecture's Adam (runner.optimization.reference.Adam) on gradient `grad`
    (lr None: configs/pictures.yaml's common lr)."""
    import torch

    # torch only for this picture: the others draw without it
    from runner.optimization.reference import Adam

    x = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = Adam([x], lr=defaults().lr if lr is None else lr, betas=betas, eps=eps, bias_correction=bias_correction)
    x.grad = torch.full_like(x, grad)
    opt.step()
    return float(x.detach().abs())


# ---- pictures -----------------------------------------------------------------------------------------------------

# One look per optimizer (colour, line style, marker), so each path stays apart where they overlap; names not here
# take the left-over looks in turn.
_LOOKS = {"sgd": ("tab:blue", "-", "o"), "momentum": ("tab:orange", "--", "s"), "nesterov": ("tab:green", "-.", "^"),
          "adagrad": ("tab:red", "-", "D"), "rmsprop": ("tab:purple", ":", "v"), "adam": ("tab:brown", "--", "P"),
          "adam_no_bias_correction": ("tab:pink", ":", "X"), "momentum_99": ("tab:olive", "-.", "*"),
          "adamw": ("tab:cyan", "-", "h"), "adamax": ("tab:gray", "--", "<"), "nadam": ("black", ":", ">")}
_SPARE = [("tab:cyan", "-", "h"), ("tab:gray", "--", "<"), ("black", ":", ">"), ("gold", "-.", "d")]


def _looks(names) -> dict[str, tuple[str, str, str]]:
    spare = iter(_SPARE * len(names))
    return {n: _LOOKS.get(n) or next(spare) for n in names}


def _exits(p, box):
    """Where the path p (n, 2) leaves the box ((x0, x1), (y0, y1)): the crossing point of each segment from inside
    to outside."""
    import numpy as np

    (x0, x1), (y0, y1) = box
    inside = (p[:, 0] >= x0) & (p[:, 0] <= x1) & (p[:, 1] >= y0) & (p[:, 1] <= y1)
    points = []
    for i in np.flatnonzero(inside[:-1] & ~inside[1:]):
        a, d = p[i], p[i + 1] - p[i]
        # the largest fraction of the segment that stays inside, per side the segment heads for
        t = min([(b - a[k]) / d[k] for k, lo, hi in ((0, x0, x1), (1, y0, y1)) if d[k] != 0
                 for b in (hi if d[k] > 0 else lo,)] + [1.0])
        points.append(a + t * d)
    return np.array(points).reshape(-1, 2)


def _label(name: str, result: dict, lr_mode: str) -> str:
    label = name if lr_mode == "common" else f"{name} (lr {result['lr']:g})"
    return label + (f": diverged at step {result['diverged_at']}" if result["diverged"] else "")


_FLOOR = 1e-16  # float64 resolves a loss near 1 only to ~1e-16: lower gaps are drawn at this floor


def _draw_path(ax, loss_ax, surface: Surface, r: dict, look: tuple, z: int, every: int, tol: float) -> None:
    """One optimizer's path on the contours (`ax`), with a circle where it leaves the plot, and its loss above the
    minimum per step (`loss_ax`); an X where it diverged. z: its drawing order."""
    import numpy as np

    (x0, x1), (y0, y1) = surface.extent
    colour, style, marker = look
    p = np.clip(r["path"], [10 * x0, 10 * y0], [10 * x1, 10 * y1])  # far outside: drawn clipped at the axes
    ax.plot(p[:, 0], p[:, 1], color=colour, ls=style, lw=1.7, marker=marker, ms=6, markevery=every, zorder=z)
    out = _exits(r["path"], surface.extent)
    ax.plot(out[:, 0], out[:, 1], ls="", marker="o", ms=11, mfc="none", mec=colour, mew=2, clip_on=False, zorder=20)
    gaps = np.clip(r["losses"] - surface.minimum, _FLOOR, None)
    gaps[~np.isfinite(gaps)] = 1e6 * max(gaps[np.isfinite(gaps)].max(), tol)
    loss_ax.plot(np.arange(len(gaps)), gaps, color=colour, ls=style, lw=1.7, marker=marker, ms=6, markevery=every,
                 zorder=z)
    if r["diverged"]:
        last = np.clip(r["path"][-1], [x0, y0], [x1, y1])
        ax.plot(*last, ls="", marker="X", ms=16, color=colour, mec="black", clip_on=False, zorder=21)
        loss_ax.plot(len(gaps) - 1, gaps[-1], ls="", marker="X", ms=16, color=colour, mec="black", zorder=21)


def _marks(surface: Surface, cfg: DictConfig) -> list:
    """The legend's entries for the marks every figure has: start, minimum, exits, divergence, tolerance."""
    from matplotlib.lines import Line2D

    return [Line2D([], [], ls="", marker="*", ms=15, color="black",
                   label=f"start ({surface.start[0]:g}, {surface.start[1]:g})"),
            Line2D([], [], ls="", marker="+", ms=15, mew=3, color="black", label="minimum"),
            Line2D([], [], ls="", marker="o", ms=11, mfc="none", mec="black", mew=2,
                   label="where a path leaves the plot"),
            Line2D([], [], ls="", marker="X", ms=14, color="white", mec="black",
                   label=f"diverged: loss not finite or\nabove {cfg.diverged_factor:g}x the start's"),
            Line2D([], [], color="0.35", ls="--", lw=1.2, label=f"tolerance {cfg.tol:g}")]


def figure(surface: Surface, results: dict[str, dict], cfg: DictConfig, noise_std: float):
    """The paths on log-spaced contours of the loss (top), the loss above the minimum per step (log scale, bottom
    left) and the legend (bottom right)."""
    import numpy as np
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    (x0, x1), (y0, y1) = surface.extent
    # Placed in inches (no layout engine): the contour panel 11.6 wide with equal scales on x1 and x2, below it
    # the loss panel and the legend side by side.
    top = 11.6 * (y1 - y0) / (x1 - x0)
    width, height = 13.0, top + 7.2
    fig = Figure(figsize=(width, height), dpi=100)

    def inches(left, bottom, w, h):
        return left / width, bottom / height, w / width, h / height

    ax = fig.add_axes(inches(0.9, 6.0, 11.6, top))
    loss_ax = fig.add_axes(inches(0.9, 0.7, 6.6, 4.3))
    gx, gy = np.meshgrid(np.linspace(x0, x1, 250), np.linspace(y0, y1, 250))
    gap = surface.loss(gx, gy) - surface.minimum
    ax.contour(gx, gy, gap, levels=np.geomspace(max(gap.min(), 1e-3), gap.max(), 14), colors="0.78", linewidths=0.7)
    looks = _looks(list(results))
    # Paths that travel least are drawn on top: AdaGrad's short crawl and SGD's stall are not hidden by the rest.
    travel = {n: float(np.abs(np.diff(r["path"], axis=0)).sum()) for n, r in results.items()}
    handles = {}
    every = max(1, cfg.steps // 12)
    for z, name in enumerate(sorted(results, key=lambda n: -travel[n]), start=3):
        _draw_path(ax, loss_ax, surface, results[name], looks[name], z, every, cfg.tol)
        colour, style, marker = looks[name]
        handles[name] = Line2D([], [], color=colour, ls=style, marker=marker, lw=1.7, ms=7,
                               label=_label(name, results[name], cfg.lr_mode))
    ax.plot(*surface.start, ls="", marker="*", ms=18, color="black", zorder=22)
    ax.plot(*np.array(surface.minima).T, ls="", marker="+", ms=18, mew=3, color="black", zorder=22)
    loss_ax.axhline(cfg.tol, color="0.35", ls="--", lw=1.2)
    fig.legend(handles=[handles[name] for name in results] + _marks(surface, cfg), loc="center left", fontsize=11, frameon=False,
               bbox_to_anchor=(7.8 / width, 2.85 / height), borderaxespad=0)
    ax.set(xlim=(x0, x1), ylim=(y0, y1), aspect="equal", xlabel="x1 (parameter)", ylabel="x2 (parameter)",
           title="paths on the contours of the loss")
    lowest = min(float(np.nanmin(r["losses"] - surface.minimum)) for r in results.values())
    loss_ax.set(yscale="log", xlabel="step", ylabel="loss − minimum loss (log scale)", xlim=(0, cfg.steps),
                ylim=(max(lowest, _FLOOR) / 3, None), title=f"loss per step (floored at {_FLOOR:g}, float64's resolution)")
    loss_ax.grid(alpha=0.3)
    lrs = f"common lr {cfg.lr:g}" if cfg.lr_mode == "common" else \
        "each optimizer's best lr of lr_grid" if cfg.lr_mode == "best" else "each option file's own lr"
    noise = f", gradient noise std {noise_std:g}" if noise_std else ""
    fig.suptitle(f"{surface.title}{noise}\n{lrs}, {cfg.steps} steps, impl={cfg.impl}", fontsize=14,
                 y=1 - 0.15 / height, va="top")
    return fig


def effective_steps_figure(sizes: dict[str, list[float]], lr: float):
    """AdaGrad's shrinking step against RMSProp's steady one: the update size per step on a constant gradient."""
    import numpy as np
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 5), dpi=100)
    ax = fig.subplots()
    looks = _looks(list(sizes))
    for name, s in sizes.items():
        colour, style, marker = looks[name]
        ax.plot(np.arange(1, len(s) + 1), s, color=colour, ls=style, marker=marker, markevery=max(1, len(s) // 12),
                lw=1.8, label=name)
    ax.axhline(lr, color="0.4", ls="--", lw=1, label=f"lr = {lr:g}")
    ax.set(yscale="log", xlabel="step", ylabel="update size |Δx| (log scale)",
           title=f"Effective step size on a constant gradient, lr {lr:g}\n"
                 "AdaGrad's cache only grows (step lr/√t); RMSProp's leaks (step → lr;\n"
                 "its first steps are large: the cache starts at 0 and is not bias-corrected)")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    return fig


# ---- the command --------------------------------------------------------------------------------------------------

def _cell(result: dict, lr_mode: str) -> str:
    verdict = f"diverged at {result['diverged_at']}" if result["diverged"] else \
        f"never ({result['final_gap']:.2g})" if result["steps_to_tol"] is None else str(result["steps_to_tol"])
    return verdict if lr_mode == "common" else f"{verdict} (lr {result['lr']:g})"


def write_tables(results: dict[str, dict[str, dict]], cfg: DictConfig, run_dir: Path) -> str:
    """steps_to_tol.csv (one row per surface and optimizer) and steps_to_tol.md (optimizers x surfaces);
    returns the markdown."""
    keys = ["surface", "optimizer", "lr", "steps_to_tol", "diverged", "diverged_at", "final_loss", "final_gap"]
    with open(run_dir / "steps_to_tol.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        writer.writeheader()
        for surface, by in results.items():
            for name, r in by.items():
                writer.writerow({**r, "surface": surface, "optimizer": name,
                                 "steps_to_tol": "" if r["steps_to_tol"] is None else r["steps_to_tol"]})
    surfaces = list(results)
    lrs = f"common lr {cfg.lr:g}" if cfg.lr_mode == "common" else f"lr_mode={cfg.lr_mode}"
    lines = [f"Steps until the loss is within {cfg.tol:g} of the minimum ({lrs}, {cfg.steps} steps; never: not in "
             "the run, with the final gap; diverged: loss non-finite or beyond the bound).", "",
             "| optimizer | " + " | ".join(surfaces) + " |", "|---|" + "---|" * len(surfaces)]
    for name in cfg.optimizers:
        lines.append(f"| {name} | " + " | ".join(_cell(results[s][name], cfg.lr_mode) for s in surfaces) + " |")
    markdown = "\n".join(lines) + "\n"
    (run_dir / "steps_to_tol.md").write_text(markdown)
    return markdown


def draw(cfg: DictConfig, run_dir: Path) -> dict:
    """The race of cfg.optimizers on every surface; writes the pictures, the tables and the paths into run_dir
    and returns {"results": {surface: {optimizer: result}}, "effective_steps": ..., "adam_first_step": ...}."""
    check(cfg)
    names = list(SURFACES) + ([f"{_NOISY}{s}" for s in SURFACES] if cfg.noise_std > 0 else [])
    results = {name: _race(name, cfg) for name in names}
    markdown = write_tables(results, cfg, run_dir)
    sizes = effective_steps(steps=cfg.steps, lr=cfg.lr)
    first = {bc: adam_first_step(bc, cfg.lr) for bc in (True, False)}
    figures = {name: figure(make_surface(name, cfg), results[name], cfg,
                            cfg.noise_std if name.startswith(_NOISY) else 0.0) for name in names}
    figures["effective_steps"] = effective_steps_figure(sizes, cfg.lr)
    import numpy as np
    from PIL import Image

    # torch and TensorBoard only when the pictures go to TensorBoard
    from runner.engine.tracking import Tracker

    tracker = Tracker(run_dir)
    for name, fig in figures.items():
        fig.savefig(run_dir / f"{name}.png")
        with Image.open(run_dir / f"{name}.png") as png:  # rendered once: TensorBoard gets the PNG's pixels
            tracker.writer.add_image(f"pictures/{name}", np.asarray(png.convert("RGB")), 0, dataformats="HWC")
    tracker.close()
    saved = {s: {n: {**r, "path": r["path"].tolist(), "losses": r["losses"].tolist()} for n, r in by.items()}
             for s, by in results.items()}
    (run_dir / "trajectories.json").write_text(json.dumps(saved, indent=1))
    print(markdown)
    print(f"Adam's first step on a gradient of 1 at lr {cfg.lr:g}: {first[True]:.4g} with bias correction, "
          f"{first[False]:.4g} without ({first[False] / first[True]:.2f}x: (1 - b1) / sqrt(1 - b2) = 0.1 / 0.0316)")
    print(f"Update size on a constant gradient at lr {cfg.lr:g}, steps 1, 10, {cfg.steps}: "
          + "; ".join(f"{n} {s[0]:.3g}, {s[min(9, len(s) - 1)]:.3g}, {s[-1]:.3g}" for n, s in sizes.items()))
    return {"results": results, "effective_steps": sizes, "adam_first_step": first}


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="pictures")
def main(cfg: DictConfig) -> None:
    import sys

    from hydra.core.hydra_config import HydraConfig

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        draw(cfg, run_dir)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print(f"wrote {', '.join(sorted(p.name for p in run_dir.glob('*.png')))}, steps_to_tol.csv, steps_to_tol.md, "
          f"trajectories.json into {run_dir}")


if __name__ == "__main__":
    main()
