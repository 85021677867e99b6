"""Techniques, part B: fractional max-pooling (model.pool), Uout and the dropout placement, batch-norm re-estimation
after training (norm.reestimate_batches), the linear probe on an inner layer (transfer.layer), and the architecture
search with its Pareto report."""

import json

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from conftest import choices_of, compose_config
from runner.commands import report
from runner.config import CONFIG_DIR, ConfigError
from runner.config.rules import pooled_sides
from runner.engine.build import build_model, build_optimizer
from runner.nets import layers, transfer
from runner.sweeps.study import METRICS, write_table

SMALL = ["model.widths=[4,8]", "trainer.batch_size=50"]
FEW = ["data.train_examples=300", "data.test_examples=100", "data.val_size=100"]  # whole runs in a second or two


# ---------------------------------------------------------------------------------------------------------------
# model.pool: max, avg, fractional

def features_side(model, x):
    return model.features(x).shape[-1]


def test_fractional_pooling_shrinks_by_the_ratio_and_is_random_only_in_training():
    torch.manual_seed(0)
    model = build_model(compose_config(["model.widths=[4,4,4,4]", "model.pool=fractional",
                                        "model.pool_ratio=0.7071"]), 10)
    pools = [m for m in model.modules() if isinstance(m, layers.FractionalMaxPool)]
    assert len(pools) == 4
    x = torch.randn(6, 3, 32, 32)
    assert pooled_sides(32, 4, "fractional", 0.7071) == [32, 22, 15, 10, 7]
    assert features_side(model, x) == 7  # torch's own output size, int(side * ratio) per stage
    model.train()
    assert not torch.equal(model.features(x), model.features(x))  # regions drawn anew
    model.eval()
    assert torch.equal(model.features(x), model.features(x))  # fixed in evaluation


def test_max_and_avg_pooling_halve_each_side():
    x = torch.randn(2, 3, 32, 32)
    for pool, kind in (("max", nn.MaxPool2d), ("avg", nn.AvgPool2d)):
        model = build_model(compose_config([*SMALL, f"model.pool={pool}"]), 10)
        assert sum(isinstance(m, kind) for m in model.modules()) == 2
        assert features_side(model, x) == 8


def test_vgg_sizes_its_classifier_for_fractional_pooling():
    model = build_model(compose_config(["model=vgg", "model.stages=[[4],[4],[4],[4],[4]]", "model.fc_widths=[8]",
                                        "model.pool=fractional", "model.pool_ratio=0.75"]), 10)
    assert pooled_sides(32, 5, "fractional", 0.75) == [32, 24, 18, 13, 9, 6]
    assert model.classifier[0].linear.in_features == 4 * 6 * 6
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("overrides, words", [
    (["model.pool=fractional", "model.pool_ratio=0.5"], "model.pool_ratio=0.5 is invalid: must be a number in (0.5, 1)"),
    (["model.pool=fractional", "model.pool_ratio=1.0"], "model.pool_ratio=1.0 is invalid"),
    (["model.pool=median"], "model.pool='median' is invalid: allowed: max"),
    (["model.pool=fractional", "model.pool_ratio=0.55", "model.widths=[4,4,4,4,4,4,4]"],
     "model.pool=fractional with pool_ratio=0.55 over 7 stages shrinks 32x32 images to nothing (32 -> 17 -> 9 -> 4 "
     "-> 2 -> 1 -> 0 -> 0): raise model.pool_ratio or use fewer stages."),
    (["model.widths=[4,4,4,4,4,4]"], "model.pool=max over 6 stages shrinks 32x32 images to nothing"),
    (["model=resnet", "+model.pool=avg"], "model.pool is not a key of model=resnet (its keys: widths, "
                                          "blocks_per_stage, pretrained); remove it or choose a model that has it "
                                          "(cnn, vgg)."),
])
def test_bad_pooling_is_one_line_at_start_up(overrides, words):
    with pytest.raises(ConfigError) as err:
        compose_config(overrides)
    assert words in str(err.value) and "\n" not in str(err.value)


# ---------------------------------------------------------------------------------------------------------------
# Uout and the placement of dropout-type layers

def test_uout_is_uniform_multiplicative_noise_in_training_and_the_identity_in_eval():
    torch.manual_seed(0)
    uout, x = layers.Uout(0.3), torch.full((200_000,), 2.0)
    noisy = uout(x) / x - 1  # the noise u
    assert noisy.min() >= -0.3 and noisy.max() <= 0.3
    assert abs(noisy.mean().item()) < 3e-3
    assert noisy.var().item() == pytest.approx(0.3 ** 2 / 3, rel=0.02)  # U(-b, b): variance b^2 / 3
    uout.eval()
    assert torch.equal(uout(x), x)


def test_regularization_uout_places_its_beta_like_dropout():
    cfg = compose_config([*SMALL, "regularization=[uout]", "regularization.uout.beta=0.2",
                          "regularization.uout.conv_beta=0.05"])
    model = build_model(cfg, 10)
    betas = {n: m.beta for n, m in model.named_modules() if isinstance(m, layers.Uout)}
    assert betas == {"features.0.drop": 0.05, "features.2.drop": 0.05, "drop": 0.2}
    # MC dropout accepts it as a source of noise (its rate is beta, not p)
    compose_config([*SMALL, "regularization=[uout]", "evaluation.mc_dropout_passes=2"])


def test_after_last_norm_keeps_no_noise_in_front_of_a_norm_layer():
    overrides = [*SMALL, "regularization=[dropout]", "regularization.dropout.conv_p=0.1"]
    every = build_model(compose_config(overrides), 10)
    late = build_model(compose_config([*overrides, "regularization.dropout.placement=after_last_norm"]), 10)
    names = [n for n, m in every.named_modules() if isinstance(m, nn.Dropout)]
    kept = [n for n, m in late.named_modules() if isinstance(m, nn.Dropout)]
    assert names == ["features.0.drop", "features.2.drop", "drop"]
    assert kept == ["features.2.drop", "drop"]  # features.2's dropout follows the last batch norm
    order = [m for _, m in late.named_modules()]
    last_norm = max(i for i, m in enumerate(order) if isinstance(m, nn.BatchNorm2d))
    assert all(i > last_norm for i, m in enumerate(order) if isinstance(m, nn.Dropout))


def test_a_placement_that_is_not_one_is_refused():
    with pytest.raises(ConfigError, match=r"regularization.uout.placement='before' is invalid: allowed: every"):
        compose_config(["regularization=[uout]", "regularization.uout.placement=before"])


# ---------------------------------------------------------------------------------------------------------------
# norm.reestimate_batches

def test_reestimation_is_the_average_over_batches_with_dropout_off():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Dropout(0.5), nn.BatchNorm1d(3, momentum=0.1))
    frozen = nn.Sequential(nn.BatchNorm1d(3))
    transfer._hold_eval(frozen[0], True)  # a frozen layer (transfer=) keeps its statistics
    batches = [torch.randn(64, 3) * 2 + 1 for _ in range(4)]
    net.train()
    net(batches[0])  # statistics of a training step, dropout on
    assert layers.reestimate_batch_norm(net, batches) == 1
    bn = net[1]
    assert torch.allclose(bn.running_mean, torch.stack([b.mean(0) for b in batches]).mean(0), atol=1e-6)
    assert torch.allclose(bn.running_var, torch.stack([b.var(0) for b in batches]).mean(0), atol=1e-5)
    assert bn.momentum == 0.1 and net.training and net[0].training  # momentum and mode as they were
    assert layers.reestimate_batch_norm(frozen, batches) == 0
    assert torch.equal(frozen[0].running_mean, torch.zeros(3))


def test_reestimate_batches_recomputes_after_training_and_logs_before_and_after(tmp_path):
    from runner.engine.train import fit

    overrides = [*SMALL, "trainer.epochs=1", "regularization=[dropout]", "regularization.dropout.conv_p=0.3",
                 "norm.reestimate_batches=3", "averaging=ema", "diagnostics.every_steps=0", *FEW]
    metrics = fit(compose_config(overrides), tmp_path, choices_of(overrides))
    found = metrics["bn_reestimate"]
    assert found["batches"] == 3 and found["images"] == 150 and found["layers"] == 2 and found["layers_ema"] == 2
    for key in ("val_acc", "test_acc", "val_loss", "test_loss", "val_acc_ema", "test_acc_ema"):
        assert f"{key}_before" in found and f"{key}_after" in found
    assert metrics["test_acc"] == pytest.approx(found["test_acc_after"])  # the test ran on the new statistics
    assert metrics["test_acc_ema"] == pytest.approx(found["test_acc_ema_after"])
    assert found["val_loss_before"] != found["val_loss_after"]


def test_reestimation_needs_batch_norm():
    with pytest.raises(ConfigError, match="norm.reestimate_batches=2 recomputes batch norm statistics, but norm=group"):
        compose_config(["norm=group", "+norm.reestimate_batches=2"])


# ---------------------------------------------------------------------------------------------------------------
# transfer=linear_probe transfer.layer=

@pytest.fixture
def source(tmp_path):
    torch.manual_seed(1)
    path = tmp_path / "pretrain" / "checkpoints" / "last.pt"
    path.parent.mkdir(parents=True)
    torch.save({"model": build_model(compose_config(["model.widths=[4,8,16]"]), 10).state_dict(), "epoch": 1}, path)
    return path


def probe_config(source, layer):
    return compose_config(["model.widths=[4,8,16]", f"model.pretrained={source}", "transfer=linear_probe",
                           f"transfer.layer={layer}"])


@pytest.mark.parametrize("layer", ["features.2", 1])
def test_probe_reads_the_pooled_features_of_the_chosen_layer(source, layer):
    from runner.engine.build import build_freezer, build_pretrained, build_probe

    cfg = probe_config(source, layer)
    model = build_model(cfg, 5)
    reused = build_pretrained(cfg, model)
    build_probe(cfg, model, 5)
    state = torch.load(source)["model"]
    assert torch.equal(model.features[2].conv.weight, state["features.2.conv.weight"])  # the pretrained body
    assert isinstance(model.features[3], nn.AdaptiveAvgPool2d) and isinstance(model.features[4], nn.Identity)
    assert (model.head.in_features, model.head.out_features) == (8, 5)  # the layer's 8 channels
    x = torch.randn(3, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        expected = model.head(model.features[:3](x).mean((2, 3)))
        assert torch.allclose(model(x), expected, atol=1e-6)
    optimizer = build_optimizer(cfg, model, reused)
    build_freezer(cfg, model).set_epoch(0)
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["head.weight", "head.bias"]
    assert any(p is model.head.weight for g in optimizer.param_groups for p in g["params"])


def test_an_unknown_probe_layer_lists_the_valid_ones(source):
    cfg = probe_config(source, "features.1")
    with pytest.raises(ConfigError) as err:
        transfer.cut_at(build_model(cfg, 5), "features.1", 5)
    assert str(err.value) == ("transfer.layer='features.1' is not a layer of this model (the output layer excepted): "
                              "allowed: features.0, features.2, features.4, or an index 0..2 (negative from the end). "
                              "Change it with `transfer.layer=<layer>`.")


def test_probe_layer_belongs_to_linear_probe(source):
    with pytest.raises(ConfigError, match=r"transfer.layer is not a key of transfer=finetune \(its keys: lr_mult\); "
                                          r"remove it or choose a transfer that has it \(linear_probe\)"):
        compose_config(["model.widths=[4,8,16]", f"model.pretrained={source}", "transfer=finetune",
                        "+transfer.layer=features.2"])


def test_a_probe_run_trains_the_cut_model(source, tmp_path):
    from runner.engine.train import fit

    overrides = ["model.widths=[4,8,16]", f"model.pretrained={source}", "transfer=linear_probe",
                 "transfer.layer=features.0", "trainer.epochs=1", "diagnostics.every_steps=0", *FEW]
    metrics = fit(compose_config(overrides), tmp_path, choices_of(overrides))
    body = 4 * 3 * 3 * 3 + 4 + 4  # the first conv (no bias before batch norm) and its norm's scale and shift
    assert metrics["status"] == "completed"
    assert metrics["model_params"] == body + 4 * 10 + 10  # the first block and a head on its 4 channels


# ---------------------------------------------------------------------------------------------------------------
# The architecture search and its Pareto report

def test_every_point_of_the_architecture_search_space_is_a_valid_config():
    params = OmegaConf.load(CONFIG_DIR / "sweep" / "architecture.yaml").hydra.sweeper.params
    widths = params["model.widths"].removeprefix("choice(").removesuffix(")").replace("],[", "]|[").split("|")
    assert len(widths) == 9
    for w in widths:  # every stage leaves a feature map, with either pooling
        stages = w.count(",") + 1
        assert pooled_sides(32, stages, "fractional", 0.7071)[-1] >= 1 and pooled_sides(32, stages, "max", 0)[-1] >= 1
    # the corners compose and pass the start-up checks: deepest and widest, shallowest and narrowest
    compose_config([f"model.widths={widths[-1]}", "model.pool=fractional", "model.convs_per_stage=3", "activation=elu"])
    compose_config([f"model.widths={widths[0]}", "model.pool=max", "model.convs_per_stage=1", "activation=silu"])


def sweep_with_sizes(path, trials):
    """A sweep directory whose trials (status, params, flops, best_val_acc) recorded their model size."""
    rows = []
    for number, (status, params, flops, best) in enumerate(trials):
        job_dir = f"{number:03d}"
        (path / job_dir).mkdir(parents=True)
        (path / job_dir / "metrics.json").write_text(json.dumps(
            {"status": status, "history": [], "model_params": params, "model_flops_per_image": flops}))
        rows.append({"trial": number, "status": status, "model.widths": f"[{params}]",
                     **{k: "" for k in METRICS}, "job_dir": job_dir, "message": "",
                     "best_val_acc": best, "test_acc": best, "epochs_completed": 2})
    write_table(path / "trials.csv", rows, ["model.widths"])
    return path


def test_the_pareto_front_is_the_best_accuracy_each_size_buys(tmp_path):
    sweep = sweep_with_sizes(tmp_path, [
        ("completed", 1000, 9e6, 0.50), ("completed", 2000, 5e6, 0.45), ("completed", 3000, 8e6, 0.60),
        ("completed", 4000, 7e6, 0.55), ("pruned", 500, 1e6, 0.70), ("completed", 5000, 4e7, 0.60)])
    rows, space, keys = report.load(sweep)
    report.add_costs(sweep, rows)
    assert [r["trial"] for r in report.pareto_front(rows, "model_params")] == [0, 2]  # 5 ties 2 at more params
    assert [r["trial"] for r in report.pareto_front(rows, "model_flops_per_image")] == [1, 3, 2]
    text = report.render(rows, space, keys)
    table = text.split("Pareto front")[1].splitlines()
    assert [line.split()[0] for line in table[3:7]] == ["0", "1", "2", "3"]  # by parameters
    assert table[5].split()[:6] == ["2", "3,000", "8.0", "0.6000", "0.6000", "params+flops"]
    written = report.plot(sweep, rows, space, keys)
    assert sweep / "report" / "pareto.png" in written and (sweep / "report" / "pareto.png").stat().st_size > 10_000


def test_no_pareto_front_when_every_trial_has_the_same_model(tmp_path):
    sweep = sweep_with_sizes(tmp_path, [("completed", 1000, 9e6, 0.50), ("completed", 1000, 9e6, 0.60)])
    rows, space, keys = report.load(sweep)
    report.add_costs(sweep, rows)
    assert "Pareto" not in report.render(rows, space, keys)
