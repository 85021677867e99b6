"""The `runner` command's job, as Hydra calls it: check the config, train (a trial of a sweep reports to its study),
and turn a user's mistake into a one-line error. The glue above the engine and the sweeps. A command refused at
start-up writes nothing: Hydra's record of the job (.hydra/, runner.log) is held back until the run is accepted,
and the folders the command made for it are removed again."""

import contextlib
import copy
import errno
import json
import logging
import logging.handlers
import os
import re
import shlex
import shutil
import sys
import time
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import OmegaConf, read_write

from runner.config import CONFIG_DIR, ConfigError, UserError, validate
from runner.engine.distributed import close

# The exit code of each final status, for scripts and schedulers (docs/troubleshooting.md); 2 is a bad config.
EXIT_CODES = {"completed": 0, "pruned": 0, "failed": 1, "diverged": 3, "SIGINT": 130, "SIGTERM": 143}


def run_job(cfg) -> float | None:
    """Returns the best validation accuracy (what a sweeper maximizes), or None when the run did not complete. A
    single run exits with its status's code (EXIT_CODES); a job of a multirun returns or raises instead, so that
    the sweep goes on."""
    started_at = time.time()  # the origin of startup_s: this job's start (a sweep runs many in one process)
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    record = Record(cfg)
    try:
        validate(cfg)
        # torch from here on: a refused config (and --cfg job) never loads it
        from runner.engine.components import SweepReport
        from runner.engine.train import fit  # torch is imported from here on
        from runner.sweeps.study import trial_context

        hydra_cfg = HydraConfig.get()
        trial = trial_context()  # None unless this run is a trial of an Optuna sweep
        try:
            metrics = fit(cfg, run_dir, dict(hydra_cfg.runtime.choices),
                          [SweepReport(trial.report)] if trial is not None else [],
                          command=None if multirun else resume_command(hydra_cfg, run_dir), started_at=started_at,
                          sweep_trial=trial is not None, test=trial is None or trial.test, on_accept=record.keep)
        finally:
            if "WORLD_SIZE" in os.environ:  # a torchrun rank: leave the process group cleanly
                close()
    except UserError as err:
        if multirun:  # a trial's directory is the sweep's: it keeps the trial's record and log
            record.keep()
        elif not record.kept:
            remove_made(run_dir)
        # In a multirun the sweeper records the error as this trial's failure and goes on; an exit would end the
        # whole sweep.
        if os.environ.get("HYDRA_FULL_ERROR") == "1" or multirun:
            raise
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2 if isinstance(err, ConfigError) else 1)
    except KeyboardInterrupt:  # Ctrl-C before the training loop took over SIGINT (or a second one)
        if multirun:
            record.keep()
            raise
        if not record.kept:
            remove_made(run_dir)
        print(interrupted(run_dir, record.kept, resume_command(HydraConfig.get(), run_dir)), file=sys.stderr)
        sys.exit(EXIT_CODES["SIGINT"])
    except Exception as err:  # fit recorded it in metrics.json (status failed); the checkpoints are intact
        if os.environ.get("HYDRA_FULL_ERROR") == "1" or multirun:
            raise
        if not record.kept:
            remove_made(run_dir)
        where = (f"recorded in {run_dir / 'metrics.json'}" if failed_here(run_dir) else
                 f"the metrics.json of the earlier run in {run_dir} is kept" if (run_dir / "metrics.json").is_file()
                 else "nothing was written")
        print(f"error: the run failed with {type(err).__name__}: {' '.join(str(err).split())} ({where}; "
              "HYDRA_FULL_ERROR=1 shows the traceback)", file=sys.stderr)
        sys.exit(EXIT_CODES["failed"])
    code = EXIT_CODES.get(metrics.get("signal") or metrics["status"], 1)
    if code and not multirun:
        sys.exit(code)
    return metrics["best_val_acc"] if metrics["status"] == "completed" else None


def failed_here(run_dir: Path) -> bool:
    """Whether the run directory's metrics.json records a failure (this one: a failed run never writes over an
    earlier run's metrics)."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        return json.loads((run_dir / "metrics.json").read_text()).get("status") == "failed"
    return False


def interrupted(run_dir: Path, started: bool, command: str) -> str:
    """The one line of a Ctrl-C that came before the training loop could stop the run at a step (or after it)."""
    last = run_dir / "checkpoints" / "last.pt"
    if last.is_file():
        kept = f"{last} holds the last finished epoch" if started else f"{run_dir} is as it was"
        return f"interrupted by SIGINT {'in the run' if started else 'while starting'}: {kept}. To resume: {command}"
    if started:
        return ("interrupted by SIGINT before the first epoch finished: there is no checkpoint to resume from. Run "
                "the command again to start afresh.")
    return "interrupted by SIGINT while starting: nothing was written. Run the command again to start."


def resume_command(hydra_cfg, run_dir: Path) -> str:
    """The command that continues this run: the same overrides, in this run directory."""
    hydra_overrides = [o for o in hydra_cfg.overrides.hydra if not o.startswith(("hydra.run.dir=", "hydra.mode="))]
    words = ["python", "-m", "runner", *hydra_cfg.overrides.task, *hydra_overrides, f"hydra.run.dir={run_dir}"]
    return " ".join(shlex.quote(str(w)) for w in words)


# Hydra's record of a job: .hydra/ holding these files, written by Record.keep (configs/config.yaml sets Hydra's
# own hydra.output_subdir to null) and by Hydra itself for a user's hydra.output_subdir=<dir>.
RECORD = ".hydra"
_HYDRA_FILES = {"config.yaml", "hydra.yaml", "overrides.yaml"}


class Record:
    """What Hydra would write into the run directory as the job starts, held back until the run is accepted (`keep`,
    the engine's on_accept): the composed config, Hydra's config and the overrides under .hydra/, and the log lines
    of runner.log (in memory until then; configs/config.yaml opens the log file lazily). A job refused before
    that writes nothing."""

    def __init__(self, cfg):
        hydra_cfg = HydraConfig.get()
        self.run_dir, self.kept, self.files = Path(hydra_cfg.runtime.output_dir), False, {}
        own_choice = any(o.startswith("hydra.output_subdir=") for o in hydra_cfg.overrides.hydra)
        if hydra_cfg.output_subdir is None and not own_choice:
            whole = copy.deepcopy(HydraConfig.instance().cfg)  # {"hydra": ...}, as Hydra saves it
            with read_write(whole.hydra):
                whole.hydra.output_subdir = RECORD
            self.files = {"config.yaml": copy.deepcopy(cfg), "hydra.yaml": whole,
                          "overrides.yaml": copy.deepcopy(hydra_cfg.overrides.task)}
        root, self.held = logging.getLogger(), []
        for handler in list(root.handlers):
            if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).parent == self.run_dir:
                memory = logging.handlers.MemoryHandler(capacity=sys.maxsize, flushLevel=logging.CRITICAL + 1,
                                                        target=None, flushOnClose=False)
                memory.setLevel(handler.level)
                root.addHandler(memory)
                root.removeHandler(handler)
                self.held.append((memory, handler))

    def keep(self) -> None:
        """Write .hydra/ and the log lines so far; the log goes on into runner.log."""
        if self.kept:
            return
        self.kept = True
        if self.files:
            folder = self.run_dir / RECORD
            folder.mkdir(parents=True, exist_ok=True)
            for name, node in self.files.items():
                (folder / name).write_text(OmegaConf.to_yaml(node), encoding="utf-8")
        root = logging.getLogger()
        for memory, handler in self.held:
            root.removeHandler(memory)
            memory.setTarget(handler)
            memory.flush()
            root.addHandler(handler)
        self.held = []


# Where check_run_dir noted that the folders this command makes for its run directory begin: that folder and those
# above it existed before (None: not noted). remove_made takes the ones below it away again after a refusal.
_made_below: Path | None = None


def check_run_dir(args: list[str], config_name: str = "config") -> None:
    """An explicit hydra.run.dir= must be a folder this process can make or write to (Hydra's own failure there is a
    traceback or two lines that say nothing of what to do). Notes where the folders begin that the command makes for
    its run directory (Hydra makes them), so that a refused command removes them again. Writes nothing in a folder
    that exists."""
    global _made_below
    if any(a in ("-m", "--multirun") or a.startswith("--cfg") for a in args):
        return
    given = [a.split("=", 1)[1] for a in args if a.startswith("hydra.run.dir=")]
    pattern = given[-1] if given else str(OmegaConf.to_container(
        OmegaConf.load(CONFIG_DIR / f"{config_name}.yaml").hydra.run)["dir"])
    fixed = pattern.split("${")[0]  # below it, ${now:} and ${runner_uid:} name new folders
    path = Path(os.path.abspath(fixed if "${" not in pattern or fixed.endswith("/") else Path(fixed).parent))
    absent = [p for p in (path, *path.parents) if not p.exists()]
    try:
        if not absent and not path.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(path))
        if not absent and not os.access(path, os.W_OK | os.X_OK):
            code = errno.EROFS if os.statvfs(path).f_flag & os.ST_RDONLY else errno.EACCES
            raise PermissionError(code, os.strerror(code), str(path))
        if absent and given and "${" not in pattern:
            path.mkdir(parents=True)  # Hydra would make it: made here to see that it can be
    except OSError as err:
        if given:
            raise ConfigError(f"hydra.run.dir={given[-1]} cannot be used: {err.strerror or err} "
                              f"({err.filename or path}). Give a folder you can write to, e.g. "
                              "hydra.run.dir=outputs/<name>.") from None
    _made_below = (absent[-1].parent if absent else path).resolve()


def remove_made(run_dir: Path) -> None:
    """After a refusal: the run directory and the folders above it that this command made (check_run_dir's note),
    each only when it is empty, never the working directory or one above it. Without a note: remove_if_empty."""
    if _made_below is None:
        remove_if_empty(run_dir)
        return
    cwd, run_dir = Path.cwd().resolve(), run_dir.resolve()
    for folder in (run_dir, *run_dir.parents):
        if folder == _made_below or not folder.is_relative_to(_made_below) or cwd.is_relative_to(folder):
            return
        try:
            folder.rmdir()  # only an empty one
        except OSError:
            return


def remove_if_empty(run_dir: Path) -> None:
    """Remove a run directory that a failed start left holding nothing but Hydra's record, the log and the run's
    lock (released by then), and its date folder (outputs/<date>) when that is left empty. A directory holding
    anything else (a resumed run's checkpoints, a file of the user's) stays, and so do the working directory and those
    above it (hydra.run.dir=.)."""
    run_dir, record = run_dir.resolve(), run_dir.resolve() / ".hydra"
    if not run_dir.is_dir() or Path.cwd().resolve().is_relative_to(run_dir):
        return
    if {p.name for p in run_dir.iterdir()} - {".hydra", "runner.log", ".runner.lock"}:
        return
    if record.exists() and (not record.is_dir() or {p.name for p in record.iterdir()} - _HYDRA_FILES):
        return
    shutil.rmtree(run_dir, ignore_errors=True)  # best effort: the error message is what matters
    with contextlib.suppress(OSError):  # another run may have just started in the same date folder
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", run_dir.parent.name) and not any(run_dir.parent.iterdir()):
            run_dir.parent.rmdir()
