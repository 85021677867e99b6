"""One run's objects and its state: `Run.build` turns the config into the data, network, optimizer, schedule,
objective and components; `state_dict` / `load_state_dict` are the one pair that saves and restores everything
that must survive a kill (model, optimizer, schedule, RNG, every component's state, the step, the history), for
every objective. A checkpoint records the config it was made from: resuming it under a config that differs in
anything that matters is refused with one line listing the keys and the ways out."""

import contextlib
import errno
import fcntl
import logging
import os
import random
import shutil
import sys
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from runner.config import ConfigError, UserError
from runner.data import checkpoint
from runner.data import loading as data
from runner.engine import build, components, distributed, objectives, recorded, speed
from runner.engine.tracking import Progress, Tracker, in_multirun, phase, progress_mode
from runner.nets.diagnostics import Probe
from runner.nets.init import consistency_warnings
from runner.nets.models import flops_per_image
from runner.optimization import schedules

log = logging.getLogger("runner")

LAST, BEST = "checkpoints/last.pt", "checkpoints/best.pt"
FORMAT = 2  # checkpoints/last.pt's layout; 1: before it recorded its config

# Keys that may differ between a checkpoint's config and the resuming run's: where the data is read from, how much
# is printed, and how far to train (more epochs re-plan the schedule from where the run stands, see `resume`).
# trainer.resume_allow adds more.
MAY_CHANGE = ("trainer.epochs", "trainer.resume", "trainer.progress", "trainer.progress_every_s",
              "trainer.log_every_steps", "trainer.eval_batch_size", "trainer.save_best", "device", "data.root", "data.cache_dir",
              "data.download", "diagnostics")


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


def pick_device(name: str) -> torch.device:
    """`auto` takes cuda, then mps, then cpu; an explicit device must be present."""
    cuda, mps = torch.cuda.is_available(), torch.backends.mps.is_available()
    if name == "auto":
        return torch.device("cuda" if cuda else "mps" if mps else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and (not cuda or (device.index or 0) >= torch.cuda.device_count()):
        found = f"{torch.cuda.device_count()} CUDA device(s)" if cuda else "no CUDA device"
        raise ConfigError(f"device={name!r} is not present on this machine ({found}). Use device=auto or device=cpu.")
    if device.type == "mps" and not mps:
        raise ConfigError(f"device={name!r} is not present on this machine (no Apple MPS). Use device=auto or device=cpu.")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)  # seeds every CUDA device too


def rng_states(generator: torch.Generator) -> dict:
    states = {"python": random.getstate(), "torch": torch.get_rng_state(), "data": generator.get_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict, generator: torch.Generator) -> None:
    random.setstate(states["python"])
    torch.set_rng_state(states["torch"])
    generator.set_state(states["data"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


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


def _file_state(path: Path) -> tuple[bytes, int, int] | None:
    """A file's bytes and its access and modification times (ns); None when there is none."""
    try:
        info = path.stat()
        return path.read_bytes(), info.st_atime_ns, info.st_mtime_ns
    except OSError:
        return None


class Run:
    """Everything one run is made of, and where it stands: step (optimizer steps taken), epoch (the epoch being
    trained, from 0), history (one dict per finished epoch), best (the best validation accuracy and its epoch)."""

    def __init__(self, cfg, run_dir: Path, choices: dict[str, str], extra_components=()):
        self.cfg, self.run_dir, self.choices = cfg, Path(run_dir), choices
        self.world = distributed.world()  # under torchrun: this rank's place; rank 0 of 1 otherwise
        if self.world.size > 1:
            distributed.init()
        device = pick_device(cfg.device)
        if self.world.size > 1 and device.type == "cuda":
            device = torch.device("cuda", self.world.local_rank % torch.cuda.device_count())
        self.device = device
        self.resume_from = resume_path(cfg, self.run_dir)
        self.stop_signal: list[int] = []  # the SIGINT/SIGTERM received (runner.engine.train sets the handlers)
        # Nothing is written into the run directory before `accept`: a run refused at start-up (another config,
        # a checkpoint that does not fit, data that cannot load, Ctrl-C) leaves it as it was, its lock file too.
        self.accepted, self.on_accept, self.pending = False, None, {}
        self._lock_before = _file_state(self.run_dir / LOCK)
        self._lock = lock_run_dir(self.run_dir) if self.world.main else None
        try:
            self._resume_state = self._read_checkpoint() if self.resume_from is not None else None
            self._start_here(cfg, extra_components)
        except BaseException:
            self.release()
            raise

    def _start_here(self, cfg, extra_components) -> None:
        if self.world.main:
            log.info("run directory %s (%s); watch it with `tensorboard --logdir %s` (Custom Scalars tab)", self.run_dir,
                     "resuming its checkpoint" if self._resumes_own() else
                     f"continuing {self.resume_from}" if self.resume_from else "a new run", self.run_dir)
        if cfg.trainer.deterministic:
            torch.use_deterministic_algorithms(True)
        seed_everything(cfg.seed)
        self.wall_start = time.perf_counter()
        self.step, self.epoch, self.history, self.elapsed = 0, 0, [], 0.0
        self.best = {"acc": -1.0, "epoch": -1}
        self.resumes: list[dict] = []  # one entry per resume: where it continued, what changed (metrics.json)
        self.first_step_at = None  # time.time() of this process's first finished training step
        self.stop_before_next_epoch = False
        self._build(extra_components)

    # -----------------------------------------------------------------------------------------------------------
    # Building

    def _build(self, extra_components) -> None:
        cfg, device, world = self.cfg, self.device, self.world
        consistency_warnings(cfg.activation, cfg.init, cfg.norm, cfg.regularization)
        recorded.check_sizes(cfg, self._too_large, strict=False)  # before a MemoryError (model.widths=[1e9])
        self.data_began_at = time.time()  # wall clock, as the job's start and first_step_at
        with phase(f"loading data={cfg.data.name}"):
            self.splits = splits = data.load_splits(cfg.data, device)
        loaded = time.time()
        log.info("data=%s: %d train, %d val, %d test images on %s", cfg.data.name, len(splits.train_y),
                 len(splits.val_y), len(splits.test_y), device)
        with phase(f"fitting preprocess={self.choices.get('preprocess', '?')} on {len(splits.train_x):,} training "
                   "images"):
            self.preprocess = build.build_preprocess(cfg, splits.train_x).to(device)
        self.augmentation = build.build_augmentation(cfg)
        self.speed = speed.setup(cfg.trainer, device)
        self.objective = build.build_objective(cfg)
        whiten = " (init.first_layer=whiten: the first layer from the data's patches)" \
            if cfg.init.first_layer == "whiten" else ""
        with phase(f"building model={self.choices.get('model', '?')}{whiten}"):
            model = build.build_model(cfg, len(splits.classes), build.init_inputs(cfg, self.preprocess,
                                                                                  splits.train_x))
        self.model = speed.prepare(self.objective.network(model.to(device)), self.speed)
        self.net = self.model  # the module of the forward pass: inside DistributedDataParallel and/or compiled
        if world.size > 1:
            self.model, self.net = distributed.wrap(self.model, world, device, cfg.trainer.sync_batch_norm)
        self.net = speed.compiled(self.net, self.speed)
        encoder = self.model.encoder if isinstance(self.model, objectives.AutoEncoder) else self.model
        reused = build.build_pretrained(cfg, encoder, self.pending if world.main else None)
        build.build_probe(cfg, encoder, len(splits.classes))  # transfer.layer: cut at an inner layer
        # before freezing: gradual unfreezing needs every parameter in the optimizer
        self.optimizer = build.build_optimizer(cfg, self.model, reused)
        freezer = build.build_freezer(cfg, self.model)
        self.steps_per_epoch = data.steps_per_epoch(len(splits.train_x), cfg.trainer.batch_size)
        total = self.steps_per_epoch * cfg.trainer.epochs
        self.scheduler = build.build_schedule(cfg, self.optimizer, total, self.steps_per_epoch)
        ema = build.build_averaging(cfg, self.model, total)
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(cfg.seed)
        self.n_params = sum(p.numel() for p in model.parameters())
        self.flops = flops_per_image(model, tuple(splits.train_x.shape[1:]))
        log.info("model=%s: %s parameters, %.1f MFLOPs per image", self.choices.get("model", "?"),
                 f"{self.n_params:,}", self.flops / 1e6)
        # The event file opens (open_tracker) once a resume has said which step to purge from.
        self.tracker = Tracker(self.run_dir, enabled=world.main, lazy=True)
        probe = Probe(self.model, cfg.diagnostics, self.tracker) if world.main else None
        # a sweep's trials print lines even on a terminal: parallel trials would fight over one bar
        self.progress = Progress(progress_mode(cfg.trainer.progress, cfg.trainer.progress_every_s, world.main,
                                               sys.stderr.isatty() and not in_multirun()),
                                 self.steps_per_epoch, cfg.trainer.epochs, cfg.trainer.progress_every_s)
        self.components = components.build_components(cfg, self, ema, freezer, probe, extra_components)
        self.ema = ema
        # metrics.json's `startup` (its setup_s and first_step_s are added at the end)
        self.built_at = time.time()
        self.startup = {"data_s": loaded - self.data_began_at, "build_s": self.built_at - loaded}

    @staticmethod
    def _too_large(problem: str):
        raise ConfigError(f"{problem}: more than any run on CIFAR-10 needs (a ResNet-18 has 11,000,000 parameters); "
                          "lower the sizes on the command line.")

    def hooks(self, name: str) -> list:
        """The bound `name` hooks of the components that define it, in order."""
        return [getattr(c, name) for c in self.components if hasattr(c, name)]

    # -----------------------------------------------------------------------------------------------------------
    # The state that survives a kill

    def weights(self, epoch: int) -> dict:
        """What a model checkpoint (best, snapshot, last) holds to be evaluated or transferred on its own: the
        classifier's parameters under "model" (an autoencoder's encoder; its decoder under "decoder")."""
        model = self.model.module if hasattr(self.model, "module") else self.model
        if isinstance(model, objectives.AutoEncoder):
            return {"model": model.encoder.state_dict(), "decoder": model.decoder.state_dict(),
                    "preprocess": self.preprocess.state_dict(), "epoch": epoch}
        return {"model": self.model.state_dict(), "preprocess": self.preprocess.state_dict(), "epoch": epoch}

    def state_dict(self) -> dict:
        state = {
            **self.weights(len(self.history)),
            "format": FORMAT,
            "config": OmegaConf.to_container(self.cfg, resolve=True),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": schedules.state_dict(self.scheduler),
            "rng": rng_states(self.generator),
            "step": self.step, "best": self.best, "history": self.history,
            "elapsed": self.elapsed + time.perf_counter() - self.wall_start,
            "components": {c.name: c.state_dict() for c in self.components if c.name},
            "resumes": self.resumes,
        }
        if self.speed.scaler is not None:
            state["scaler"] = self.speed.scaler.state_dict()
        return state

    def load_state_dict(self, state: dict, optimizer: bool = True) -> None:
        """optimizer=False: the optimizer keeps the state it has (fresh), as after another optimizer's checkpoint."""
        model = self.model.module if hasattr(self.model, "module") else self.model
        if isinstance(model, objectives.AutoEncoder):
            model.encoder.load_state_dict(state["model"])
            model.decoder.load_state_dict(state["decoder"])
        else:
            self.model.load_state_dict(state["model"])
        self.preprocess.load_state_dict(state["preprocess"])
        if optimizer:
            self.optimizer.load_state_dict(state["optimizer"])
        schedules.load_state_dict(self.scheduler, state["scheduler"])
        set_rng_states(state["rng"], self.generator)
        if self.speed.scaler is not None and "scaler" in state:
            self.speed.scaler.load_state_dict(state["scaler"])
        saved = state.get("components", {})
        for c in self.components:
            if c.name in saved:
                c.load_state_dict(saved[c.name])
            elif c.name == "ema":  # a run that had no average yet starts it at the loaded weights
                c.ema.load_state_dict(self.model.state_dict())
        self.epoch, self.step = state["epoch"], state["step"]
        self.best, self.history, self.elapsed = state["best"], state["history"], state["elapsed"]
        self.resumes = list(state.get("resumes", []))

    def save_last(self) -> None:
        if self.world.main:
            self._save(self.state_dict(), self.run_dir / LAST)

    def save_weights(self, path: Path, epoch: int) -> None:
        if self.world.main:
            self._save(self.weights(epoch), path)

    def _save(self, state: dict, path: Path) -> None:
        """checkpoint.save (atomic: the file it replaces stays whole when a write fails); a failed write is one line
        naming the path and what to do."""
        try:
            checkpoint.save(state, path)
        except OSError as err:
            raise output_error(err, path, self._resume_hint()) from None
        except RuntimeError as err:  # torch's writer reports a full disk as "unexpected pos"
            if "unexpected pos" not in str(err) and shutil.disk_usage(path.parent).free > 2**20:
                raise
            raise output_error(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), path, self._resume_hint()) from None

    def _resume_hint(self) -> str:
        last = self.run_dir / LAST
        return (f" {last} (epoch {len(self.history) - 1}) is intact: run the same command again to resume from it."
                if last.is_file() else "")

    def release(self) -> None:
        """Give up the run directory's lock (the kernel does it too when the process ends). A run never accepted
        puts the lock file back as it found it (gone, or with the earlier owner's pid and time)."""
        if self._lock is None:
            return
        if not self.accepted:
            path = self.run_dir / LOCK
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

    def _resumes_own(self) -> bool:
        return self.resume_from is not None and self.resume_from.resolve().is_relative_to(self.run_dir.resolve())

    def accept(self) -> None:
        """The run passed every check and begins to write into its directory: the job's record (on_accept: Hydra's
        .hydra/ and runner.log), the records build left pending (pretrained.json), and, for a run that starts
        afresh where another one wrote, that run's files moved apart first."""
        if self.accepted:
            return
        self.accepted = True
        if not self.world.main:
            return
        if self.on_accept is not None:
            self.on_accept()
        if not self._resumes_own():
            moved = keep_previous_apart(self.run_dir)
            if moved is not None:
                log.warning("starting afresh in %s, where a run had already written: its files (checkpoints, "
                            "metrics, TensorBoard events) are now in %s", self.run_dir, moved)
        for name, record in self.pending.items():
            try:
                checkpoint.write_json(record, self.run_dir / name)
            except OSError as err:
                raise output_error(err, self.run_dir / name) from None
        self.pending = {}

    def _read_checkpoint(self) -> dict:
        """trainer.resume's checkpoint, loaded and checked to have been made by this config (before any data loads:
        a refusal comes at once)."""
        path = self.resume_from
        # A checkpoint that cannot continue this run (damaged, hostile, weights only, another model) is one line
        # with the ways out: a damaged auto-resumed last.pt would otherwise stop every re-run of this directory.
        best = path.parent / Path(BEST).name
        remedy = ("give trainer.resume= another run directory or checkpoint, or trainer.resume=never"
                  if self.cfg.trainer.resume != "auto" else
                  "start afresh here with trainer.resume=never, or in a new run directory (hydra.run.dir=<new dir>)")
        if best.is_file():
            remedy += (f". {best} holds weights only (no optimizer, schedule or step): it cannot continue training, "
                       f"but model.pretrained={best} starts a new run from its weights (the output layer excepted)")
        self._remedy = remedy
        state = checkpoint.load(path, map_location=self.device, needs=("model", "optimizer", "step"), remedy=remedy)
        saved = state.get("config")
        if saved is None:
            log.warning("%s records no config (made by an older runner): resuming without checking that it was made "
                        "by this config", path)
            return state
        differences = config_differences(saved, self.cfg)
        if differences:
            groups = sorted({d.split(":")[0].split(".")[0] for d in differences})
            raise ConfigError(
                f"trainer.resume: {path} was made with another config ({'; '.join(differences)}). Resuming it "
                f"would mix two experiments: train in a new run directory (hydra.run.dir=<new dir>), start "
                f"afresh here with trainer.resume=never, set those keys back, or allow the change with "
                f"trainer.resume_allow=[{','.join(groups)}].")
        return state

    def _another_optimizer(self, state: dict, changes: list[str]) -> str | None:
        """Why the checkpoint's optimizer state cannot be loaded into this run's optimizer, under a change that
        trainer.resume_allow allows (another class or implementation, other parameter groups); None when it can."""
        saved = (state.get("config") or {}).get("optimizer")
        if saved is None or not changes:
            return None
        for key in ("_target_", "impl"):
            if saved.get(key) != self.cfg.optimizer.get(key):
                return f"optimizer.{key}: {saved.get(key)} -> {self.cfg.optimizer.get(key)}"
        theirs = [len(g.get("params", ())) for g in state["optimizer"].get("param_groups", [])]
        mine = [len(g["params"]) for g in self.optimizer.param_groups]
        return None if theirs == mine else f"parameter groups of {theirs} tensors -> {mine}"

    def resume(self) -> None:
        """Continue from trainer.resume's checkpoint (read and checked by _read_checkpoint). A run with more epochs
        than its checkpoint planned continues on the schedule re-planned over the new length, from the step it
        stands at. Under trainer.resume_allow the config's optimizer and schedule values are the ones used (not the
        checkpoint's); another optimizer starts with a fresh state."""
        path, state, self._resume_state = self.resume_from, self._resume_state, None
        saved = state.get("config")
        changes = config_differences(saved, self.cfg, allowed=True) if saved else []
        another = self._another_optimizer(state, changes)
        own = self.state_dict()
        if another:
            del own["optimizer"]
        checkpoint.check_fits(path, state, own, self._remedy)
        # the values this run's config gives each parameter group and the schedule (what resume_allow may change)
        groups = [{k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups]
        base_lrs = list(self.scheduler.base_lrs)
        self.load_state_dict(state, optimizer=not another)
        for group, values in zip(self.optimizer.param_groups, groups, strict=True):
            group.update(values)
        self.scheduler.base_lrs = base_lrs
        planned = saved["trainer"]["epochs"] if saved else self.cfg.trainer.epochs
        schedules.replan(self.scheduler)  # the saved lr is the old plan's; the plan may be longer now
        self.resumes.append({"epoch": self.epoch, "step": self.step, "checkpoint": str(path), "changes": changes,
                             "optimizer": "fresh" if another else "kept"})
        log.info("resumed from %s at epoch %d (step %d)", path, self.epoch, self.step)
        if another:
            log.warning("trainer.resume_allow: another optimizer (%s): its state (momentum, moment estimates, step "
                        "counts) is not carried over, the optimizer starts afresh at step %d; the weights, schedule "
                        "position and history continue", another, self.step)
        if planned != self.cfg.trainer.epochs and self.epoch < self.cfg.trainer.epochs:
            log.info("trainer.epochs=%d (the checkpoint planned %d): the schedule is re-planned over %d epochs and "
                     "continues from step %d at lr %.3g, the new plan's value there", self.cfg.trainer.epochs,
                     planned, self.cfg.trainer.epochs, self.step, self.optimizer.param_groups[0]["lr"])

    def open_tracker(self) -> None:
        """TensorBoard events in the run directory. On resume, the events an earlier, killed process wrote after
        the checkpoint's step are dropped (purge_step), so every epoch's scalars are there exactly once."""
        self.tracker.open(purge_step=self.step + 1 if self.resume_from else None)

