"""The optimizer pictures: the lecture's behaviours show in the trajectories (SGD zigzags on the ill-conditioned
quadratic, stalls at the saddle where momentum escapes, noise kicks it off), and the command writes its picture."""

import json
import math
import subprocess
import sys
from functools import partial

import pytest
from omegaconf import OmegaConf

from runner import pictures
from runner.config import ConfigError
from runner.optimization import surfaces


def _path(name, surface, noise_std=0.0, steps=200):
    from runner.engine.build import make_optimizer

    return surfaces.trajectory(partial(make_optimizer, pictures.optimizer_config(name)), surface,
                               surfaces.START if surface is surfaces.quadratic else surfaces.SADDLE_START,
                               steps, noise_std, seed=0)


def test_sgd_zigzags_across_the_steep_direction_of_the_quadratic():
    ys = [y for _, y in _path("sgd", surfaces.quadratic, steps=30)]
    sign_changes = sum(a * b < 0 for a, b in zip(ys, ys[1:], strict=False))
    assert sign_changes >= 25  # y flips side nearly every step (lr * curvature = 1.8 > 1)
    xs = [x for x, _ in _path("adam", surfaces.quadratic, steps=30)]
    assert all(b >= a for a, b in zip(xs, xs[1:], strict=False))  # Adam goes straight along the valley


def test_sgd_stalls_at_the_saddle_where_momentum_and_adam_escape():
    minimum = math.sqrt(0.05 / 8)  # the saddle surface's minima at y = +-0.079

    def final_y(name, noise=0.0):
        return abs(_path(name, surfaces.saddle, noise)[-1][1])

    assert final_y("sgd") < 0.1 * minimum
    for name in ("momentum", "nesterov", "adam"):
        assert final_y(name) == pytest.approx(minimum, rel=0.05), name
    assert final_y("sgd", noise=0.05) > 0.5 * minimum  # gradient noise kicks SGD off the ridge


def test_every_optimizer_option_can_be_drawn_and_unknown_names_are_refused():
    for name in sorted(p.stem for p in (pictures.CONFIG_DIR / "optimizer").glob("*.yaml")):
        assert len(_path(name, surfaces.quadratic, steps=5)) == 6
    with pytest.raises(ConfigError, match="allowed: .*adam"):
        pictures.optimizer_config("adamm")


def test_draw_writes_the_png_the_paths_and_a_tensorboard_image(tmp_path):
    cfg = OmegaConf.create({"optimizers": ["sgd", "adam"], "steps": 20, "noise_std": 0.05, "seed": 0, "lr": None,
                            "impl": "reference"})
    result = pictures.draw(cfg, tmp_path)
    assert (tmp_path / "optimizer_pictures.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((tmp_path / "trajectories.json").read_text())
    assert set(saved["paths"]) == set(surfaces.SURFACES) and saved["lr"] == {"sgd": 0.1, "adam": 0.001}
    assert len(saved["paths"]["saddle point"]["adam"]) == 21 == len(result["paths"]["noisy quadratic"]["sgd"])
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path)).Reload()
    assert "pictures/optimizers" in events.Tags()["images"]


def test_the_command_runs_from_the_cli(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "runner.pictures", "optimizers=[momentum,rmsprop]", "steps=10",
                           f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "optimizer_pictures.png" in proc.stdout
    assert (tmp_path / "run" / "optimizer_pictures.png").is_file()
