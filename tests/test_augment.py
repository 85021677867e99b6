"""Batch augmentation invariants: shapes, dtype, flips, crops inside the padding."""

import torch

from runner import augment


def _batch(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)


def test_flip_keeps_shape_dtype_and_each_image_is_itself_or_its_mirror():
    x = _batch()
    out = augment.flip(x, torch.Generator().manual_seed(1))
    assert out.shape == x.shape and out.dtype == torch.uint8
    same = (out == x).flatten(1).all(1)
    mirrored = (out == x.flip(3)).flatten(1).all(1)
    assert bool((same | mirrored).all())
    assert 0 < int(mirrored.sum()) < len(x)  # with 16 images both outcomes occur for this seed


def test_flipping_twice_is_identity():
    x = _batch()
    assert torch.equal(x.flip(3).flip(3), x)
    flipped = augment.flip(x, torch.Generator().manual_seed(3))
    mirrored = (flipped == x.flip(3)).flatten(1).all(1)
    restored = torch.where(mirrored[:, None, None, None], flipped.flip(3), flipped)
    assert torch.equal(restored, x)


def test_crop_stays_inside_the_padding():
    """Every crop of an image padded by p equals the padded image at some offset in [0, 2p] x [0, 2p]."""
    p = 4
    x = _batch(8)
    out = augment.random_crop(x, p, torch.Generator().manual_seed(2))
    assert out.shape == x.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(x, (p,) * 4)
    for i in range(len(x)):
        offsets = [(dy, dx) for dy in range(2 * p + 1) for dx in range(2 * p + 1)
                   if torch.equal(padded[i, :, dy:dy + 32, dx:dx + 32], out[i])]
        assert offsets, f"image {i} is not a crop of its padded self"


def test_crop_offsets_cover_the_range():
    """Offsets are drawn over the whole [-p, p] range: a one-pixel image shows each shift."""
    p = 2
    x = torch.zeros(400, 1, 5, 5, dtype=torch.uint8)
    x[:, :, 2, 2] = 255
    out = augment.random_crop(x, p, torch.Generator().manual_seed(0))
    rows, cols = (out[:, 0] == 255).nonzero()[:, 1], (out[:, 0] == 255).nonzero()[:, 2]
    assert set(rows.tolist()) == set(range(5)) and set(cols.tolist()) == set(range(5))


def test_zero_padding_is_no_crop():
    x = _batch(4)
    assert torch.equal(augment.random_crop(x, 0, torch.Generator()), x)


def test_same_generator_seed_same_augmentation():
    x = _batch()

    class Cfg:
        padding, flip = 4, True

    a = augment.augment(x, Cfg, torch.Generator().manual_seed(5))
    b = augment.augment(x, Cfg, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
