"""Transfer learning (the lecture: "most people don't train from scratch"): reuse the weights of a trained network
(`model.pretrained=`), replace its output layer, and train it as `transfer=` says: a linear probe (everything frozen
but the new head), fine-tuning with a lower lr for the reused layers, frozen up to a layer, or unfrozen gradually.

Weights are read through runner.data.checkpoint.load (weights_only: tensors and containers, never arbitrary pickled
objects; a damaged or hostile file is refused in one line), matched to the model by name and shape, and what was
loaded, skipped and newly initialized is reported (log, pretrained.json in the run directory, TensorBoard text).
torchvision's pretrained weights (`model.pretrained=torchvision:<Weights>`) are downloaded where there is network
and read from torch's hub cache or a local file where there is not.
"""

import logging
import pickle
import types
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from runner.config import CheckpointError, ConfigError
from runner.data import checkpoint

log = logging.getLogger("runner")

TORCHVISION_PREFIX = "torchvision:"
# Wrappers whose prefix a state dict may carry: DistributedDataParallel ("module.") and torch.compile ("_orig_mod.").
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


# ---------------------------------------------------------------------------------------------------------------
# The layers of a model, in forward order: what freezing counts

def units(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The model's layers in forward order, as freeze_until and gradual unfreezing count them: each child of a
    top-level nn.Sequential (a CNN's `features.3`, a ResNet's `blocks.5`, torchvision's `layer2.1`), else the
    top-level child itself (`stem`, `head`); layers without parameters (pooling) are left out. The last is the
    output layer, which transfer replaces."""
    out = []
    for name, child in model.named_children():
        parts = list(child.named_children()) if isinstance(child, nn.Sequential) else [("", child)]
        for sub, module in parts:
            if any(True for _ in module.parameters()):
                out.append((f"{name}.{sub}" if sub else name, module))
    return out


def output_layer(model: nn.Module) -> str:
    """The name of the output layer (runner's models: `head`; torchvision's: `fc`)."""
    return units(model)[-1][0]


def cut_at(model: nn.Module, layer: str | int, num_classes: int, image_shape=(3, 32, 32)) -> str:
    """transfer=linear_probe transfer.layer=<layer>: a linear classifier on the features of an inner layer (the
    lecture's transfer grid: with little data and a different task, "train a linear classifier from different
    stages"). `model` is changed in place: the layers after `layer` (a name units() gives, the head excepted, or its
    index in that list) are left out, the first of them replaced by a global average pool when the layer's output
    is a feature map, and the output layer by a new Linear over the layer's channels (or features). Relies on the
    model's children being registered in forward order, as in runner's models and torchvision's ResNets. Returns
    the layer's name."""
    names = [n for n, _ in units(model)[:-1]]
    if isinstance(layer, int) and not isinstance(layer, bool) and -len(names) <= layer < len(names):
        name = names[layer]
    elif layer in names:
        name = layer
    else:
        raise ConfigError(f"transfer.layer={layer!r} is not a layer of this model (the output layer excepted): "
                          f"allowed: {', '.join(names)}, or an index 0..{len(names) - 1} (negative from the end). "
                          "Change it with `transfer.layer=<layer>`.")
    p = next(model.parameters())
    shape = []
    hook = model.get_submodule(name).register_forward_hook(lambda m, i, out: shape.append(tuple(out.shape)))
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, *image_shape, device=p.device, dtype=p.dtype))
    model.train(was_training)
    hook.remove()
    spatial, features = len(shape[0]) == 4, shape[0][1]  # (1, C, H, W) or (1, F)

    slots = []  # (parent, child name), in forward order, at the depth units() counts
    for top, child in model.named_children():
        if isinstance(child, nn.Sequential):
            slots += [(child, sub, f"{top}.{sub}") for sub, _ in child.named_children()]
        else:
            slots.append((model, top, top))
    head = output_layer(model)
    at = next(i for i, (_, _, full) in enumerate(slots) if full == name)
    after = [s for s in slots[at + 1:] if s[2] != head]
    if spatial and not after:
        raise ConfigError(f"transfer.layer={layer!r}: nothing follows {name} that could pool its feature maps; choose "
                          f"an earlier layer ({', '.join(names[:-1])}).")
    for i, (parent, child, _) in enumerate(after):
        setattr(parent, child, nn.AdaptiveAvgPool2d(1) if i == 0 and spatial else nn.Identity())
    parent_name, _, child = head.rpartition(".")
    setattr(model.get_submodule(parent_name), child, nn.Linear(features, num_classes).to(p.device))
    log.info("transfer.layer=%s: a linear probe on the output of %s (%d %s), %d later layers left out", layer, name,
             features, "channels, average-pooled" if spatial else "features", len(after))
    return name


# ---------------------------------------------------------------------------------------------------------------
# Reading weights safely

def read_state_dict(source: str) -> dict[str, torch.Tensor]:
    """The weights `model.pretrained=<source>` names: a runner run directory (its checkpoints/last.pt), a runner
    checkpoint (its "model" entry), or a plain state dict (torchvision's .pth files are plain state dicts)."""
    path = Path(source)
    if path.is_dir():
        path = path / "checkpoints" / "last.pt"
    if not path.is_file():
        raise ConfigError(f"model.pretrained={source!r}: no such file (give a runner run directory, a checkpoint "
                          "file or a state dict file).")
    obj = checkpoint.load(path, map_location="cpu", remedy=f"model.pretrained={source!r} needs a runner run "
                          "directory, a runner checkpoint or a state dict file (name -> tensor).")
    state = obj.get("model", obj) if isinstance(obj, dict) else obj
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"model.pretrained={source!r}: {path} is neither a state dict (name -> tensor) nor a "
                          "runner checkpoint holding one under 'model'.")
    return {_strip_wrappers(k): v for k, v in state.items()}


def _strip_wrappers(key: str) -> str:
    for prefix in _WRAPPER_PREFIXES:
        while key.startswith(prefix):
            key = key[len(prefix):]
    return key


def torchvision_state_dict(name: str) -> dict[str, torch.Tensor]:
    """The weights `torchvision:<name>` names (e.g. ResNet18_Weights.IMAGENET1K_V1): from torch's hub cache
    (~/.cache/torch/hub/checkpoints) when there, downloaded (hash checked) when not, loaded with weights_only.

    A file already in the cache is never handed to torch.hub, which would load it unchecked (its hash is checked on
    download only, and its loader has no bound on time): runner checks its hash, then reads it through
    runner.data.checkpoint.load, bounded in time and memory."""
    from torchvision.models import get_weight

    try:
        weights = get_weight(name)
    except (ValueError, KeyError, AttributeError) as err:
        raise ConfigError(f"model.pretrained={TORCHVISION_PREFIX}{name}: not a torchvision weights name ({err}); "
                          "e.g. torchvision:ResNet18_Weights.IMAGENET1K_V1") from None
    file = weights.url.rsplit("/", 1)[-1]
    cached = Path(torch.hub.get_dir()) / "checkpoints" / file
    if cached.is_file():
        return _cached_state_dict(cached)
    try:
        return torch.hub.load_state_dict_from_url(weights.url, map_location="cpu", progress=False, check_hash=True,
                                                  weights_only=True)
    except (OSError, RuntimeError, pickle.UnpicklingError) as err:  # no network (URLError is an OSError), a bad hash
        raise ConfigError(
            f"model.pretrained={TORCHVISION_PREFIX}{name}: cannot download {weights.url} ({err}). Offline, copy "
            f"{file} into {Path(torch.hub.get_dir()) / 'checkpoints'} or give its path: model.pretrained=/path/{file}"
        ) from None


def _cached_state_dict(cached: Path) -> dict[str, torch.Tensor]:
    """A state dict from torch's hub cache, refused in one line unless its SHA-256 starts with the prefix its name
    carries (torchvision's files are named <model>-<8 hex digits>.pth) and it holds name -> tensor only."""
    import hashlib

    remedy = f"delete {cached} to download it again"
    prefix = torch.hub.HASH_REGEX.search(cached.name)
    if prefix:
        digest = hashlib.sha256()
        with open(cached, "rb") as f:
            for block in iter(lambda: f.read(2**20), b""):
                digest.update(block)
        if not digest.hexdigest().startswith(prefix.group(1)):
            raise CheckpointError(f"{cached} is not the file torchvision publishes (its SHA-256 does not start with "
                                  f"{prefix.group(1)}, as its name says): damaged or replaced; {remedy}.")
    state = checkpoint.load(cached, map_location="cpu", remedy=remedy)
    if not (isinstance(state, dict) and state and all(isinstance(v, torch.Tensor) for v in state.values())):
        raise CheckpointError(f"{cached} is not a state dict (name -> tensor), as torchvision's weights are; {remedy}.")
    return state


# ---------------------------------------------------------------------------------------------------------------
# Matching by name and shape

@dataclass
class LoadReport:
    """What loading did: loaded (model keys filled from the weights), skipped (weights keys -> why not used),
    new (model keys left as initialized by init=)."""

    source: str
    loaded: list[str]
    skipped: dict[str, str]
    new: list[str]

    def as_dict(self) -> dict:
        return {"source": self.source, "loaded": self.loaded, "skipped": self.skipped, "new": self.new}

    def summary(self) -> str:
        lines = [f"model.pretrained={self.source}: loaded {len(self.loaded)} tensors, skipped {len(self.skipped)}, "
                 f"{len(self.new)} newly initialized"]
        lines += [f"  skipped {k}: {why}" for k, why in self.skipped.items()]
        lines += [f"  newly initialized {k}" for k in self.new]
        return "\n".join(lines)


def load_matching(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> LoadReport:
    """Copy every tensor of `state` whose name and shape match the model's into it, except the output layer's,
    which transfer always replaces (a new task has new classes). A layer loads whole or not at all: where one of its
    tensors does not fit, its others (a batch norm's step counter) are skipped too. BN running statistics load with
    their layers."""
    head = output_layer(model) + "."
    own = model.state_dict()
    loaded, skipped = {}, {}
    for key, value in state.items():
        if key.startswith(head):
            skipped[key] = "the output layer is replaced by a new one"
        elif key not in own:
            skipped[key] = "no layer of that name in this model"
        elif value.shape != own[key].shape:
            skipped[key] = f"shape {tuple(value.shape)} does not fit this model's {tuple(own[key].shape)}"
        else:
            loaded[key] = value
    misfits = {k.rsplit(".", 1)[0] for k, why in skipped.items() if why.startswith("shape")}
    for key in [k for k in loaded if k.rsplit(".", 1)[0] in misfits]:
        del loaded[key]
        skipped[key] = "another tensor of its layer does not fit this model"
    model.load_state_dict(loaded, strict=False)
    return LoadReport(source, list(loaded), skipped, [k for k in own if k not in loaded])


def load_pretrained(model: nn.Module, source: str) -> LoadReport:
    """Load the weights `model.pretrained=<source>` names into `model` (see read_state_dict, torchvision_state_dict)."""
    if source.startswith(TORCHVISION_PREFIX):
        state = torchvision_state_dict(source[len(TORCHVISION_PREFIX):])
    else:
        state = read_state_dict(source)
    report = load_matching(model, state, source)
    if not report.loaded:
        raise ConfigError(f"model.pretrained={source!r}: no tensor matches this model by name and shape; the weights "
                          f"come from another architecture (first keys: {', '.join(list(state)[:3])}). Use the same "
                          "model= (and its sizes) as the pretraining run.")
    return report


# ---------------------------------------------------------------------------------------------------------------
# The lr multiplier of the reused layers

def lr_groups(model: nn.Module, groups: list[dict], reused: set[str], lr_mult: float, lr: float) -> list[dict]:
    """Split each parameter group into its new parameters (at the group's lr, default `lr`) and its reused ones, at
    lr_mult times that, named `<group>_reused` (the lecture: fine-tune reused layers with a smaller lr, e.g. 0.1x).
    The new groups come first, so the logged `lr` (group 0) is the head's. Schedules scale every group's lr alike."""
    reused_ids = {id(p) for n, p in model.named_parameters() if n in reused}
    new, old = [], []
    for group in groups:
        fresh = [p for p in group["params"] if id(p) not in reused_ids]
        kept = [p for p in group["params"] if id(p) in reused_ids]
        if fresh:
            new.append({**group, "params": fresh})
        if kept:
            old.append({**group, "params": kept, "lr": group.get("lr", lr) * lr_mult,
                        "name": f"{group.get('name', 'params')}_reused"})
    return new + old


# ---------------------------------------------------------------------------------------------------------------
# Freezing

def _stay_in_eval(self, mode: bool = True):
    return nn.Module.train(self, False)


def _hold_eval(module: nn.Module, hold: bool) -> None:
    """A frozen batch-norm layer stays in eval mode whatever calls model.train(): it normalizes with the running
    statistics it was trained with, and does not update them from the new data (train() is overridden on the
    instance, so it also holds inside the EMA's deep copy)."""
    if hold:
        module.train = types.MethodType(_stay_in_eval, module)
        module.train(False)
    elif "train" in module.__dict__:
        del module.train


class Freezer:
    """Which layers train, epoch by epoch, as `transfer=` says (units() counts the layers; the last is the head);
    one class per option (its `_target_`), this one transfer=finetune: all layers train (the reused ones at
    transfer.lr_mult times the lr, see lr_groups).
    Frozen parameters keep requires_grad=False (no gradient, so no update and no weight decay); frozen batch-norm
    layers stay in eval mode. Parameters the model itself keeps fixed (a whitening stem with
    init.first_layer_trainable=false, norm scales with norm.learn_scale=false) stay fixed in every layer."""

    name = "finetune"

    def __init__(self, model: nn.Module):
        self.model = model
        self.fixed = {id(p) for p in model.parameters() if not p.requires_grad}
        self.units = units(model)
        self.trainable_units = None

    def count(self, epoch: int) -> int:
        """How many layers, from the top, train in `epoch` (0-based)."""
        return len(self.units)

    def set_epoch(self, epoch: int, tracker=None, step: int = 0) -> int:
        """Freeze and unfreeze for `epoch`; log and record (model/trainable_params) when it changes. Returns the
        number of trainable parameters."""
        k = self.count(epoch)
        if k != self.trainable_units:
            self.trainable_units = k
            first = len(self.units) - k
            for i, (_, module) in enumerate(self.units):
                frozen = i < first
                for p in module.parameters():
                    p.requires_grad_(not frozen and id(p) not in self.fixed)
                for m in module.modules():
                    if isinstance(m, nn.modules.batchnorm._BatchNorm):
                        _hold_eval(m, frozen)
            trainable = self.trainable()
            total = sum(p.numel() for p in self.model.parameters())
            log.info("transfer=%s, epoch %d: training %d of %d layers (from %s): %s of %s parameters trainable",
                     self.name, epoch + 1, k, len(self.units), self.units[first][0], f"{trainable:,}", f"{total:,}")
            if tracker is not None:
                tracker.scalar("model/trainable_params", trainable, step)
        return self.trainable()

    def trainable(self) -> int:
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)


class LinearProbe(Freezer):
    """The head only (with transfer.layer, the new head on that layer's features: cut_at)."""

    name = "linear_probe"

    def count(self, epoch: int) -> int:
        return 1


class FreezeUntil(Freezer):
    """The layers after `freeze_until` (a name units() gives)."""

    name = "freeze_until"

    def __init__(self, model: nn.Module, freeze_until: str):
        super().__init__(model)
        names = [n for n, _ in self.units]
        if freeze_until not in names[:-1]:
            raise ConfigError(f"transfer.freeze_until={freeze_until!r} is not a layer of this model (the head "
                              f"excepted); allowed: {', '.join(names[:-1])}. Change it with "
                              "`transfer.freeze_until=<layer>`.")
        self.first_trained = names.index(freeze_until) + 1

    def count(self, epoch: int) -> int:
        return len(self.units) - self.first_trained


class GradualUnfreeze(Freezer):
    """The head, then one more layer from the top every unfreeze_every_epochs epochs (Howard & Ruder 2018, ULMFiT)."""

    name = "gradual_unfreeze"

    def __init__(self, model: nn.Module, unfreeze_every_epochs: int):
        super().__init__(model)
        self.unfreeze_every_epochs = unfreeze_every_epochs

    def count(self, epoch: int) -> int:
        return min(len(self.units), 1 + epoch // self.unfreeze_every_epochs)


def none(model: nn.Module) -> None:
    """transfer=none: no freezer; every parameter's requires_grad stays as the model set it (e.g. a frozen
    whitening stem, init.first_layer_trainable)."""
    return None
