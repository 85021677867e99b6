"""A run's directory from the moment a run claims it to the moment it lets go: one process at a time trains in it
(its lock), nothing is written into it before the run is accepted, an earlier run's files move to previous/<time>/
when a run starts afresh where one wrote, a failed write is one line naming the path and what to do. Also the
checkpoint a run resumes from, and the config differences that refuse a resume."""

import contextlib
import errno
import fcntl
import logging
import os
import shutil
import time
from pathlib import Path

from omegaconf import OmegaConf

from runner.config import ConfigError, UserError
from runner.data import checkpoint

log = logging.getLogger("runner")

LAST, BEST = "checkpoints/last.pt", "checkpoints/best.pt"

# Keys that may differ between a checkpoint's config and the resuming run's: where the data is read from, how much
# is printed, and how far to train (more epochs re-plan the schedule from where the run stands, see `Run.resume`).
# trainer.resume_allow adds more.
MAY_CHANGE = ("trainer.epochs", "trainer.resume", "trainer.progress", "trainer.progress_every_s",
              "trainer.log_every_steps", "trainer.eval_batch_size", "trainer.save_best", "device", "data.root",
              "data.cache_dir", "data.download", "diagnostics")


class OutputError(UserError):
    """The run directory cannot be written (full disk, read-only, not a directory): the message names the path and
    what to do; the files already saved are intact (every checkpoint is written atomically)."""


class RunDirBusy(UserError):
    """Another process holds the run directory's lock (the job leaves that directory alone)."""

    owned_by_another = True


LOCK = ".runner.lock"
# What a run writes into its directory, moved to previous/<time>/ when a run starts afresh in a used directory
# (runner.log and Hydra's .hydra/ belong to the process that starts).
RUN_FILES = ("checkpoints", "metrics.json", "config.yaml", "environment.json", "pretrained.json")


# The errors of a location that cannot be written: full, over quota, read-only, forbidden, not a directory.
WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EEXIST)


def output_error(err: OSError, path: Path, resume_hint: str = "") -> OutputError:
    """One line for a failed write: which path, why, what to do."""
    why = err.strerror or str(err)
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        todo = "free space there, or continue elsewhere with hydra.run.dir=<dir on another disk> trainer.resume=" \
               "<this run directory>"
    elif err.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        todo = "make it writable, or give a writable directory with hydra.run.dir=<dir>"
    elif err.errno in (errno.ENOTDIR, errno.EEXIST, errno.ENOENT):
        todo = "a file may stand where a directory should be: give a directory with hydra.run.dir=<dir>"
    else:
        todo = "check the location, or give another one with hydra.run.dir=<dir>"
    return OutputError(f"cannot write {path}: {why}. To go on: {todo}.{resume_hint}")


def lock_run_dir(run_dir: Path) -> int:
    """Take the run directory's exclusive lock (flock on run_dir/.runner.lock, which records the owner's pid): one
    process at a time trains in a directory. The kernel releases the lock when its process ends, however it ends,
    so a killed owner never blocks the next run. Returns the lock's file descriptor."""
    path = run_dir / LOCK
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise output_error(err, path) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = os.read(fd, 32).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise RunDirBusy(f"another process (pid {owner}) is using the run directory {run_dir}: wait for it to end "
                         f"(or stop it), or give this run its own directory with hydra.run.dir=<dir>") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def keep_previous_apart(run_dir: Path) -> Path | None:
    """Starting afresh in a directory where a run already wrote: move that run's files (RUN_FILES and its
    TensorBoard events) into run_dir/previous/<time>/, so that checkpoints and curves of two runs never mix.
    Returns where they went, or None when there was nothing to move."""
    found = [p for p in (*(run_dir / name for name in RUN_FILES), *run_dir.glob("events.out.tfevents.*"))
             if p.exists()]
    if not any(p.name == "checkpoints" or p.name == "metrics.json" or p.name.startswith("events.") for p in found):
        return None
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    target = run_dir / "previous" / stamp
    n = 1
    while target.exists():
        n += 1
        target = run_dir / "previous" / f"{stamp}_{n}"
    try:
        target.mkdir(parents=True)
        for p in found:
            shutil.move(str(p), str(target / p.name))
    except OSError as err:
        raise output_error(err, target) from None
    return target


def resume_path(cfg, run_dir: Path) -> Path | None:
    """The checkpoint to continue from: trainer.resume=auto finds this run directory's own; a path names a run
    directory or a checkpoint file."""
    resume = cfg.trainer.resume
    if resume in (None, "never", False):
        return None
    if resume == "auto":
        path = run_dir / LAST
        return path if path.is_file() else None
    path = Path(str(resume))
    if path.is_dir():
        path = path / LAST
    if not path.is_file():
        raise ConfigError(f"trainer.resume={resume!r}: no checkpoint at {path}. Give a run directory holding "
                          f"{LAST}, a checkpoint file, or trainer.resume=never.")
    return path


def _flat(node: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in node.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_differences(saved: dict, cfg, allowed: bool = False) -> list[str]:
    """The keys (dotted) whose values differ between a checkpoint's config and `cfg`, each as `key: saved -> now`,
    except those of MAY_CHANGE and trainer.resume_allow (a key or any key below it). allowed=True: those that
    trainer.resume_allow lets differ, and trainer.epochs (what a run's records list of a resume)."""
    now = _flat(OmegaConf.to_container(cfg, resolve=True))
    before = _flat(saved)

    def under(key: str, names) -> bool:
        return any(key == a or key.startswith(a + ".") for a in names)

    def wanted(key: str) -> bool:
        if under(key, (*MAY_CHANGE, "trainer.resume_allow")):
            return allowed and key == "trainer.epochs"
        return under(key, cfg.trainer.resume_allow) == allowed

    keys = sorted(k for k in before.keys() | now.keys()
                  if before.get(k, "<absent>") != now.get(k, "<absent>") and wanted(k))
    return [f"{k}: {before.get(k, '<absent>')} -> {now.get(k, '<absent>')}" for k in keys]


def read_resume_checkpoint(path: Path, cfg, device) -> tuple[dict, str]:
    """trainer.resume's checkpoint, loaded and checked to have been made by this config (before any data loads: a
    refusal comes at once). Returns it and the ways out to name should it not fit the run once built."""
    # A checkpoint that cannot continue this run (damaged, hostile, weights only, another model) is one line
    # with the ways out: a damaged auto-resumed last.pt would otherwise stop every re-run of this directory.
    best = path.parent / Path(BEST).name
    remedy = ("give trainer.resume= another run directory or checkpoint, or trainer.resume=never"
              if cfg.trainer.resume != "auto" else
              "start afresh here with trainer.resume=never, or in a new run directory (hydra.run.dir=<new dir>)")
    if best.is_file():
        remedy += (f". {best} holds weights only (no optimizer, schedule or step): it cannot continue training, "
                   f"but model.pretrained={best} starts a new run from its weights (the output layer excepted)")
    state = checkpoint.load(path, map_location=device, needs=("model", "optimizer", "step"), remedy=remedy)
    saved = state.get("config")
    if saved is None:
        log.warning("%s records no config (made by an older runner): resuming without checking that it was made "
                    "by this config", path)
        return state, remedy
    differences = config_differences(saved, cfg)
    if differences:
        groups = sorted({d.split(":")[0].split(".")[0] for d in differences})
        raise ConfigError(
            f"trainer.resume: {path} was made with another config ({'; '.join(differences)}). Resuming it "
            f"would mix two experiments: train in a new run directory (hydra.run.dir=<new dir>), start "
            f"afresh here with trainer.resume=never, set those keys back, or allow the change with "
            f"trainer.resume_allow=[{','.join(groups)}].")
    return state, remedy


def _file_state(path: Path) -> tuple[bytes, int, int] | None:
    """A file's bytes and its access and modification times (ns); None when there is none."""
    try:
        info = path.stat()
        return path.read_bytes(), info.st_atime_ns, info.st_mtime_ns
    except OSError:
        return None


class RunDir:
    """The directory one run owns: locked from the start (by the process that writes: main=True), written only once
    the run is `accept`ed. A run refused at start-up (another config, a checkpoint that does not fit, data that
    cannot load, Ctrl-C) leaves it as it was, its lock file too. resume_from: the checkpoint the run continues from
    (None: a fresh run). on_accept: called once when the run is accepted, before its first file is written (the job
    writes Hydra's record then). pending: records (file name -> JSON) to write at acceptance."""

    def __init__(self, path: Path, resume_from: Path | None, main: bool, on_accept=None):
        self.path, self.resume_from, self.main, self.on_accept = Path(path), resume_from, main, on_accept
        self.accepted, self.pending = False, {}
        self._lock_before = _file_state(self.path / LOCK)
        self._lock = lock_run_dir(self.path) if main else None

    @property
    def resumes_own(self) -> bool:
        """Whether the run continues a checkpoint of this very directory."""
        return self.resume_from is not None and self.resume_from.resolve().is_relative_to(self.path.resolve())

    def accept(self) -> None:
        """The run passed every check and begins to write into its directory: the job's record (on_accept: Hydra's
        .hydra/ and runner.log), the records build left pending (pretrained.json), and, for a run that starts
        afresh where another one wrote, that run's files moved apart first."""
        if self.accepted:
            return
        self.accepted = True
        if not self.main:
            return
        if self.on_accept is not None:
            self.on_accept()
        if not self.resumes_own:
            moved = keep_previous_apart(self.path)
            if moved is not None:
                log.warning("starting afresh in %s, where a run had already written: its files (checkpoints, "
                            "metrics, TensorBoard events) are now in %s", self.path, moved)
        for name, record in self.pending.items():
            try:
                checkpoint.write_json(record, self.path / name)
            except OSError as err:
                raise output_error(err, self.path / name) from None
        self.pending = {}

    def release(self) -> None:
        """Give up the lock (the kernel does it too when the process ends). A run never accepted puts the lock file
        back as it found it (gone, or with the earlier owner's pid and time)."""
        if self._lock is None:
            return
        if not self.accepted:
            path = self.path / LOCK
            with contextlib.suppress(OSError):
                if self._lock_before is None:
                    path.unlink()
                else:
                    content, atime, mtime = self._lock_before
                    os.ftruncate(self._lock, 0)
                    os.pwrite(self._lock, content, 0)
                    os.utime(path, ns=(atime, mtime))
        os.close(self._lock)
        self._lock = None

    def save(self, state: dict, path: Path, epochs_done: int) -> None:
        """checkpoint.save (atomic: the file it replaces stays whole when a write fails); a failed write is one line
        naming the path and what to do (epochs_done: the epochs last.pt holds, for that line)."""
        try:
            checkpoint.save(state, path)
        except OSError as err:
            raise output_error(err, path, self._resume_hint(epochs_done)) from None
        except RuntimeError as err:  # torch's writer reports a full disk as "unexpected pos"
            if "unexpected pos" not in str(err) and shutil.disk_usage(path.parent).free > 2**20:
                raise
            raise output_error(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), path,
                               self._resume_hint(epochs_done)) from None

    def _resume_hint(self, epochs_done: int) -> str:
        last = self.path / LAST
        return (f" {last} (epoch {epochs_done - 1}) is intact: run the same command again to resume from it."
                if last.is_file() else "")
