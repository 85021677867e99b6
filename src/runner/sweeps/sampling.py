"""A sweep's sampler, built and seeded once per sweep process. Imported by the sweeper only (a run that is not a
sweep never imports Optuna)."""

import numpy as np
from hydra.utils import instantiate
from optuna.samplers import BaseSampler


def process_seed(seed: int | None, first_trial: int) -> int | None:
    """The seed of a sweep process's sampler whose first trial is `first_trial`: the configured seed for the process
    that draws the study's trial 0 (its draws are those of a plain Optuna study with that sampler and seed), an
    independent stream derived from (seed, first_trial) for any other (a second worker on the study, a rerun of the
    sweep), so that two processes never draw the same points. None: unseeded."""
    if seed is None or first_trial == 0:
        return seed
    return int(np.random.SeedSequence([seed, first_trial]).generate_state(1)[0])


def walks_one_sequence(config: dict) -> bool:
    """A quasi-random sampler (QMC): its points are one low-discrepancy sequence that every process walks through
    the study's storage (Optuna keeps the next index there), so every process takes the same seed."""
    return str(config.get("_target_", "")).endswith("QMCSampler")


class StudySampler(BaseSampler):
    """The configured sampler (hydra/sweeper/sampler: tpe, random, gp, cmaes, nsgaii, nsgaiii, qmc, bruteforce),
    built once, at this process's first trial, with process_seed(seed, that trial's number) (QMC: the seed itself),
    and used for every later trial of this process: one random stream per study and process, as a plain Optuna
    study seeded once draws, never a sampler rebuilt per trial (a QMC sampler rebuilt with a new seed starts a new
    sequence at every trial)."""

    def __init__(self, config: dict):
        self.config = config
        self._sampler = None
        self.exhausted = False  # the sampler has run every point of a finite space (bruteforce)

    def before_trial(self, study, trial) -> None:
        if self._sampler is None:
            seed = self.config.get("seed")
            seed = seed if walks_one_sequence(self.config) else process_seed(seed, trial.number)
            self._sampler = instantiate({**self.config, "seed": seed})
        self._sampler.before_trial(study, trial)

    def infer_relative_search_space(self, study, trial):
        return self._sampler.infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return self._sampler.sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self._sampler.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study, trial, state, values) -> None:
        if self._sampler is None:  # a trial an ended sweep process left, recorded before this one drew any
            return
        try:
            self._sampler.after_trial(study, trial, state, values)
        except RuntimeError as err:
            # BruteForceSampler stops the study once every point has run, through Study.stop, which Optuna allows
            # inside Study.optimize only: the sweeper asks and tells, and stops on `exhausted` instead.
            if "Study.stop" not in str(err):
                raise
            self.exhausted = True

    def reseed_rng(self) -> None:
        if self._sampler is not None:
            self._sampler.reseed_rng()
