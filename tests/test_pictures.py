"""The optimizer race (runner.pictures): its numbers follow the update rules' formulas, the lecture's orderings
hold at the race's defaults (the same lr for all), divergence and the tolerance table are reported as they
happen, bad settings are one-line errors, and the command writes its pictures and tables."""

import csv
import math
import subprocess
import sys

import numpy as np
import pytest
from omegaconf import OmegaConf

from runner.commands import pictures
from runner.config import ConfigError

CFG = pictures.defaults()


def _stall(result, width=0.1) -> int:
    """Steps spent on the saddle's ridge, |x2| < width."""
    return int((np.abs(result["path"][:, 1]) < width).sum())


def test_sgd_on_the_bowl_follows_the_closed_form_and_zigzags_when_lr_times_condition_exceeds_1():
    lr, condition, (x, y) = CFG.lr, CFG.bowl.condition, CFG.bowl.start
    path = pictures.race("bowl", ["sgd"], lr, 30)["sgd"]["path"]
    t = np.arange(31)
    expected = np.stack([x * (1 - lr) ** t, y * (1 - lr * condition) ** t], axis=1)  # x <- x - lr * H x
    assert np.allclose(path, expected, rtol=1e-9, atol=1e-15)
    assert lr * condition > 1 and path[1, 1] * path[0, 1] < 0  # the defaults' SGD flips across the valley


def test_at_the_common_lr_momentum_beats_sgd_on_the_bowl():
    results = pictures.race("bowl", ["sgd", "momentum", "nesterov"], CFG.lr, CFG.steps)
    sgd = results["sgd"]
    for name in ("momentum", "nesterov"):
        assert results[name]["steps_to_tol"] < sgd["steps_to_tol"], name
        assert results[name]["final_gap"] < 1e-3 * sgd["final_gap"], name
    gaps = sgd["losses"]  # the bowl's minimum loss is 0; steps_to_tol is the first step within tol of it
    assert gaps[sgd["steps_to_tol"]] < CFG.tol <= gaps[sgd["steps_to_tol"] - 1]


def test_sgd_stalls_at_the_saddle_longer_than_momentum_and_adam():
    results = pictures.race("saddle", ["sgd", "momentum", "adam"], CFG.lr, CFG.steps)
    for name in ("momentum", "adam"):
        assert _stall(results["sgd"]) > 2 * _stall(results[name]), name
        assert results[name]["steps_to_tol"] is not None
    assert results["sgd"]["steps_to_tol"] is None or results["sgd"]["steps_to_tol"] > results["momentum"][
        "steps_to_tol"]
    noisy = pictures.race("saddle", ["sgd"], CFG.lr, CFG.steps, noise_std=CFG.noise_std)["sgd"]
    assert _stall(noisy) < _stall(results["sgd"])  # gradient noise kicks SGD off the ridge sooner


def test_exactly_on_the_ridge_no_noiseless_path_leaves_it():
    results = pictures.race("saddle", ["sgd", "momentum", "adam"], CFG.lr, 100, start=[-1.5, 0.0])
    for name, result in results.items():
        assert np.all(result["path"][:, 1] == 0.0), name
        assert result["final_gap"] >= 0.25 and result["steps_to_tol"] is None, name  # the saddle's loss: 0, min -1/4


def test_paths_beyond_their_stability_limit_are_marked_diverged():
    """On the bowl the steep curvature is `condition`: SGD is stable for lr * condition < 2, Nesterov (rho 0.9) for
    < 2 (1 + rho) / (1 + 2 rho) = 1.36, heavy-ball momentum for < 2 (1 + rho) = 3.8."""
    condition = 50.0
    results = pictures.race("bowl", ["sgd", "nesterov", "momentum"], 1.5 / condition, 100, condition=condition)
    assert results["nesterov"]["diverged"] and not results["sgd"]["diverged"] and not results["momentum"]["diverged"]
    nesterov = results["nesterov"]
    assert nesterov["steps_to_tol"] is None and len(nesterov["path"]) == nesterov["diverged_at"] + 1
    assert nesterov["losses"][-1] > CFG.diverged_factor * nesterov["losses"][0] >= nesterov["losses"][-2]
    assert pictures.race("bowl", ["sgd"], 2.1 / condition, 100, condition=condition)["sgd"]["diverged"]


def test_best_lr_picks_the_grid_lr_that_reaches_the_tolerance_first():
    grid = [0.001, 0.01, 0.03, 0.1]
    best = pictures.race("bowl", ["sgd"], None, 150, lr_grid=grid)["sgd"]
    assert best["grid"] == {0.001: "never", 0.01: "never", 0.03: best["steps_to_tol"], 0.1: "diverged"}
    assert best["lr"] == 0.03
    common = pictures.race("bowl", ["sgd"], 0.03, 150)["sgd"]
    assert common["steps_to_tol"] == best["steps_to_tol"]


def test_the_tolerance_table_says_steps_never_or_diverged(tmp_path):
    cfg = OmegaConf.merge(CFG, {"optimizers": ["momentum", "adagrad", "nesterov"], "lr": 0.03, "steps": 60})
    results = {"bowl": pictures.race("bowl", list(cfg.optimizers), cfg.lr, cfg.steps)}
    markdown = pictures.write_tables(results, cfg, tmp_path)
    rows = {r["optimizer"]: r for r in csv.DictReader(open(tmp_path / "steps_to_tol.csv"))}
    momentum = results["bowl"]["momentum"]["steps_to_tol"]
    assert rows["momentum"]["steps_to_tol"] == str(momentum) and f"| momentum | {momentum} |" in markdown
    assert rows["adagrad"]["steps_to_tol"] == "" and "| adagrad | never (" in markdown
    assert rows["nesterov"]["diverged"] == "True" and "| nesterov | diverged at " in markdown
    assert (tmp_path / "steps_to_tol.md").read_text() == markdown


def test_adam_first_step_is_3_16_times_larger_without_bias_correction():
    with_correction, without = pictures.adam_first_step(True), pictures.adam_first_step(False)
    assert with_correction == pytest.approx(CFG.lr, rel=1e-6)
    assert without / with_correction == pytest.approx(0.1 / math.sqrt(0.001), rel=1e-6)  # 3.162
    for grad in (1e-3, 10.0):  # the first step's size does not depend on the gradient's (with eps 0)
        assert pictures.adam_first_step(False, lr=0.01, grad=grad, eps=0.0) == pytest.approx(0.031623, rel=1e-4)
    assert pictures.adam_first_step(False, lr=1.0, betas=(0.8, 0.99)) == pytest.approx(0.2 / 0.1, rel=1e-6)


def test_effective_steps_shrink_for_adagrad_and_settle_at_lr_for_rmsprop():
    lr, steps = 0.02, 200
    sizes = pictures.effective_steps(steps=steps, lr=lr)
    t = np.arange(1, steps + 1)
    assert np.allclose(sizes["adagrad"], lr / np.sqrt(t), rtol=1e-6)  # cache = t g^2
    assert np.allclose(sizes["rmsprop"], lr / np.sqrt(1 - 0.99 ** t), rtol=1e-6)  # cache = (1 - 0.99^t) g^2
    assert sizes["adagrad"][-1] < 0.1 * lr < lr < sizes["rmsprop"][-1] < 1.1 * lr


@pytest.mark.parametrize("override, words", [
    ({"steps": 0}, "steps=0 is invalid: must be a positive integer"),
    ({"lr_mode": "fast"}, "lr_mode='fast' is invalid: allowed: common"),
    ({"lr": -0.1}, "lr=-0.1 is invalid: must be a positive number"),
    ({"lr_grid": [0.1, 0.01]}, "lr_grid="),
    ({"tol": 0}, "tol=0 is invalid"),
    ({"bowl": {"condition": 0.5}}, "bowl.condition=0.5 is invalid: must be a number >= 1"),
    ({"saddle": {"start": [1.0]}}, "saddle.start="),
    ({"saddle": {"height": 1.0}}, "saddle.height is not a config key"),
    ({"optimizers": ["sgdd"]}, "optimizers: 'sgdd' is neither an optimizer option nor a variant; allowed: adagrad"),
    ({"variants": {"mine": {"option": "sgdd"}}}, "variants.mine="),
    ({"variants": {"mine": {"option": "sgd", "momentun": 0.5}}}, "variants.mine.momentun is not a key of"),
])
def test_bad_settings_are_one_line_errors(override, words):
    with pytest.raises(ConfigError) as err:
        pictures.check(OmegaConf.merge(CFG, override))
    assert words in str(err.value) and "\n" not in str(err.value)


def test_race_checks_its_arguments_as_the_command_line_does():
    with pytest.raises(ConfigError, match="surface='cube' is invalid: allowed: bowl, saddle"):
        pictures.race("cube", ["sgd"], 0.01, 10)
    with pytest.raises(ConfigError, match="condtion is not a key of the bowl"):
        pictures.race("bowl", ["sgd"], 0.01, 10, condtion=3)
    with pytest.raises(ConfigError, match="steps=0 is invalid"):
        pictures.race("bowl", ["sgd"], 0.01, 0)
    with pytest.raises(ConfigError, match="bias_correction=false needs impl=reference"):
        pictures.optimizer_config("mine", OmegaConf.merge(
            CFG, {"variants": {"mine": {"option": "adam", "bias_correction": False}}}))


def test_every_optimizer_option_and_variant_runs_in_the_race():
    names = sorted(p.stem for p in (pictures.CONFIG_DIR / "optimizer").glob("*.yaml")) + list(CFG.variants)
    results = pictures.race("bowl", names, 0.01, 5)
    assert all(len(r["path"]) == 6 and r["path"][-1][0] > r["path"][0][0] for r in results.values())


def test_the_numbers_need_no_matplotlib(monkeypatch):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")] + ["matplotlib"]:
        monkeypatch.setitem(sys.modules, name, None)  # `import matplotlib` now fails
    assert pictures.race("saddle", ["adam"], 0.01, 5)["adam"]["path"].shape == (6, 2)
    assert len(pictures.effective_steps(steps=3)["adagrad"]) == 3


def test_draw_writes_the_pictures_the_tables_and_the_paths(tmp_path, capsys):
    cfg = OmegaConf.merge(CFG, {"optimizers": ["sgd", "nesterov"], "steps": 20, "lr": 0.03, "noise_std": 0})
    out = pictures.draw(cfg, tmp_path)
    for name in ("bowl", "saddle", "effective_steps"):
        assert (tmp_path / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert not (tmp_path / "noisy_bowl.png").exists()  # noise_std=0: no noisy copies
    printed = capsys.readouterr().out
    assert (tmp_path / "steps_to_tol.md").read_text() in printed and "3.16x" in printed
    assert out["results"]["bowl"]["nesterov"]["diverged"]
    assert (tmp_path / "steps_to_tol.csv").is_file() and (tmp_path / "trajectories.json").is_file()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert "pictures/bowl" in EventAccumulator(str(tmp_path)).Reload().Tags()["images"]


@pytest.mark.slow
def test_the_command_runs_from_the_cli(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "runner.pictures", "optimizers=[momentum,adam_no_bias_correction]",
                           "steps=10", f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "| momentum |" in proc.stdout
    for name in ("bowl.png", "saddle.png", "noisy_bowl.png", "noisy_saddle.png", "effective_steps.png",
                 "steps_to_tol.md", "steps_to_tol.csv"):
        assert (tmp_path / "run" / name).is_file(), name
    bad = subprocess.run([sys.executable, "-m", "runner.pictures", "bowl.condition=0"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "bowl.condition=0" in bad.stderr
