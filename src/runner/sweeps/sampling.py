"""A sweep's sampler seeded once per trial, so that workers sharing a study never draw the same point. Imported by
the sweeper only (a run that is not a sweep never imports Optuna)."""

import numpy as np
from hydra.utils import instantiate
from optuna.samplers import BaseSampler


def trial_seed(seed: int, number: int) -> int:
    """The seed of trial `number`'s sampler in a study seeded `seed`: independent streams for any two trials."""
    return int(np.random.SeedSequence([seed, number]).generate_state(1)[0])


class PerTrialSeed(BaseSampler):
    """The configured sampler (random, TPE, GP), built afresh for each trial with the seed trial_seed(seed, number).
    Workers sharing a study each draw their trials with distinct seeds (one sampler seeded once per worker drew the
    same points in every worker), and a trial's draw does not depend on which process makes it: with the random
    sampler, trial N's point depends only on the seed and N; TPE and GP also on the trials finished before it was
    drawn (the same in a sequential or joblib sweep run again; not under several sweep processes at once). With
    seed null each trial's sampler is seeded from the system's entropy."""

    def __init__(self, config: dict):
        self.config = config
        self._sampler = instantiate(config)

    def before_trial(self, study, trial) -> None:
        seed = self.config.get("seed")
        self._sampler = instantiate({**self.config, "seed": None if seed is None else trial_seed(seed, trial.number)})
        self._sampler.before_trial(study, trial)

    def infer_relative_search_space(self, study, trial):
        return self._sampler.infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return self._sampler.sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self._sampler.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study, trial, state, values) -> None:
        self._sampler.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._sampler.reseed_rng()
