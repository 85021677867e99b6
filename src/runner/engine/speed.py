"""GPU speed options (`trainer.precision`, `trainer.channels_last`, `trainer.compile`, `trainer.fused_optimizer`):
each `auto` is on for CUDA and off elsewhere (on a CPU, bf16 autocast and compilation make training slower), and an
option the device cannot do is skipped with a warning. Also the epoch timer, which uses CUDA events on CUDA."""

import contextlib
import logging
import time
from dataclasses import dataclass

import torch
from torch import nn

log = logging.getLogger("runner")


def _on(value, device: torch.device) -> bool:
    return device.type == "cuda" if value == "auto" else bool(value)


def use_fused(value, device: torch.device) -> bool:
    return _on(value, device)


def compile_supported() -> bool:
    """Whether torch.compile can run in this interpreter (TorchDynamo has platform and Python-version limits)."""
    try:
        return bool(torch._dynamo.is_dynamo_supported())
    except Exception:  # noqa: BLE001 -- any failure to ask means: not supported here
        return False


def resolve_precision(value: str, device: torch.device) -> str:
    """fp32, bf16 or fp16. auto: bf16 on CUDA devices that support it, fp16 (with a gradient scaler) on older ones,
    fp32 elsewhere. An explicit bf16 on a CUDA device without it falls back to fp16."""
    if value == "auto":
        if device.type != "cuda":
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if value == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        log.warning("trainer.precision=bf16: %s has no bf16 support; using fp16 with a gradient scaler", device)
        return "fp16"
    return value


@dataclass
class Speed:
    """The resolved speed options of one run, and the three places of the training step they touch."""

    device: torch.device
    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False
    scaler: "torch.amp.GradScaler | None" = None

    def autocast(self):
        """Mixed precision for the forward pass and the loss (torch.autocast), or nothing for fp32."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def unscale(self, optimizer) -> None:
        """Before gradient clipping: fp16 gradients carry the scaler's factor until unscaled."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer) -> None:
        """The optimizer step; with fp16, the scaler's (which skips steps with inf/nan gradients: a host-device
        sync per step that bf16 does not need)."""
        if self.scaler is None:
            optimizer.step()
        else:
            self.scaler.step(optimizer)
            self.scaler.update()


def setup(trainer, device: torch.device) -> Speed:
    """Resolve trainer.precision, channels_last and compile for `device`."""
    precision = resolve_precision(trainer.precision, device)
    compile_ = _on(trainer.compile, device)
    if compile_ and not compile_supported():
        log.warning("trainer.compile: torch.compile is not supported in this Python/platform; training uncompiled")
        compile_ = False
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    speed = Speed(device, precision, _on(trainer.channels_last, device), compile_, scaler)
    log.info("speed: precision %s, channels_last %s, compile %s", speed.precision, speed.channels_last,
             speed.compile)
    return speed


def prepare(model: nn.Module, speed: Speed) -> nn.Module:
    """The model in the memory layout of `speed` (in place)."""
    return model.to(memory_format=torch.channels_last) if speed.channels_last else model


def compiled(net: nn.Module, speed: Speed) -> nn.Module:
    """`net` compiled by torch.compile when speed.compile; the original module stays reachable as net._orig_mod
    (diagnostic steps run it, since their hooks would force recompilation)."""
    return torch.compile(net) if speed.compile else net


class StepClock:
    """The seconds of each training step, read with the log window's losses and without a sync of its own: CUDA
    events recorded after each step on a GPU (the host runs ahead of it, so its clock would time the launches), the
    wall clock elsewhere."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.marks: list = []

    def _mark(self):
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def start(self) -> None:
        """Before an epoch's first step."""
        self.marks = [self._mark()]

    def lap(self) -> None:
        """After each step."""
        self.marks.append(self._mark())

    def read(self) -> list[float]:
        """Seconds of each step since the last read. Call it after a read back from the device (the window's
        losses), which has waited for these steps."""
        marks, self.marks = self.marks, self.marks[-1:]
        if self.cuda:
            return [a.elapsed_time(b) / 1000.0 for a, b in zip(marks, marks[1:], strict=False)]
        return [b - a for a, b in zip(marks, marks[1:], strict=False)]


class EpochTimer:
    """Seconds of one epoch: CUDA events around the work queued on the GPU (the host runs ahead of it), a wall
    clock elsewhere. `seconds()` waits for the device, so call it once, at the end of the epoch."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        if self.cuda:
            self._start, self._end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def start(self) -> None:
        if self.cuda:
            self._start.record()
        self._wall = time.perf_counter()

    def seconds(self) -> float:
        if not self.cuda:
            return time.perf_counter() - self._wall
        self._end.record()
        self._end.synchronize()
        return self._start.elapsed_time(self._end) / 1000.0
