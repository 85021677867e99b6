"""Preprocessing: every option fits on the training split only and applies unchanged elsewhere; each one does what
its formula says (centered, standardized, mean image removed, PCA a rank-k projection, ZCA white); a fitted
preprocessor rebuilds from its checkpoint state."""

import pytest
import torch

from conftest import choices_of, compose_config
from runner.config import CONFIG_DIR, ConfigError, validate
from runner.data import preprocess
from runner.engine import build, train
from runner.engine.build import option

OPTIONS = sorted(p.stem for p in (CONFIG_DIR / "preprocess").glob("*.yaml"))


def _images(n=3000, seed=0, shift=0):
    """Small correlated uint8 images (3 x 4 x 4, D = 48): a smooth per-image field plus noise, so PCA and ZCA
    have real structure and fit in milliseconds."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, 3, 2, 2, generator=g)
    smooth = torch.nn.functional.interpolate(base, size=(4, 4), mode="bilinear", align_corners=False)
    x = 120 + shift + 40 * smooth + 8 * torch.randn(n, 3, 4, 4, generator=g)
    return x.clamp(0, 255).round().to(torch.uint8)


def _cfg(name, **extra):
    cfg = compose_config([f"preprocess={name}"]).preprocess
    cfg.update(extra)
    return cfg


def _fit(cfg, train_x):
    """The option's preprocessor fitted on train_x, as the run builds it."""
    return option(cfg, train_x)


@pytest.mark.parametrize("name", OPTIONS)
def test_every_option_composes_fits_and_rebuilds_from_its_state(name):
    validate(compose_config([f"preprocess={name}"], checked=False))
    x = _images()
    fitted = _fit(_cfg(name, components=10) if name == "pca" else _cfg(name), x)
    out = fitted(x[:8])
    assert out.shape == (8, 3, 4, 4) and out.dtype == torch.float32
    rebuilt = preprocess.Preprocess(**fitted.state_dict())
    assert torch.equal(rebuilt(x[:8]), out)


def test_none_only_rescales_and_center_and_standardize_follow_their_formulas():
    x = _images()
    flat = x.float().permute(1, 0, 2, 3).reshape(3, -1) / 255
    assert torch.allclose(_fit(_cfg("none"), x)(x), x.float() / 255)
    centered = _fit(_cfg("center"), x)(x).permute(1, 0, 2, 3).reshape(3, -1)
    assert torch.allclose(centered.mean(1), torch.zeros(3), atol=1e-5)
    assert torch.allclose(centered.std(1), flat.std(1), rtol=1e-4)  # centered only, not scaled
    standardized = _fit(_cfg("standardize"), x)(x).permute(1, 0, 2, 3).reshape(3, -1)
    assert torch.allclose(standardized.mean(1), torch.zeros(3), atol=1e-5)
    assert torch.allclose(standardized.std(1), torch.ones(3), rtol=1e-3)


def test_pixel_mean_removes_the_mean_image():
    x = _images()
    z = _fit(_cfg("pixel_mean"), x)(x)
    assert torch.allclose(z.mean(0), torch.zeros(3, 4, 4), atol=1e-5)


def test_pca_is_the_projection_onto_the_top_k_components():
    x, k = _images(), 6
    fitted = _fit(_cfg("pca", components=k), x)
    p = fitted.matrix
    assert torch.allclose(p @ p, p, atol=1e-4) and torch.allclose(p, p.T, atol=1e-6)  # an orthogonal projection
    assert torch.linalg.matrix_rank(p, atol=1e-3) == k
    z = fitted(x).flatten(1)
    centered = (x.double() / 255 - x.double().mean(0) / 255).flatten(1)
    # the retained variance is the sum of the top-k eigenvalues of the covariance
    top = torch.linalg.eigvalsh(centered.T @ centered / len(x)).flip(0)[:k].sum()
    assert z.double().pow(2).sum(1).mean() == pytest.approx(top.item(), rel=1e-3)


def test_zca_whitens_the_training_data():
    x = _images()
    z = _fit(_cfg("zca", epsilon=1e-6), x)(x).flatten(1).double()
    cov = (z - z.mean(0)).T @ (z - z.mean(0)) / len(z)
    assert torch.allclose(cov, torch.eye(48, dtype=torch.float64), atol=2e-2)
    loose = _fit(_cfg("zca", epsilon=1.0), x)(x).flatten(1).double()
    assert loose.var(0).max() < 0.5  # a large epsilon damps every direction instead of whitening


@pytest.mark.parametrize("name", OPTIONS)
def test_statistics_come_from_the_training_split_only(name):
    """Fitted on a training split that is 60 levels darker than the others, the statistics are the training
    split's: the other split is not centered by them."""
    train_x, other = _images(seed=1, shift=-60), _images(seed=2, shift=0)
    cfg = _cfg(name, components=10) if name == "pca" else _cfg(name)
    fitted = _fit(cfg, train_x)
    if name != "none":
        assert fitted(train_x).mean().abs() < 1e-3
        assert fitted(other).mean() > 0.1 if name != "pca" else fitted(other).abs().mean() > 0.01


def test_the_run_fits_on_its_training_split_only(tmp_path, monkeypatch):
    seen = {}
    real = build.build_preprocess

    def spy(cfg, train_x):
        seen["x"] = train_x
        return real(cfg, train_x)

    monkeypatch.setattr(build, "build_preprocess", spy)
    overrides = ["model.widths=[8]", "trainer.epochs=1", "data.train_examples=500", "data.test_examples=50",
                 "diagnostics.every_steps=0"]
    train.fit(compose_config(overrides), tmp_path, choices_of(overrides))
    assert len(seen["x"]) == 300  # 500 minus the 200 held out for validation; the test split never reaches it


@pytest.mark.parametrize("overrides, key", [
    (["preprocess=pca", "preprocess.components=0"], "preprocess.components"),
    (["preprocess=pca", "preprocess.components=4000"], "preprocess.components"),
    (["preprocess=zca", "preprocess.epsilon=0"], "preprocess.epsilon"),
])
def test_bad_preprocess_settings_are_refused_at_start_up(overrides, key):
    with pytest.raises(ConfigError, match=key):
        validate(compose_config(overrides, checked=False))
