"""export.enabled=true: after the test, the trained network made ready for low-latency inference (Hands-On ML ch. 11:
few layers, batch norm folded into the previous layer, a fast activation) and what that buys, measured:

- every batch norm that directly follows a conv/linear is folded into it (runner.nets.fold); the folded outputs
  are checked against the unfolded ones on the whole test split (max abs difference, test/acc_folded);
- the folded network, behind the run's preprocessing, is exported with torch.export to <run dir>/model.pt2: uint8
  images (N, 3, 32, 32) in, logits out, any N; loaded without runner by `torch.export.load(path).module()`;
- the latency of one forward pass, unfolded and folded, at each export.latency_batch_sizes (median and
  interquartile range over export.latency_repeats timed calls after warm-up calls, fp32, on the run's device) goes
  to <run dir>/latency.json and TensorBoard.
"""

import logging
import statistics
import time

import torch
from torch import nn

from runner.data import checkpoint
from runner.engine.hooks import Component
from runner.nets.fold import fold_batch_norm, max_abs_difference

log = logging.getLogger("runner")

EXPORT_FILE, LATENCY_FILE = "model.pt2", "latency.json"
# Folded outputs count as equal when they differ by at most this, relative to the largest output (fp32 rounding
# through a few dozen layers stays near 1e-6).
RTOL = 1e-4


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def latency(model: nn.Module, x: torch.Tensor, repeats: int, warmup: int | None = None) -> dict[str, float]:
    """Milliseconds of one forward pass of `model` on the batch `x`: median, interquartile range (q75 - q25), min,
    over `repeats` timed calls after `warmup` untimed ones (default: a fifth of repeats, at least 3); each call is
    synchronized with the device, so a CUDA call is timed to its end."""
    for _ in range(max(3, repeats // 5) if warmup is None else warmup):
        model(x)
    _sync(x.device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(x)
        _sync(x.device)
        times.append(1e3 * (time.perf_counter() - start))
    q25, _, q75 = statistics.quantiles(times, n=4) if len(times) > 1 else (times[0],) * 3
    return {"median_ms": statistics.median(times), "iqr_ms": q75 - q25, "min_ms": min(times)}


def latency_table(models: dict[str, nn.Module], images: torch.Tensor, batch_sizes, repeats: int) -> dict:
    """{variant: {batch size: latency()}} on batches cut from (or tiled out of) the preprocessed `images`; the
    variants alternate per batch size, so that a slower phase of a shared machine hits both."""
    table = {name: {} for name in models}
    for b in batch_sizes:
        x = images.repeat((b + len(images) - 1) // len(images), 1, 1, 1)[:b].contiguous(
            memory_format=torch.channels_last if images.is_contiguous(memory_format=torch.channels_last)
            else torch.contiguous_format)
        for name, model in models.items():
            table[name][b] = latency(model, x, repeats)
    return table


class Export(Component):
    name = "export"  # metrics.json's key for summary(); no state to save

    def __init__(self, batch_sizes: list[int], repeats: int):
        self.batch_sizes, self.repeats = list(batch_sizes), repeats
        self.record: dict = {}

    def test_scores(self, run) -> dict:
        model = run.model
        was_training = model.training
        model.eval()
        try:
            return self._export(run, model)
        finally:
            model.train(was_training)

    def _export(self, run, model: nn.Module) -> dict:
        folded, count = fold_batch_norm(model)
        x, y = run.splits.test_x, run.splits.test_y
        batch = run.cfg.trainer.eval_batch_size

        def batches():
            for xb in x.split(batch):
                yield run.speed.layout(run.preprocess(xb))

        diff, scale = max_abs_difference(model, folded, batches())
        same = diff <= RTOL * max(1.0, scale)
        with torch.inference_mode():
            correct = sum((folded(xb).argmax(1) == yb).sum().item() for xb, yb in zip(batches(), y.split(batch),
                                                                                     strict=True))
        acc = correct / len(y)
        level = logging.INFO if same else logging.WARNING
        log.log(level, "export: %d of %d batch norms folded into the conv/linear before them; outputs %s the "
                "unfolded ones on %d test images (max abs difference %.2e, largest output %.3g); test acc %.4f",
                count, count + sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in folded.modules()),
                "equal" if same else "DIFFER from", len(y), diff, scale, acc)
        exported = folded if same else model  # never ship a fold that changed the function
        path = self._save(run, exported)
        images = run.speed.layout(run.preprocess(x[:max(self.batch_sizes)]))
        table = latency_table({"unfolded": model, "folded": folded}, images, self.batch_sizes, self.repeats)
        self.record = {"device": str(run.device), "precision": "fp32", "batch_norms_folded": count,
                       "fold_max_abs_diff": diff, "fold_outputs_equal": same, "test_acc_folded": acc,
                       "export_file": path, "repeats": self.repeats,
                       "latency_ms": {name: {str(b): v for b, v in rows.items()} for name, rows in table.items()}}
        checkpoint.write_json(self.record, run.run_dir / LATENCY_FILE)
        for b in self.batch_sizes:
            u, f = table["unfolded"][b]["median_ms"], table["folded"][b]["median_ms"]
            log.info("export: latency at batch %d: unfolded %.3f ms (IQR %.3f), folded %.3f ms (IQR %.3f): %.2fx",
                     b, u, table["unfolded"][b]["iqr_ms"], f, table["folded"][b]["iqr_ms"], u / f)
        log.info("export: %s and %s are in %s", path or "(no exported model)", LATENCY_FILE, run.run_dir)
        return {"test/acc_folded": acc, "inference/fold_max_abs_diff": diff,
                **{f"inference/latency_ms/{name}/batch_{b}": v["median_ms"]
                   for name, rows in table.items() for b, v in rows.items()}}

    def _save(self, run, network: nn.Module) -> str | None:
        """torch.export of preprocessing + network (uint8 images in, logits out, any batch size), saved atomically;
        None (and a warning saying why) when the network cannot be exported."""
        whole = nn.Sequential(run.preprocess, network).eval()
        example = run.splits.test_x[:2]
        try:
            program = torch.export.export(whole, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},))
        except Exception as err:  # torch.export refuses some Python in forward(); the run's results stand
            log.warning("export: torch.export could not export the network (%s: %s); no %s written",
                        type(err).__name__, str(err).splitlines()[0][:200], EXPORT_FILE)
            return None
        checkpoint.atomic_write(run.run_dir / EXPORT_FILE, lambda f: torch.export.save(program, f))
        return EXPORT_FILE

    def summary(self) -> dict:
        """metrics.json's `export`: what latency.json holds."""
        return self.record


def load_exported(path) -> nn.Module:
    """The exported model of a run directory's model.pt2, as a module (what a user without runner does)."""
    return torch.export.load(str(path)).module()
