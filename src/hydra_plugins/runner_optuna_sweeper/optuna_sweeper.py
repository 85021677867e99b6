"""The sweeper: each multirun job is a trial of an Optuna study kept in the sweep directory (a journal file, or an
RDB for workers on several machines). The study maximizes or minimizes a number of each trial's metrics.json
(hydra.sweeper.metric, direction; by default it maximizes best_val_acc), or several at once (both lists: a
multi-objective study, whose result is a Pareto front); the pruner, trials.csv's rank and the summary follow it.

The search space is written in Hydra's override grammar (runner.sweeps.space), in `hydra.sweeper.params`
(configs/sweep/*.yaml) and on the command line (which wins for the same key), and may be extended in Python by
`hydra.sweeper.custom_search_space` (a function `(cfg, trial) -> None` using Optuna's define-by-run API). Any other
override (`trainer.epochs=3`) is given to every trial as it is.

A trial's job reports the metric's value every epoch and stops itself when the pruner says so
(runner.sweeps.study.trial_context). With hydra.sweeper.test_trials=best the trials skip the test split, and once
they have run the test_best best ones (the Pareto front, for several objectives) are tested once each from their
last checkpoint (runner.sweeps.testing). Whatever the job does -- complete, get pruned, diverge, crash, exit on a
config error -- is recorded in the study and in trials.csv; the sweep stops once the failed trials of a batch exceed
hydra.sweeper.max_failure_rate.

The sampler is built and seeded once per sweep process (runner.sweeps.sampling): the process that draws trial 0
draws what a plain Optuna study with the same sampler and seed draws; another process on the same study (a parallel
worker, a rerun) gets its own stream, so that they never draw the same point. A killed sweep leaves no worker behind
(each worker watches the sweep process), and running its command again records what its jobs finished and resumes
the trials they left unfinished, each in its own job directory from its last checkpoint.
"""

import json
import logging
import os
import socket
import sys
import time
from pathlib import Path

from hydra.core.utils import JobStatus
from hydra.plugins.sweeper import Sweeper
from omegaconf import OmegaConf, open_dict

from runner.sweeps.space import (
    Param,
    SearchSpace,
    grid_points,
    param_of,
    parse_space,
    range_notices,
    short_keys,
    trial_dirname,
)

__all__ = ["OptunaSweeper", "Param", "SearchSpace", "grid_points", "parse_space", "short_keys", "trial_dirname"]

log = logging.getLogger(__name__)

HYDRA_SUBDIR = "${hydra.job.num}"  # Hydra's own hydra.sweep.subdir: replaced by the trial's named directory
RESULTS = "optimization_results.yaml"  # what Hydra's Optuna sweeper plugin writes: best params and value, or front


class SweepError(ValueError):
    """A setting the sweep cannot run with: one line, exit 2."""


class OptunaSweeper(Sweeper):
    def __init__(self, sampler, pruner, params=None, n_trials=None, n_jobs=None, storage=None, study_name=None,
                 spread_gpus="auto", trial=None, metric="best_val_acc", direction="maximize", test_trials="best",
                 test_best=3, max_failure_rate=0.0, custom_search_space=None, search_space=None):
        self.params = dict(params or {})
        self.n_trials, self.n_jobs, self.storage, self.study_name = n_trials, n_jobs, storage, study_name
        self.spread_gpus = spread_gpus
        self.metric, self.direction = _plain(metric), _plain(direction)
        self.test_trials, self.test_best = test_trials, test_best
        self.max_failure_rate, self.custom_search_space = max_failure_rate, custom_search_space
        self.search_space = search_space
        self.hydra_context = self.config = self.launcher = None
        self._device_count = self._extend = None
        self.extra: dict[str, Param] = {}  # parameters custom_search_space suggested

    @property
    def metrics(self) -> list[str]:
        """The study's objectives: one metric, or several (a multi-objective study)."""
        # here, not at the top: Hydra imports every plugin when any command starts (optuna: a sweep only)
        from runner.sweeps.study import names

        return names(self.metric)

    @property
    def multi(self) -> bool:
        return len(self.metrics) > 1

    def _check_settings(self) -> None:
        """The sweeper's own keys, each bad value one line (raised as ValueError, printed by `sweep`)."""
        # here, not at the top: Hydra imports every plugin when any command starts (optuna: a sweep only)
        from runner.sweeps.study import check_settings, direction_warning, objectives

        rate = self.max_failure_rate
        for key, value, ok in (("n_trials", self.n_trials, self.n_trials is None or _positive_int(self.n_trials)),
                               ("n_jobs", self.n_jobs, self.n_jobs is None or _positive_int(self.n_jobs)),
                               ("spread_gpus", self.spread_gpus, self.spread_gpus in ("auto", True, False)),
                               ("max_failure_rate", rate, _number(rate) and 0 <= rate <= 1)):
            if not ok:
                allowed = {"spread_gpus": "auto, true or false", "max_failure_rate": "a share from 0.0 (stop at the "
                           "first failed trial) to 1.0 (never stop)"}.get(key, "null or a positive integer")
                raise SweepError(f"hydra.sweeper.{key}={value!r} is invalid: {allowed}. "
                                 f"Change it with `hydra.sweeper.{key}=<value>`.")
        if self.search_space is not None:
            raise SweepError("hydra.sweeper.search_space is the retired form of Hydra's Optuna sweeper plugin (type, "
                             "low, high, log, step per key), which runner does not read: write each key in "
                             "hydra.sweeper.params in the override grammar instead, e.g. `optimizer.lr: tag(log, "
                             "interval(1e-4, 1))`, `seed: choice(0,1,2)`, `model.depth: range(2,6)`.")
        check_settings(self.metric, self.direction, self.test_trials, self.test_best)
        for metric, direction in objectives(self.metric, self.direction):
            warning = direction_warning(metric, direction)
            if warning:
                log.warning(warning)
        if self.custom_search_space is not None:
            self._extend = _function(self.custom_search_space)

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
        self._check_objectives(space)
        if grid:
            bad = [p.name for p in space.params.values() if p.values is None]
            if bad:
                raise SweepError(f"sampler=grid cannot grid the interval of {', '.join(bad)}: list values instead "
                                 "(`a,b,c`, `range(a,b)`) or sample it with `hydra/sweeper/sampler=random` (or tpe, "
                                 "gp, qmc, ...).")
            if self._extend is not None:
                raise SweepError(f"hydra.sweeper.custom_search_space={self.custom_search_space} needs a sampler to "
                                 "draw what it suggests; sampler=grid only runs listed values: choose one with "
                                 "`hydra/sweeper/sampler=tpe` (or random, ...).")
        elif self.n_trials is None:
            raise SweepError("hydra.sweeper.n_trials=null: a sampled search needs a number of trials. "
                             "Set it with `hydra.sweeper.n_trials=<n>`.")
        if str(self._node("sampler").get("_target_", "")).endswith("BruteForceSampler"):
            bad = [p.name for p in space.params.values() if p.values is None and getattr(p.distribution, "step", 1)
                   is None]
            if bad:
                raise SweepError(f"sampler=bruteforce tries every value, and {', '.join(bad)} is a continuous "
                                 "interval: give it a step (`range(0.1, 0.5, step=0.1)`) or choices, or use "
                                 "`hydra/sweeper/sampler=random` (or tpe, gp, qmc, ...).")
        self._subdir_template()
        # here, not at the top: Hydra imports every plugin when any command starts (optuna: a sweep only)
        from runner.config import validate
        from runner.config.command_line import composed

        def compose(overrides):
            return self.hydra_context.config_loader.load_sweep_config(self.config, overrides)

        for values in space.corners():  # a key a corner's option lacks is runner's one line, as for a single run
            validate(composed(compose, [*space.fixed, *(space.params[k].override(v) for k, v in values.items())]))

    def _check_objectives(self, space: SearchSpace) -> None:
        """The pruner and the sampler against the study's objectives: Optuna prunes a single-objective study only,
        CMA-ES optimizes one objective."""
        # here, not at the top: Hydra imports every plugin when any command starts (optuna: a sweep only)
        from runner.sweeps.study import epoch_key

        pruner = str(self._node("pruner").get("_target_", ""))
        choices = self.config.hydra.runtime.get("choices", {})
        if self.multi and not pruner.endswith("NopPruner"):
            raise SweepError(f"hydra/sweeper/pruner={choices.get('hydra/sweeper/pruner', pruner)} cannot prune a "
                             f"multi-objective study ({len(self.metrics)} metrics): Optuna compares one value per "
                             "epoch. Use `hydra/sweeper/pruner=none`, or a single hydra.sweeper.metric.")
        if not self.multi and epoch_key(self.metric) is None and not pruner.endswith("NopPruner"):
            raise SweepError(f"hydra.sweeper.metric={self.metric} has no value after each epoch for the pruner to "
                             "compare: use `hydra/sweeper/pruner=none`, or a metric with one (best_val_acc, "
                             "final_val_acc, final_val_loss, ...).")
        if self.multi and str(self._node("sampler").get("_target_", "")).endswith("CmaEsSampler"):
            raise SweepError(f"hydra/sweeper/sampler=cmaes optimizes one objective, and hydra.sweeper.metric names "
                             f"{len(self.metrics)}: use `hydra/sweeper/sampler=nsgaii` (or tpe, nsgaiii, random, "
                             "qmc, gp).")
        overlap = [k for k in space.params if k.lstrip("+~") in space.fixed_keys()]
        if overlap:
            raise SweepError(f"{', '.join(sorted(overlap))} is both fixed and searched: drop one of the two.")

    def _subdir_template(self) -> str | None:
        """The user's hydra.sweep.subdir (None: Hydra's default, replaced by the trial's named directory); refused
        when it names the same directory for every trial."""
        template = str(OmegaConf.to_container(self.config.hydra.sweep, resolve=False).get("subdir"))
        if template == HYDRA_SUBDIR:
            return None
        if "${" not in template:
            raise SweepError(f"hydra.sweep.subdir={template} is the same directory for every trial: each trial "
                             "needs its own, e.g. `hydra.sweep.subdir=${hydra.job.num}_${hydra.job.override_dirname}`"
                             " (or leave it out: the trial's number and values).")
        return template

    def _open_study(self, sweep_dir: Path, space: SearchSpace):
        import optuna
        from hydra.utils import instantiate

        # here, not at the top: Hydra imports every plugin when any command starts (optuna: a sweep only)
        from runner.sweeps.study import JOURNAL, directions_of, objectives, open_storage

        self.storage_spec = self.storage or str((sweep_dir / JOURNAL).resolve())
        name = self.study_name or sweep_dir.name
        pairs = objectives(self.metric, self.direction)
        study = optuna.create_study(study_name=name, storage=open_storage(self.storage_spec),
                                    directions=[d for _, d in pairs], pruner=instantiate(self._node("pruner")),
                                    load_if_exists=True)
        # A study started before the metric could be chosen maximized best_val_acc.
        before = list(zip(_list(study.user_attrs.get("metric", "best_val_acc")), directions_of(study), strict=False))
        if "signature" in study.user_attrs and before != pairs:
            raise SweepError(
                f"the study '{name}' in {self.storage_spec} ranks its trials by {_pairs(before)}, not {_pairs(pairs)}:"
                f" run it with hydra.sweeper.metric={_shown([m for m, _ in before])} hydra.sweeper.direction="
                f"{_shown([d for _, d in before])}, or start a new sweep with `hydra.sweep.dir=<new dir>`.")
        study.set_user_attr("metric", self.metric)
        signature = {"fixed": sorted(space.fixed),
                     "params": {k: optuna.distributions.distribution_to_json(p.distribution)
                                for k, p in space.params.items()}}
        if self.custom_search_space is not None:
            signature["custom_search_space"] = self.custom_search_space
        if "signature" not in study.user_attrs:
            study.set_user_attr("signature", signature)
            study.set_user_attr("param_keys", list(space.params))
        elif study.user_attrs["signature"] != signature:
            raise SweepError(
                f"the study '{name}' in {self.storage_spec} was started with other overrides or another search "
                f"space ({study.user_attrs['signature']}). Run the same command to resume it, or start a new sweep "
                "with `hydra.sweep.dir=<new dir>` (or `hydra.sweeper.study_name=<new name>`).")
        sampler = self._node("sampler")
        if not sampler.get("grid"):
            # here, not at the top: Hydra imports every plugin when any command starts (optuna: a sweep only)
            from runner.sweeps.sampling import StudySampler

            study.sampler = StudySampler(sampler)
        return study

    def _recover(self, study, sweep_dir: Path, wait_s: float = 30) -> list:
        """The trials left running by a sweep process of this machine that has ended (killed, power cut, stopped
        by Ctrl-C). A trial whose job finished (its worker outlived the sweep) is recorded as its metrics.json says;
        the others are returned, to be run again in their job directory, where trainer.resume=auto continues from
        the last checkpoint. A job still running (a worker that has not yet noticed the end of its sweep) is waited
        for up to wait_s seconds, then left alone."""
        from optuna.trial import TrialState

        # here, not at the top: Hydra imports every plugin when any command starts (optuna: a sweep only)
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
        # here, not at the top: Hydra imports every plugin when any command starts (optuna: a sweep only)
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

        # here, not at the top: Hydra imports every plugin when any command starts (optuna: a sweep only)
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
            _refuse(err)
        if not grid:
            for line in range_notices(space):
                log.warning(line)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        (sweep_dir / glue.SPACE).write_text(json.dumps({k: p.describe() for k, p in space.params.items()}, indent=2))
        interrupted, stopped = self._search(study, space, grid, sweep_dir)
        if self.test_trials == "best" and not interrupted and not stopped:
            self._test_best(study, sweep_dir)
        rows = self._write_table(study)
        glue.write_experiment(sweep_dir, [sweep_dir / r["job_dir"] for r in rows
                                          if r["job_dir"] and (sweep_dir / r["job_dir"]).is_dir()], self.metrics)
        log.info("sweep %s: %s. Table: %s", sweep_dir, glue.summary(rows), sweep_dir / glue.TABLE)
        self._log_best(study, space, sweep_dir)
        log.info("compare the trials: python -m runner.report %s  |  tensorboard --logdir %s", sweep_dir, sweep_dir)
        if stopped:
            print(f"error: {stopped}", file=sys.stderr)
            sys.exit(1)
        if interrupted:
            log.warning("interrupted: to go on, run the same command again with hydra.sweep.dir=%s", sweep_dir)
            sys.exit(130)  # the shell's code for Ctrl-C
        return rows

    def _write_table(self, study) -> list[dict]:
        # here, not at the top: Hydra imports every plugin when any command starts (optuna: a sweep only)
        from runner.sweeps import study as glue

        keys = list(dict.fromkeys([*study.user_attrs["param_keys"], *self.extra]))
        rows = glue.table_rows(study, keys, self.metric)
        glue.write_table(Path(str(self.config.hydra.sweep.dir)) / glue.TABLE, rows, keys, self.metric)
        return rows

    def _search(self, study, space: SearchSpace, grid: bool, sweep_dir: Path) -> tuple[bool, str | None]:
        """Run the trials the study lacks, batch by batch. Returns (interrupted by the user, why the sweep stopped
        on failed trials, or None)."""
        from optuna.trial import TrialState

        points = grid_points(space) if grid else []
        target = min(self.n_trials or len(points), len(points)) if grid else self.n_trials
        for trial in study.get_trials(deepcopy=False):  # what custom_search_space suggested on earlier runs
            for name in trial.params.keys() - space.params.keys() - self.extra.keys():
                self.extra[name] = param_of(name, trial.distributions[name])
        unfinished = self._recover(study, sweep_dir)  # before counting: it records what ended jobs finished
        done_states = (TrialState.COMPLETE, TrialState.PRUNED)
        already = sum(t.state in done_states for t in study.get_trials(deepcopy=False))
        if already:
            self._notice_total(study, already, target, grid)
        budget, launched, batch_size, interrupted, stopped = max(0, target - already), 0, self._batch_size(), False, None
        attempted = set()  # grid points launched by this process: a failed one is retried by the next run only
        while launched < budget and not interrupted and not stopped:
            # The trials an ended sweep process left unfinished first (in their own job directories), then new ones.
            k = min(batch_size, budget - launched)
            batch, unfinished = unfinished[:k], unfinished[k:]
            taken = study.get_trials(deepcopy=False, states=(*done_states, TrialState.RUNNING))
            if grid:
                taken_keys = {self._key(space, t.params) for t in taken if t.params.keys() == space.params.keys()}
                todo = [p for p in points if self._key(space, p) not in taken_keys | attempted][:target - len(taken)]
                room = len(todo)
            else:
                room = target - len(taken)
            n = min(batch_size - len(batch), room, budget - launched - len(batch))
            if n <= 0 and not batch:
                break
            for i in range(max(n, 0)):
                if grid:
                    study.enqueue_trial(todo[i])
                    attempted.add(self._key(space, todo[i]))
                batch.append(self._ask(study, space))
            for trial in batch:
                study._storage.set_trial_user_attr(trial._trial_id, "worker", f"{socket.gethostname()}:{os.getpid()}")
            interrupted, failed = self._run_batch(study, batch, space, sweep_dir)
            launched += len(batch)
            stopped = self._too_many_failures(failed, len(batch))
            self._write_table(study)
            if getattr(study.sampler, "exhausted", False) and launched < budget:
                log.info("every point of the search space has run (%d trials): the sweep ends before "
                         "hydra.sweeper.n_trials=%d", len(study.trials), target)
                break
        return interrupted, stopped

    @staticmethod
    def _key(space: SearchSpace, params: dict) -> tuple:
        return tuple(space.params[k].override(params[k]) for k in space.params)

    def _notice_total(self, study, already: int, target: int, grid: bool) -> None:
        """n_trials is the study's total (Hydra's Optuna sweeper plugin runs n_trials more on every run): say so in
        one line when a rerun finds trials done."""
        if grid and self.n_trials is None:
            log.info("resuming study '%s': %d of the grid's %d points already done", study.study_name, already,
                     target)
        elif already >= target:
            log.warning("study '%s' has %d of hydra.sweeper.n_trials=%d trials done: n_trials is the study's total, "
                        "not a number to add (Hydra's Optuna sweeper plugin would run %d more), so nothing is run; "
                        "to run more, raise it, e.g. hydra.sweeper.n_trials=%d", study.study_name, already, target,
                        target, already + target)
        else:
            log.info("resuming study '%s': %d of %d trials already done (hydra.sweeper.n_trials is the study's "
                     "total: %d more to run)", study.study_name, already, target, target - already)

    def _ask(self, study, space: SearchSpace):
        """A new trial (an enqueued grid point, or drawn by the sampler), with what custom_search_space adds."""
        trial = study.ask({k: p.distribution for k, p in space.params.items()})
        if self._extend is None:
            return trial
        from optuna.trial import TrialState

        try:
            self._extend(self.config, trial)
        except Exception as err:  # the user's function: its error is theirs to fix, before any trial runs more
            study.tell(trial, state=TrialState.FAIL)
            _refuse(SweepError(f"hydra.sweeper.custom_search_space={self.custom_search_space} raised "
                               f"{type(err).__name__}: {' '.join(str(err).split())} (trial {trial.number})"))
        clash = sorted(k for k in set(trial.params) - set(space.params) if k.lstrip("+~") in space.fixed_keys())
        if clash:
            study.tell(trial, state=TrialState.FAIL)
            _refuse(SweepError(f"hydra.sweeper.custom_search_space={self.custom_search_space} suggests "
                               f"{', '.join(clash)}, which an override fixes: drop the override, or the suggestion."))
        for name in trial.params.keys() - space.params.keys() - self.extra.keys():
            self.extra[name] = param_of(name, trial.distributions[name])
        return trial

    def _too_many_failures(self, failed: list[str], n: int) -> str | None:
        """Why the sweep stops, when the failed trials of the last batch (of n) exceed max_failure_rate; None
        otherwise. Pruned and diverged trials are results, not failures."""
        if not failed or len(failed) / n <= self.max_failure_rate:
            return None
        return (f"{len(failed)} of the {n} trial(s) of the last batch failed ({failed[0]}), more than "
                f"hydra.sweeper.max_failure_rate={self.max_failure_rate} allows: the sweep stops (trials.csv has "
                "each message). Fix the cause and run the same command again, or let the sweep go on past failed "
                "trials with `hydra.sweeper.max_failure_rate=1.0` (or a share such as 0.25).")

    def _log_best(self, study, space: SearchSpace, sweep_dir: Path) -> None:
        """The best trial (the Pareto front, for several objectives) in the log and in optimization_results.yaml."""
        # here, not at the top: Hydra imports every plugin when any command starts (optuna: a sweep only)
        from runner.sweeps import study as glue

        best = glue.best_trials(study, 1)
        if not best:
            return

        def params(trial) -> dict:
            found = {**space.params, **self.extra}
            return {k: found[k].clean(v) for k, v in trial.params.items() if k in found}

        def shown(trial) -> str:
            return " ".join(f"{k}={v}" for k, v in trial.user_attrs.get("values", {}).items())

        if self.multi:
            front = [{"params": params(t), "values": list(t.values), "trial": t.number} for t in best]
            results = {"name": "optuna", "metrics": self.metrics, "solutions": front}
            log.info("Pareto front of %s: %d trial(s)", ", ".join(self.metrics), len(best))
            for t in best:
                values = ", ".join(f"{m} {_shown_value(v)}" for m, v in zip(self.metrics, t.values, strict=True))
                log.info("  trial %d: %s (%s) in %s", t.number, values, shown(t),
                         sweep_dir / t.user_attrs.get("job_dir", ""))
        else:
            t = best[0]
            results = {"name": "optuna", "metric": self.metric, "best_params": params(t), "best_value": t.value,
                       "best_trial": t.number}
            log.info("best: trial %d, %s %.4f (%s) in %s", t.number, self.metric, t.value, shown(t),
                     sweep_dir / t.user_attrs.get("job_dir", ""))
        OmegaConf.save(OmegaConf.create(results), sweep_dir / RESULTS)

    def _test_best(self, study, sweep_dir: Path) -> None:
        """Test the test_best best completed trials (every trial of the Pareto front, for several objectives) that
        left their test pass to the sweep, once each (runner.sweeps.testing.test_trials)."""
        # here, not at the top: Hydra imports every plugin when any command starts (optuna: a sweep only)
        from runner.sweeps import study as glue

        chosen = [t for t in glue.best_trials(study, self.test_best)
                  if (sweep_dir / t.user_attrs.get("job_dir", "-")).is_dir()]
        # here, not at the top: Hydra imports every plugin when any command starts (optuna: a sweep only)
        from runner.sweeps import testing  # torch is imported from here on

        which = "trial(s) of the Pareto front" if self.multi else f"best trial(s) by {self.metric}"
        testing.run_test_pass(study, sweep_dir, chosen, which)

    def _subdir(self, study, trial, overrides: list[str], labels: list[str]) -> str:
        """The trial's job directory, relative to the sweep directory: the user's hydra.sweep.subdir resolved for
        this trial (hydra.job.num is the trial's number), else its number and values (trial_dirname). A directory
        another trial of the study already has gets the trial's number appended."""
        template = self._subdir_template()
        if template is None:
            return trial_dirname(trial.number, labels)
        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
        with open_dict(cfg):
            cfg.hydra.job.num, cfg.hydra.job.id = trial.number, str(trial.number)
        subdir = str(cfg.hydra.sweep.subdir)
        taken = {t.user_attrs.get("job_dir") for t in study.get_trials(deepcopy=False) if t.number != trial.number}
        if subdir in taken:
            log.warning("hydra.sweep.subdir=%s gives trial %d the directory of an earlier trial, %s: it runs in "
                        "%s-%d instead", template, trial.number, subdir, subdir, trial.number)
            subdir = f"{subdir}-{trial.number}"
        return subdir

    def _run_batch(self, study, batch: list, space: SearchSpace, sweep_dir: Path) -> tuple[bool, list[str]]:
        """Run these trials (new, or resumed in their job directory) and record each one's outcome. Returns (whether
        the user interrupted them: the sweep stops, and its next run resumes them; 'trial N: message' of each
        trial that failed)."""
        # here, not at the top: Hydra imports every plugin when any command starts (optuna: a sweep only)
        from runner.sweeps import study as glue

        jobs, dirs, found = [], [], {**space.params, **self.extra}
        names = short_keys(list(found))
        for trial, device in zip(batch, self._devices(len(batch), space), strict=True):
            params = {k: trial.params[k] for k in found if k in trial.params}
            # The same overrides for a resumed trial: its checkpoint is refused under another config.
            job = [*space.fixed, *(found[k].override(v) for k, v in params.items())]
            job += [f"device={device}"] if device else []
            subdir = trial.user_attrs.get("job_dir") or self._subdir(
                study, trial, job, [f"{names[k]}={found[k].label(v)}" for k, v in params.items()])
            # The trial's storage id (Optuna keeps it private) lets the job report to this very trial; the sweep
            # process's id lets a worker process end with it.
            spec = {"storage": self.storage_spec, "study": study.study_name, "trial_id": trial._trial_id,
                    "pruner": self._node("pruner"), "sweeper_pid": os.getpid(),
                    "metric": None if self.multi else self.metric, "test": self.test_trials == "all"}
            jobs.append([*job, f"hydra.sweep.subdir={_quote(subdir)}", f"hydra.sweeper.trial={_quote(json.dumps(spec))}"])
            dirs.append(sweep_dir / subdir)
            values = {k: found[k].text(v) for k, v in params.items()}
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
        failed = []
        for trial, job_dir, ret in zip(batch, dirs, returns, strict=True):
            job_error = error
            if ret is not None and ret.status == JobStatus.FAILED:
                job_error = " ".join(f"{type(ret._return_value).__name__}: {ret._return_value}".split())
            outcome = glue.read_outcome(job_dir, job_error, interrupted, self.metric)
            interrupted |= outcome["status"] == "interrupted"
            _tell(study, trial, outcome, job_dir.name, self.metric)
            if outcome["status"] == "failed":
                failed.append(f"trial {trial.number}: {outcome['message']}")
        return interrupted, failed


def _tell(study, trial, outcome: dict, job_dir: str, metric="best_val_acc", note: str = "") -> None:
    """Record a trial's outcome (runner.sweeps.study.read_outcome) in the study: a completed trial's value is its
    metrics.json's `metric` (a list of them for several). An interrupted trial stays running there: the next run of
    the sweep, finding its sweep process ended, resumes it."""
    from optuna.trial import TrialState

    # here, not at the top: Hydra imports every plugin when any command starts (optuna: a sweep only)
    from runner.sweeps.study import names

    for name, value in outcome.items():
        if value is not None and name != "value":
            study._storage.set_trial_user_attr(trial._trial_id, name, value)
    status = outcome["status"]
    if status == "completed" and outcome["value"] is None:
        status = outcome["status"] = "failed"
        outcome["message"] = (f"its metrics.json has no number {', '.join(names(metric))} (hydra.sweeper.metric) to "
                              "rank it by")
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
    if status == "completed":
        values = outcome["value"] if isinstance(outcome["value"], list) else [outcome["value"]]
        detail = ", ".join(f"{m} {_shown_value(v)}" for m, v in zip(names(metric), values, strict=True))
    else:
        detail = (f"best_val_acc {outcome['best_val_acc']:.4f}" if outcome["best_val_acc"] is not None
                  else outcome["message"] or "")
    (log.warning if status in ("failed", "interrupted") else log.info)("trial %d %s: %s  [%s]%s", trial.number,
                                                                       status, detail, job_dir, note and " " + note)


def _refuse(err: Exception):
    """A setting the sweep cannot run with: one line on stderr, exit 2 (HYDRA_FULL_ERROR=1: the traceback)."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        raise err
    print(f"error: {err}", file=sys.stderr)
    sys.exit(2)


def _function(path):
    """custom_search_space's function, imported from its dotted path; one line when it cannot be."""
    from hydra.utils import get_method

    if not isinstance(path, str) or "." not in path:
        raise SweepError(f"hydra.sweeper.custom_search_space={path!r} is not a dotted path to a function "
                         "`(cfg, trial) -> None`: write `mypackage.module.function`.")
    try:
        return get_method(path)
    except Exception as err:
        cause = " ".join(str(err.__cause__ or err).split())[:300]
        raise SweepError(f"hydra.sweeper.custom_search_space={path} cannot be imported ({cause}): give the dotted "
                         "path of a function `(cfg, trial) -> None` in an importable module.") from None


def _plain(value):
    """A list of the config (ListConfig) as a list; anything else as it is."""
    return OmegaConf.to_container(value) if OmegaConf.is_list(value) else value


def _list(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _shown(values: list) -> str:
    return values[0] if len(values) == 1 else f"[{','.join(values)}]"


def _pairs(pairs: list) -> str:
    return ", ".join(f"{m} ({d})" for m, d in pairs)


def _shown_value(value) -> str:
    """A metric's value in a log line: a count with thousands separators (model_params 17,082), else 4 digits."""
    if float(value).is_integer() and abs(value) >= 1000:
        return f"{int(value):,}"
    return f"{value:.4g}"


def _quote(text: str) -> str:
    return "'" + text.replace("'", "\\'") + "'"


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0
