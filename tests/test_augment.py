"""Batch augmentation invariants: shapes, dtype, flips, crops inside the padding, jitter, cutout, scale; every
option file composed, built and applied, its steps in their fixed order; the TensorBoard grid, which shows the
alternating flip."""

import pytest
import torch

from conftest import compose_config
from runner.config import CONFIG_DIR, ConfigError, validate
from runner.data import augment
from runner.engine.build import build_augmentation


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


AUGMENTATIONS = sorted(p.stem for p in (CONFIG_DIR / "augmentation").glob("*.yaml"))


@pytest.mark.parametrize("name", AUGMENTATIONS)
def test_every_option_composes_validates_and_keeps_shape_dtype_and_seeded_determinism(name):
    cfg = compose_config([f"augmentation={name}"])
    validate(cfg)
    augmentation = build_augmentation(cfg)
    x = _batch()
    a = augmentation(x, torch.Generator().manual_seed(5))
    b = augmentation(x, torch.Generator().manual_seed(5))
    assert a.shape == x.shape and a.dtype == torch.uint8
    assert torch.equal(a, b)
    assert torch.equal(a, x) == (name == "none")
    assert torch.equal(augmentation.epoch_view(x, 1), x) == (name != "alternating_flip")


def test_the_per_batch_steps_draw_in_their_fixed_order():
    """resized crop, padded crop, flip, jitter, cutout, one generator: the random stream training has always used."""
    x = _batch()
    # every step at once: no option has them all (an option takes only its own file's keys), so built directly
    steps = augment.Augmentation(seed=0, padding=4, pad_mode="zeros", flip=True, cutout_pixels=8, min_area_fraction=0.5,
                                 aspect_ratio=[0.8, 1.25], brightness=0.2, contrast=0.2, saturation=0.2)
    g = torch.Generator().manual_seed(7)
    expected = augment.random_resized_crop(x, 0.5, [0.8, 1.25], g)
    expected = augment.flip(augment.random_crop(expected, 4, g), g)
    expected = augment.cutout(augment.color_jitter(expected, 0.2, 0.2, 0.2, g), 8, g)
    assert torch.equal(steps(x, torch.Generator().manual_seed(7)), expected)


def test_jitter_of_strength_zero_is_identity_and_brightness_scales_each_image():
    x = _batch()
    g = torch.Generator().manual_seed(0)
    assert torch.equal(augment.color_jitter(x, 0.0, 0.0, 0.0, g), x)
    dark = torch.full((64, 3, 8, 8), 100, dtype=torch.uint8)  # stays below 255 for factors up to 1.5
    out = augment.color_jitter(dark, 0.5, 0.0, 0.0, g).float()
    per_image = out.flatten(1)
    assert torch.all(per_image.max(1).values == per_image.min(1).values)  # one factor per image
    factors = per_image[:, 0] / 100
    assert factors.min() >= 0.5 - 0.01 and factors.max() <= 1.5 + 0.01 and factors.std() > 0.2


def test_saturation_zero_strength_keeps_gray_images_gray_and_contrast_keeps_the_mean():
    gray = torch.randint(0, 256, (16, 1, 8, 8), dtype=torch.uint8).expand(16, 3, 8, 8).contiguous()
    out = augment.color_jitter(gray, 0.0, 0.0, 0.9, torch.Generator().manual_seed(1))
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 1], out[:, 2])  # no color to saturate
    mid = torch.full((16, 3, 8, 8), 128, dtype=torch.uint8)
    mid[:, :, :4] = 118
    mid[:, :, 4:] = 138
    out = augment.color_jitter(mid, 0.0, 0.5, 0.0, torch.Generator().manual_seed(2)).float()
    assert torch.allclose(out.mean(dim=(1, 2, 3)), torch.full((16,), 128.0), atol=0.6)


def test_cutout_fills_one_square_of_at_most_size_and_leaves_the_rest():
    size = 8
    x = torch.zeros(500, 3, 32, 32, dtype=torch.uint8)
    out = augment.cutout(x, size, torch.Generator().manual_seed(0))
    filled = out[:, 0] == augment.CUTOUT_FILL  # (B, H, W)
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 1], out[:, 2])
    assert bool(((out == 0) | (out == augment.CUTOUT_FILL)).all())
    for mask in filled[:50]:
        rows, cols = mask.any(1).nonzero().flatten(), mask.any(0).nonzero().flatten()
        assert 1 <= len(rows) <= size and 1 <= len(cols) <= size
        assert int(mask.sum()) == len(rows) * len(cols)  # a (clipped) rectangle, filled entirely
    full = filled.flatten(1).sum(1) == size * size
    assert 0.4 < full.float().mean() < 0.8  # centers anywhere: squares near the border are clipped


def test_scale_with_full_area_and_square_ratio_is_identity():
    x = _batch()
    assert torch.equal(augment.random_resized_crop(x, 1.0, [1.0, 1.0], torch.Generator()), x)


def test_scale_crops_zoom_in_keep_orientation_and_constant_images_constant():
    ramp = torch.arange(32, dtype=torch.uint8).mul(8).expand(64, 3, 32, 32).contiguous()  # brighter to the right
    out = augment.random_resized_crop(ramp, 0.3, [0.75, 1.3333], torch.Generator().manual_seed(0)).float()
    steps = out[:, 0, 16].diff(dim=1)
    assert bool((steps >= 0).all())  # no flip, no rotation
    assert steps.mean() < 8.0  # zoomed in: a gentler ramp than the original 8 per pixel
    flat = torch.full((8, 3, 32, 32), 77, dtype=torch.uint8)
    assert torch.equal(augment.random_resized_crop(flat, 0.3, [0.5, 2.0], torch.Generator()), flat)


@pytest.mark.slow  # over 2 s on 2 idle cores: `make test-all` and CI run it
def test_augmented_grid_shows_originals_then_copies():
    x = _batch(4)
    grid = augment.augmented_grid(x, build_augmentation(compose_config(["augmentation=cutout"])), seed=0, copies=3)
    assert grid.shape == (3, 4 * 34 + 2, 4 * 34 + 2)  # 4 rows (original + 3 copies) of 4 images, 2-pixel gaps
    assert torch.equal(grid[:, 2:34, 2:34], x[0])


@pytest.mark.parametrize("overrides, key", [
    (["augmentation=crop_flip", "augmentation.padding=-1"], "augmentation.padding"),
    (["augmentation=cutout", "augmentation.cutout_pixels=40"], "augmentation.cutout_pixels"),
    (["augmentation=crop_flip_jitter", "augmentation.brightness=2"], "augmentation.brightness"),
    (["augmentation=scale", "augmentation.min_area_fraction=0"], "augmentation.min_area_fraction"),
    (["augmentation=scale", "augmentation.aspect_ratio=[2,1]"], "augmentation.aspect_ratio"),
])
def test_bad_augmentation_settings_are_refused_at_start_up(overrides, key):
    with pytest.raises(ConfigError, match=key):
        validate(compose_config(overrides, checked=False))


def test_alternating_flip_mirrors_each_image_in_every_other_epoch():
    x = torch.randint(0, 256, (200, 3, 4, 4), dtype=torch.uint8)
    e0, e1, e2 = (augment.alternating_flip(x, epoch, seed=3) for epoch in range(3))
    flipped0 = (e0 != x).flatten(1).any(1)
    assert torch.equal(e0, e2)  # the same pattern every two epochs
    assert torch.equal(e1, torch.where(flipped0[:, None, None, None], x, x.flip(3)))  # the other half in epoch 1
    assert 60 < int(flipped0.sum()) < 140
    cfg = compose_config(["augmentation=alternating_flip"])
    augmentation = build_augmentation(cfg)
    for epoch in range(3):
        assert torch.equal(augmentation.epoch_view(x, epoch), augment.alternating_flip(x, epoch, seed=cfg.seed))
    unpadded = build_augmentation(compose_config(["augmentation=alternating_flip", "augmentation.padding=0"]))
    assert torch.equal(unpadded(x, torch.Generator().manual_seed(0)), x)  # per batch: only the translation


def _rows(grid: torch.Tensor, images: int, rows: int) -> torch.Tensor:
    """The (rows, images, 3, 32, 32) tiles of a make_grid picture with 2-pixel gaps."""
    return torch.stack([torch.stack([grid[:, 2 + 34 * r:34 + 34 * r, 2 + 34 * i:34 + 34 * i] for i in range(images)])
                        for r in range(rows)])


def test_augmentation_grid_shows_the_alternating_flip_of_epochs_0_and_1():
    x = _batch(16)
    augmentation = build_augmentation(compose_config(["augmentation=alternating_flip", "augmentation.padding=0"]))
    original, epoch0, epoch1 = _rows(augment.augmented_grid(x, augmentation, seed=0, copies=2), 16, 3)
    assert torch.equal(original, x)
    mirrored = x.flip(3)
    flipped0 = torch.tensor([torch.equal(a, m) for a, m in zip(epoch0, mirrored, strict=True)])
    assert 0 < int(flipped0.sum()) < 16  # some of the 16 shown mirrored in epoch 0 ...
    assert torch.equal(epoch1, torch.where(flipped0[:, None, None, None], x, mirrored))  # ... the others in epoch 1


def test_reflect_padding_mirrors_the_edge_like_torch_reflect_pad_on_floats():
    x = _batch(3)
    for p in (1, 2, 4):
        expected = torch.nn.functional.pad(x.float(), (p,) * 4, mode="reflect").to(torch.uint8)
        assert torch.equal(augment.pad(x, p, "reflect"), expected)
    assert torch.equal(augment.pad(x, 2, "zeros")[:, :, :2], torch.zeros(3, 3, 2, 36, dtype=torch.uint8))


def test_reflect_crop_stays_inside_the_reflect_padded_image_and_has_no_black_frame():
    p = 2
    x = torch.randint(1, 256, (8, 3, 32, 32), dtype=torch.uint8)  # no zero pixel anywhere
    out = augment.random_crop(x, p, torch.Generator().manual_seed(2), pad_mode="reflect")
    assert (out > 0).all()  # a zero border would show as black pixels
    padded = augment.pad(x, p, "reflect")
    for i in range(len(x)):
        assert any(torch.equal(padded[i, :, dy:dy + 32, dx:dx + 32], out[i])
                   for dy in range(2 * p + 1) for dx in range(2 * p + 1))
    cfg = compose_config(["augmentation=alternating_flip"])
    assert cfg.augmentation.pad_mode == "reflect"
    assert (build_augmentation(cfg)(x, torch.Generator().manual_seed(0)) > 0).all()


def test_a_bad_pad_mode_is_refused_at_start_up():
    with pytest.raises(ConfigError, match="augmentation.pad_mode"):
        validate(compose_config(["augmentation.pad_mode=wrap"], checked=False))
    with pytest.raises(ConfigError, match="evaluation.tta_pad_mode"):
        validate(compose_config(["evaluation.tta_pad_mode=edge"], checked=False))
