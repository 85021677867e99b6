"""The benchmark's input pipeline is runner's: the augmentation's view of each epoch (alternating flip too), then
its per-batch steps."""

import pytest
import torch

from conftest import compose_config
from runner.commands import bench
from runner.engine.build import build_augmentation


def test_the_bench_pipeline_flips_with_alternating_flip_half_in_epoch_0_the_other_half_in_epoch_1():
    augmentation = build_augmentation(compose_config(["augmentation=alternating_flip", "augmentation.padding=0"]))
    x = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    index = torch.arange(64)  # as labels: each batch says which images it holds
    flipped = []
    for epoch in (0, 1):
        mirrored = torch.zeros(64, dtype=torch.bool)
        batches = bench.runner_batches(x, index, augmentation, lambda t: t, 16, torch.Generator().manual_seed(0), epoch)
        for xb, ib in batches:
            mirrored[ib] = (xb == x[ib].flip(3)).flatten(1).all(1)
            assert torch.equal(torch.where(mirrored[ib][:, None, None, None], x[ib].flip(3), x[ib]), xb)
        flipped.append(mirrored)
    assert 10 < int(flipped[0].sum()) < 54
    assert torch.equal(flipped[1], ~flipped[0])


def test_the_reference_scripts_copy_holds_runners_training_images_where_the_script_takes_them(tmp_path):
    """(h), (i): the folder handed to a reference script holds, at the positions the script trains on, exactly the
    images runner trains on (after its validation hold-out), and every other image once after them."""
    import numpy as np

    from runner.data import loading as data
    from test_data import write_cifar

    write_cifar(tmp_path / "root", per_batch=20)
    arrays = data.read_cifar10(tmp_path / "root")
    held_out, n = 30, 25
    copy = bench._subset_root(tmp_path / "root", tmp_path, "first", np.arange(n), held_out=held_out)
    theirs = data.read_cifar10(copy)
    splits = data.split(arrays, data.CIFAR10_CLASSES, held_out, n, 0, torch.device("cpu"))
    assert np.array_equal(theirs["train_x"][:n], splits.train_x.numpy())
    assert np.array_equal(theirs["train_y"][:n], splits.train_y.numpy())
    rows = lambda x: sorted(map(bytes, x.reshape(len(x), -1)))  # noqa: E731
    assert rows(theirs["train_x"]) == rows(arrays["train_x"])  # a reordering: nothing lost or repeated


@pytest.mark.slow  # three Python processes that import torch
def test_a_reference_script_with_a_fixed_seed_runs_with_the_seed_given(tmp_path):
    script = tmp_path / "fixed.py"
    script.write_text("import sys, numpy, torch\ntorch.manual_seed(0)\nnumpy.random.seed(0)\n"
                      "print(sys.argv[1], torch.rand(1).item(), numpy.random.rand())\n")
    runs = {seed: bench._script([str(script), "arg"], seed)[0] for seed in (0, 1)}
    assert runs[0].split()[0] == "arg" and runs[0] != runs[1]
    assert bench._script([str(script), "arg"], 1)[0] == runs[1]  # seeded: repeatable
    assert bench._script([str(script), "arg"])[0] == runs[0]  # no seed given: the script's own


def test_the_reference_scripts_are_looked_for_beside_the_checkout(monkeypatch):
    """(h) and (i) run ../shared/bench/*.py next to the checkout (a module moved deeper once made that path wrong)."""
    import importlib

    from runner.config import CONFIG_DIR

    monkeypatch.delenv("RUNNER_BENCH_REFERENCE", raising=False)
    assert importlib.reload(bench).REFERENCE_DIR == CONFIG_DIR.parent.parent / "shared" / "bench"
