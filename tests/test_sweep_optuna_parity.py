"""runner's sweeper against Hydra's Optuna sweeper plugin (hydra-optuna-sweeper): the plugin's own tests and
documented examples, re-expressed on runner's task as a user would write them, plus what runner adds (samplers
seeded once per study, multi-objective studies, custom_search_space, max_failure_rate, hydra.sweep.subdir, stepped
float ranges). Where runner keeps another meaning on purpose (docs/sweeps.md, "Compared with Hydra's Optuna sweeper
plugin"), the test says so and checks runner's meaning and its one-line notice.

Most sweeps here run in-process: the real sweeper, composed from runner's configs as `python -m runner -m ...`
composes it, with a launcher that writes each trial's metrics.json from a formula of its overrides instead of
training (a sphere, as the plugin's example/sphere.py). The CLI tests at the end train for real."""

import csv
import json
import warnings
from pathlib import Path

import optuna
import pytest
import yaml
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf

from conftest import TINY, run_cli
from hydra_plugins.runner_optuna_sweeper.optuna_sweeper import OptunaSweeper, parse_space
from runner.config import CONFIG_DIR
from runner.sweeps import pareto
from test_sweep import FAST, read_table

optuna.logging.set_verbosity(optuna.logging.WARNING)
LOGGER = "hydra_plugins.runner_optuna_sweeper.optuna_sweeper"


# ---------------------------------------------------------------------------------------------------------------
# The harness: the real sweeper, a launcher that computes each trial's metrics from its overrides

def sphere(values: dict) -> dict:
    """metrics.json of a trial: final_val_loss is a sphere around lr 0.1, momentum 0.5 (the plugin's example
    minimizes x**2 + y**2); model_params grows with the batch size, so that accuracy and size trade off."""
    lr, momentum = float(values.get("optimizer.lr", 0.1)), float(values.get("optimizer.momentum", 0.5))
    loss = (10 * (lr - 0.1)) ** 2 + (10 * (momentum - 0.5)) ** 2
    batch = int(values.get("trainer.batch_size", 100))
    return {"status": "completed", "final_val_loss": loss, "best_val_acc": 1 / (1 + loss) + batch / 1e4,
            "model_params": 1000 + batch, "epochs_completed": 1}


class FormulaLauncher:
    """A launcher that runs no training: each job's metrics.json comes from metrics(its overrides as a dict); a job
    whose metrics are an exception fails as a task that raised it does."""

    def __init__(self, sweep_dir: Path, metrics=sphere):
        self.sweep_dir, self.metrics, self.batches = sweep_dir, metrics, []

    def launch(self, job_overrides, initial_job_idx):
        self.batches.append([list(job) for job in job_overrides])
        returns = []
        for job in job_overrides:
            values = dict(line.lstrip("+").split("=", 1) for line in job)
            job_dir = self.sweep_dir / yaml.safe_load(values["hydra.sweep.subdir"])
            job_dir.mkdir(parents=True, exist_ok=True)
            metrics = self.metrics(values)
            if isinstance(metrics, Exception):
                job_dir.joinpath("metrics.json").write_text("{}")
                returns.append(JobReturn(overrides=list(job), status=JobStatus.FAILED, _return_value=metrics))
                continue
            job_dir.joinpath("metrics.json").write_text(json.dumps(metrics))
            returns.append(JobReturn(overrides=list(job), status=JobStatus.COMPLETED, _return_value=None))
        return returns

    def trials(self) -> list[dict]:
        """Each launched job's searched values (its overrides but the sweeper's own hydra.* ones)."""
        return [{k: v for k, v in (line.split("=", 1) for line in job) if not k.startswith("hydra.")}
                for batch in self.batches for job in batch]


def sweep(tmp_path: Path, args: list[str], metrics=sphere, name: str = "sweep"):
    """`python -m runner -m ARGS` on the formula launcher: (the sweeper, its launcher, the sweep directory). The
    sweep's hydra.* settings go to the config, the other arguments to the sweeper, as Hydra splits them."""
    from hydra._internal.callbacks import Callbacks
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.utils import create_config_search_path
    from hydra.core.plugins import Plugins
    from hydra.types import HydraContext, RunMode

    sweep_dir = tmp_path / name
    loader = ConfigLoaderImpl(config_search_path=create_config_search_path(str(CONFIG_DIR)))
    settings = [a for a in args if a.lstrip("+").startswith(("hydra", "sweep="))]
    fixed = [a for a in args if a not in settings and not any(word in a for word in ("(", ","))]
    cfg = loader.load_configuration("config", overrides=[*TINY, "hydra.sweeper.test_trials=none",
                                                         f"hydra.sweep.dir={sweep_dir}", *settings, *fixed],
                                    run_mode=RunMode.MULTIRUN)
    sweeper = Plugins.instance().instantiate_sweeper(config=cfg, task_function=None,
                                                     hydra_context=HydraContext(loader, Callbacks(cfg)))
    sweeper.launcher = FormulaLauncher(sweep_dir, metrics)
    sweeper.arguments = [*TINY, *(a for a in args if a not in settings)]  # Hydra gives it every task override
    return sweeper, sweeper.launcher, sweep_dir


def run(sweeper) -> list[dict]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return sweeper.sweep(sweeper.arguments)


def study_of(sweep_dir: Path, name: str = "sweep"):
    from runner.sweeps.study import open_storage

    return optuna.load_study(study_name=name, storage=open_storage(str(sweep_dir / "optuna.journal")))


def refusal(sweeper, capsys) -> str:
    """The sweep's one line on stderr when it refuses its settings (exit 2, nothing launched)."""
    with pytest.raises(SystemExit) as exit_:
        run(sweeper)
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and len(err.splitlines()) == 1, err
    assert sweeper.launcher.batches == []
    return err


# ---------------------------------------------------------------------------------------------------------------
# The plugin's tests: discovery, distributions, fixed parameters

def test_discovery():
    from hydra.core.plugins import Plugins
    from hydra.plugins.sweeper import Sweeper

    found = {f"{c.__module__}.{c.__name__}" for c in Plugins.instance().discover(Sweeper)}
    assert f"{OptunaSweeper.__module__}.{OptunaSweeper.__name__}" in found  # the scan imports it afresh


@pytest.mark.parametrize(("line", "expected"), [
    ("key=choice(1,2)", optuna.distributions.CategoricalDistribution([1, 2])),
    ("key=choice(true, false)", optuna.distributions.CategoricalDistribution([True, False])),
    ("key=choice('hello', 'world')", optuna.distributions.CategoricalDistribution(["hello", "world"])),
    ("key=shuffle(range(1,3))", optuna.distributions.CategoricalDistribution([1, 2])),
    ("key=interval(1, 5)", optuna.distributions.FloatDistribution(1, 5)),
    ("key=int(interval(1, 5))", optuna.distributions.IntDistribution(1, 5)),
    ("key=tag(log, interval(1, 5))", optuna.distributions.FloatDistribution(1, 5, log=True)),
    ("key=tag(log, int(interval(1, 5)))", optuna.distributions.IntDistribution(1, 5, log=True)),
    # Kept on purpose: range(a, b) stops before b, as in Hydra's grammar and a grid (the plugin: IntDistribution(1,
    # 3) and FloatDistribution(0.5, 5.5, step=1)); a sampled search says so at its start (test below).
    ("key=range(1,3)", optuna.distributions.IntDistribution(1, 2)),
    ("key=range(0.5, 5.5, step=1)", optuna.distributions.FloatDistribution(0.5, 4.5, step=1)),
    ("key=range(1, 10, step=3)", optuna.distributions.IntDistribution(1, 7, step=3)),
])
def test_override_expressions_become_optuna_distributions(line, expected):
    [param] = parse_space([line]).params.values()
    if isinstance(expected, optuna.distributions.CategoricalDistribution):
        assert set(param.distribution.choices) == set(expected.choices)  # shuffle() may reorder
    else:
        assert param.distribution == expected


@pytest.mark.parametrize(("lines", "fixed", "searched"), [
    (["key=choice(1,2)"], [], {"key"}),
    (["key=5"], ["key=5"], set()),
    (["key1=choice(1,2)", "key2=5"], ["key2=5"], {"key1"}),
    (["key1=choice(1,2)", "key2=5", "key3=range(1,3)"], ["key2=5"], {"key1", "key3"}),
])
def test_fixed_overrides_go_to_every_trial_and_sweeps_are_searched(lines, fixed, searched):
    space = parse_space(lines)
    assert space.fixed == fixed and set(space.params) == searched


def test_a_float_range_is_stepped_without_float_drift():
    [param] = parse_space(["optimizer.momentum=range(0, 1, step=0.1)"]).params.values()
    assert param.values == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]  # Hydra's own range: 0.7000000000000001
    assert param.override(0.30000000000000004) == "optimizer.momentum=0.3"


def test_the_retired_search_space_form_is_refused_in_one_line(tmp_path, capsys):
    """The plugin warns and converts hydra.sweeper.search_space ({type, low, high, log, step} per key), retired since
    Hydra 1.2; runner reads params only and says how to write it there."""
    sweeper, _, _ = sweep(tmp_path, ["+hydra.sweeper.search_space={optimizer.lr:{type:float,low:0.01,high:1}}",
                                     "hydra/sweeper/sampler=random", "hydra.sweeper.n_trials=2"])
    err = refusal(sweeper, capsys)
    assert "hydra.sweeper.search_space" in err and "hydra.sweeper.params" in err and "tag(log, interval(" in err


# ---------------------------------------------------------------------------------------------------------------
# The plugin's tests: sweeps (example/sphere.py, the grid, multi-objective, custom search space, failure rate)

def test_trials_are_launched_in_batches_of_n_jobs(tmp_path):
    sweeper, launcher, _ = sweep(tmp_path, ["hydra/sweeper/sampler=random", "hydra.sweeper.n_trials=8",
                                            "hydra.sweeper.n_jobs=3", "optimizer.lr=interval(0.01, 1)"])
    run(sweeper)
    assert [len(b) for b in launcher.batches] == [3, 3, 2]


@pytest.mark.slow  # 20 TPE trials, about 10 s on 2 CPU cores
@pytest.mark.parametrize("with_command_line", [True, False])
def test_the_sphere_example_with_tpe_and_an_sqlite_study(tmp_path, with_command_line):
    storage = f"sqlite:///{tmp_path / 'test.db'}"
    args = ["hydra/sweeper/sampler=tpe", "hydra.sweeper.sampler.seed=123", "hydra.sweeper.n_trials=20",
            "hydra.sweeper.n_jobs=1", f"hydra.sweeper.storage={storage}", "hydra.sweeper.study_name=sphere",
            "hydra.sweeper.metric=final_val_loss", "hydra.sweeper.direction=minimize",
            "++hydra.sweeper.params={optimizer.lr:'range(0.05,0.16,step=0.01)',optimizer.momentum:'choice(0.0,0.5,0.9)'}"]
    if with_command_line:
        args += ["optimizer.momentum=choice(0.0, 0.5, 0.9, 0.99)", "trainer.batch_size=50"]  # the latter fixed
    sweeper, launcher, sweep_dir = sweep(tmp_path, args)
    run(sweeper)
    results = OmegaConf.load(sweep_dir / "optimization_results.yaml")
    study = optuna.load_study(storage=storage, study_name="sphere")
    best = study.best_trial
    assert results.name == "optuna" and results.best_value == best.value
    assert results.best_params["optimizer.lr"] == pytest.approx(best.params["optimizer.lr"])
    assert "trainer.batch_size" not in results.best_params and "trainer.batch_size" not in best.params
    assert best.value == min(float(r["final_val_loss"]) for r in read_table(sweep_dir))
    assert {t["trainer.batch_size"] for t in launcher.trials()} == ({"50"} if with_command_line else {"100"})
    assert best.value < 0.5  # TPE gets near the bottom of the sphere (0 at lr 0.1, momentum 0.5) in 20 trials


@pytest.mark.parametrize("n_trials", [10, 1])
def test_a_grid_runs_every_combination_up_to_n_trials(tmp_path, n_trials):
    sweeper, launcher, sweep_dir = sweep(tmp_path, [
        f"hydra.sweeper.n_trials={n_trials}", "hydra.sweeper.metric=final_val_loss", "hydra.sweeper.direction=minimize",
        "optimizer.lr=0.05,0.1", "optimizer.momentum=range(0.4,0.7,step=0.1)", "optimizer=momentum,nesterov"])
    run(sweeper)
    assert len(launcher.trials()) == min(n_trials, 12)
    best = OmegaConf.load(sweep_dir / "optimization_results.yaml").best_params
    if n_trials >= 12:
        assert (best["optimizer.lr"], best["optimizer.momentum"]) == (0.1, 0.5)
    assert best["optimizer"] in ("momentum", "nesterov")


def _dominates(x: list[float], y: list[float]) -> bool:  # both minimized, as in the plugin's test
    return all(a <= b for a, b in zip(x, y, strict=True)) and any(a < b for a, b in zip(x, y, strict=True))


@pytest.mark.parametrize("with_command_line", [True, False])
def test_the_multi_objective_example(tmp_path, with_command_line):
    args = ["hydra/sweeper/sampler=random", "hydra.sweeper.sampler.seed=123", "hydra.sweeper.n_trials=20",
            "hydra.sweeper.metric=[final_val_loss,model_params]", "hydra.sweeper.direction=[minimize,minimize]",
            "optimizer.lr=range(0.05, 0.2, step=0.05)"]
    args += ["trainer.batch_size=range(50, 200, step=50)"] if with_command_line else \
        ["trainer.batch_size=int(interval(50, 200))"]
    sweeper, _, sweep_dir = sweep(tmp_path, args)
    run(sweeper)
    solutions = OmegaConf.to_container(OmegaConf.load(sweep_dir / "optimization_results.yaml").solutions)
    assert solutions
    for x in solutions:
        assert x["params"]["trainer.batch_size"] % (50 if with_command_line else 1) == 0
        assert not any(_dominates(y["values"], x["values"]) for y in solutions)
    rows = read_table(sweep_dir)
    assert {int(r["trial"]) for r in rows if r["on_front"] == "True"} == {x["trial"] for x in solutions}
    # every trial off the front is dominated by one on it
    front = [[float(r["final_val_loss"]), float(r["model_params"])] for r in rows if r["on_front"] == "True"]
    for r in rows:
        if r["on_front"] == "False":
            assert any(_dominates(f, [float(r["final_val_loss"]), float(r["model_params"])]) for f in front)


def configure(cfg, trial) -> None:
    """custom_search_space of the plugin's example, on runner's keys: the momentum within max_difference of the
    learning rate drawn from params, and a key the config lacks (hence `+`)."""
    lr = trial.params["optimizer.lr"]
    trial.suggest_float("optimizer.momentum", lr, lr + 0.3)
    trial.suggest_float("+w", 0.0, 1.0)


def test_the_custom_search_space_example(tmp_path):
    sweeper, launcher, sweep_dir = sweep(tmp_path, [
        "hydra/sweeper/sampler=random", "hydra.sweeper.sampler.seed=123", "hydra.sweeper.n_trials=20",
        f"hydra.sweeper.custom_search_space={__name__}.configure", "optimizer.lr=interval(0.01, 0.6)"])
    run(sweeper)
    for job in launcher.trials():
        assert 0 <= float(job["optimizer.momentum"]) - float(job["optimizer.lr"]) <= 0.3
        assert 0 <= float(job["+w"]) <= 1
    best = OmegaConf.load(sweep_dir / "optimization_results.yaml").best_params
    assert 0 <= best["optimizer.momentum"] - best["optimizer.lr"] <= 0.3 and 0 <= best["+w"] <= 1
    assert {"optimizer.lr", "optimizer.momentum", "+w"} <= set(read_table(sweep_dir)[0])  # trials.csv has them


@pytest.mark.parametrize("max_failure_rate", [0.5, 1.0])
def test_the_failure_rate(tmp_path, capsys, max_failure_rate):
    sweeper, launcher, sweep_dir = sweep(tmp_path, [
        "hydra/sweeper/sampler=random", "hydra.sweeper.sampler.seed=123", "hydra.sweeper.n_trials=20",
        "hydra.sweeper.n_jobs=2", f"hydra.sweeper.max_failure_rate={max_failure_rate}",
        "optimizer.lr=interval(0.01, 1)"], metrics=lambda values: RuntimeError("cfg.error is True"))
    if max_failure_rate < 1.0:
        with pytest.raises(SystemExit) as exit_:
            run(sweeper)
        err = capsys.readouterr().err.strip()
        assert exit_.value.code == 1 and len(err.splitlines()) == 1
        assert "RuntimeError: cfg.error is True" in err and "max_failure_rate=0.5" in err
        assert len(launcher.batches) == 1  # stopped after the first batch
    else:
        run(sweeper)
        assert len(launcher.trials()) == 20
        assert {r["status"] for r in read_table(sweep_dir)} == {"failed"}


def test_by_default_the_first_failed_trial_stops_the_sweep_but_pruned_and_diverged_ones_do_not(tmp_path, capsys):
    outcomes = iter([{"status": "pruned", "best_val_acc": 0.1}, {"status": "diverged"},
                     {"status": "completed", "best_val_acc": 0.5}, ValueError("bad config"),
                     {"status": "completed", "best_val_acc": 0.6}])
    sweeper, launcher, sweep_dir = sweep(tmp_path, ["optimizer.lr=0.01,0.02,0.03,0.04,0.05"],
                                         metrics=lambda values: next(outcomes))
    with pytest.raises(SystemExit):
        run(sweeper)
    assert "trial 3: ValueError: bad config" in capsys.readouterr().err
    assert [r["status"] for r in read_table(sweep_dir)] == ["pruned", "diverged", "completed", "failed"]


# ---------------------------------------------------------------------------------------------------------------
# Samplers: every option Optuna ships, seeded once per study, drawing what a plain Optuna study draws

SAMPLERS = sorted(p.stem for p in (CONFIG_DIR / "hydra" / "sweeper" / "sampler").glob("*.yaml") if p.stem != "grid")
SPACE = ["optimizer.lr=tag(log, interval(0.001, 1))", "optimizer.momentum=range(0.0, 1.0, step=0.05)",
         "trainer.batch_size=int(interval(32, 256))", "optimizer=choice(momentum, nesterov)"]
# BruteForceSampler runs finite spaces only
FINITE = ["optimizer.lr=range(0.05, 0.3, step=0.05)", "optimizer.momentum=range(0.0, 1.0, step=0.25)",
          "trainer.batch_size=range(32, 64, step=16)", "optimizer=choice(momentum, nesterov)"]
SMALL = {"tpe": ["hydra.sweeper.sampler.n_startup_trials=2"], "gp": ["hydra.sweeper.sampler.n_startup_trials=2"],
         "nsgaii": ["hydra.sweeper.sampler.population_size=3"], "nsgaiii": ["hydra.sweeper.sampler.population_size=3"]}


def test_every_sampler_optuna_ships_is_an_option():
    shipped = {n.removesuffix("Sampler").lower() for n in dir(optuna.samplers) if n.endswith("Sampler")}
    # not options: the base classes, PartialFixedSampler (a wrapper) and GridSampler (sampler=grid runs the grid)
    assert shipped - {"base", "basega", "partialfixed", "grid"} == set(SAMPLERS)


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n == "gp" else n for n in SAMPLERS])
def test_each_sampler_draws_what_a_plain_optuna_study_with_its_seed_draws(tmp_path, name):
    n, space = 7, FINITE if name == "bruteforce" else SPACE
    sweeper, launcher, sweep_dir = sweep(tmp_path, [
        f"hydra/sweeper/sampler={name}", "hydra.sweeper.sampler.seed=7", f"hydra.sweeper.n_trials={n}",
        "hydra.sweeper.metric=final_val_loss", "hydra.sweeper.direction=minimize", *SMALL.get(name, []), *space])
    run(sweeper)
    drawn = [t.params for t in study_of(sweep_dir).trials]
    # The same sampler config, seeded once, in a plain in-memory study, told the same values
    config = OmegaConf.to_container(sweeper.config.hydra.sweeper.sampler, resolve=True)
    from hydra.utils import instantiate

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        plain = optuna.create_study(direction="minimize", sampler=instantiate(config))
        # in the sweeper's order: trainer.batch_size keeps the place of TINY's fixed value it replaces
        distributions = {k: p.distribution for k, p in parse_space([*TINY, *space]).params.items()}
        for i in range(n):
            trial = plain.ask(distributions)
            assert trial.params == pytest.approx(drawn[i]), f"trial {i} of {name}"
            plain.tell(trial, sphere({k: str(v) for k, v in trial.params.items()})["final_val_loss"])
    if name not in ("nsgaii", "nsgaiii"):  # a genetic algorithm may breed a child equal to a parent
        assert len({json.dumps(d, sort_keys=True) for d in drawn}) == n  # no point drawn twice


def test_a_scrambled_qmc_sampler_walks_one_sequence_across_trials(tmp_path):
    """Rebuilt and reseeded per trial, every trial took the first point of a new scrambled sequence."""
    sweeper, _, sweep_dir = sweep(tmp_path, ["hydra/sweeper/sampler=qmc", "hydra.sweeper.sampler.scramble=true",
                                             "hydra.sweeper.sampler.seed=3", "hydra.sweeper.n_trials=8",
                                             "optimizer.lr=interval(0.01, 1.0)", "optimizer.momentum=interval(0.0, 0.99)"])
    run(sweeper)
    from scipy.stats import qmc

    # Trial 0 is drawn at random (Optuna's QMCSampler learns the search space from it); trials 1 to 7 are the
    # sequence's first 7 points, in order (Optuna orders the parameters by name).
    points = qmc.Sobol(2, seed=3, scramble=True).random(8)
    drawn = [[(t.params["optimizer.lr"] - 0.01) / 0.99, t.params["optimizer.momentum"] / 0.99]
             for t in study_of(sweep_dir).trials]
    assert [x for point in drawn[1:] for x in point] == pytest.approx(points[:7].ravel().tolist())


def test_a_second_process_on_the_study_draws_its_own_points(tmp_path):
    args = ["hydra/sweeper/sampler=random", "hydra.sweeper.sampler.seed=0", "optimizer.lr=interval(0.01, 1.0)"]
    first, _, sweep_dir = sweep(tmp_path, [*args, "hydra.sweeper.n_trials=3"])
    run(first)
    second, _, _ = sweep(tmp_path, [*args, "hydra.sweeper.n_trials=6"])  # a rerun: a new process, the same study
    run(second)
    lrs = [t.params["optimizer.lr"] for t in study_of(sweep_dir).trials]
    assert len(set(lrs)) == 6
    plain = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    assert lrs[:3] == [plain.ask({"lr": optuna.distributions.FloatDistribution(0.01, 1)}).params["lr"]
                       for _ in range(3)]


def test_tpe_settings_are_declared_so_no_plus_is_needed(tmp_path):
    sweeper, _, _ = sweep(tmp_path, ["hydra/sweeper/sampler=tpe", "hydra.sweeper.sampler.multivariate=true",
                                     "hydra.sweeper.sampler.group=true", "hydra.sweeper.sampler.constant_liar=true",
                                     "hydra.sweeper.sampler.n_ei_candidates=8"])
    assert sweeper.config.hydra.sweeper.sampler.multivariate is True


def test_bruteforce_ends_once_every_point_has_run(tmp_path, caplog):
    sweeper, launcher, _ = sweep(tmp_path, ["hydra/sweeper/sampler=bruteforce", "hydra.sweeper.n_trials=10",
                                            "optimizer.lr=range(0.1, 0.4, step=0.1)"])
    with caplog.at_level("INFO", logger=LOGGER):
        run(sweeper)
    assert sorted(t["optimizer.lr"] for t in launcher.trials()) == ["0.1", "0.2", "0.3"]
    assert any("every point of the search space has run" in r.getMessage() for r in caplog.records)


def test_bruteforce_refuses_a_continuous_interval(tmp_path, capsys):
    sweeper, _, _ = sweep(tmp_path, ["hydra/sweeper/sampler=bruteforce", "hydra.sweeper.n_trials=4",
                                     "optimizer.lr=interval(0.1, 0.4)"])
    assert "sampler=bruteforce" in refusal(sweeper, capsys)


# ---------------------------------------------------------------------------------------------------------------
# Multi-objective settings

@pytest.mark.parametrize(("args", "says"), [
    (["hydra.sweeper.direction=[minimize,minimize]"],  # a config written for the plugin: the metric left alone
     "not of the task's return value"),
    (["hydra.sweeper.metric=[best_val_acc,model_params]", "hydra.sweeper.direction=maximize"], "1 direction(s)"),
    (["hydra.sweeper.metric=[best_val_acc,best_val_acc]", "hydra.sweeper.direction=[maximize,maximize]"],
     "several different ones"),
    (["hydra.sweeper.metric=[best_val_acc,model_params]", "hydra.sweeper.direction=[maximize,minimize]",
      "hydra/sweeper/pruner=median"], "hydra/sweeper/pruner=median cannot prune a multi-objective study"),
    (["hydra.sweeper.metric=[best_val_acc,model_params]", "hydra.sweeper.direction=[maximize,minimize]",
      "hydra/sweeper/sampler=cmaes"], "cmaes optimizes one objective"),
    (["hydra.sweeper.metric=[best_val_acc,test_acc]", "hydra.sweeper.direction=[maximize,maximize]"],
     "never by the test split"),
])
def test_multi_objective_settings_that_cannot_work_are_one_line(tmp_path, capsys, args, says):
    sweeper, _, _ = sweep(tmp_path, ["hydra/sweeper/sampler=random", "hydra.sweeper.n_trials=2", *args,
                                     "optimizer.lr=interval(0.01, 1)"])
    assert says in refusal(sweeper, capsys)


def test_a_multi_objective_study_refuses_to_resume_under_other_objectives(tmp_path, capsys):
    args = ["hydra/sweeper/sampler=random", "hydra.sweeper.n_trials=2", "optimizer.lr=interval(0.01, 1)"]
    first, _, _ = sweep(tmp_path, [*args, "hydra.sweeper.metric=[best_val_acc,model_params]",
                                   "hydra.sweeper.direction=[maximize,minimize]"])
    run(first)
    again, _, _ = sweep(tmp_path, args)
    assert "ranks its trials by best_val_acc (maximize), model_params (minimize)" in refusal(again, capsys)


def test_trials_csv_ranks_a_multi_objective_study_by_non_domination(tmp_path):
    sweeper, _, sweep_dir = sweep(tmp_path, [
        "hydra/sweeper/sampler=nsgaii", "hydra.sweeper.sampler.population_size=4", "hydra.sweeper.n_trials=12",
        "hydra.sweeper.metric=[best_val_acc,model_params]", "hydra.sweeper.direction=[maximize,minimize]",
        "optimizer.lr=interval(0.01, 0.5)", "trainer.batch_size=int(interval(10, 500))"])
    run(sweeper)
    rows = read_table(sweep_dir)
    assert list(rows[0])[:8] == ["trial", "status", "rank", "trainer.batch_size", "optimizer.lr", "best_val_acc",
                                 "model_params", "best_epoch"]
    values = {r["trial"]: [float(r["best_val_acc"]), float(r["model_params"])] for r in rows}
    ranks = pareto.ranks(values, ["maximize", "minimize"])
    assert {r["trial"]: int(r["rank"]) for r in rows} == ranks and max(ranks.values()) > 1
    assert {r["trial"] for r in rows if r["on_front"] == "True"} == {k for k, v in ranks.items() if v == 1}


def test_pareto_ranks_are_non_domination_levels():
    values = {"a": [1.0, 5.0], "b": [2.0, 4.0], "c": [2.0, 6.0], "d": [0.5, 5.0], "e": [2.0, 4.0]}
    # maximize the first, minimize the second: b and e (equal) lead; a and c are beaten only by them; d by a
    assert pareto.ranks(values, ["maximize", "minimize"]) == {"a": 2, "b": 1, "c": 2, "d": 3, "e": 1}
    assert pareto.front(values, ["minimize", "minimize"]) == ["b", "d", "e"]  # d beats a, b beats c


# ---------------------------------------------------------------------------------------------------------------
# n_trials, range and the metric: runner's meanings, each said in one line

def test_a_rerun_runs_nothing_more_and_says_that_n_trials_is_the_total(tmp_path, caplog):
    args = ["hydra/sweeper/sampler=random", "hydra.sweeper.n_trials=3", "optimizer.lr=interval(0.01, 1)"]
    first, _, _ = sweep(tmp_path, args)
    run(first)
    again, launcher, _ = sweep(tmp_path, args)
    with caplog.at_level("WARNING", logger=LOGGER):
        run(again)
    assert launcher.batches == []  # the plugin would run 3 more
    [line] = [r.getMessage() for r in caplog.records]
    assert "n_trials is the study's total" in line and "hydra.sweeper.n_trials=6" in line


def test_a_sampled_range_says_that_its_stop_is_excluded(tmp_path, caplog):
    sweeper, launcher, _ = sweep(tmp_path, ["hydra/sweeper/sampler=random", "hydra.sweeper.n_trials=30",
                                            "trainer.batch_size=range(32, 35)"])
    with caplog.at_level("WARNING", logger=LOGGER):
        run(sweeper)
    [line] = [r.getMessage() for r in caplog.records]
    assert "trainer.batch_size=range(32, 35) samples 32 to 34" in line and "would include it" in line
    assert {t["trainer.batch_size"] for t in launcher.trials()} == {"32", "33", "34"}


def test_a_float_range_is_sampled_on_its_steps_without_drift(tmp_path):
    sweeper, launcher, sweep_dir = sweep(tmp_path, ["hydra/sweeper/sampler=random", "hydra.sweeper.n_trials=15",
                                                    "optimizer.momentum=range(0.0, 1.0, step=0.1)"])
    run(sweeper)
    texts = {t["optimizer.momentum"] for t in launcher.trials()} | {r["optimizer.momentum"]
                                                                   for r in read_table(sweep_dir)}
    assert texts <= {f"{k / 10}" for k in range(10)} and len(texts) > 5


def test_a_config_written_for_the_plugin_is_told_that_the_metric_comes_from_metrics_json(tmp_path, caplog):
    sweeper, _, _ = sweep(tmp_path, ["hydra/sweeper/sampler=random", "hydra.sweeper.n_trials=1",
                                     "hydra.sweeper.direction=minimize", "optimizer.lr=interval(0.01, 1)"])
    with caplog.at_level("WARNING", logger=LOGGER):
        run(sweeper)
    [line] = [r.getMessage() for r in caplog.records]
    assert "not by the task's return value" in line and "hydra.sweeper.metric=final_val_loss" in line


# ---------------------------------------------------------------------------------------------------------------
# custom_search_space, max_failure_rate and hydra.sweep.subdir settings

def raises(cfg, trial) -> None:
    raise KeyError("no such key")


def fixes_batch(cfg, trial) -> None:
    trial.suggest_int("trainer.batch_size", 10, 20)


@pytest.mark.parametrize(("args", "says"), [
    (["hydra.sweeper.custom_search_space=nowhere.configure"], "cannot be imported"),
    (["hydra.sweeper.custom_search_space=configure"], "not a dotted path"),
    ([f"hydra.sweeper.custom_search_space={__name__}.raises"], "raised KeyError"),
    ([f"hydra.sweeper.custom_search_space={__name__}.fixes_batch", "trainer.batch_size=64"],
     "suggests trainer.batch_size, which an override fixes"),
    ([f"hydra.sweeper.custom_search_space={__name__}.configure", "hydra/sweeper/sampler=grid"], "sampler=grid"),
    (["hydra.sweeper.max_failure_rate=1.5"], "hydra.sweeper.max_failure_rate=1.5 is invalid"),
    (["hydra.sweep.subdir=trial"], "the same directory for every trial"),
])
def test_custom_search_space_failure_rate_and_subdir_mistakes_are_one_line(tmp_path, capsys, args, says):
    sweeper, _, _ = sweep(tmp_path, ["hydra/sweeper/sampler=random", "hydra.sweeper.n_trials=2", *args,
                                     "optimizer.lr=0.01,0.1,0.5" if "grid" in str(args) else
                                     "optimizer.lr=interval(0.01, 1)"])
    assert says in refusal(sweeper, capsys)


def test_hydra_sweep_subdir_names_the_trials_directories(tmp_path):
    sweeper, _, sweep_dir = sweep(tmp_path, ["optimizer.lr=0.05,0.1",
                                             "hydra.sweep.subdir=t${hydra.job.num}_lr${optimizer.lr}"])
    run(sweeper)
    rows = read_table(sweep_dir)
    assert [r["job_dir"] for r in rows] == ["t0_lr0.05", "t1_lr0.1"]
    assert all((sweep_dir / r["job_dir"] / "metrics.json").is_file() for r in rows)


def test_a_subdir_two_trials_would_share_gets_the_trials_number(tmp_path):
    sweeper, _, sweep_dir = sweep(tmp_path, ["optimizer.lr=0.05,0.1", "hydra.sweep.subdir=run_${trainer.epochs}"])
    run(sweeper)
    assert [r["job_dir"] for r in read_table(sweep_dir)] == ["run_2", "run_2-1"]


# ---------------------------------------------------------------------------------------------------------------
# Through the CLI, training for real

@pytest.mark.slow  # four trials and the test pass of the front: about 30 s on 2 CPU cores
def test_a_multi_objective_architecture_search_end_to_end(tmp_path):
    sweep_dir = tmp_path / "arch"
    proc = run_cli(["+sweep=architecture", *FAST, "hydra.sweeper.n_trials=4", "hydra.sweeper.sampler.n_startup_trials=2",
                    "model.widths=choice([8,16],[16,32],[8,16,32])", f"hydra.sweep.dir={sweep_dir}"], cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert "4 trials: 4 completed" in out and "Pareto front of best_val_acc, model_params" in out
    rows = read_table(sweep_dir)
    values = {r["trial"]: [float(r["best_val_acc"]), float(r["model_params"])] for r in rows}
    front = set(pareto.front(values, ["maximize", "minimize"]))
    assert {r["trial"] for r in rows if r["on_front"] == "True"} == front
    for r in rows:  # the deferred test pass tested the front's trials, and only them
        metrics = json.loads((sweep_dir / r["job_dir"] / "metrics.json").read_text())
        assert metrics["model_params"] == int(r["model_params"])
        assert ("test_acc" in metrics) == (r["trial"] in front) == (r["test_acc"] != "")
    solutions = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())["solutions"]
    assert {str(s["trial"]) for s in solutions} == front
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import metadata

    [holder] = list(sweep_dir.glob("*/events.out.tfevents.*.sweep_hparams"))
    events = EventAccumulator(str(holder.parent))
    events.Reload()
    experiment = metadata.parse_experiment_plugin_data(
        events.SummaryMetadata(metadata.EXPERIMENT_TAG).plugin_data.content)
    assert {"val/best_acc", "model/params"} <= {m.name.tag for m in experiment.metric_infos}
    report = run_cli_report(sweep_dir, tmp_path)
    assert "Pareto front (max best_val_acc, min model_params)" in report
    assert (sweep_dir / "report" / "front.png").stat().st_size > 10_000


def run_cli_report(sweep_dir: Path, cwd: Path) -> str:
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "runner.report", str(sweep_dir)], cwd=cwd, capture_output=True,
                          text=True, timeout=120, check=True)
    return proc.stdout


@pytest.mark.slow  # a trial that fails while it builds, then the sweep's end: about 10 s
def test_a_failed_trial_stops_a_cli_sweep_in_one_line_by_default(tmp_path):
    damaged = tmp_path / "damaged-weights.pt"
    damaged.write_bytes(b"not a checkpoint")
    proc = run_cli(["-m", *FAST, f"model.pretrained={damaged},null", f"hydra.sweep.dir={tmp_path / 's'}"],
                   cwd=tmp_path, check=False)
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "max_failure_rate=0.0" in errors[0] and "damaged-weights.pt" in errors[0]
    with (tmp_path / "s" / "trials.csv").open(newline="") as f:
        assert [r["status"] for r in csv.DictReader(f)] == ["failed"]  # the second trial never ran

