"""What a run records, declared in one place: every TensorBoard tag (`<...>` stands for a layer, parameter group
or component name) and every key of metrics.json, each with what it means, and where in the run directory each tag
is written (CURVES). The tracker refuses a tag that is not declared here and `finish` a metrics key, so this table
stays the truth; `read_scalars` reads a tag back from wherever it was written."""

import re
from pathlib import Path

TAGS = {
    "train/loss": "training loss of each optimizer step (the mean over its batch; read back from the device every "
                  "trainer.log_every_steps steps, all the window's steps at once)",
    "train/acc": "training accuracy of each step (augmented images, the model in training mode)",
    "train/grad_norm": "mean global gradient norm before clipping over the window (regularization=grad_clip)",
    "lr/<group>": "the learning rate each optimizer step used, per parameter group (decay, no_decay, norm_bias, "
                  "reused_*)",
    "val/loss": "validation loss after each epoch (cross-entropy; the autoencoder's reconstruction MSE)",
    "val/acc": "validation accuracy after each epoch",
    "val/loss_ema": "validation loss of the weight average (averaging=ema or lookahead)",
    "val/acc_ema": "validation accuracy of the weight average",
    "val/best_acc": "the best validation accuracy of the run (HPARAMS)",
    "perf/img_per_s": "training images per second of each step (CUDA events on a GPU)",
    "perf/epoch_s": "seconds of the epoch's training (CUDA events on a GPU)",
    "weights/zero_fraction": "fraction of conv/linear weights that are exactly 0 (L1's proximal step makes them)",
    "weights/near_zero_fraction": "fraction of conv/linear weights below 1e-3 in magnitude",
    "model/params": "parameters of the model",
    "model/flops_per_image": "FLOPs of one forward pass on one image",
    "model/trainable_params": "parameters that train in this epoch (transfer=)",
    "test/acc": "test accuracy of the final model",
    "test/loss": "test loss (classification: the NLL; autoencoder: reconstruction MSE)",
    "test/ece": "expected calibration error on the test split",
    "test/acc_ema": "test accuracy of the weight average",
    "test/acc_tta": "test accuracy with test-time augmentation (evaluation.tta_flip, tta_translate)",
    "test/mc_<score>": "MC dropout's acc, nll and ece (evaluation.mc_dropout_passes)",
    "test/acc_snapshot_<k>": "test accuracy of the k-th snapshot (schedule.snapshot_ensemble)",
    "test/acc_snapshot_ensemble": "test accuracy of the snapshots' averaged softmax",
    "norm/reestimate_<measure>": "norm.reestimate_batches: <split>_<score>[_ema]_before / _after the batch norm "
                               "statistics were recomputed; batches, images, layers[_ema]",
    "test/acc_folded": "test accuracy of the network with its batch norms folded (export.enabled)",
    "prune/target": "the sparsity the pruning masks were made for (prune=magnitude)",
    "prune/sparsity": "the fraction of the prunable conv/linear weights that are exactly 0",
    "prune/sparsity/<layer>": "that fraction in each conv/linear layer",
    "inference/fold_max_abs_diff": "the largest |difference| between the folded and unfolded network's test "
                                   "outputs (export.enabled)",
    "inference/latency_ms/<variant>/<batch>": "median ms of one forward pass of the unfolded or folded network at "
                                              "batch_<n> (export.enabled; latency.json has the IQR)",
    "sharpness/<measure>": "sharpness of the final model on training images: loss_increase (mean) and "
                           "loss_increase_max under random relative weight perturbations, hessian_top (evaluation.)",
    "diag/<measure>/<layer>": "diagnostics per layer: act_mean, act_std, dead_frac, saturated_frac, grad_norm, "
                              "update_ratio; dropout_mean_ratio per dropout layer (mean output in training / "
                              "mean input, what evaluation passes on)",
    "diag/<measure>": "diagnostics of the whole net: initial_loss, loss_batch_stats, loss_running_stats, "
                      "bn_train_eval_gap; act_std_by_layer (a figure: std over depth at step 0)",
    "diag/activations/<layer>": "histogram of each activation layer's output (diagnostics.histograms)",
    "inputs/<what>": "figures at step 0: augmentation (16 training images, then what three epochs train on) and "
                     "preprocess (what the network sees)",
    "schedule/lr_plan": "a figure at step 0: the lr the schedule plans for every step",
    "reconstruction/original_then_reconstructed": "test images above their reconstructions (objective=autoencoder)",
}

# Where a tag is written, Keras's way (tf.keras.callbacks.TensorBoard writes <logdir>/train and
# <logdir>/validation): the learning curves of the training pass, the validation pass and the weight average's
# validation are runs of their own, subdirectories of the run directory, each writing the same tags, so that one
# chart shows train and validation in two colours. TensorBoard orders tag groups by name, and `curves` sorts before
# every other group a run writes (tests/test_view.py checks it): the curves are what a user sees first. Every other
# tag is written into the run directory itself, under its own name.
CURVES = {
    "train/loss": ("train", "curves/loss"),
    "train/acc": ("train", "curves/acc"),
    "val/loss": ("validation", "curves/loss"),
    "val/acc": ("validation", "curves/acc"),
    "val/loss_ema": ("validation_ema", "curves/loss"),
    "val/acc_ema": ("validation_ema", "curves/acc"),
}
for _tag, (_run, _name) in CURVES.items():
    TAGS[_tag] += f" (in TensorBoard: {_name} of the run {_run}/)"

METRICS = {
    "status": "completed, diverged, interrupted, pruned or failed (an unexpected error, named in message)",
    "objective": "classify or autoencoder",
    "message": "why the run ended as it did, when not completed (and what to do)",
    "signal": "SIGINT or SIGTERM, for an interrupted run",
    "epochs_completed": "epochs trained",
    "steps": "optimizer steps taken",
    "best_val_acc": "the best validation accuracy (null without a val split or accuracy)",
    "best_epoch": "its epoch",
    "wall_time_s": "seconds of the run, over every resumed process",
    "first_step_at": "the time (seconds since the epoch) this process finished its first training step",
    "startup_s": "seconds from the start of this job (a sweep's trial: its own start, not the process's) to its "
                 "first finished training step",
    "startup": "startup_s in parts: setup_s (config checks, the run directory, imports on a process's first job), "
               "data_s (loading the splits), build_s (preprocessing, model, optimizer, components), first_step_s "
               "(recording the run, TensorBoard, the step-0 pictures and diagnostics, the first step)",
    "test_deferred": "true in a sweep's trial whose test pass was left to the end of the sweep "
                     "(hydra.sweeper.test_trials=best|none)",
    "test_checkpoint": "the checkpoint a sweep tested once all its trials had run (its best trials' last.pt)",
    "history": "one entry per epoch: train/val loss (and acc), lr, epoch_s, img_per_s, images, *_ema, val_s (seconds "
               "of the validation pass)",
    "resumes": "one entry per resume: the epoch and step it continued from, the checkpoint, the changes of the "
               "config (trainer.epochs, trainer.resume_allow's) and the optimizer's state: kept, or fresh (another "
               "optimizer starts afresh)",
    "images_seen": "training images over all epochs, an unfinished one's (interrupted, diverged) included",
    "world_size": "processes of a data-parallel run",
    "precision": "fp32, bf16 or fp16",
    "final_<key>": "the last history entry's values",
    "test_<score>": "test scores, as the test/ tags with _ for /",
    "early_stopping": "early stopping's best value, epoch and whether it stopped",
    "prune": "prune=magnitude: sparsity asked, target and reached (overall, per_layer), val_acc_before_prune and "
             "val_acc_after_prune (one-shot), the model's dense_bytes, gzip_bytes, sparse_bytes and sparse_file",
    "export": "export.enabled: batch norms folded, fold_max_abs_diff, fold_outputs_equal, test_acc_folded, "
              "export_file, latency_ms (as latency.json)",
    "inference_<measure>": "the inference/ tags with _ for /",
    "sharpness_<measure>": "the sharpness/ tags with _ for /",
    "bn_reestimate": "norm.reestimate_batches: val/test scores before and after the batch norm statistics were "
                     "recomputed (as the norm/reestimate_ tags)",
    "model_params": "parameters of the model (as model/params)",
    "model_flops_per_image": "FLOPs of one forward pass on one image (as model/flops_per_image)",
}


def _pattern(names) -> re.Pattern:
    """One regex for the declared names, each `<...>` standing for one path segment."""
    return re.compile("(?:" + "|".join(re.sub(r"<\w+>", r"[^/]+", re.escape(n)) for n in names) + ")$")


_TAG = _pattern(TAGS)
_METRIC = _pattern(METRICS)
_known_tags: set[str] = set()


def declare(entries: dict[str, str]) -> None:
    """Declare further tags (names with a /) and metrics.json keys (the others), each with what it means: those of a
    component from outside this table (runner.engine.hooks.Component.declares)."""
    global _TAG, _METRIC
    if not entries:
        return
    TAGS.update({k: v for k, v in entries.items() if "/" in k})
    METRICS.update({k: v for k, v in entries.items() if "/" not in k})
    _TAG, _METRIC = _pattern(TAGS), _pattern(METRICS)


def check_tag(tag: str) -> None:
    """Raise for a TensorBoard tag that TAGS does not declare (checked once per tag)."""
    if tag not in _known_tags:
        if not _TAG.match(tag):
            raise KeyError(f"TensorBoard tag {tag!r} is not declared in runner.engine.records.TAGS")
        _known_tags.add(tag)


def where(tag: str) -> tuple[str, str]:
    """(subdirectory of the run directory, TensorBoard tag) that `tag` is written to; "" is the run directory."""
    return CURVES.get(tag, ("", tag))


def read_scalars(run_dir, tag: str) -> list[tuple[int, float]]:
    """(step, value) of every value a run wrote under `tag` (a name of TAGS, e.g. train/loss), in step order, from
    the directory where `tag` is written: all its event files in order, as TensorBoard reads them (a resumed run's
    purge of what its killed predecessor wrote past the checkpoint included). Empty when the run wrote none."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    subdir, name = where(tag)
    folder = Path(run_dir) / subdir
    if not folder.is_dir():
        return []
    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    events.Reload()
    if name not in events.Tags()["scalars"]:
        return []
    return sorted((e.step, e.value) for e in events.Scalars(name))


def check_metrics(metrics: dict) -> None:
    """Raise for a metrics.json key that METRICS does not declare."""
    unknown = [k for k in metrics if not _METRIC.match(k)]
    if unknown:
        raise KeyError(f"metrics.json keys {unknown} are not declared in runner.engine.records.METRICS")
