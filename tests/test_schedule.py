"""Schedules: every option file builds; each one's value at its first, middle and last step against its formula;
warmup in front of any; the plateau schedule follows the validation metric and survives a checkpoint; the planned
curve is the one the run follows."""

import math

import pytest
import torch
from omegaconf import OmegaConf

from conftest import compose_config
from runner.config import CONFIG_DIR, ConfigError, validate
from runner.data import checkpoint
from runner.engine.build import build_schedule, schedule_factor
from runner.optimization import schedules as schedule

SCHEDULES = sorted(p.stem for p in (CONFIG_DIR / "schedule").glob("*.yaml"))
SPE, EPOCHS = 10, 10  # steps per epoch, epochs
T = SPE * EPOCHS


def _cfg(name, **overrides):
    cfg = compose_config([f"schedule={name}", f"trainer.epochs={EPOCHS}"]).schedule
    for k, v in overrides.items():
        OmegaConf.update(cfg, k, v)
    return cfg


def _factor(name, **overrides):
    return schedule_factor(_cfg(name, **overrides), T, SPE)


def _scheduler(schedule_cfg, opt):
    return torch.optim.lr_scheduler.LambdaLR(opt, schedule_factor(schedule_cfg, T, SPE))


@pytest.mark.parametrize("name", SCHEDULES)
def test_every_schedule_option_composes_validates_and_drives_the_optimizer(name):
    cfg = compose_config([f"schedule={name}", f"trainer.epochs={EPOCHS}"])
    validate(cfg)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.5)
    scheduler = build_schedule(cfg, opt, T, SPE)
    fn = schedule_factor(cfg.schedule, T, SPE)
    for step in range(T):
        assert opt.param_groups[0]["lr"] == pytest.approx(0.5 * fn(step))
        opt.step()
        scheduler.step()


def _cos(progress, low):
    return low + (1 - low) * 0.5 * (1 + math.cos(math.pi * progress))


MID, LAST = T // 2, T - 1
FORMULAS = {  # name: (overrides, {step: expected factor})
    "constant": ({}, {0: 1.0, MID: 1.0, LAST: 1.0}),
    "step": ({"step_epochs": 4, "gamma": 0.1}, {0: 1.0, MID: 0.1, LAST: 0.01}),  # drops at steps 40 and 80
    "multistep": ({"milestone_epochs": [5, 8], "gamma": 0.5}, {0: 1.0, 49: 1.0, MID: 0.5, LAST: 0.25}),
    "exponential": ({"gamma_per_epoch": 0.7}, {0: 1.0, MID: 0.7 ** 5, LAST: 0.7 ** 9.9}),
    "power": ({"scale_epochs": 2.0, "exponent": 0.5}, {0: 1.0, MID: (1 + 50 / 20) ** -0.5, LAST: (1 + 99 / 20) ** -0.5}),
    "cosine": ({"min_factor": 0.1}, {0: 1.0, MID: _cos(50 / 99, 0.1), LAST: 0.1}),
    # cycles of 20, 40, 80 steps (cycle_mult 2): step 50 is 30 steps into the second, step 99 39 into the third
    "cosine_restarts": ({"cycle_epochs": 2, "cycle_mult": 2, "min_factor": 0.0},
                        {0: 1.0, 19: _cos(19 / 20, 0), 20: 1.0, MID: _cos(30 / 40, 0), LAST: _cos(39 / 80, 0)}),
    # half cycle 10 steps: up from 0.2 to 1 at step 10, down to 0.2 at step 20, ...
    "cyclic": ({"half_cycle_epochs": 1, "min_factor": 0.2}, {0: 0.2, 5: 0.6, 10: 1.0, 20: 0.2, MID: 1.0, 55: 0.6, LAST: 0.28}),
    "onecycle": ({"pct_start": 0.25, "div_factor": 25.0, "final_div_factor": 1000.0},
                 {0: 1 / 25, 25: 1.0, MID: 1 / 25000 + (1 - 1 / 25000) * 0.5 * (1 + math.cos(math.pi * 25 / 74)),
                  LAST: 1 / 25000}),
    "plateau": ({}, {0: 1.0, MID: 1.0, LAST: 1.0}),  # no validation metric seen: the factor stays 1
    # up from 0.2 to 1 at step 25, then linearly down to 0.05 at the last step
    "triangular": ({"peak_fraction": 0.25, "start_factor": 0.2, "end_factor": 0.05},
                   {0: 0.2, 10: 0.2 + 0.8 * 10 / 25, 25: 1.0, MID: 1.0 - 0.95 * 25 / 74, LAST: 0.05}),
}


def test_every_schedule_has_a_formula_test():
    assert set(FORMULAS) == set(SCHEDULES)


@pytest.mark.parametrize("name", sorted(FORMULAS))
def test_schedule_value_at_first_middle_and_last_step_matches_its_formula(name):
    overrides, expected = FORMULAS[name]
    fn = _factor(name, **overrides)
    for step, value in expected.items():
        assert fn(step) == pytest.approx(value, rel=1e-9, abs=1e-12), (name, step)


@pytest.mark.parametrize("name", ["constant", "cosine", "step", "cyclic"])
def test_warmup_rises_linearly_then_hands_over_to_the_schedule(name):
    warm = _factor(name, warmup_epochs=2)
    inner = schedule_factor(_cfg(name), T - 20, SPE)  # the schedule itself runs over the steps after warmup
    assert warm(0) == pytest.approx(inner(0) * 1 / 21)
    assert warm(9) == pytest.approx(inner(0) * 10 / 21)
    assert warm(19) == pytest.approx(inner(0) * 20 / 21)
    for step in (20, 50, 99):
        assert warm(step) == pytest.approx(inner(step - 20))


def test_plateau_drops_after_patience_epochs_without_improvement():
    fn = _factor("plateau", metric="val_loss", factor=0.5, patience_epochs=2, min_factor=0.2)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, fn)
    seen = []
    for loss in [1.0, 0.9, 0.95, 0.91, 0.92, 0.93, 0.94, 0.95, 0.8, 0.85, 0.85, 0.85, 0.85]:
        schedule.observe(scheduler, {"val_loss": loss, "val_acc": 0.0})
        seen.append(opt.param_groups[0]["lr"])  # applied at once, before the next step
    #        improves    3 bad -> 0.5          3 bad -> 0.25       best   3 bad -> floor 0.2
    assert seen == [1, 1, 1, 1, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25, 0.25, 0.2, 0.2]


def test_plateau_state_survives_a_checkpoint(tmp_path):
    def make():
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        return torch.optim.lr_scheduler.LambdaLR(opt, _factor("plateau", patience_epochs=0, factor=0.1))

    scheduler = make()
    for acc in [0.5, 0.4, 0.6, 0.55]:
        scheduler.optimizer.step()
        scheduler.step()
        schedule.observe(scheduler, {"val_acc": acc, "val_loss": 0.0})
    checkpoint.save({"scheduler": schedule.state_dict(scheduler)}, tmp_path / "c.pt")
    restored = make()
    schedule.load_state_dict(restored, checkpoint.load(tmp_path / "c.pt")["scheduler"])
    restored.optimizer.step()
    restored.step()
    assert restored.lr_lambdas[0].state == scheduler.lr_lambdas[0].state == {"scale": pytest.approx(0.01),
                                                                            "best": 0.6, "bad_epochs": 0}
    assert restored.last_epoch == scheduler.last_epoch + 1


def test_cycle_ends_mark_where_snapshots_are_taken():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    restarts = _scheduler(_cfg("cosine_restarts", cycle_epochs=2, cycle_mult=2), opt)
    assert schedule.cycle_ends(restarts, T) == [20, 60]  # 20 + 40; the next would end at 140
    cyclic = _scheduler(_cfg("cyclic", half_cycle_epochs=1, warmup_epochs=1), opt)
    assert schedule.cycle_ends(cyclic, T) == [30, 50, 70, 90]  # after 10 warmup steps, every 20
    assert schedule.cycle_ends(_scheduler(_cfg("cosine"), opt), T) == []
    fn = restarts.lr_lambdas[0]
    assert all(fn(end - 1) < 0.01 and fn(end) == 1.0 for end in (20, 60))  # lowest lr just before each restart


def test_planned_curve_is_the_one_the_run_follows():
    cfg = _cfg("onecycle", warmup_epochs=1)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.3)
    scheduler = _scheduler(cfg, opt)
    planned = schedule.planned_lrs(scheduler, T)
    followed = []
    for _ in range(T):
        followed.append(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step()
    assert planned == pytest.approx(followed)
    fig = schedule.plan_figure(followed, SPE, "onecycle")
    assert fig.axes[0].lines[0].get_ydata().tolist() == pytest.approx(followed)


@pytest.mark.parametrize("overrides, key", [
    (["schedule=step", "schedule.gamma=1.5"], "schedule.gamma"),
    (["schedule=multistep", "schedule.milestone_epochs=[8,5]"], "schedule.milestone_epochs"),
    (["schedule=cosine_restarts", "schedule.cycle_mult=0"], "schedule.cycle_mult"),
    (["schedule=plateau", "schedule.metric=train_loss"], "schedule.metric"),
    (["schedule=plateau", "data.val_size=0"], "data.val_size"),
    (["schedule=cosine", "schedule.warmup_epochs=2"], "schedule.warmup_epochs"),  # all of the 2-epoch run
    (["schedule=cyclic", "schedule.half_cycle_epochs=0"], "schedule.half_cycle_epochs"),
])
def test_bad_schedule_settings_are_refused_at_start_up(overrides, key):
    with pytest.raises(ConfigError, match=key):
        validate(compose_config(overrides, checked=False))


def test_triangular_at_its_start_peak_and_end():
    fn = schedule.Triangular(steps_per_epoch=10, total_steps=101, peak_fraction=0.2, start_factor=0.2,
                             end_factor=0.05)
    assert fn(0) == pytest.approx(0.2)
    assert fn(10) == pytest.approx(0.6)  # halfway up to the peak at step 20
    assert fn(20) == pytest.approx(1.0)
    assert fn(60) == pytest.approx(1.0 + (0.05 - 1.0) * 40 / 80)
    assert fn(100) == pytest.approx(0.05)
