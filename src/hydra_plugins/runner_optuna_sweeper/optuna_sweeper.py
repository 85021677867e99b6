"""The sweeper: each multirun job is a trial of an Optuna study kept in the sweep directory (a journal file, or an
RDB for workers on several machines). The study maximizes or minimizes a number of each trial's metrics.json
(hydra.sweeper.metric, direction; by default it maximizes best_val_acc); the pruner, trials.csv's rank and the
summary follow it.

The search space is written in Hydra's override grammar, in `hydra.sweeper.params` (configs/sweep/*.yaml) and on
the command line (which wins for the same key):
    a,b,c   choice(a,b,c)   range(0,3)     categorical: the axes of a grid (sampler=grid), else sampled
    interval(lo,hi)   int(interval(lo,hi)) uniform float / integer
    tag(log, interval(lo,hi))              log-uniform: the lecture's 10 ** uniform(-6, 1) is
                                           tag(log, interval(1e-6, 10))
Any other override (`trainer.epochs=3`) is given to every trial as it is.

A trial's job reports the metric's value every epoch and stops itself when the pruner says so
(runner.sweeps.study.trial_context). With hydra.sweeper.test_trials=best the trials skip the test split, and once
they have run the test_best best ones are tested once each from their last checkpoint (runner.sweeps.testing). Whatever the job does -- complete, get pruned, diverge, crash, exit on a config
error -- is recorded in the study and in trials.csv, and the sweep goes on.

Parallel workers (a joblib launcher, or several sweep processes on one study) never draw the same point: each trial
is drawn by a sampler seeded from (seed, trial number). A killed sweep leaves no worker behind (each worker watches
the sweep process), and running its command again records what its jobs finished and resumes the trials they left
unfinished, each in its own job directory from its last checkpoint.
"""

import itertools
import json
import logging
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobStatus
from hydra.plugins.sweeper import Sweeper
from omegaconf import OmegaConf

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------------------------
# The search space

@dataclass
class Param:
    name: str  # the override's key as written (`optimizer.lr`, `optimizer`, `+foo`)
    distribution: object  # an optuna.distributions distribution
    texts: dict | None = None  # categorical: choice -> its text in an override

    def override(self, value) -> str:
        text = self.texts[value] if self.texts is not None else repr(value) if isinstance(value, float) else str(value)
        return f"{self.name}={text}"

    def describe(self) -> dict:
        """The range or choices, for runner.report (search_space.json)."""
        d = self.distribution
        if self.texts is not None:
            return {"kind": "categorical", "choices": list(self.texts.values())}
        return {"kind": type(d).__name__.removesuffix("Distribution").lower(), "low": d.low, "high": d.high,
                "log": d.log}

    def label(self, value) -> str:
        """Short, for a directory name: 3 significant digits of a sampled float."""
        if self.texts is not None:
            return self.texts[value]
        return f"{value:.3g}" if isinstance(value, float) else str(value)


@dataclass
class SearchSpace:
    fixed: list[str]  # overrides every trial gets
    params: dict[str, Param]

    def corners(self):
        """One value set per choice and per interval end (the others at their first choice or low end): enough
        to catch a bad option name or an out-of-range bound before any trial runs."""
        first = {name: _ends(p.distribution)[0] for name, p in self.params.items()}
        yield first
        for name, p in self.params.items():
            for value in _ends(p.distribution)[1:]:
                yield {**first, name: value}


def _ends(distribution) -> list:
    return list(distribution.choices) if hasattr(distribution, "choices") else [distribution.low, distribution.high]


def _plain(value) -> bool:
    return value is None or type(value) in (str, int, float, bool)


def parse_space(lines: list[str], config_loader=None) -> SearchSpace:
    """The search space of these override lines (later lines replace earlier ones with the same key)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    overrides = {}
    for override in OverridesParser.create(config_loader=config_loader).parse_overrides(lines):
        overrides[override.get_key_element()] = override
    fixed, params = [], {}
    for key, override in overrides.items():
        if not override.is_sweep_override():
            fixed.append(override.input_line)
        elif override.is_interval_sweep():
            sweep = override.value()
            log_scale = "log" in sweep.tags
            if not sweep.start < sweep.end or (log_scale and sweep.start <= 0):
                need = "0 < lo < hi for a log scale" if log_scale else "lo < hi"
                raise ValueError(f"{override.input_line}: the interval needs {need}. Fix the bounds of `{key}`.")
            if isinstance(sweep.start, int) and isinstance(sweep.end, int):
                distribution = IntDistribution(sweep.start, sweep.end, log=log_scale)
            else:
                distribution = FloatDistribution(float(sweep.start), float(sweep.end), log=log_scale)
            params[key] = Param(key, distribution)
        else:
            texts = list(override.sweep_string_iterator())
            choices = [v if _plain(v) else t for v, t in zip(override.sweep_iterator(), texts, strict=True)]
            params[key] = Param(key, CategoricalDistribution(choices), dict(zip(choices, texts, strict=True)))
    return SearchSpace(fixed, params)


def grid_points(space: SearchSpace) -> list[dict]:
    """Every combination of the categorical choices, in the order written (the last key varies fastest)."""
    names = list(space.params)
    choices = [space.params[n].distribution.choices for n in names]
    return [dict(zip(names, values, strict=True)) for values in itertools.product(*choices)]


def short_keys(names: list[str]) -> dict[str, str]:
    """Keys as a directory name shows them: the last two parts of a longer dotted key (`regularization.l2.value`
    -> `l2.value`), unless two keys would then read the same."""
    short = {n: ".".join(n.split(".")[-2:]) for n in names}
    return short if len(set(short.values())) == len(short) else {n: n for n in names}


def trial_dirname(number: int, labels: list[str], limit: int = 100) -> str:
    """`007_optimizer=adam,optimizer.lr=0.00123`: the trial number, then what this trial sets. This is also the
    run's name in TensorBoard, so it says what differs; characters a path or a shell would trip on become `-`."""
    name = f"{number:03d}" + ("_" + ",".join(labels) if labels else "")
    safe = "".join(c if c.isalnum() or c in "._=,+-[]" else "-" for c in name)
    return safe[:limit]


def _quote(text: str) -> str:
    return "'" + text.replace("'", "\\'") + "'"


# ---------------------------------------------------------------------------------------------------------------
# The sweeper

class OptunaSweeper(Sweeper):
    def __init__(self, sampler, pruner, params=None, n_trials=None, n_jobs=None, storage=None, study_name=None,
                 spread_gpus="auto", trial=None, metric="best_val_acc", direction="maximize", test_trials="best",
                 test_best=3):
        self.params = dict(params or {})
        self.n_trials, self.n_jobs, self.storage, self.study_name = n_trials, n_jobs, storage, study_name
        self.spread_gpus = spread_gpus
        self.metric, self.direction, self.test_trials, self.test_best = metric, direction, test_trials, test_best
        self.hydra_context = self.config = self.launcher = None
        self._device_count = None

    def _check_settings(self) -> None:
        """The sweeper's own keys, each bad value one line (raised as ValueError, printed by `sweep`)."""
        from runner.sweeps.study import check_settings, direction_warning

        for key, value, ok in (("n_trials", self.n_trials, self.n_trials is None or _positive_int(self.n_trials)),
                               ("n_jobs", self.n_jobs, self.n_jobs is None or _positive_int(self.n_jobs)),
                               ("spread_gpus", self.spread_gpus, self.spread_gpus in ("auto", True, False))):
            if not ok:
                allowed = "auto, true or false" if key == "spread_gpus" else "null or a positive integer"
                raise ValueError(f"hydra.sweeper.{key}={value!r} is invalid: {allowed}. "
                                 f"Change it with `hydra.sweeper.{key}=<value>`.")
        check_settings(self.metric, self.direction, self.test_trials, self.test_best)
        warning = direction_warning(self.metric, self.direction)
        if warning:
            log.warning(warning)

    def setup(self, *, hydra_context, task_function, config) -> None:
        from hydra.core.plugins import Plugins

        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(hydra_context=hydra_context,
                                                                task_function=task_function, config=config)

    # -- set-up ---------------------------------------------------------------------------------------------------

    def _node(self, name: str) -> dict:
        """The sampler or pruner config, resolved against the whole config (`${trainer.epochs}`)."""
        return OmegaConf.to_container(self.config.hydra.sweeper[name], resolve=True)

    def _check(self, space: SearchSpace, grid: bool) -> None:
        from runner.sweeps.study import epoch_key

        pruner = str(self._node("pruner").get("_target_", ""))
        if epoch_key(self.metric) is None and not pruner.endswith("NopPruner"):
            raise ValueError(f"hydra.sweeper.metric={self.metric} has no value after each epoch for the pruner to "
                             "compare: use `hydra/sweeper/pruner=none`, or a metric with one (best_val_acc, "
                             "final_val_acc, final_val_loss, ...).")
        if grid:
            bad = [p.name for p in space.params.values() if not hasattr(p.distribution, "choices")]
            if bad:
                raise ValueError(f"sampler=grid cannot grid the interval of {', '.join(bad)}: list values instead "
                                 "(`a,b,c`) or sample it with `hydra/sweeper/sampler=random` (or tpe, gp).")
        elif self.n_trials is None:
            raise ValueError("hydra.sweeper.n_trials=null: a sampled search needs a number of trials. "
                             "Set it with `hydra.sweeper.n_trials=<n>`.")
        from runner.config import validate
        from runner.config.command_line import composed

        def compose(overrides):
            return self.hydra_context.config_loader.load_sweep_config(self.config, overrides)

        for values in space.corners():  # a key a corner's option lacks is runner's one line, as for a single run
            validate(composed(compose, [*space.fixed, *(space.params[k].override(v) for k, v in values.items())]))

    def _open_study(self, sweep_dir: Path, space: SearchSpace):
        import optuna
        from hydra.utils import instantiate

        from runner.sweeps.study import JOURNAL, open_storage

        self.storage_spec = self.storage or str((sweep_dir / JOURNAL).resolve())
        name = self.study_name or sweep_dir.name
        study = optuna.create_study(study_name=name, storage=open_storage(self.storage_spec), direction=self.direction,
                                    pruner=instantiate(self._node("pruner")), load_if_exists=True)
        objective = {"metric": self.metric, "direction": self.direction}
        # A study started before the metric could be chosen maximized best_val_acc.
        before = {"metric": study.user_attrs.get("metric", "best_val_acc"), "direction": study.direction.name.lower()}
        if "signature" in study.user_attrs and before != objective:
            raise ValueError(
                f"the study '{name}' in {self.storage_spec} ranks its trials by {before['metric']} "
                f"({before['direction']}), not {self.metric} ({self.direction}): run it with "
                f"hydra.sweeper.metric={before['metric']} hydra.sweeper.direction={before['direction']}, or start a "
                "new sweep with `hydra.sweep.dir=<new dir>`.")
        study.set_user_attr("metric", self.metric)
        signature = {"fixed": sorted(space.fixed),
                     "params": {k: optuna.distributions.distribution_to_json(p.distribution)
                                for k, p in space.params.items()}}
        if "signature" not in study.user_attrs:
            study.set_user_attr("signature", signature)
            study.set_user_attr("param_keys", list(space.params))
        elif study.user_attrs["signature"] != signature:
            raise ValueError(
                f"the study '{name}' in {self.storage_spec} was started with other overrides or another search "
                f"space ({study.user_attrs['signature']}). Run the same command to resume it, or start a new sweep "
                "with `hydra.sweep.dir=<new dir>` (or `hydra.sweeper.study_name=<new name>`).")
        sampler = self._node("sampler")
        if not sampler.get("grid"):
            from runner.sweeps.sampling import PerTrialSeed

            study.sampler = PerTrialSeed(sampler)
        return study

    def _recover(self, study, sweep_dir: Path, wait_s: float = 30) -> list:
        """The trials left running by a sweep process of this machine that has ended (killed, power cut, stopped
        by Ctrl-C). A trial whose job finished (its worker outlived the sweep) is recorded as its metrics.json says;
        the others are returned, to be run again in their job directory, where trainer.resume=auto continues from
        the last checkpoint. A job still running (a worker that has not yet noticed the end of its sweep) is waited
        for up to wait_s seconds, then left alone."""
        from optuna.trial import TrialState

        from runner.sweeps import study as glue

        stale = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                 if glue.process_state(t.user_attrs.get("worker")) == "ended"]
        deadline = time.monotonic() + wait_s
        while any(glue.process_state(t.user_attrs.get("job")) == "running" for t in stale) and \
                time.monotonic() < deadline:
            time.sleep(0.5)
        again = []
        for trial in stale:
            job = trial.user_attrs.get("job")
            if glue.process_state(job) == "running":
                log.warning("trial %d is still running in process %s, which its ended sweep left behind: it is left "
                            "alone; run the command again once that process has ended", trial.number, job)
                continue
            outcome = glue.final_outcome(sweep_dir / trial.user_attrs.get("job_dir", "-"), self.metric)
            if outcome is None:
                again.append(trial)
            else:
                _tell(study, trial, outcome, trial.user_attrs["job_dir"], self.metric,
                      "(finished after its sweep process ended)")
        if again:
            log.info("resuming %d trial(s) that a sweep process left unfinished: %s", len(again),
                     ", ".join(str(t.number) for t in again))
        return again

    def _batch_size(self) -> int:
        if self.n_jobs is not None:
            return self.n_jobs
        launcher = self.config.hydra.launcher
        n = launcher.get("n_jobs") or launcher.get("array_parallelism") or 1
        return os.cpu_count() or 1 if n == -1 else int(n)

    def _devices(self, n: int, space: SearchSpace) -> list[str | None]:
        from runner.sweeps.study import assign_devices

        submitit = "submitit" in str(self.config.hydra.launcher.get("_target_", ""))
        if (self.spread_gpus is False or (self.spread_gpus == "auto" and submitit) or "device" in space.params
                or self.config.device not in ("auto", "cuda")):
            return [None] * n
        if self._device_count is None:
            import torch

            self._device_count = torch.cuda.device_count()
        return assign_devices(n, self._device_count, str(self.config.device))

    # -- the sweep ------------------------------------------------------------------------------------------------

    def sweep(self, arguments: list[str]):
        import optuna
        from optuna.trial import TrialState

        from runner.sweeps import study as glue

        # Optuna logs every trial at INFO; this sweeper logs each one with its status and job directory instead.
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        grid = bool(self._node("sampler").get("grid"))
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        try:  # a mistake in the sweep's settings is reported in one line before any trial runs, as job.py does
            self._check_settings()
            space = parse_space([f"{k}={v}" for k, v in self.params.items()] + list(arguments),
                                self.hydra_context.config_loader)
            self._check(space, grid)
            sweep_dir.mkdir(parents=True, exist_ok=True)
            study = self._open_study(sweep_dir, space)
        except ValueError as err:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        (sweep_dir / glue.SPACE).write_text(json.dumps({k: p.describe() for k, p in space.params.items()}, indent=2))
        distributions = {k: p.distribution for k, p in space.params.items()}
        points = grid_points(space) if grid else []
        target = min(self.n_trials or len(points), len(points)) if grid else self.n_trials
        table = sweep_dir / glue.TABLE
        param_keys = study.user_attrs["param_keys"]

        def key(params: dict) -> tuple:
            return tuple(space.params[k].override(params[k]) for k in space.params)

        def write_table() -> list[dict]:
            rows = glue.table_rows(study, param_keys, self.metric)
            glue.write_table(table, rows, param_keys, self.metric)
            return rows

        unfinished = self._recover(study, sweep_dir)  # before counting: it records what ended jobs finished
        done_states = (TrialState.COMPLETE, TrialState.PRUNED)
        already = sum(t.state in done_states for t in study.get_trials(deepcopy=False))
        if already:
            log.info("resuming study '%s': %d of %d trials already done", study.study_name, already, target)
        budget, launched, batch_size, interrupted = max(0, target - already), 0, self._batch_size(), False
        attempted = set()  # grid points launched by this process: a failed one is retried by the next run only
        while launched < budget and not interrupted:
            # The trials an ended sweep process left unfinished first (in their own job directories), then new ones.
            k = min(batch_size, budget - launched)
            batch, unfinished = unfinished[:k], unfinished[k:]
            trials = study.get_trials(deepcopy=False)
            taken = [t for t in trials if t.state in done_states or t.state == TrialState.RUNNING]
            if grid:
                taken_keys = {key(t.params) for t in taken if t.params.keys() == space.params.keys()} | attempted
                todo = [p for p in points if key(p) not in taken_keys][:target - len(taken)]
                room = len(todo)
            else:
                room = target - len(taken)
            n = min(batch_size - len(batch), room, budget - launched - len(batch))
            if n <= 0 and not batch:
                break
            for i in range(max(n, 0)):
                if grid:
                    study.enqueue_trial(todo[i])
                    attempted.add(key(todo[i]))
                batch.append(study.ask(distributions))
            for trial in batch:
                study._storage.set_trial_user_attr(trial._trial_id, "worker", f"{socket.gethostname()}:{os.getpid()}")
            interrupted = self._run_batch(study, batch, space, sweep_dir)
            launched += len(batch)
            write_table()

        if self.test_trials == "best" and not interrupted:
            self._test_best(study, sweep_dir)
        rows = write_table()
        glue.write_experiment(sweep_dir, [sweep_dir / r["job_dir"] for r in rows
                                          if r["job_dir"] and (sweep_dir / r["job_dir"]).is_dir()])
        log.info("sweep %s: %s. Table: %s", sweep_dir, glue.summary(rows), table)
        best = glue.best_trials(study, 1)
        if best:
            best = best[0]
            log.info("best: trial %d, %s %.4f (%s) in %s", best.number, self.metric, best.value,
                     " ".join(space.params[k].override(v) for k, v in best.params.items() if k in space.params),
                     sweep_dir / best.user_attrs.get("job_dir", ""))
        log.info("compare the trials: python -m runner.report %s  |  tensorboard --logdir %s", sweep_dir, sweep_dir)
        if interrupted:
            log.warning("interrupted: to go on, run the same command again with hydra.sweep.dir=%s", sweep_dir)
            sys.exit(130)  # the shell's code for Ctrl-C
        return rows

    def _test_best(self, study, sweep_dir: Path) -> None:
        """Test the test_best best completed trials that left their test pass to the sweep, once each (a trial
        tested by an earlier run of the sweep is not tested again; one that another sweep process on this study is
        testing is waited for, and its scores taken); record the scores in the study (trials.csv)."""
        from runner.sweeps import study as glue

        chosen = [t for t in glue.best_trials(study, self.test_best)
                  if (sweep_dir / t.user_attrs.get("job_dir", "-")).is_dir()]
        from runner.sweeps import testing  # torch is imported from here on

        todo = [t for t in chosen if testing.needs_test(sweep_dir / t.user_attrs["job_dir"])]
        if todo:
            log.info("testing the %d best trial(s) by %s once, from their last checkpoint: %s", len(todo),
                     self.metric, ", ".join(str(t.number) for t in todo))
        for trial in todo:
            job_dir = sweep_dir / trial.user_attrs["job_dir"]

            def waiting(number=trial.number, job_dir=job_dir) -> None:
                log.info("trial %d: another process (pid %s) holds its run directory, most likely another sweep "
                         "process testing it: waiting for it to let go (up to %d s)", number, testing.holder(job_dir),
                         testing.BUSY_WAIT_S)

            try:
                metrics, here = testing.test_when_free(job_dir, waiting)
            except testing.RunDirBusy:
                log.warning("trial %d: not tested by this process: another process (pid %s) still holds its run "
                            "directory %s after %d s; run the sweep's command again to test it once it has let go",
                            trial.number, testing.holder(job_dir), job_dir, testing.BUSY_WAIT_S)
                continue
            except Exception as err:  # one trial's test failing (a damaged checkpoint) leaves the others
                log.error("trial %d: its test pass failed: %s: %s", trial.number, type(err).__name__, err)
                continue
            glue.record_test(study, trial.number, metrics)
            log.info("trial %d tested%s: test_acc %s  [%s]", trial.number, "" if here else " by another process",
                     metrics.get("test_acc"), job_dir.name)

    def _run_batch(self, study, batch: list, space: SearchSpace, sweep_dir: Path) -> bool:
        """Run these trials (new, or resumed in their job directory) and record each one's outcome. True when the
        user interrupted them: the sweep stops, and its next run resumes them."""
        from runner.sweeps import study as glue

        jobs, dirs, names = [], [], short_keys(list(space.params))
        for trial, device in zip(batch, self._devices(len(batch), space), strict=True):
            params = {k: trial.params[k] for k in space.params}
            subdir = trial_dirname(trial.number, [f"{names[k]}={space.params[k].label(v)}" for k, v in params.items()])
            # The trial's storage id (Optuna keeps it private) lets the job report to this very trial; the sweep
            # process's id lets a worker process end with it.
            spec = {"storage": self.storage_spec, "study": study.study_name, "trial_id": trial._trial_id,
                    "pruner": self._node("pruner"), "sweeper_pid": os.getpid(), "metric": self.metric,
                    "test": self.test_trials == "all"}
            # The same overrides for a resumed trial: its checkpoint is refused under another config.
            job = [*space.fixed, *(space.params[k].override(v) for k, v in params.items())]
            job += [f"device={device}"] if device else []
            job += [f"hydra.sweep.subdir={_quote(subdir)}",
                    f"hydra.sweeper.trial={_quote(json.dumps(spec))}"]
            jobs.append(job)
            dirs.append(sweep_dir / subdir)
            values = {k: space.params[k].override(v).partition("=")[2] for k, v in params.items()}
            for name, value in (("job_dir", subdir), ("values", values), ("status", None), ("message", None)):
                study._storage.set_trial_user_attr(trial._trial_id, name, value)
        error, returns, interrupted = None, [None] * len(batch), False
        try:
            returns = self.launcher.launch(jobs, initial_job_idx=batch[0].number)
        except KeyboardInterrupt:
            error, interrupted = "interrupted by the user", True
        except Exception as err:  # the launcher itself failed (a worker process killed, a cluster error)
            error = f"the launcher failed: {type(err).__name__}: {err}"
            log.error(error)
        for trial, job_dir, ret in zip(batch, dirs, returns, strict=True):
            job_error = error
            if ret is not None and ret.status == JobStatus.FAILED:
                job_error = " ".join(f"{type(ret._return_value).__name__}: {ret._return_value}".split())
            outcome = glue.read_outcome(job_dir, job_error, interrupted, self.metric)
            interrupted |= outcome["status"] == "interrupted"
            _tell(study, trial, outcome, job_dir.name, self.metric)
        return interrupted


def _tell(study, trial, outcome: dict, job_dir: str, metric: str = "best_val_acc", note: str = "") -> None:
    """Record a trial's outcome (runner.sweeps.study.read_outcome) in the study: a completed trial's value is its
    metrics.json's `metric`. An interrupted trial stays running there: the next run of the sweep, finding its sweep
    process ended, resumes it."""
    from optuna.trial import TrialState

    for name, value in outcome.items():
        if value is not None and name != "value":
            study._storage.set_trial_user_attr(trial._trial_id, name, value)
    status = outcome["status"]
    if status == "completed" and outcome["value"] is None:
        status = outcome["status"] = "failed"
        outcome["message"] = f"its metrics.json has no number {metric} (hydra.sweeper.metric) to rank it by"
        study._storage.set_trial_user_attr(trial._trial_id, "status", status)
        study._storage.set_trial_user_attr(trial._trial_id, "message", outcome["message"])
    if status == "completed":
        study.tell(trial.number, outcome["value"])
    elif status in ("pruned", "diverged"):
        # Told as pruned: samplers (TPE) rank a diverged trial below every completed one, rather than ignoring it
        # as they ignore failed trials.
        study.tell(trial.number, state=TrialState.PRUNED)
    elif status != "interrupted":
        study.tell(trial.number, state=TrialState.FAIL)
    detail = (f"{metric} {outcome['value']:.4f}" if status == "completed" else
              f"best_val_acc {outcome['best_val_acc']:.4f}" if outcome["best_val_acc"] is not None
              else outcome["message"] or "")
    (log.warning if status in ("failed", "interrupted") else log.info)("trial %d %s: %s  [%s]%s", trial.number,
                                                                       status, detail, job_dir, note and " " + note)


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0
