"""One run's objects: `build_parts` turns the config into the data, network and optimizer (for a run and for
runner.lr_find alike), `Run` adds the schedule, objective and components; `state_dict` / `load_state_dict` are the
one pair that saves and restores everything that must survive a kill (model, optimizer, schedule, RNG, every
component's state, and where the run stands: its RunState, runner.engine.state), for every objective. The run
directory (its lock, what is written when, the checkpoint to resume and the config differences that refuse it) is
runner.engine.rundir's."""

import logging
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import OmegaConf

from runner.config import ConfigError
from runner.data import checkpoint
from runner.data import loading as data
from runner.data.augment import Augmentation
from runner.engine import build, components, distributed, objectives, recorded, speed
from runner.engine.rundir import LAST, RunDir, config_differences, read_resume_checkpoint, resume_path
from runner.engine.state import RunState
from runner.engine.tracking import Progress, Tracker, in_multirun, phase, progress_mode
from runner.nets.diagnostics import Probe
from runner.nets.init import consistency_warnings
from runner.nets.models import flops_per_image
from runner.nets.transfer import Freezer
from runner.optimization import schedules

log = logging.getLogger("runner")

FORMAT = 2  # checkpoints/last.pt's layout; 1: before it recorded its config


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


@dataclass
class Parts:
    """What training under a config is made of, built by `build_parts`: a run's (Run) and the lr range test's
    (runner.lr_find), so that the two build alike."""

    splits: data.Splits
    preprocess: torch.nn.Module
    augmentation: Augmentation
    speed: speed.Speed
    objective: objectives.Classify | objectives.Reconstruct
    bare: torch.nn.Module  # the network as build_model made it (what n_params and flops count)
    model: torch.nn.Module  # the objective's network on the device, prepared for speed (and wrapped by DDP)
    net: torch.nn.Module  # the module of the forward pass: inside DistributedDataParallel and/or compiled
    encoder: torch.nn.Module  # the classifier (an autoencoder's encoder): pretrained weights and probes act on it
    optimizer: torch.optim.Optimizer
    freezer: Freezer | None  # which layers train in each epoch (transfer=); None for transfer=none
    generator: torch.Generator  # the data order's and the augmentation's random numbers, seeded by cfg.seed
    data_began_at: float  # time.time() when the data began to load (as the job's start and first_step_at)
    loaded_at: float  # time.time() when it had loaded


def build_parts(cfg, device: torch.device, choices: dict[str, str], world: distributed.World | None = None,
                pending: dict | None = None) -> Parts:
    """Seed, load the data, fit the preprocessing, build the model (with its pretrained weights and probe), the
    optimizer and the freezer, in the order a run does (the order its random numbers are drawn in). world: the
    data-parallel place (None: one process). pending: where records to write once the run is accepted go
    (pretrained.json; None: nowhere)."""
    world = world or distributed.World()
    if cfg.trainer.deterministic:
        torch.use_deterministic_algorithms(True)
    seed_everything(cfg.seed)
    consistency_warnings(cfg.activation, cfg.init, cfg.norm, cfg.regularization)
    recorded.check_sizes(cfg, _too_large, strict=False)  # before a MemoryError (model.widths=[1e9])
    data_began_at = time.time()
    with phase(f"loading data={cfg.data.name}"):
        splits = data.load_splits(cfg.data, device)
    loaded_at = time.time()
    log.info("data=%s: %d train, %d val, %d test images on %s", cfg.data.name, len(splits.train_y),
             len(splits.val_y), len(splits.test_y), device)
    with phase(f"fitting preprocess={choices.get('preprocess', '?')} on {len(splits.train_x):,} training images"):
        preprocess = build.build_preprocess(cfg, splits.train_x).to(device)
    augmentation = build.build_augmentation(cfg)
    fast = speed.setup(cfg.trainer, device)
    objective = build.build_objective(cfg)
    whiten = " (init.first_layer=whiten: the first layer from the data's patches)" \
        if cfg.init.first_layer == "whiten" else ""
    with phase(f"building model={choices.get('model', '?')}{whiten}"):
        bare = build.build_model(cfg, len(splits.classes), build.init_inputs(cfg, preprocess, splits.train_x))
    model = speed.prepare(objective.network(bare.to(device)), fast)
    net = model
    if world.size > 1:
        model, net = distributed.wrap(model, world, device, cfg.trainer.sync_batch_norm)
    net = speed.compiled(net, fast)
    encoder = objective.encoder(model)
    reused = build.build_pretrained(cfg, encoder, pending if world.main else None)
    build.build_probe(cfg, encoder, len(splits.classes))  # transfer.layer: cut at an inner layer
    # before freezing: gradual unfreezing needs every parameter in the optimizer
    optimizer = build.build_optimizer(cfg, model, reused)
    freezer = build.build_freezer(cfg, model)
    generator = torch.Generator(device=device)
    generator.manual_seed(cfg.seed)
    return Parts(splits, preprocess, augmentation, fast, objective, bare, model, net, encoder, optimizer, freezer,
                 generator, data_began_at, loaded_at)


def _too_large(problem: str):
    raise ConfigError(f"{problem}: more than any run on CIFAR-10 needs (a ResNet-18 has 11,000,000 parameters); "
                      "lower the sizes on the command line.")


class Run:
    """Everything one run is made of, and where it stands (`state`, a RunState: step, epoch, history, best)."""

    def __init__(self, cfg, run_dir: Path, choices: dict[str, str], extra_components=(), *,
                 started_at: float | None = None, sweep_trial: bool = False, test: bool = True, on_accept=None):
        """extra_components: components from outside the engine (a sweep's report). started_at: time.time() when
        the job started, the origin of startup_s (None: now). sweep_trial: a trial of a sweep (whose HPARAMS
        columns the sweep writes). test=False: no test pass at the end. on_accept: called once the run has passed
        its checks, before it writes its first file (RunDir)."""
        self.cfg, self.run_dir, self.choices = cfg, Path(run_dir), choices
        self.started_at = time.time() if started_at is None else started_at
        self.sweep_trial, self.test = sweep_trial, test
        self.world = distributed.world()  # under torchrun: this rank's place; rank 0 of 1 otherwise
        if self.world.size > 1:
            distributed.init()
        device = pick_device(cfg.device)
        if self.world.size > 1 and device.type == "cuda":
            device = torch.device("cuda", self.world.local_rank % torch.cuda.device_count())
        self.device = device
        self.resume_from = resume_path(cfg, self.run_dir)
        self.stop_signal: list[int] = []  # the SIGINT/SIGTERM received (runner.engine.train sets the handlers)
        # Nothing is written into the run directory before `accept`: a run refused at start-up leaves it as it was.
        self.dir = RunDir(self.run_dir, self.resume_from, self.world.main, on_accept)
        try:
            self._resume_state, self._remedy = (read_resume_checkpoint(self.resume_from, cfg, device)
                                                if self.resume_from is not None else (None, ""))
            self._start_here(cfg, extra_components)
        except BaseException:
            self.release()
            raise

    def _start_here(self, cfg, extra_components) -> None:
        if self.world.main:
            log.info("run directory %s (%s); watch it with `tensorboard --logdir %s`", self.run_dir,
                     "resuming its checkpoint" if self.dir.resumes_own else
                     f"continuing {self.resume_from}" if self.resume_from else "a new run", self.run_dir)
        self.state = RunState()
        self._build(extra_components)

    # -----------------------------------------------------------------------------------------------------------
    # Building

    def _build(self, extra_components) -> None:
        """build_parts, then what a run adds: the schedule, the weight average, TensorBoard, the progress line and
        the components."""
        cfg, world = self.cfg, self.world
        parts = build_parts(cfg, self.device, self.choices, world, self.dir.pending)
        self.data_began_at = parts.data_began_at  # wall clock, as the job's start and first_step_at
        self.splits, self.preprocess, self.augmentation = parts.splits, parts.preprocess, parts.augmentation
        self.speed, self.objective, self.model, self.net = parts.speed, parts.objective, parts.model, parts.net
        self.optimizer, self.generator = parts.optimizer, parts.generator
        self.steps_per_epoch = data.steps_per_epoch(len(self.splits.train_x), cfg.trainer.batch_size)
        total = self.steps_per_epoch * cfg.trainer.epochs
        self.scheduler = build.build_schedule(cfg, self.optimizer, total, self.steps_per_epoch)
        ema = build.build_averaging(cfg, self.model, total)
        self.n_params = sum(p.numel() for p in parts.bare.parameters())
        self.flops = flops_per_image(parts.bare, tuple(self.splits.train_x.shape[1:]))
        log.info("model=%s: %s parameters, %.1f MFLOPs per image", self.choices.get("model", "?"),
                 f"{self.n_params:,}", self.flops / 1e6)
        # The event file opens (open_tracker) once a resume has said which step to purge from.
        self.tracker = Tracker(self.run_dir, enabled=world.main, lazy=True)
        probe = Probe(self.model, cfg.diagnostics, self.tracker) if world.main else None
        # a sweep's trials print lines even on a terminal: parallel trials would fight over one bar
        self.progress = Progress(progress_mode(cfg.trainer.progress, cfg.trainer.progress_every_s, world.main,
                                               sys.stderr.isatty() and not in_multirun()),
                                 self.steps_per_epoch, cfg.trainer.epochs, cfg.trainer.progress_every_s)
        self.components = components.build_components(cfg, self, ema, parts.freezer, probe, extra_components)
        self.ema = ema
        # metrics.json's `startup` (its setup_s and first_step_s are added at the end)
        self.built_at = time.time()
        self.startup = {"data_s": parts.loaded_at - self.data_began_at, "build_s": self.built_at - parts.loaded_at}

    def hooks(self, name: str) -> list:
        """The bound `name` hooks of the components that override it, in order; an undeclared name is refused
        (runner.engine.hooks)."""
        return components.bound(self.components, name)

    # -----------------------------------------------------------------------------------------------------------
    # The state that survives a kill

    def weights(self, epoch: int) -> dict:
        """What a model checkpoint (best, snapshot, last) holds to be evaluated or transferred on its own: the
        classifier's parameters under "model" (an autoencoder's encoder; its decoder under "decoder")."""
        return {**self.objective.weights(self.model), "preprocess": self.preprocess.state_dict(), "epoch": epoch}

    @property
    def step(self) -> int:
        """The optimizer steps taken (state.step), for readers outside the engine."""
        return self.state.step

    def state_dict(self) -> dict:
        state = {
            **self.weights(self.state.epochs_done),
            "format": FORMAT,
            "config": OmegaConf.to_container(self.cfg, resolve=True),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": schedules.state_dict(self.scheduler),
            "rng": rng_states(self.generator),
            **self.state.state_dict(),
            "components": {c.name: c.state_dict() for c in self.components if c.name},
        }
        if self.speed.scaler is not None:
            state["scaler"] = self.speed.scaler.state_dict()
        return state

    def load_state_dict(self, state: dict, optimizer: bool = True) -> None:
        """optimizer=False: the optimizer keeps the state it has (fresh), as after another optimizer's checkpoint."""
        self.objective.load_weights(self.model, state)
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
        self.state.load_state_dict(state)

    def save_last(self) -> None:
        if self.world.main:
            self._save(self.state_dict(), self.run_dir / LAST)

    def save_weights(self, path: Path, epoch: int) -> None:
        if self.world.main:
            self._save(self.weights(epoch), path)

    def _save(self, state: dict, path: Path) -> None:
        self.dir.save(state, path, self.state.epochs_done)

    def accept(self) -> None:
        """The run passed every check and begins to write into its directory (RunDir.accept)."""
        self.dir.accept()

    def release(self) -> None:
        """Give up the run directory (RunDir.release)."""
        self.dir.release()

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
        """Continue from trainer.resume's checkpoint (read and checked by rundir.read_resume_checkpoint). A run with more epochs
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
        at = self.state
        at.resumes.append({"epoch": at.epoch, "step": at.step, "checkpoint": str(path), "changes": changes,
                           "optimizer": "fresh" if another else "kept"})
        log.info("resumed from %s at epoch %d (step %d)", path, at.epoch, at.step)
        if another:
            log.warning("trainer.resume_allow: another optimizer (%s): its state (momentum, moment estimates, step "
                        "counts) is not carried over, the optimizer starts afresh at step %d; the weights, schedule "
                        "position and history continue", another, at.step)
        if planned != self.cfg.trainer.epochs and at.epoch < self.cfg.trainer.epochs:
            log.info("trainer.epochs=%d (the checkpoint planned %d): the schedule is re-planned over %d epochs and "
                     "continues from step %d at lr %.3g, the new plan's value there", self.cfg.trainer.epochs,
                     planned, self.cfg.trainer.epochs, at.step, self.optimizer.param_groups[0]["lr"])

    def open_tracker(self) -> None:
        """TensorBoard events in the run directory. On resume, the events an earlier, killed process wrote after
        the checkpoint's step are dropped (purge_step), so every epoch's scalars are there exactly once."""
        self.tracker.open(purge_step=self.state.step + 1 if self.resume_from else None)

