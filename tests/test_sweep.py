"""Sweeps: the search space grammar, seeded log-uniform sampling, the GPU spreading, every sweep/sampler/pruner
config composed and built, and real sweeps run through the CLI (parallel, resumed, with pruned, diverged and
crashed trials)."""

import csv
import itertools
import json
import math
import os
from pathlib import Path

import optuna
import pytest
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict

from conftest import TINY, compose_config, run_cli
from hydra_plugins.runner_optuna_sweeper.optuna_sweeper import (
    grid_points,
    parse_space,
    short_keys,
    trial_dirname,
)
from runner.config import CONFIG_DIR, ConfigError, validate
from runner.sweeps.study import assign_devices, open_storage, read_outcome, summary

optuna.logging.set_verbosity(optuna.logging.WARNING)

SWEEPS = sorted(p.stem for p in (CONFIG_DIR / "sweep").glob("*.yaml"))
SAMPLERS = sorted(p.stem for p in (CONFIG_DIR / "hydra" / "sweeper" / "sampler").glob("*.yaml"))
PRUNERS = sorted(p.stem for p in (CONFIG_DIR / "hydra" / "sweeper" / "pruner").glob("*.yaml"))
# Smaller still: each sweep below runs several real trials.
FAST = [*TINY, "data.train_examples=500", "data.val_size=100", "data.test_examples=100", "trainer.epochs=1",
        "model.widths=[8,16]", "diagnostics.every_steps=0"]


def read_table(sweep_dir: Path) -> list[dict]:
    with (sweep_dir / "trials.csv").open(newline="") as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------------------------------------------------------
# The search space

def test_search_space_grammar_gives_the_right_distributions():
    space = parse_space(["optimizer.lr=tag(log, interval(1e-6, 10))", "regularization.dropout.p=interval(0, 0.5)",
                         "trainer.batch_size=int(interval(32, 512))", "optimizer=sgd,adam", "seed=range(0,3)",
                         "trainer.epochs=3", "optimizer.lr=tag(log, interval(1e-4, 1))"])
    assert space.fixed == ["trainer.epochs=3"]
    lr = space.params["optimizer.lr"].distribution  # the later (command line) expression wins
    assert (type(lr).__name__, lr.low, lr.high, lr.log) == ("FloatDistribution", 1e-4, 1.0, True)
    p = space.params["regularization.dropout.p"].distribution
    assert (type(p).__name__, p.low, p.high, p.log) == ("FloatDistribution", 0.0, 0.5, False)
    bs = space.params["trainer.batch_size"].distribution
    assert (type(bs).__name__, bs.low, bs.high) == ("IntDistribution", 32, 512)
    assert space.params["optimizer"].distribution.choices == ("sgd", "adam")
    # range(0,3): 0, 1, 2 as Hydra's grammar lists them (the stop excluded), a stepped integer distribution
    seed = space.params["seed"].distribution
    assert (type(seed).__name__, seed.low, seed.high, seed.step) == ("IntDistribution", 0, 2, 1)
    assert space.params["seed"].values == [0, 1, 2]
    assert space.params["optimizer.lr"].override(0.00123) == "optimizer.lr=0.00123"
    assert space.params["seed"].override(2) == "seed=2"


def test_list_choices_keep_their_override_text():
    space = parse_space(["regularization=[l2,dropout],[l2]"])
    param = space.params["regularization"]
    assert [param.override(c) for c in param.distribution.choices] == ["regularization=[l2,dropout]",
                                                                       "regularization=[l2]"]


@pytest.mark.parametrize("line", ["optimizer.lr=tag(log, interval(0, 1))", "optimizer.lr=interval(1, 0.1)"])
def test_bad_interval_is_refused(line):
    with pytest.raises(ValueError, match="optimizer.lr"):
        parse_space([line])


def test_grid_points_are_the_product_in_written_order():
    space = parse_space(["optimizer=sgd,momentum,adam", "seed=0,1"])
    expected = [{"optimizer": o, "seed": s} for o, s in itertools.product(["sgd", "momentum", "adam"], [0, 1])]
    assert grid_points(space) == expected


def test_seeded_log_uniform_sampling_is_reproducible_and_spread_over_the_decades():
    distributions = {"optimizer.lr": parse_space(["optimizer.lr=tag(log, interval(1e-6, 10))"])
                     .params["optimizer.lr"].distribution}

    def draw(seed, n=700):
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
        return [study.ask(distributions).params["optimizer.lr"] for _ in range(n)]

    first, again, other = draw(0), draw(0), draw(1)
    assert first == again
    assert first != other
    assert all(1e-6 <= v <= 10 for v in first)
    # Log-uniform over 7 decades: 100 expected per decade (binomial sd 9.3); uniform sampling would put ~90% of
    # the values in the top decade.
    per_decade = [sum(10.0 ** d <= v < 10.0 ** (d + 1) for v in first) for d in range(-6, 1)]
    assert all(60 <= n <= 140 for n in per_decade), per_decade


def test_trial_dirname_says_what_differs_and_is_path_safe():
    name = trial_dirname(7, ["optimizer.lr=0.00123", "regularization=[l2,dropout]", "+experiment/x=a b"])
    assert name == "007_optimizer.lr=0.00123,regularization=[l2,dropout],+experiment-x=a-b"
    assert len(trial_dirname(1, ["k" * 300])) == 100
    assert short_keys(["optimizer", "optimizer.lr", "regularization.l2.value", "regularization.dropout.p"]) == {
        "optimizer": "optimizer", "optimizer.lr": "optimizer.lr", "regularization.l2.value": "l2.value",
        "regularization.dropout.p": "dropout.p"}
    assert short_keys(["a.x.value", "b.x.value"]) == {"a.x.value": "a.x.value", "b.x.value": "b.x.value"}


# ---------------------------------------------------------------------------------------------------------------
# Glue

def test_parallel_jobs_are_spread_over_the_gpus_round_robin():
    assert assign_devices(5, 2, "auto") == ["cuda:0", "cuda:1", "cuda:0", "cuda:1", "cuda:0"]
    assert assign_devices(3, 4, "cuda") == ["cuda:0", "cuda:1", "cuda:2"]
    assert assign_devices(3, 1, "auto") == [None, None, None]  # one GPU: nothing to spread
    assert assign_devices(2, 4, "cpu") == [None, None]  # an explicit device is kept
    assert assign_devices(2, 4, "cuda:3") == [None, None]


def test_a_job_without_a_final_status_is_recorded_as_failed(tmp_path):
    outcome = read_outcome(tmp_path, "RuntimeError: boom")
    assert outcome["status"] == "failed" and outcome["message"] == "RuntimeError: boom"
    assert json.loads((tmp_path / "metrics.json").read_text())["status"] == "failed"
    (tmp_path / "metrics.json").write_text(json.dumps({"status": "interrupted", "message": "stopped"}))
    outcome = read_outcome(tmp_path)  # not final: left as it is, for the next run of the sweep to resume
    assert (outcome["status"], outcome["message"]) == ("interrupted", "stopped")
    assert json.loads((tmp_path / "metrics.json").read_text())["status"] == "interrupted"
    assert summary([{"status": "completed"}, {"status": "pruned"}, {"status": "failed"}]) == \
        "3 trials: 1 completed, 1 pruned, 0 diverged, 1 failed"


def test_config_error_in_a_multirun_job_raises_for_the_sweeper_instead_of_exiting(tmp_path):
    from hydra import compose, initialize_config_dir

    from runner.job import run_job

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[*TINY, "trainer.epochs=0", "hydra.mode=MULTIRUN"],
                      return_hydra_config=True)
    cfg.hydra.runtime.output_dir = str(tmp_path)  # as Hydra sets it for every job
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    try:
        with pytest.raises(ConfigError, match="trainer.epochs"):  # sys.exit would end the whole sweep
            run_job(cfg)
    finally:
        HydraConfig.instance().cfg = None


def test_trials_left_running_by_a_dead_sweep_process_are_recorded_from_their_job_dirs_or_resumed(tmp_path):
    import socket
    import subprocess
    import sys

    from hydra_plugins.runner_optuna_sweeper.optuna_sweeper import OptunaSweeper

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    study = optuna.create_study(direction="maximize")
    outcomes = {"completed": {"status": "completed", "best_val_acc": 0.5}, "diverged": {"status": "diverged"},
                "failed": {"status": "failed", "message": "boom"}, "interrupted": {"status": "interrupted"},
                "killed": None, "alive": {"status": "completed", "best_val_acc": 0.7}}
    for name, metrics in outcomes.items():
        trial = study.ask()
        owner = os.getpid() if name == "alive" else dead.pid  # a sweep process still running keeps its trials
        trial.set_user_attr("worker", f"{socket.gethostname()}:{owner}")
        trial.set_user_attr("job_dir", name)
        (tmp_path / name).mkdir()
        if metrics is not None:
            (tmp_path / name / "metrics.json").write_text(json.dumps(metrics))
    again = OptunaSweeper(sampler=None, pruner=None)._recover(study, tmp_path, wait_s=0)
    assert [t.number for t in again] == [3, 4]  # interrupted, killed: run again in their job directories
    assert [t.state.name for t in study.trials] == ["COMPLETE", "PRUNED", "FAIL", "RUNNING", "RUNNING", "RUNNING"]
    assert study.trials[0].value == 0.5 and study.trials[0].user_attrs["status"] == "completed"
    assert study.trials[2].user_attrs["message"] == "boom"
    assert not (tmp_path / "killed" / "metrics.json").exists()  # nothing written where the trial will resume


# ---------------------------------------------------------------------------------------------------------------
# Every config of the sweep groups, composed and built

def _hydra_node(overrides, name):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[*TINY, *overrides], return_hydra_config=True)
    return cfg, OmegaConf.to_container(cfg.hydra.sweeper[name], resolve=True) if name else None


# GPSampler warns that its interface may change: known, and it works as used here.
@pytest.mark.filterwarnings("ignore:GPSampler is experimental")
@pytest.mark.parametrize("name", SWEEPS)
def test_every_sweep_config_composes_and_its_corners_validate(name):
    cfg, sweeper = _hydra_node([f"+sweep={name}"], None)
    assert cfg.hydra.mode.name == "MULTIRUN"  # `python -m runner +sweep=NAME` sweeps without -m
    assert cfg.hydra.sweep.dir == f"outputs/sweeps/{name}"  # fixed, so the same command resumes the study
    sweeper = cfg.hydra.sweeper
    space = parse_space([f"{k}={v}" for k, v in sweeper.params.items()])
    assert space.params
    sampler = OmegaConf.to_container(sweeper.sampler, resolve=True)
    if sampler.get("grid"):
        assert all(hasattr(p.distribution, "choices") for p in space.params.values())
    else:
        assert isinstance(instantiate(sampler), optuna.samplers.BaseSampler) and sweeper.n_trials > 0
    assert isinstance(instantiate(OmegaConf.to_container(sweeper.pruner, resolve=True)), optuna.pruners.BasePruner)
    # the sweep's own epochs, not the tiny ones: keys such as prune.fine_tune_epochs are checked against them
    epochs = compose_config([f"+sweep={name}"], tiny=False, checked=False).trainer.epochs
    # data.train_size=null: a sweep made for CIFAR-10's slices (default_recipe) runs here on the tiny synthetic set
    for values in space.corners():  # every choice, every bound: the options exist and the values are valid
        validate(compose_config([f"+sweep={name}", f"trainer.epochs={epochs}", "data.train_size=null",
                                 *(space.params[k].override(v) for k, v in values.items())], checked=False))


@pytest.mark.filterwarnings("ignore:GPSampler is experimental")
@pytest.mark.parametrize("name", SAMPLERS)
def test_every_sampler_option_builds(name):
    _, sampler = _hydra_node([f"hydra/sweeper/sampler={name}"], "sampler")
    if name == "grid":
        assert sampler == {"grid": True}
    else:
        assert isinstance(instantiate(sampler), optuna.samplers.BaseSampler)


@pytest.mark.parametrize("name", PRUNERS)
def test_every_pruner_option_builds(name):
    _, pruner = _hydra_node([f"hydra/sweeper/pruner={name}", "trainer.epochs=7"], "pruner")
    built = instantiate(pruner)
    assert isinstance(built, optuna.pruners.BasePruner)
    if name == "hyperband":
        assert pruner["max_resource"] == 7  # the resource is the epoch


# ---------------------------------------------------------------------------------------------------------------
# Real sweeps through the CLI

@pytest.mark.slow  # over 2 s on 2 idle cores: `make test-all` and CI run it
def test_random_search_with_two_parallel_workers(tmp_path):
    sweep_dir = tmp_path / "sweep"
    proc = run_cli(["+sweep=lr_wd", *FAST, "hydra.sweeper.n_trials=4", "hydra/launcher=joblib",
                    "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={sweep_dir}"], cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert "Joblib.Parallel(n_jobs=2" in out and "is launching 2 jobs" in out
    assert "4 trials: 4 completed, 0 pruned, 0 diverged, 0 failed" in out
    rows = read_table(sweep_dir)
    assert [int(r["trial"]) for r in rows] == [0, 1, 2, 3]
    for row in rows:
        lr, l2 = float(row["optimizer.lr"]), float(row["regularization.l2.value"])
        assert 1e-6 <= lr <= 10 and 1e-6 <= l2 <= 1e-1
        job_dir = sweep_dir / row["job_dir"]
        assert row["job_dir"].startswith(f"{int(row['trial']):03d}_optimizer.lr=")  # TensorBoard's run name
        metrics = json.loads((job_dir / "metrics.json").read_text())
        assert metrics["status"] == row["status"] == "completed"
        assert float(row["best_val_acc"]) == metrics["best_val_acc"]
        assert OmegaConf.load(job_dir / "config.yaml").optimizer.lr == lr  # the job ran the sampled value
        assert list(job_dir.glob("events.out.tfevents.*"))
    assert len({r["optimizer.lr"] for r in rows}) == 4
    # TensorBoard's HPARAMS columns for the whole sweep, in one trial's run (the sweep directory has no event file:
    # TensorBoard would list it as an empty run) and in no other
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import metadata

    assert not list(sweep_dir.glob("events.out.tfevents.*"))
    holders = []
    for row in rows:
        events = EventAccumulator(str(sweep_dir / row["job_dir"]))
        events.Reload()
        if metadata.EXPERIMENT_TAG in events.summary_metadata:
            holders.append(events)
    assert len(holders) == 1
    events = holders[0]
    experiment = metadata.parse_experiment_plugin_data(
        events.SummaryMetadata(metadata.EXPERIMENT_TAG).plugin_data.content)
    assert {"optimizer.lr", "regularization.l2.value", "status"} <= {h.name for h in experiment.hparam_infos}
    assert {"val/best_acc", "test/acc"} <= {m.name.tag for m in experiment.metric_infos}
    assert json.loads((sweep_dir / "search_space.json").read_text())["optimizer.lr"] == \
        {"kind": "float", "low": 1e-6, "high": 10.0, "log": True}


# slow (four CLI sweeps): test_trials_left_running_by_a_dead_sweep_process_... records and resumes in-process
@pytest.mark.slow
def test_rerunning_a_sweep_skips_its_finished_trials(tmp_path):
    sweep_dir = tmp_path / "sweep"
    args = ["+sweep=lr_wd", *FAST, f"hydra.sweep.dir={sweep_dir}", "optimizer.lr=tag(log, interval(1e-3, 1e-1))"]
    run_cli([*args, "hydra.sweeper.n_trials=1"], cwd=tmp_path)
    first = read_table(sweep_dir)
    assert [r["status"] for r in first] == ["completed"]

    again = run_cli([*args, "hydra.sweeper.n_trials=1"], cwd=tmp_path)
    assert "Launching" not in again.stdout + again.stderr
    assert read_table(sweep_dir) == first

    more = run_cli([*args, "hydra.sweeper.n_trials=2"], cwd=tmp_path)
    assert "1 of 2 trials already done" in more.stdout + more.stderr
    rows = read_table(sweep_dir)
    unranked = [{k: v for k, v in r.items() if k != "rank"} for r in rows]  # a new trial may rank above it
    assert unranked[:1] == [{k: v for k, v in first[0].items() if k != "rank"}]
    assert len(rows) == 2 and rows[1]["status"] == "completed" and {r["rank"] for r in rows} == {"1", "2"}
    assert rows[1]["optimizer.lr"] != first[0]["optimizer.lr"]  # reseeded, not a repeat of the first draw
    assert len([p for p in sweep_dir.iterdir() if p.is_dir()]) == 2

    changed = run_cli([*args, "hydra.sweeper.n_trials=3", "trainer.epochs=2"], cwd=tmp_path, check=False)
    assert changed.returncode == 2 and "was started with other overrides" in changed.stderr


@pytest.mark.slow  # over 2 s on 2 idle cores: `make test-all` and CI run it
def test_pruned_diverged_and_crashed_trials_are_recorded_and_the_sweep_goes_on(tmp_path):
    sweep_dir = tmp_path / "sweep"
    storage = f"sqlite:///{tmp_path / 'study.db'}"  # an RDB, as workers on several machines would share
    damaged = tmp_path / "damaged-weights.pt"
    damaged.write_bytes(b"not a checkpoint")
    proc = run_cli(["-m", *FAST, "trainer.epochs=2", "optimizer=sgd", "optimizer.lr=1e10,0.05",
                    f"model.pretrained=null,{damaged}",  # a trial that fails while it builds
                    # a threshold no trial reaches: every trial that finishes an epoch is pruned after it
                    "hydra/sweeper/pruner=threshold", "hydra.sweeper.pruner.lower=1.1",
                    "hydra.sweeper.pruner.n_warmup_steps=0", f"hydra.sweeper.storage={storage}",
                    "hydra.sweeper.max_failure_rate=1.0",  # go on past the failed trials (the default stops)
                    f"hydra.sweep.dir={sweep_dir}"], cwd=tmp_path)
    assert "4 trials: 0 completed, 1 pruned, 1 diverged, 2 failed" in proc.stdout + proc.stderr
    rows = read_table(sweep_dir)
    assert [r["status"] for r in rows] == ["diverged", "failed", "pruned", "failed"]
    assert "damaged-weights.pt" in rows[1]["message"]
    pruned = json.loads((sweep_dir / rows[2]["job_dir"] / "metrics.json").read_text())
    assert pruned["status"] == "pruned" and pruned["epochs_completed"] == 1
    assert json.loads((sweep_dir / rows[1]["job_dir"] / "metrics.json").read_text())["status"] == "failed"
    study = optuna.load_study(study_name="sweep", storage=open_storage(storage))
    states = [t.state.name for t in study.trials]
    assert states == ["PRUNED", "FAIL", "PRUNED", "FAIL"]
    assert study.trials[2].intermediate_values == {1: pytest.approx(pruned["best_val_acc"])}


# slow (submitit's processes): the basic launcher's CLI sweep above runs by default
@pytest.mark.slow
def test_submitit_local_launcher_runs_the_trials(tmp_path):
    sweep_dir = tmp_path / "sweep"
    proc = run_cli(["-m", *FAST, "seed=0,1", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5",
                    f"hydra.sweep.dir={sweep_dir}"], cwd=tmp_path)
    assert "2 trials: 2 completed" in proc.stdout + proc.stderr
    rows = read_table(sweep_dir)
    assert [(r["seed"], r["status"]) for r in rows] == [("0", "completed"), ("1", "completed")]
    assert all(math.isfinite(float(r["best_val_acc"])) for r in rows)
    assert (sweep_dir / ".submitit").is_dir()
