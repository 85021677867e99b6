"""What a sweep needs around its trials: the study storage, a trial's per-epoch report to the study (and its
pruning), a trial's watch on the sweep process (a killed sweep leaves no worker behind), the trial statuses, the sweep's table (trials.csv) and summary, and the spreading of parallel jobs
over several GPUs.

The sweeper itself is the Hydra plugin in src/hydra_plugins/runner_optuna_sweeper. Optuna is imported inside the
functions that need it, so a run that is not a trial never imports it.
"""

import csv
import io
import json
import logging
import os
import signal
import socket
import threading
import time
from collections import Counter
from pathlib import Path

from runner.data import checkpoint

log = logging.getLogger(__name__)

JOURNAL = "optuna.journal"
TABLE = "trials.csv"
SPACE = "search_space.json"  # each searched parameter's range or choices, for runner.report

# What metrics.json says at the end of a trial (train.py), or what the sweeper writes there when the job failed.
# `interrupted` is not final: the trial stays running in the study, and the next run of the sweep resumes it.
STATUSES = ("completed", "pruned", "diverged", "failed")
METRICS = ("best_val_acc", "best_epoch", "test_acc", "final_val_acc", "final_val_loss", "final_train_loss",
           "epochs_completed", "wall_time_s")


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
    return optuna.storages.JournalStorage(JournalFileBackend(str(spec)))


# ---------------------------------------------------------------------------------------------------------------
# Inside a trial: report the validation accuracy every epoch, stop when the pruner says so

def trial_reporter():
    """For a trial's job: a function `(epoch, val_acc) -> "prune" | None` that reports to the study and asks its
    pruner. None when this run is not a trial of a sweep."""
    from hydra.core.hydra_config import HydraConfig

    # The sweeper sets hydra.sweeper.trial for each job: JSON with the study's storage and name, the trial's id
    # and the pruner's config.
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

    def report(epoch: int, val_acc: float) -> str | None:
        trial.report(val_acc, epoch)
        return "prune" if trial.should_prune() else None

    return report


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

def read_outcome(job_dir: Path, error: str | None = None, interrupted: bool = False) -> dict:
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
    return _outcome(metrics)


def final_outcome(job_dir: Path) -> dict | None:
    """The outcome a trial's metrics.json records when its job ended with a final status; None when it did not
    (killed, interrupted, never started), with nothing written."""
    metrics = _metrics(Path(job_dir) / "metrics.json")
    return _outcome(metrics) if metrics.get("status") in STATUSES else None


def _metrics(path: Path) -> dict:
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return metrics if isinstance(metrics, dict) else {}


def _outcome(metrics: dict) -> dict:
    outcome = {"status": metrics["status"], "message": metrics.get("message")}
    outcome.update({key: metrics.get(key) for key in METRICS})
    return outcome


# ---------------------------------------------------------------------------------------------------------------
# TensorBoard's HPARAMS tab for the whole sweep

def write_experiment(sweep_dir: Path, job_dirs: list[Path]) -> None:
    """One HPARAMS experiment for the sweep, in its own directory: the union of the trials' hyperparameters and
    final metrics. Each trial writes its own (runner.engine.tracking), but TensorBoard takes its columns from a single
    one, arbitrarily chosen, whose keys and metrics may not cover the others' (a pruned trial has no test/acc,
    optimizer=adam has no optimizer.momentum). The sweep directory's run is read first, so this one is used."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2
    from torch.utils.tensorboard import SummaryWriter

    hparams, metrics = {}, {}
    for events in (path for job_dir in job_dirs for path in sorted(Path(job_dir).glob("events.out.tfevents.*"))):
        for event in EventFileLoader(str(events)).Load():
            for value in event.summary.value:
                if value.tag == metadata.EXPERIMENT_TAG:
                    experiment = metadata.parse_experiment_plugin_data(value.metadata.plugin_data.content)
                    hparams.update({h.name: h for h in experiment.hparam_infos if h.name not in hparams})
                    metrics.update({m.name.tag: m for m in experiment.metric_infos if m.name.tag not in metrics})
    if not hparams:
        return
    for old in Path(sweep_dir).glob("events.out.tfevents.*"):  # a resumed sweep's earlier, smaller union
        old.unlink()
    experiment = api_pb2.Experiment(hparam_infos=list(hparams.values()), metric_infos=list(metrics.values()))
    content = plugin_data_pb2.HParamsPluginData(experiment=experiment, version=metadata.PLUGIN_DATA_VERSION)
    summary = Summary(value=[Summary.Value(tag=metadata.EXPERIMENT_TAG,
                                           metadata=metadata.create_summary_metadata(content))])
    writer = SummaryWriter(log_dir=str(sweep_dir))
    writer.file_writer.add_summary(summary)
    writer.close()


# ---------------------------------------------------------------------------------------------------------------
# The sweep's table and summary

def table_rows(study, param_keys: list[str]) -> list[dict]:
    """One row per trial of the study, in trial order: number, status, the searched parameters as the job got
    them, the final metrics, the job directory (relative to the sweep directory) and a message."""
    rows = []
    for trial in study.get_trials(deepcopy=False):
        attrs = trial.user_attrs
        status = attrs.get("status") or trial.state.name.lower()
        row = {"trial": trial.number, "status": status}
        values = attrs.get("values", {})
        row.update({key: values.get(key, "") for key in param_keys})
        row.update({key: "" if attrs.get(key) is None else attrs[key] for key in METRICS})
        row["job_dir"] = attrs.get("job_dir", "")
        row["message"] = attrs.get("message") or ""
        rows.append(row)
    return rows


def write_table(path: Path, rows: list[dict], param_keys: list[str]) -> None:
    columns = ["trial", "status", *param_keys, *METRICS, "job_dir", "message"]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    checkpoint.write_text(text.getvalue(), path)


def summary(rows: list[dict]) -> str:
    counts = Counter(row["status"] for row in rows)
    parts = [f"{counts.get(status, 0)} {status}" for status in STATUSES]
    parts += [f"{n} {status}" for status, n in counts.items() if status not in STATUSES]
    return f"{len(rows)} trials: " + ", ".join(parts)
