"""Shared fixtures: the real configs composed with overrides for synthetic data, the CPU and tiny sizes."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from runner.config import CONFIG_DIR, register_resolvers, validate

register_resolvers()

# Small enough for seconds on 2 CPU cores, big enough that a CNN learns it well above chance.
TINY = [
    "data=synthetic",
    "data.train_examples=1200",
    "data.test_examples=400",
    "data.val_size=200",
    "device=cpu",
    "trainer.epochs=2",
    "trainer.batch_size=100",
    "trainer.eval_batch_size=500",
    "trainer.log_every_steps=5",
    "trainer.progress=false",
]


def compose_config(overrides=(), tiny=True, checked=True):
    """The real root config with `overrides` (after the tiny ones), as Hydra would compose it for a run, and with
    checked, completed and checked by config.validate as a run is (checked=False: as Hydra composed it, for a test
    of the validation itself)."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[*(TINY if tiny else []), *overrides], return_hydra_config=False)
    if checked:
        validate(cfg)
    return cfg


def choices_of(overrides=()):
    """The group -> option map Hydra would record for these overrides (HydraConfig.runtime.choices)."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[*TINY, *overrides], return_hydra_config=True)
    return {k: v for k, v in cfg.hydra.runtime.choices.items() if not k.startswith("hydra")}


@pytest.fixture
def cfg():
    """The tiny CPU config on synthetic data."""
    return compose_config()


def run_cli(args, cwd: Path, env=None, timeout=300, check=True):
    """Run `python -m runner ARGS` as a user would, in `cwd`. Returns the CompletedProcess."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    full_env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.run([sys.executable, "-m", "runner", *args], cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"runner {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
