"""What a sweep needs around its trials: the study's metric and storage (a journal torn by a kill is repaired on
open), a trial's per-epoch report to the study (and its pruning), a trial's watch on the sweep process (a killed
sweep leaves no worker behind), the trial statuses, the sweep's table (trials.csv, ranked by the metric) and summary,
its HPARAMS columns in TensorBoard, and the spreading of parallel jobs over several GPUs.

The sweeper itself is the Hydra plugin in src/hydra_plugins/runner_optuna_sweeper. Optuna is imported inside the
functions that need it, so a run that is not a trial never imports it.
"""

import csv
import io
import itertools
import json
import logging
import os
import re
import signal
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from runner.data import checkpoint
from runner.sweeps import pareto

log = logging.getLogger(__name__)

JOURNAL = "optuna.journal"
TABLE = "trials.csv"
SPACE = "search_space.json"  # each searched parameter's range or choices, for runner.report
# The study's attributes holding the test scores of the trials the sweep tested at its end: `tested:<trial number>`,
# one per trial, so that two sweep processes testing together never write over each other's (a study started by an
# older runner holds them all in one `tested` dict).
TESTED = "tested"
TORN = ".torn"  # <journal>.torn: the bytes of records torn by a kill or a full disk, cut from the journal on open

# What metrics.json says at the end of a trial (train.py), or what the sweeper writes there when the job failed.
# `interrupted` is not final: the trial stays running in the study, and the next run of the sweep resumes it.
STATUSES = ("completed", "pruned", "diverged", "failed")
METRICS = ("best_val_acc", "best_epoch", "test_acc", "final_val_acc", "final_val_loss", "final_train_loss",
           "epochs_completed", "wall_time_s", "startup_s")

# What a study can rank its trials by (hydra.sweeper.metric): the numbers of metrics.json
# (runner.engine.records.METRICS) that every completed trial has; final_<key> is the last epoch's history entry.
# Never a test score: a sweep chooses on the validation split.
HISTORY_KEYS = ("val_acc", "val_loss", "train_loss", "train_acc", "val_acc_ema", "val_loss_ema")
# model_params and model_flops_per_image: the size of a trial's model, an objective of a multi-objective search
# (configs/sweep/architecture.yaml: accuracy against size).
RANKABLE = ("best_val_acc", *(f"final_{k}" for k in HISTORY_KEYS), "epochs_completed", "wall_time_s", "startup_s",
            "model_params", "model_flops_per_image")
DIRECTIONS = ("maximize", "minimize")
TEST_TRIALS = ("all", "best", "none")  # hydra.sweeper.test_trials
# The TensorBoard tag each run writes for a rankable metric (its HPARAMS column); the others get sweep/<metric>.
OBJECTIVE_TAGS = {"best_val_acc": "val/best_acc", "model_params": "model/params",
                  "model_flops_per_image": "model/flops_per_image",
                  **{f"final_{k}": k.replace("_", "/", 1) for k in HISTORY_KEYS}}


def names(metric) -> list[str]:
    """hydra.sweeper.metric as a list: one name, or the names of a multi-objective study."""
    return list(metric) if _is_list(metric) else [metric]


def objectives(metric, direction) -> list[tuple[str, str]]:
    """(metric, direction) per objective of hydra.sweeper.metric and direction, each a name or a list of names (a
    multi-objective study); one line (ValueError) when they do not pair up."""
    metrics = list(metric) if _is_list(metric) else [metric]
    directions = list(direction) if _is_list(direction) else [direction]
    shown = _shown(metrics)
    if not metrics or len(set(map(str, metrics))) != len(metrics):
        raise ValueError(f"hydra.sweeper.metric={shown}: name one metric, or several different ones for a "
                         "multi-objective study. Change it with `hydra.sweeper.metric=[best_val_acc,model_params]`.")
    if len(directions) != len(metrics):
        example = ",".join(("maximize", "minimize", "minimize")[:len(metrics)] if len(metrics) <= 3 else metrics)
        raise ValueError(
            f"hydra.sweeper.direction={_shown(directions)} gives {len(directions)} direction(s) for the "
            f"{len(metrics)} objective(s) of hydra.sweeper.metric={shown}: each objective is a number of the trial's "
            "metrics.json, not of the task's return value (as in Hydra's Optuna sweeper plugin), so name one metric "
            "per direction, e.g. `hydra.sweeper.metric=[best_val_acc,model_params] "
            f"hydra.sweeper.direction=[{example}]`.")
    return list(zip(metrics, directions, strict=True))


def _is_list(value) -> bool:
    return isinstance(value, (list, tuple)) or type(value).__name__ == "ListConfig"


def _shown(values: list) -> str:
    return f"[{','.join(map(str, values))}]" if len(values) != 1 else str(values[0])


def check_objective(metric, direction) -> None:
    """One line (ValueError) for a metric a study cannot rank trials by, or a direction that is none."""
    if isinstance(metric, str) and metric.startswith("test_"):
        raise ValueError(f"hydra.sweeper.metric={metric}: a sweep chooses by the validation split, never by the test "
                         "split (the chosen trial's test score would be optimistic): use best_val_acc, final_val_acc "
                         "or final_val_loss. Change it with `hydra.sweeper.metric=<key>`.")
    if metric not in RANKABLE:
        raise ValueError(f"hydra.sweeper.metric={metric!r} is not a number of metrics.json a study can rank trials "
                         f"by: allowed {', '.join(RANKABLE)}. Change it with `hydra.sweeper.metric=<key>`.")
    if direction not in DIRECTIONS:
        raise ValueError(f"hydra.sweeper.direction={direction!r} is invalid: maximize or minimize. Change it with "
                         "`hydra.sweeper.direction=<value>`.")


def check_settings(metric, direction, test_trials, test_best) -> None:
    """One line (ValueError) for a hydra.sweeper.metric, direction (each a name, or a list of them for a
    multi-objective study), test_trials or test_best that cannot be used."""
    for name, way in objectives(metric, direction):
        check_objective(name, way)
    if test_trials not in TEST_TRIALS:
        raise ValueError(f"hydra.sweeper.test_trials={test_trials!r} is invalid: all (each trial tests at its end), "
                         "best (the test_best best trials are tested once the sweep has run) or none. Change it with "
                         "`hydra.sweeper.test_trials=<value>`.")
    if not (isinstance(test_best, int) and not isinstance(test_best, bool) and test_best > 0):
        raise ValueError(f"hydra.sweeper.test_best={test_best!r} is invalid: a positive number of trials. Change it "
                         "with `hydra.sweeper.test_best=<n>`.")


def direction_warning(metric: str, direction: str) -> str | None:
    """One line when the study looks for the worst trials: a loss or a time maximized, an accuracy minimized (the
    sampler and the pruner then favour them, and trials.csv ranks them first); None otherwise. A warning, not a
    refusal: looking for where training breaks down is a question a sweep may ask."""
    smaller = "loss" in metric or metric.endswith("_s") or metric.startswith("model_")
    better = "minimize" if smaller else "maximize" if "acc" in metric else None
    if better is None or direction == better:
        return None
    most = "highest" if direction == "maximize" else "lowest"
    # Hydra's Optuna sweeper plugin minimizes the task's return value by default: a config written for it sets
    # direction=minimize and leaves the metric at runner's default.
    plugin = (" (runner's sweeper ranks trials by hydra.sweeper.metric of their metrics.json, best_val_acc unless "
              "set, not by the task's return value as Hydra's Optuna sweeper plugin does; to minimize the validation "
              "loss: `hydra.sweeper.metric=final_val_loss`)" if metric == "best_val_acc" else "")
    return (f"hydra.sweeper.metric={metric} with hydra.sweeper.direction={direction}: this sweep looks for the {most} "
            f"{metric}, the worst trials (its sampler and pruner favour them, trials.csv ranks them first); to look "
            f"for the best, add `hydra.sweeper.direction={better}`{plugin}")


def epoch_key(metric: str) -> str | None:
    """The history entry's key whose value after each epoch the pruner compares, for the study's metric; None for
    a metric that has no value until the trial ends (wall_time_s)."""
    if metric == "best_val_acc":
        return "val_acc"
    return metric.removeprefix("final_") if metric.startswith("final_") else None


# ---------------------------------------------------------------------------------------------------------------
# Storage

def open_storage(spec: str):
    """An RDB URL (`postgresql://...`, `sqlite:///...`) as Optuna takes it; anything else is the path of a journal
    file, which the processes on one machine share through file locks."""
    import optuna

    if "://" in spec:
        return spec
    from optuna.storages.journal import JournalFileBackend

    Path(spec).parent.mkdir(parents=True, exist_ok=True)
    repair_journal(Path(spec))
    return optuna.storages.JournalStorage(JournalFileBackend(str(spec)))


# The start of a journal record (Optuna writes one JSON object per line, op_code first), and how many such starts a
# damaged line is tried at (a record's own values rarely hold one; a hostile line full of them is not parsed forever).
_RECORD = re.compile(rb'\{\s*"op_code"\s*:')
_MAX_STARTS = 100


def repair_journal(path: Path) -> None:
    """Cut the records torn by a kill or a full disk out of a journal, keeping every complete one. Optuna skips a
    torn last line when it reads, but the next record is written onto it, and from then on every read of the study
    fails ("Expecting ',' delimiter"): so the torn tail is cut back to the last complete record, and a record that
    a run of an older runner wrote onto a torn one is separated from it. The torn bytes go to <journal>.torn; one
    line is logged. Any other damage (a line before the last that is no record) is refused with one line naming the
    file and the ways out (ValueError): cutting there would drop complete records."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    from optuna.storages.journal import JournalFileSymlinkLock

    lock = JournalFileSymlinkLock(str(path))  # the journal's own lock: no process writes a record meanwhile
    lock.acquire()
    try:
        data = path.read_bytes()
        pieces = data.split(b"\n")
        lines = [p + b"\n" for p in pieces[:-1]] + ([pieces[-1]] if pieces[-1] else [])
        kept, torn = [], []
        for number, line in enumerate(lines, 1):
            if line.endswith(b"\n") and _is_record(line):
                kept.append(line)
                continue
            starts = itertools.islice(_RECORD.finditer(line, 1), _MAX_STARTS)
            at = next((m.start() for m in starts if line.endswith(b"\n") and _is_record(line[m.start():])), None)
            if at is None:
                if number == len(lines):  # the tail: cut short, or never ended
                    torn.append(line)
                    continue
                raise ValueError(
                    f"the sweep journal {path} is damaged at line {number} of {len(lines)} (not a whole record, "
                    f"and records follow it): the study cannot be read. To keep the {number - 1} records before "
                    f"it (the trials recorded after them are lost, their job directories stay): `head -n "
                    f"{number - 1} {path} > {path}.kept && mv {path}.kept {path}`; or start a new sweep with "
                    "`hydra.sweep.dir=<new dir>`.")
            torn.append(line[:at])
            kept.append(line[at:])
        if not torn:
            return
        cut = b"\n".join(torn)
        try:
            with open(f"{path}{TORN}", "ab") as f:  # added to what earlier repairs cut, if any
                f.write((b"\n" if f.tell() else b"") + cut)
            if kept == lines[:-1]:
                os.truncate(path, len(data) - len(lines[-1]))  # the complete records stay where they are
            else:
                checkpoint.atomic_write(path, lambda f: f.write(b"".join(kept)))
        except OSError as err:
            raise ValueError(f"the sweep journal {path} ends in a record torn by a kill or a full disk, which cannot "
                             f"be cut: {err.strerror or err}. Free space there or make it writable, then run the "
                             "same command again.") from None
    finally:
        lock.release()
    log.warning("the sweep journal %s held %d record(s) torn by a kill or a full disk (%d bytes): cut out, every "
                "complete record kept; the torn bytes are in %s%s", path, len(torn), len(cut), path, TORN)


def _is_record(line: bytes) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than the parser goes, no record either
        return False


# ---------------------------------------------------------------------------------------------------------------
# Inside a trial: report the validation accuracy every epoch, stop when the pruner says so

@dataclass
class TrialContext:
    report: object  # (epoch, history entry) -> "prune" | None: reports to the study and asks its pruner
    test: bool  # whether the trial runs its test pass (hydra.sweeper.test_trials=all)


def trial_context() -> TrialContext | None:
    """For a trial's job: how it reports to its study, and whether it tests. None when this run is not a trial of
    a sweep."""
    from hydra.core.hydra_config import HydraConfig

    # The sweeper sets hydra.sweeper.trial for each job: JSON with the study's storage and name, the trial's id,
    # the pruner's config, the metric and whether to test.
    spec = HydraConfig.get().sweeper.get("trial") if HydraConfig.initialized() else None
    if not spec:
        return None
    import optuna
    from hydra.utils import instantiate

    spec = json.loads(spec)
    if spec.get("sweeper_pid") is not None:
        watch_sweep_process(spec["sweeper_pid"])
    study = optuna.load_study(study_name=spec["study"], storage=open_storage(spec["storage"]),
                              sampler=optuna.samplers.RandomSampler(), pruner=instantiate(spec["pruner"]))
    trial = optuna.trial.Trial(study, spec["trial_id"])
    # Which process runs the job: a sweep run again waits for it to end before it resumes or records this trial.
    trial.set_user_attr("job", f"{socket.gethostname()}:{os.getpid()}")

    metric = spec.get("metric", "best_val_acc")  # null: a multi-objective study, which Optuna cannot prune
    key = epoch_key(metric) if metric else None

    def report(epoch: int, entry: dict) -> str | None:
        value = entry.get(key) if key else None
        if value is None:  # nothing to compare after this epoch (the sweeper refuses a pruner then)
            return None
        trial.report(float(value), epoch)
        return "prune" if trial.should_prune() else None

    return TrialContext(report, bool(spec.get("test", True)))


# ---------------------------------------------------------------------------------------------------------------
# Inside a trial run by a worker process (joblib's, submitit_local's): end with the sweep process

WATCH_EVERY_S = 0.5  # how often a worker looks whether the sweep process is still its parent
STOP_GRACE_S = 10  # how long a worker whose sweep ended may take to stop cleanly before it is ended outright
_watched = set()


def watch_sweep_process(pid: int) -> None:
    """When the sweep process `pid` is this process's parent (a joblib or submitit_local worker), watch it: once
    it has ended (killed), stop the trial as SIGTERM does (status interrupted, the last checkpoint kept: the sweep
    run again resumes it), then end this process, at the latest STOP_GRACE_S later. Loky's workers notice a dead
    parent only between jobs (if at all: their siblings hold the job queue open), so a killed sweep's trials went
    on for their whole length, holding memory and devices. A job run in the sweep process itself, or on another
    machine (SLURM), has nothing to watch."""
    parent = os.getppid()
    if parent != pid or pid in _watched:
        return
    _watched.add(pid)
    outside_runs = signal.getsignal(signal.SIGTERM)  # the engine puts its own in place while a run trains

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(WATCH_EVERY_S)
        log.warning("the sweep process %d has ended: stopping this trial (its job directory keeps the last "
                    "checkpoint; run the sweep's command again to resume it)", pid)
        os.kill(os.getpid(), signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        while signal.getsignal(signal.SIGTERM) != outside_runs and time.monotonic() < deadline:
            time.sleep(0.1)  # the run is stopping: its metrics.json is written once its handler is gone
        os._exit(128 + signal.SIGTERM)

    threading.Thread(target=watch, name="watch-sweep-process", daemon=True).start()


def process_state(owner: str | None) -> str | None:
    """`running` or `ended` for the process `host:pid` (a trial's `worker` or `job` attribute) when it is one of
    this machine; None when it is not, or not recorded: nothing here can tell."""
    owner_host, _, pid = (owner or "").rpartition(":")
    if owner_host != socket.gethostname() or not pid.isdigit():
        return None
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return "ended"
    except PermissionError:
        return "running"
    try:  # a killed process that its parent has not reaped yet (a zombie) has ended too
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return "running"
    return "ended" if state == "Z" else "running"


# ---------------------------------------------------------------------------------------------------------------
# Parallel jobs on several GPUs: no launcher spreads them, so each job of a batch is given its own device

def assign_devices(n_jobs: int, device_count: int, device: str) -> list[str | None]:
    """The `device` override for each of n_jobs jobs launched together: cuda:0, cuda:1, ... round-robin when more
    than one CUDA device is visible and the config leaves the choice open (`auto` or `cuda`); None (keep the
    config's device) otherwise."""
    if device_count < 2 or device not in ("auto", "cuda"):
        return [None] * n_jobs
    return [f"cuda:{i % device_count}" for i in range(n_jobs)]


# ---------------------------------------------------------------------------------------------------------------
# The end of a trial

def read_outcome(job_dir: Path, error: str | None = None, interrupted: bool = False,
                 metric="best_val_acc") -> dict:
    """A trial's status and final metrics from its metrics.json. A job stopped by a signal (status `interrupted`
    there, or none when the user's Ctrl-C stopped the launcher, `interrupted=True`) is `interrupted`: not final, its
    job directory is left as it is for the next run of the sweep to resume. Any other job that left no final status
    (an exception, a config error) is recorded as failed, and its metrics.json says so."""
    path = Path(job_dir) / "metrics.json"
    metrics = _metrics(path)
    if metrics.get("status") == "interrupted" or (interrupted and metrics.get("status") not in STATUSES):
        metrics = {**metrics, "status": "interrupted",
                   "message": metrics.get("message") or error or "interrupted by the user"}
    elif metrics.get("status") not in STATUSES:
        metrics = {**metrics, "status": "failed", "message": error or f"the job left no final status in {path}"}
        if path.parent.is_dir():
            checkpoint.write_json(metrics, path)
    return _outcome(metrics, metric)


def final_outcome(job_dir: Path, metric="best_val_acc") -> dict | None:
    """The outcome a trial's metrics.json records when its job ended with a final status; None when it did not
    (killed, interrupted, never started), with nothing written."""
    metrics = _metrics(Path(job_dir) / "metrics.json")
    return _outcome(metrics, metric) if metrics.get("status") in STATUSES else None


def _metrics(path: Path) -> dict:
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return metrics if isinstance(metrics, dict) else {}


def _outcome(metrics: dict, metric="best_val_acc") -> dict:
    """status, message, the table's metrics and the study's (`value`: a number, or a list of them for a list of
    metrics (a multi-objective study); None when the trial lacks one)."""
    outcome = {"status": metrics["status"], "message": metrics.get("message")}
    outcome.update({key: metrics.get(key) for key in (*METRICS, *names(metric))})
    values = [metrics.get(m) for m in names(metric)]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        outcome["value"] = None
    else:
        outcome["value"] = values if _is_list(metric) else values[0]
    return outcome


# ---------------------------------------------------------------------------------------------------------------
# TensorBoard's HPARAMS tab for the whole sweep

EXPERIMENT_SUFFIX = ".sweep_hparams"  # the name's end of the event file holding the sweep's HPARAMS columns


OBJECTIVES_SUFFIX = ".sweep_objectives"  # a trial's event file holding the objectives no run writes a tag for


def write_experiment(sweep_dir: Path, job_dirs: list[Path], objectives=("best_val_acc",)) -> Path | None:
    """The HPARAMS columns of the whole sweep: the union of its trials' hyperparameters (with the values each string
    one took), final metrics and the study's objectives (each through the tag its runs write, OBJECTIVE_TAGS, or
    sweep/<metric>, written here into each trial's run from its metrics.json). TensorBoard takes its columns from a
    single run's experiment, arbitrarily chosen, so the trials write only their own values
    (runner.engine.tracking.Tracker.hparams, experiment=False) and this one experiment goes beside the first trial's
    curves, in an event file of its own: the sweep directory gets no event file, which TensorBoard would list as an
    empty run. Returns the file written (None: no trial has HPARAMS values yet)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2
    from torch.utils.tensorboard import SummaryWriter

    from runner.engine.tracking import column_order, metric_order  # torch: only when HPARAMS are written

    seen: dict[str, set] = {}  # each hyperparameter's values over the trials
    kinds = {"number_value": api_pb2.DATA_TYPE_FLOAT64, "string_value": api_pb2.DATA_TYPE_STRING,
             "bool_value": api_pb2.DATA_TYPE_BOOL}
    hparams, strings, metrics = {}, {}, {}
    for job_dir in job_dirs:
        for events in sorted(Path(job_dir).glob("events.out.tfevents.*")):
            if events.name.endswith((EXPERIMENT_SUFFIX, OBJECTIVES_SUFFIX)):
                continue
            for event in EventFileLoader(str(events)).Load():
                for value in event.summary.value:
                    if value.tag == metadata.SESSION_START_INFO_TAG:
                        start = metadata.parse_session_start_info_plugin_data(value.metadata.plugin_data.content)
                        for name, v in start.hparams.items():
                            kind = v.WhichOneof("kind")
                            hparams.setdefault(name, kinds.get(kind, api_pb2.DATA_TYPE_UNSET))
                            seen.setdefault(name, set()).add(str(v))
                            if kind == "string_value":
                                strings.setdefault(name, set()).add(v.string_value)
                    elif value.tag.startswith("test/") or value.tag == "val/best_acc":
                        metrics.setdefault(value.tag, api_pb2.MetricInfo(name=api_pb2.MetricName(tag=value.tag)))
    stale = [*Path(sweep_dir).glob("events.out.tfevents.*"),  # a sweep directory's own run, by an older runner
             *Path(sweep_dir).glob(f"*/events.out.tfevents.*{EXPERIMENT_SUFFIX}"),  # a resumed sweep's earlier union
             *Path(sweep_dir).glob(f"*/events.out.tfevents.*{OBJECTIVES_SUFFIX}")]
    for old in stale:
        old.unlink(missing_ok=True)
    if not hparams:
        return None
    for metric in objectives:
        tag = OBJECTIVE_TAGS.get(metric) or _write_objective(job_dirs, metric)
        metrics.setdefault(tag, api_pb2.MetricInfo(name=api_pb2.MetricName(tag=tag)))
    infos = []
    for name in column_order(seen):  # the searched keys first (differs): TensorBoard shows the first few only
        info = api_pb2.HParamInfo(name=name, type=hparams[name], differs=len(seen[name]) > 1)
        if name in strings:
            info.domain_discrete.extend(sorted(strings[name]))
        infos.append(info)
    experiment = api_pb2.Experiment(hparam_infos=infos, metric_infos=[metrics[t] for t in metric_order(metrics)])
    content = plugin_data_pb2.HParamsPluginData(experiment=experiment, version=metadata.PLUGIN_DATA_VERSION)
    summary = Summary(value=[Summary.Value(tag=metadata.EXPERIMENT_TAG,
                                           metadata=metadata.create_summary_metadata(content))])
    writer = SummaryWriter(log_dir=str(job_dirs[0]), filename_suffix=EXPERIMENT_SUFFIX)
    writer.file_writer.add_summary(summary)
    writer.close()
    return next(Path(job_dirs[0]).glob(f"events.out.tfevents.*{EXPERIMENT_SUFFIX}"))


def _write_objective(job_dirs: list[Path], metric: str) -> str:
    """sweep/<metric>, an objective no run writes a tag for (wall_time_s), as a scalar of each trial's run, from its
    metrics.json: the HPARAMS tab shows it beside the others."""
    from torch.utils.tensorboard import SummaryWriter

    tag = f"sweep/{metric}"
    for job_dir in job_dirs:
        metrics = _metrics(Path(job_dir) / "metrics.json")
        value = metrics.get(metric)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            writer = SummaryWriter(log_dir=str(job_dir), filename_suffix=OBJECTIVES_SUFFIX)
            writer.add_scalar(tag, value, metrics.get("steps") or 0)
            writer.close()
    return tag


# ---------------------------------------------------------------------------------------------------------------
# The sweep's table and summary

def table_columns(param_keys: list[str], metric) -> list[str]:
    """trials.csv's columns: the trial, its status and rank by the study's metric (or metrics), the searched
    parameters, the metrics (the study's first), whether the trial is on the Pareto front (a multi-objective
    study), the job directory and a message."""
    front = ["on_front"] if len(names(metric)) > 1 else []
    return ["trial", "status", "rank", *param_keys, *dict.fromkeys((*names(metric), *METRICS)), *front, "job_dir",
            "message"]


def is_outcome_column(name: str) -> bool:
    """Whether a column of trials.csv holds a result rather than a searched parameter (runner.report)."""
    return name in ("trial", "status", "rank", "on_front", "job_dir", "message", *METRICS, *RANKABLE)


def table_rows(study, param_keys: list[str], metric="best_val_acc") -> list[dict]:
    """One row per trial of the study, in trial order: number, status, rank (single objective: 1 for the best
    completed trial by the study's metric and direction; several: the trial's non-domination rank, 1 on the Pareto
    front; empty for a trial that did not complete), the searched parameters as the job got them, the final metrics,
    on_front (several objectives), the job directory (relative to the sweep directory) and a message."""
    trials = study.get_trials(deepcopy=False)
    rank = trial_ranks(study)
    tested = test_scores(study)
    multi = len(names(metric)) > 1
    rows = []
    for trial in trials:
        attrs = {**trial.user_attrs, **tested.get(str(trial.number), {})}
        status = attrs.get("status") or trial.state.name.lower()
        row = {"trial": trial.number, "status": status, "rank": rank.get(trial.number, "")}
        values = attrs.get("values", {})
        row.update({key: values.get(key, "") for key in param_keys})
        row.update({key: "" if attrs.get(key) is None else attrs[key] for key in (*names(metric), *METRICS)})
        if multi:
            row["on_front"] = rank.get(trial.number) == 1
        row["job_dir"] = attrs.get("job_dir", "")
        row["message"] = attrs.get("message") or ""
        rows.append(row)
    return rows


def directions_of(study) -> list[str]:
    return [d.name.lower() for d in study.directions]


def _completed(study) -> list:
    from optuna.trial import TrialState

    return [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE and t.values]


def trial_ranks(study) -> dict[int, int]:
    """{trial number: rank} of the completed trials: by value (one objective), by non-domination (several)."""
    if len(study.directions) == 1:
        return {t.number: i + 1 for i, t in enumerate(best_trials(study, len(study.get_trials(deepcopy=False))))}
    return pareto.ranks({t.number: t.values for t in _completed(study)}, directions_of(study))


def test_scores(study) -> dict[str, dict]:
    """The test scores the sweep recorded at its end, by trial number (a string)."""
    attrs = study.user_attrs
    return {**attrs.get(TESTED, {}),
            **{k.partition(":")[2]: v for k, v in attrs.items() if k.startswith(f"{TESTED}:")}}


def record_test(study, number: int, metrics: dict) -> None:
    """Record a trial's test scores in the study: a finished trial's attributes are frozen in Optuna, so they go to
    the study's, under the trial's own key."""
    study.set_user_attr(f"{TESTED}:{number}", {k: metrics[k] for k in METRICS if k.startswith("test_") and k in metrics})


def best_trials(study, k: int) -> list:
    """One objective: the k best completed trials by the study's metric and direction, best first. Several: the
    trials on the Pareto front, all of them, by number (a front has no order to cut it by)."""
    done = _completed(study)
    if len(study.directions) > 1:
        on_front = set(pareto.front({t.number: t.values for t in done}, directions_of(study)))
        return [t for t in done if t.number in on_front]
    sign = -1 if directions_of(study)[0] == "maximize" else 1
    return sorted(done, key=lambda t: (sign * t.value, t.number))[:k]


def write_table(path: Path, rows: list[dict], param_keys: list[str], metric="best_val_acc") -> None:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=table_columns(param_keys, metric), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    checkpoint.write_text(text.getvalue(), path)


def summary(rows: list[dict]) -> str:
    counts = Counter(row["status"] for row in rows)
    parts = [f"{counts.get(status, 0)} {status}" for status in STATUSES]
    parts += [f"{n} {status}" for status, n in counts.items() if status not in STATUSES]
    return f"{len(rows)} trials: " + ", ".join(parts)
