"""Batch norm folded into the conv/linear before it (runner.nets.fold) and the inference export of a run
(runner.engine.inference): the folded network computes what the unfolded one does, on every model; a norm that
does not directly follow a conv/linear is left alone; a run with export.enabled leaves a model that loads without
runner and gives the run's outputs, and a latency table."""

import json
import subprocess
import sys

import pytest
import torch
from torch import nn

from conftest import choices_of, compose_config
from runner.config import ConfigError
from runner.engine import inference, train
from runner.nets import layers, models
from runner.nets.fold import batch_norms, fold_batch_norm, max_abs_difference

BN, BN_AFTER = layers.BatchNorm(), layers.BatchNorm(position="after")
MODELS = {  # name: (network, batch norms that directly follow a conv/linear)
    "cnn": (lambda: models.CNN([8, 16], 1, num_classes=10, act=nn.ReLU, norm=BN), 2),
    "cnn_maxout": (lambda: models.CNN([8, 16], 1, num_classes=10, act=layers.Maxout, norm=BN), 2),
    "mlp": (lambda: models.MLP(2, 32, num_classes=10, act=nn.GELU, norm=BN), 2),
    "resnet": (lambda: models.ResNet([8, 16], 1, num_classes=10, act=nn.ReLU, norm=BN), 6),
    "airbench": (lambda: models.AirBench([8, 16], 8, 2, 1 / 9, num_classes=10, act=nn.GELU, norm=BN), 2),
    "cnn_norm_after_act": (lambda: models.CNN([8, 16], 1, num_classes=10, act=nn.ReLU, norm=BN_AFTER), 0),
}


def _trained_looking(make) -> nn.Module:
    """A network whose batch norms hold non-trivial running statistics and affine parameters, in eval mode."""
    torch.manual_seed(0)
    net = make()
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            nn.init.uniform_(m.weight, 0.5, 2.0)
            nn.init.uniform_(m.bias, -0.5, 0.5)
            m.momentum = 0.5
    with torch.no_grad():
        net.train()
        for _ in range(3):
            net(2 * torch.randn(32, 3, 32, 32) + 0.5)
    return net.eval()


@pytest.mark.parametrize("name", MODELS)
def test_folding_keeps_every_models_outputs_and_removes_the_norms_after_a_conv_or_linear(name):
    make, foldable = MODELS[name]
    net = _trained_looking(make)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    folded, count = fold_batch_norm(net)
    assert count == foldable
    assert batch_norms(folded) == batch_norms(net) - foldable
    x = [torch.randn(16, 3, 32, 32) for _ in range(2)]
    diff, scale = max_abs_difference(net, folded, x)
    assert scale > 0.01  # a net that outputs ~0 would pass any tolerance
    assert diff <= 1e-5 * scale
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # the original is left as it was


def test_a_fold_that_changes_the_function_is_detected():
    net = _trained_looking(MODELS["cnn"][0])
    folded, _ = fold_batch_norm(net)
    with torch.no_grad():
        next(m for m in folded.modules() if isinstance(m, nn.Conv2d)).bias.add_(1e-3)
    diff, scale = max_abs_difference(net, folded, [torch.randn(16, 3, 32, 32)])
    assert diff > inference.RTOL * max(1.0, scale)


def test_latency_gives_median_and_spread_of_each_variant_and_batch_size():
    net = _trained_looking(MODELS["mlp"][0])
    folded, _ = fold_batch_norm(net)
    table = inference.latency_table({"unfolded": net, "folded": folded}, torch.randn(3, 3, 32, 32), [1, 5], 4)
    for variant in ("unfolded", "folded"):
        assert set(table[variant]) == {1, 5}
        for row in table[variant].values():
            assert row["median_ms"] >= row["min_ms"] > 0 and row["iqr_ms"] >= 0


def test_export_of_an_autoencoder_is_refused_in_one_line():
    with pytest.raises(ConfigError, match="export.enabled=true exports a classifier"):
        compose_config(["export.enabled=true", "objective=autoencoder"])


@pytest.mark.parametrize("override, message", [
    ("export.latency_batch_sizes=[]", r"must be a list of positive batch sizes"),
    ("export.latency_repeats=1", r"export.latency_repeats=1 is invalid: must be an integer >= 2"),
])
def test_bad_export_settings_are_one_line_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        compose_config([override])


@pytest.mark.slow  # a run and torch.export: about 10 s of CPU
def test_an_exported_run_loads_without_runner_and_gives_the_runs_outputs(tmp_path):
    overrides = ["model.widths=[8,16]", "data.train_examples=700", "data.test_examples=100", "trainer.epochs=1",
                 "diagnostics.every_steps=0", "export.enabled=true", "export.latency_batch_sizes=[1,7]",
                 "export.latency_repeats=3"]
    metrics = train.fit(compose_config(overrides), tmp_path, choices_of(overrides))
    record = json.loads((tmp_path / inference.LATENCY_FILE).read_text())
    assert record == metrics["export"]
    assert record["batch_norms_folded"] == 2 and record["fold_outputs_equal"]
    assert metrics["test_acc_folded"] == metrics["test_acc"]
    assert set(record["latency_ms"]) == {"unfolded", "folded"}
    assert set(record["latency_ms"]["folded"]) == {"1", "7"}
    # A fresh interpreter that never imports runner: uint8 images in, the logits the run's model gives out.
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    torch.save(images, tmp_path / "images.pt")
    script = ("import sys, torch; m = torch.export.load(sys.argv[1]).module(); "
              "torch.save(m(torch.load(sys.argv[2])), sys.argv[3]); assert 'runner' not in sys.modules")
    subprocess.run([sys.executable, "-c", script, str(tmp_path / inference.EXPORT_FILE), str(tmp_path / "images.pt"),
                    str(tmp_path / "logits.pt")], check=True, cwd=tmp_path)
    cfg = compose_config(overrides)
    from runner.data import checkpoint
    from runner.engine.build import build_model, build_preprocess

    state = checkpoint.load(tmp_path / train.LAST)
    net = build_model(cfg, 10)
    net.load_state_dict(state["model"])
    pre = build_preprocess(cfg, images)
    pre.load_state_dict(state["preprocess"])
    with torch.no_grad():
        expected = net.eval()(pre(images))
    assert torch.allclose(torch.load(tmp_path / "logits.pt"), expected, atol=1e-4)
