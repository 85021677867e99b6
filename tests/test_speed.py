"""The GPU speed options: auto switches them on for CUDA only, autocast and compile only where supported, the
fp16 path scales gradients, and the epoch timer measures."""

from unittest import mock

import pytest
import torch
from omegaconf import OmegaConf

from conftest import compose_config
from runner.config import ConfigError, validate
from runner.engine import speed

CPU, CUDA = torch.device("cpu"), torch.device("cuda", 0)


def _trainer(**kw):
    return OmegaConf.create({"precision": "auto", "channels_last": "auto", "compile": "auto", **kw})


def test_auto_is_off_on_cpu():
    s = speed.setup(_trainer(), CPU)
    assert (s.precision, s.channels_last, s.compile, s.scaler) == ("fp32", False, False, None)
    assert not speed.use_fused("auto", CPU)
    with s.autocast():
        assert not torch.is_autocast_enabled("cpu")


@pytest.mark.parametrize("bf16, expected", [(True, "bf16"), (False, "fp16")])
def test_auto_precision_on_cuda_is_bf16_where_supported_else_fp16(bf16, expected):
    with mock.patch("torch.cuda.is_bf16_supported", return_value=bf16):
        assert speed.resolve_precision("auto", CUDA) == expected
        assert speed.resolve_precision("bf16", CUDA) == expected  # explicit bf16 falls back where unsupported
    assert speed.use_fused("auto", CUDA)


def test_compile_switches_on_only_where_supported():
    with mock.patch.object(speed, "compile_supported", return_value=True):
        assert speed.setup(_trainer(compile=True), CPU).compile
        assert not speed.setup(_trainer(), CPU).compile  # auto: off on CPU
    with mock.patch.object(speed, "compile_supported", return_value=False):
        assert not speed.setup(_trainer(compile=True), CPU).compile
    net = torch.nn.Linear(2, 2)
    assert speed.compiled(net, speed.Speed(CPU)) is net


def test_explicit_bf16_autocasts_on_cpu():
    s = speed.setup(_trainer(precision="bf16"), CPU)
    with s.autocast():
        assert torch.nn.Linear(4, 4)(torch.randn(2, 4)).dtype == torch.bfloat16


def test_fp16_scales_the_loss_and_unscales_before_the_step():
    s = speed.setup(_trainer(precision="fp16"), CPU)
    assert s.scaler is not None
    w = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([w], lr=0.1)
    s.backward((w * 2).sum())
    assert torch.allclose(w.grad, torch.full((3,), 2.0 * s.scaler.get_scale()))
    s.step(opt)
    assert torch.allclose(w.detach(), torch.full((3,), 1.0 - 0.1 * 2.0))


def test_channels_last_layout():
    s = speed.Speed(CPU, channels_last=True)
    model = speed.prepare(torch.nn.Conv2d(3, 4, 3), s)
    assert model.weight.is_contiguous(memory_format=torch.channels_last)
    assert s.layout(torch.randn(2, 3, 8, 8)).is_contiguous(memory_format=torch.channels_last)


def test_fused_kernel_is_asked_for_only_where_the_class_has_one():
    from runner.engine.build import make_optimizer

    cfg = OmegaConf.create({"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.1, "momentum": 0.9,
                            "impl": "torch"})
    p = [torch.nn.Parameter(torch.ones(2))]
    assert make_optimizer(cfg, p, fused=True).defaults["fused"] is True
    assert not make_optimizer(cfg, p).defaults.get("fused")
    reference = make_optimizer(OmegaConf.merge(cfg, {"impl": "reference"}), p, fused=True)
    assert type(reference).__module__ == "runner.optimization.reference" and "fused" not in reference.defaults


def test_epoch_timer_measures_wall_time_on_cpu():
    timer = speed.EpochTimer(CPU)
    timer.start()
    assert 0 <= timer.seconds() < 1


@pytest.mark.parametrize("key, value", [("trainer.precision", "fp8"), ("trainer.compile", "yes"),
                                        ("trainer.channels_last", 1), ("trainer.norm_bias_lr_factor", 0)])
def test_bad_speed_values_are_rejected(key, value):
    with pytest.raises(ConfigError, match=key):
        validate(compose_config([f"{key}={value}"], checked=False))
