"""Data-parallel training under torchrun with 2 gloo processes on the CPU: the same steps, images seen and (within
noise) accuracy as one process with the same global batch; one run directory, written by rank 0 alone."""

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import compose_config
from runner.config import ConfigError, validate
from runner.engine import distributed

ARGS = ["data=synthetic", "data.train_examples=1200", "data.test_examples=400", "data.val_size=200", "device=cpu",
        "trainer.epochs=2", "trainer.batch_size=100", "trainer.log_every_steps=5", "trainer.progress=false",
        "model.widths=[8,16]", "diagnostics.every_steps=0"]


def _run(nproc: int, cwd, extra=()) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "HYDRA_FULL_ERROR")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "runner", *ARGS, *extra]
    proc = subprocess.run(cmd, cwd=cwd, env={**env, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


@pytest.mark.slow  # over 2 s on 2 idle cores: `make test-all` and CI run it
def test_two_processes_match_one_in_steps_images_and_accuracy(tmp_path):
    _run(1, tmp_path, ["hydra.run.dir=one"])
    _run(2, tmp_path)  # no hydra.run.dir: rank 0 picks the run directory for both
    runs = list((tmp_path / "outputs").glob("*/*"))
    assert len(runs) == 1, runs  # one run directory, not one per rank
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    two = json.loads((runs[0] / "metrics.json").read_text())
    assert (two["world_size"], one["world_size"]) == (2, 1)
    assert two["steps"] == one["steps"] == 2 * 1000 // 100
    assert two["images_seen"] == one["images_seen"] == 2 * 1000
    # Same data, same augmentation, averaged gradients: only batch norm's per-shard statistics differ.
    assert abs(two["test_acc"] - one["test_acc"]) < 0.1
    assert abs(two["history"][0]["train_loss"] - one["history"][0]["train_loss"]) < 0.05
    assert len(list(runs[0].glob("events.out.tfevents.*"))) == 1  # rank 0 alone writes TensorBoard events


def test_shard_splits_the_global_batch_in_rank_order():
    x = torch.arange(12)
    parts = [distributed.shard(x, distributed.World(rank, 3)) for rank in range(3)]
    assert torch.equal(torch.cat(parts), x)
    assert distributed.shard(x, distributed.World()) is x


def test_global_batch_must_split_evenly(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(ConfigError, match="trainer.batch_size=100"):
        validate(compose_config(checked=False))


def test_a_plain_run_keeps_its_arguments():
    argv = ["runner", "optimizer=adam"]
    assert distributed.agree_on_run_dir(argv) == argv
