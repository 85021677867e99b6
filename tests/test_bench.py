"""The benchmark's input pipeline is runner's: the augmentation's view of each epoch (alternating flip too), then
its per-batch steps."""

import torch

from conftest import compose_config
from runner import bench
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
