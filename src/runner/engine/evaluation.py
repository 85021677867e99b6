"""Evaluation beyond one deterministic pass: class probabilities with test-time augmentation, MC dropout, the
average of several models' probabilities (snapshot and run ensembles), and the scores that compare them:
accuracy, negative log-likelihood and expected calibration error."""

import copy

import torch
from torch import nn

from runner.config import ConfigError
from runner.config.regularizers import MC_DROPOUT_KINDS, REGULARIZERS, chosen
from runner.data.augment import translate
from runner.nets.layers import enable_dropout


def tta_views(x: torch.Tensor, tta_flip: bool = False, tta_translate: int = 0,
              pad_mode: str = "zeros") -> list[torch.Tensor]:
    """The views test-time augmentation averages over, of a uint8 batch: the image, with tta_flip its mirror image,
    and with tta_translate = t each of these also shifted by (t, t) and (-t, -t) pixels (the border filled as
    augment.pad does in pad_mode)."""
    flips = [x, x.flip(3)] if tta_flip else [x]
    shifts = [(0, 0)] + ([(tta_translate, tta_translate), (-tta_translate, -tta_translate)] if tta_translate else [])
    return [translate(v, dy, dx, pad_mode) if dy or dx else v for v in flips for dy, dx in shifts]


def tta_weights(tta_flip: bool = False, tta_translate: int = 0, translate_weight: float | None = None) -> list[float]:
    """The weight of each view of tta_views, summing to 1: equal (translate_weight null), or the translated views
    together translate_weight and the untranslated ones the rest (airbench94: 0.5, i.e. the image and its mirror
    count twice as much as each shifted view)."""
    flips = 2 if tta_flip else 1
    if not tta_translate or translate_weight is None:
        views = flips * (3 if tta_translate else 1)
        return [1 / views] * views
    return [w / flips for _ in range(flips) for w in (1 - translate_weight, translate_weight / 2, translate_weight / 2)]


@torch.inference_mode()
def probabilities(model: nn.Module, preprocess: nn.Module, x: torch.Tensor, batch_size: int,
                  tta_flip: bool = False, tta_translate: int = 0, pad_mode: str = "zeros",
                  average: str = "probs", translate_weight: float | None = None) -> torch.Tensor:
    """Softmax outputs (N, classes) of `model` in eval mode over the uint8 images `x`; with tta_flip and/or
    tta_translate, test-time augmentation over the views of tta_views, weighted by tta_weights: the weighted mean
    of the views' softmax (average="probs"), or the softmax of the weighted mean of their logits ("logits", as
    airbench94 combines them)."""
    was_training = model.training
    model.eval()
    weights = tta_weights(tta_flip, tta_translate, translate_weight)
    out = []
    for xb in x.split(batch_size):
        views = tta_views(xb, tta_flip, tta_translate, pad_mode)
        if average == "logits":
            out.append(sum(w * model(preprocess(v)).float() for w, v in zip(weights, views, strict=True)).softmax(1))
        else:
            out.append(sum(w * model(preprocess(v)).float().softmax(1) for w, v in zip(weights, views, strict=True)))
    model.train(was_training)
    return torch.cat(out)


@torch.inference_mode()
def mc_dropout_probabilities(model: nn.Module, preprocess: nn.Module, x: torch.Tensor, batch_size: int,
                             passes: int, seed: int) -> torch.Tensor:
    """MC dropout (Gal & Ghahramani 2016): the mean softmax over `passes` forward passes with only the dropout-type
    modules in training mode (batch norm keeps its running statistics). Seeded in a forked RNG: reproducible, and
    the run's own random streams are left as they were."""
    was_training = model.training
    model.eval()
    if enable_dropout(model) == 0:
        model.train(was_training)
        raise ConfigError(f"evaluation.mc_dropout_passes={passes}: the model has no dropout-type module to switch on "
                          f"(its dropout rates are 0 where it has layers): add one of "
                          f"{', '.join(chosen(REGULARIZERS, *MC_DROPOUT_KINDS))}, e.g. "
                          "`regularization=[l2,dropout]`, or set evaluation.mc_dropout_passes=0.")
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        out = []
        for xb in x.split(batch_size):
            z = preprocess(xb)
            out.append(sum(model(z).float().softmax(1) for _ in range(passes)) / passes)
    model.train(was_training)
    return torch.cat(out)


def scores(probs: torch.Tensor, y: torch.Tensor, bins: int = 15) -> dict[str, float]:
    """acc; nll, the mean -log p(true class); ece (Naeini et al. 2015, Guo et al. 2017), the |accuracy - mean
    confidence| of `bins` equal-width confidence bins, weighted by the fraction of examples in each."""
    confidence, predicted = probs.max(1)
    correct = (predicted == y).float()
    nll = -probs.gather(1, y[:, None]).clamp_min(1e-12).log().mean()
    which = (confidence * bins).long().clamp_(max=bins - 1)  # bin b holds confidences in [b/bins, (b+1)/bins)
    acc = torch.zeros(bins, device=probs.device).index_add_(0, which, correct)
    conf = torch.zeros(bins, device=probs.device).index_add_(0, which, confidence)
    ece = (acc - conf).abs().sum() / len(y)  # sum_b |B_b|/N * |acc_b - conf_b|, with acc, conf summed over B_b
    return {"acc": int(correct.sum().item()) / len(y), "nll": nll.item(), "ece": ece.item()}


def ensemble(probabilities_of_members: list[torch.Tensor]) -> torch.Tensor:
    """The ensemble's prediction: the mean of its members' class probabilities."""
    return torch.stack(probabilities_of_members).mean(0)


def final_scores(model: nn.Module, preprocess: nn.Module, x: torch.Tensor, y: torch.Tensor, evaluation,
                 batch_size: int, seed: int, ema=None, snapshots: list[dict] = (),
                 probs: torch.Tensor | None = None) -> dict[str, float]:
    """The test scores beyond test/acc and test/loss (which is the NLL), keyed by TensorBoard tag: test/ece of the
    model; test/acc_ema of an averaging.EMA; test/acc_tta with evaluation.tta_flip / tta_translate; test/mc_acc, test/mc_nll,
    test/mc_ece with evaluation.mc_dropout_passes; test/acc_snapshot_<k> of each snapshot state dict (loaded into a
    copy of `model`) and, from two on, test/acc_snapshot_ensemble of their mean softmax. probs: the model's
    test probabilities when the caller has them already (saves a pass)."""
    bins = evaluation.ece_bins
    if probs is None:
        probs = probabilities(model, preprocess, x, batch_size)
    out = {"test/ece": scores(probs, y, bins)["ece"]}
    if ema is not None:
        out["test/acc_ema"] = scores(probabilities(ema.model, preprocess, x, batch_size), y, bins)["acc"]
    if evaluation.tta_flip or evaluation.tta_translate:
        tta = probabilities(model, preprocess, x, batch_size, evaluation.tta_flip, evaluation.tta_translate,
                            evaluation.tta_pad_mode, evaluation.tta_average, evaluation.tta_translate_weight)
        out["test/acc_tta"] = scores(tta, y, bins)["acc"]
    if evaluation.mc_dropout_passes > 0:
        mc = mc_dropout_probabilities(model, preprocess, x, batch_size, evaluation.mc_dropout_passes, seed)
        out.update({f"test/mc_{k}": v for k, v in scores(mc, y, bins).items()})
    if snapshots:
        member = copy.deepcopy(model)
        members = []
        for k, state in enumerate(snapshots, 1):
            member.load_state_dict(state)
            members.append(probabilities(member, preprocess, x, batch_size))
            out[f"test/acc_snapshot_{k}"] = scores(members[-1], y, bins)["acc"]
        if len(members) > 1:
            out["test/acc_snapshot_ensemble"] = scores(ensemble(members), y, bins)["acc"]
    return out
