"""Evaluation: ECE and NLL against hand-computed values, test-time flips, MC dropout (only dropout goes
stochastic; seeded; a model without dropout is refused), ensembles average probabilities."""

import math

import pytest
import torch

from conftest import compose_config
from runner.config import ConfigError, validate
from runner.engine import evaluation


def test_scores_match_hand_computed_accuracy_nll_and_ece():
    probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.45, 0.55]])
    y = torch.tensor([0, 1, 1, 0])
    s = evaluation.scores(probs, y, bins=2)
    assert s["acc"] == 0.5
    assert s["nll"] == pytest.approx(-(math.log(0.9) + math.log(0.4) + math.log(0.7) + math.log(0.45)) / 4)
    # bin [0.5, 1): all four, confidences 0.9, 0.6, 0.7, 0.55 (mean 0.6875), accuracy 0.5 -> ECE 0.1875
    assert s["ece"] == pytest.approx(0.1875)
    s10 = evaluation.scores(probs, y, bins=10)  # bins 0.5, 0.6, 0.7, 0.9: |0-0.55| + |0-0.6| + |1-0.7| + |1-0.9|
    assert s10["ece"] == pytest.approx((0.55 + 0.6 + 0.3 + 0.1) / 4)


def _scale(x):
    return x.float() / 255


class _Mirror(torch.nn.Module):
    """Logits that depend on the left half of the image only: a flip changes them."""

    def forward(self, x):
        return torch.stack([x[..., :2].mean((1, 2, 3)), x[..., 2:].mean((1, 2, 3))], 1) * 5


def test_tta_flip_averages_the_image_and_its_mirror():
    x = torch.randint(0, 256, (6, 3, 4, 4), dtype=torch.uint8)
    model = _Mirror()
    plain = evaluation.probabilities(model, _scale, x, 4)
    mirrored = evaluation.probabilities(model, _scale, x.flip(3), 4)
    tta = evaluation.probabilities(model, _scale, x, 4, tta_flip=True)
    assert torch.allclose(tta, 0.5 * (plain + mirrored))
    assert not torch.allclose(tta, plain)


def _dropout_net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.BatchNorm1d(32), torch.nn.ReLU(),
                               torch.nn.Dropout(0.5), torch.nn.Linear(32, 3))


def test_mc_dropout_switches_on_dropout_only_and_is_seeded():
    model = _dropout_net()
    model.train()
    model(torch.randn(64, 8))  # batch norm gets running statistics
    x = torch.randint(0, 256, (16, 8), dtype=torch.uint8)
    pre = _scale
    deterministic = evaluation.probabilities(model, pre, x, 8)
    one = evaluation.mc_dropout_probabilities(model, pre, x, 8, passes=1, seed=0)
    many = evaluation.mc_dropout_probabilities(model, pre, x, 8, passes=200, seed=0)
    again = evaluation.mc_dropout_probabilities(model, pre, x, 8, passes=200, seed=0)
    assert torch.equal(many, again)
    assert not torch.allclose(one, deterministic)
    assert (many - deterministic).abs().mean() < (one - deterministic).abs().mean()  # averaging approaches it
    assert model.training  # its mode is given back
    model.eval()
    bn_eval = model[1](model[0](x.float() / 255))  # batch norm stayed in eval mode during the passes
    assert torch.allclose(bn_eval, model[1](model[0](x.float() / 255)))


def test_mc_dropout_without_dropout_is_refused():
    model = torch.nn.Linear(4, 2)
    with pytest.raises(ConfigError, match="evaluation.mc_dropout_passes"):
        evaluation.mc_dropout_probabilities(model, _scale, torch.zeros(2, 4), 2, passes=3, seed=0)


def test_ensemble_is_the_mean_of_member_probabilities():
    a = torch.tensor([[0.9, 0.1], [0.2, 0.8]])
    b = torch.tensor([[0.3, 0.7], [0.4, 0.6]])
    assert torch.allclose(evaluation.ensemble([a, b]), torch.tensor([[0.6, 0.4], [0.3, 0.7]]))


def test_final_scores_report_each_requested_evaluation():
    model = _dropout_net().eval()
    pre = _scale
    x, y = torch.randint(0, 256, (20, 8), dtype=torch.uint8), torch.randint(0, 3, (20,))
    snapshots = [model.state_dict(), {k: v * 0.5 for k, v in model.state_dict().items()}]
    cfg = compose_config(["evaluation.ece_bins=10", "evaluation.mc_dropout_passes=4",
                          "regularization=[dropout]"]).evaluation
    out = evaluation.final_scores(model, pre, x, y, cfg, 8, seed=0, snapshots=snapshots)
    assert set(out) == {"test/ece", "test/mc_acc", "test/mc_nll", "test/mc_ece", "test/acc_snapshot_1",
                        "test/acc_snapshot_2", "test/acc_snapshot_ensemble"}
    assert out["test/acc_snapshot_1"] == evaluation.scores(evaluation.probabilities(model, pre, x, 8), y)["acc"]


def test_mc_dropout_without_a_dropout_rate_is_refused_at_start_up():
    with pytest.raises(ConfigError, match="evaluation.mc_dropout_passes"):
        validate(compose_config(["evaluation.mc_dropout_passes=5"], checked=False))
    with pytest.raises(ConfigError, match="evaluation.mc_dropout_passes"):
        validate(compose_config(["evaluation.mc_dropout_passes=5", "regularization=[dropout]",
                                 "regularization.dropout.p=0"], checked=False))
    validate(compose_config(["evaluation.mc_dropout_passes=5", "regularization=[dropconnect]"], checked=False))


def test_tta_averages_the_flip_and_translate_views():
    """6 views: the image and its mirror, each unshifted and shifted by (1, 1) and (-1, -1) with a zero border."""
    from runner.data.augment import translate

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 5))
    x = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    shifted = translate(x, 1, 1)
    assert torch.equal(shifted[:, :, 1:, 1:], x[:, :, :-1, :-1]) and (shifted[:, :, 0] == 0).all()
    views = [v for m in (x, x.flip(3)) for v in (m, translate(m, 1, 1), translate(m, -1, -1))]
    expected = sum(model(_scale(v)).softmax(1) for v in views) / 6
    tta = evaluation.probabilities(model, _scale, x, 4, tta_flip=True, tta_translate=1)
    assert torch.allclose(tta, expected, atol=1e-6)
    only_translate = evaluation.probabilities(model, _scale, x, 4, tta_translate=1)
    assert torch.allclose(only_translate, sum(model(_scale(v)).softmax(1) for v in views[:3]) / 3, atol=1e-6)


def test_tta_translated_views_take_the_reflect_border_when_asked():
    from runner.data.augment import pad, translate

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 5))
    x = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    shifted = translate(x, 1, 1, "reflect")
    assert torch.equal(shifted, pad(x, 1, "reflect")[:, :, :8, :8])  # the crop at (0, 0): shifted down-right
    views = [v for m in (x, x.flip(3)) for v in (m, translate(m, 1, 1, "reflect"), translate(m, -1, -1, "reflect"))]
    expected = sum(model(_scale(v)).softmax(1) for v in views) / 6
    tta = evaluation.probabilities(model, _scale, x, 4, tta_flip=True, tta_translate=1, pad_mode="reflect")
    assert torch.allclose(tta, expected, atol=1e-6)
    zeros = evaluation.probabilities(model, _scale, x, 4, tta_flip=True, tta_translate=1)
    assert not torch.allclose(tta, zeros, atol=1e-6)


def test_tta_can_combine_logits_with_airbench_weights():
    """evaluation.tta_average=logits, tta_translate_weight=0.5: airbench94's TTA, the softmax of 0.5 x the mean logits
    of the image and its mirror + 0.5 x the mean logits of the four shifted views; not the same as averaging softmax.
    (airbench mirrors the shifted images, runner shifts the mirror image: its mirrored views are shifted the other way
    along one axis, an equally likely view.)"""
    from runner.data.augment import translate

    assert evaluation.tta_weights(True, 1, 0.5) == [0.25, 0.125, 0.125] * 2
    assert evaluation.tta_weights(True, 1, None) == [1 / 6] * 6
    assert evaluation.tta_weights(True, 0, 0.5) == [0.5, 0.5]  # nothing translated: the weight has nothing to split
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 5))
    x = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    logits = lambda v: model(_scale(v))  # noqa: E731
    shifted = lambda v: 0.5 * (logits(translate(v, 1, 1, "reflect")) + logits(translate(v, -1, -1, "reflect")))  # noqa: E731
    airbench = 0.25 * (logits(x) + logits(x.flip(3))) + 0.25 * (shifted(x) + shifted(x.flip(3)))
    tta = evaluation.probabilities(model, _scale, x, 4, tta_flip=True, tta_translate=1, pad_mode="reflect",
                                   average="logits", translate_weight=0.5)
    assert torch.allclose(tta, airbench.softmax(1), atol=1e-6)
    by_probs = evaluation.probabilities(model, _scale, x, 4, tta_flip=True, tta_translate=1, pad_mode="reflect",
                                        translate_weight=0.5)
    assert not torch.allclose(tta, by_probs, atol=1e-4)
    with pytest.raises(ConfigError, match="evaluation.tta_translate_weight"):
        validate(compose_config(["evaluation.tta_translate_weight=1.5"], checked=False))
