"""The lessons framework: verdicts from measured numbers, the lesson files, the command."""

import json
import math
import time

import pytest

from runner import lessons
from runner.commands import lesson as lesson_cli
from runner.config import ConfigError
from runner.lessons.verdict import REPRODUCED, Result, Stat, accuracy_noise, all_of, greater, holds, less


def test_greater_needs_the_difference_to_clear_the_spread():
    apart = greater(Stat([0.60, 0.61, 0.62]), Stat([0.50, 0.51, 0.52]), "a", "b", "acc")
    assert apart.reproduced and "clears" in apart.reason
    overlapping = greater(Stat([0.60, 0.50, 0.55]), Stat([0.52, 0.58, 0.54]), "a", "b", "acc")
    assert not overlapping.reproduced and "within the spread" in overlapping.reason
    opposite = greater(Stat([0.40, 0.41]), Stat([0.60, 0.61]), "a", "b", "acc")
    assert not opposite.reproduced and "opposite" in opposite.reason


def test_less_and_margin_and_floor():
    assert less(Stat([1.0, 1.1]), Stat([2.0, 2.1]), "a", "b", "loss").reproduced
    assert not less(Stat([2.0, 2.1]), Stat([1.0, 1.1]), "a", "b", "loss").reproduced
    # a claimed margin must be exceeded, not just any difference
    assert not greater(Stat([0.30, 0.30]), Stat([0.28, 0.28]), "a", "b", "x", margin=0.05).reproduced
    # one seed each: the spread is unknown, so a known per-measurement noise (the floor) decides
    noise = accuracy_noise(0.6, 1000)
    assert math.isclose(noise, math.sqrt(0.24 / 1000))
    assert not greater(Stat([0.61]), Stat([0.60]), "a", "b", "acc", floor=noise).reproduced
    assert greater(Stat([0.70]), Stat([0.60]), "a", "b", "acc", floor=noise).reproduced


def test_non_finite_values_never_reproduce_and_parts_combine():
    assert not greater(Stat([math.nan]), Stat([0.1]), "a", "b", "x").reproduced
    yes, no = holds(True, "held", "did not"), holds(False, "held", "did not")
    assert yes.reproduced and not no.reproduced
    assert all_of(yes, yes).reproduced and not all_of(yes, no).verdict == REPRODUCED


def test_result_table_lines_up():
    result = Result(["arm", "acc"], [{"arm": "a", "acc": Stat([0.5, 0.6])}, {"arm": "bb", "acc": 0.25}],
                    holds(True, "ok", "no"))
    lines = result.table().splitlines()
    assert len({len(line) for line in lines}) == 1 and "0.55 ± 0.071" in lines[2]


def test_every_lesson_file_is_complete():
    names = lessons.names()
    assert "l1_sparsity" in names
    for name in names:
        lesson = lessons.load(name)
        assert "test" in lesson.sizes, f"{name} has no test size"
        assert "." in lesson._target_


def test_unknown_lesson_and_keys_are_one_line_errors():
    with pytest.raises(ConfigError, match="did you mean l1_sparsity"):
        lessons.load("l1_sparsty")
    with pytest.raises(ConfigError, match="not a key of lesson l1_sparsity"):
        lessons.load("l1_sparsity", ["strenght=0.1"])
    with pytest.raises(ConfigError, match="seeds="):
        lessons.load("l1_sparsity", ["seeds=3"])


def test_the_command_lists_and_refuses(capsys, tmp_path):
    assert lesson_cli.main([]) == 0
    assert "l1_sparsity" in capsys.readouterr().out
    assert lesson_cli.main(["nope"]) == 2
    assert capsys.readouterr().err.startswith("error: lesson 'nope' does not exist")
    # a value the runs would refuse is one line before any run, and no lesson directory is left
    out = tmp_path / "lesson"
    assert lesson_cli.main(["l1_sparsity", "strength=abc", "--size", "test", "--out", str(out)]) == 2
    assert "regularization.l1.value='abc' is invalid" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.slow  # over 2 s on 2 idle cores: `make test-all` and CI run it
def test_l1_sparsity_runs_and_decides(tmp_path):
    result = lesson_cli.run_lesson("l1_sparsity", ["seeds=[0,1]"], "test", out=tmp_path)
    zeros = {row["penalty"]: row["exact zeros"] for row in result.rows}
    assert zeros["l1"].mean > 0.05 and zeros["l2"].mean < 1e-3
    assert result.verdict.reproduced
    written = json.loads((tmp_path / "lesson.json").read_text())
    assert written["verdict"] == result.verdict.verdict and written["runs"] == 4
    assert (tmp_path / "l1_sparsity.png").stat().st_size > 0
    assert "Verdict: reproduced" in (tmp_path / "lesson.md").read_text()
    assert (tmp_path / "l1_seed0" / "metrics.json").exists()


def _other_defaults(tmp_path):
    """A copy of configs/ whose defaults differ from runner's in every part of a recipe: another optimizer and lr,
    schedule, batch size and number of epochs."""
    import re
    import shutil

    from runner.config import CONFIG_DIR

    root = tmp_path / "configs"
    shutil.copytree(CONFIG_DIR, root)
    text = (root / "config.yaml").read_text()
    text = re.sub(r"- optimizer: \w+", "- optimizer: adam", text)
    text = re.sub(r"- schedule: \w+", "- schedule: cosine", text)
    text = re.sub(r"(\n  epochs:) \d+", r"\1 7", text)
    text = re.sub(r"(\n  batch_size:) \d+", r"\1 48", text)
    (root / "config.yaml").write_text(text)
    for option in ("sgd", "momentum", "nesterov", "adam"):
        path = root / "optimizer" / f"{option}.yaml"
        path.write_text(re.sub(r"\nlr: .*", "\nlr: 0.0123", path.read_text()))
    return root


RECIPE_KEYS = ("optimizer", "schedule", "trainer.batch_size", "trainer.epochs", "trainer.lr_reference_batch_size")


def test_no_lesson_moves_with_runners_defaults(tmp_path):
    """Every arm of every training lesson, at every size, composes to the same optimizer, lr, schedule, batch size
    and epochs under other defaults: each lesson pins the recipe it depends on."""
    from omegaconf import OmegaConf

    from runner.lessons.lab import Lab

    other = _other_defaults(tmp_path)
    checked = 0
    for name in lessons.names():
        lesson = lessons.load(name)
        if not lesson.sizes.get("quick"):
            continue  # no training runs (the optimizer race, the simulated search)
        assert "recipe" in lesson, f"lesson {name} trains but pins no recipe"
        for size in lesson.sizes:
            for arm in lesson.get("arms") or [None]:
                ours, _ = Lab(lesson, tmp_path, size).config(arm, 0)
                theirs, _ = Lab(lesson, tmp_path, size, config_dir=other).config(arm, 0)
                for key in RECIPE_KEYS:
                    a, b = OmegaConf.select(ours, key), OmegaConf.select(theirs, key)
                    a, b = (OmegaConf.to_container(v) if OmegaConf.is_config(v) else v for v in (a, b))
                    assert a == b, f"lesson {name}, size {size}, arm {arm}: {key} moves with the defaults"
                checked += 1
    assert checked > 40


def _record(arm, seed, status="completed", acc=0.5):
    return {"run": f"{arm}_seed{seed}", "arm": arm, "seed": seed, "status": status, "test_acc": acc, "lr": 0.05,
            "batch_size": 256, "chance": 0.1}


def test_gates_name_every_run_that_did_not_train(tmp_path):
    from omegaconf import OmegaConf

    from runner.lessons.lab import Lab, runs_figure, runs_table

    lesson = OmegaConf.create({"sizes": {"test": []}, "gates": {"may_fail": ["too_high"]}})
    lab = Lab(lesson, tmp_path, "test")
    lab.records = [_record("a", 0), _record("a", 1, "diverged", None), _record("b", 0, acc=0.11),
                   _record("too_high", 0, "diverged", None), _record("b", 1, acc=0.16)]
    failures = lab.gate_failures()
    assert failures == ["a seed 1 diverged (lr 0.05, batch 256)",
                        "b seed 0 stayed at chance (test acc 0.110, chance 0.10) (lr 0.05, batch 256)"]
    assert lab.records[3]["gate"] == "diverged (expected: gates.may_fail)" and lab.records[4]["gate"] == "ok"
    table = runs_table(lab.records)
    assert table.count("\n") == 6 and "| a | 1 | diverged | - | diverged |" in table
    assert runs_figure(tmp_path / "runs.png", lab.records, "t") and (tmp_path / "runs.png").stat().st_size > 0


def test_a_failed_run_makes_the_verdict_inconclusive_never_reproduced(tmp_path):
    from omegaconf import OmegaConf

    from runner.lessons.lab import Lab
    from runner.lessons.verdict import INCONCLUSIVE

    lab = Lab(OmegaConf.create({"sizes": {"test": []}}), tmp_path, "test")
    lab.records = [_record("he", 0), _record("he", 1, "diverged", None)]
    result = Result(["arm"], [], holds(True, "the units differ", "no"))
    lesson_cli.gated(result, lab, "x")
    assert result.verdict.verdict == INCONCLUSIVE and not result.verdict.reproduced
    assert "he seed 1 diverged" in result.verdict.reason and "optimizer.lr" in result.verdict.reason
    assert result.notes[0].startswith("the comparison alone read: reproduced")
    lab.records = [_record("he", 0), _record("he", 1)]
    result = Result(["arm"], [], holds(True, "the units differ", "no"))
    lesson_cli.gated(result, lab, "x")
    assert result.verdict.reproduced and result.runs_figure.endswith("x_runs.png")


# ---------------------------------------------------------------------------------------------------------------
# The command under faults: bad runner overrides, Ctrl-C, a run again into the same --out

@pytest.mark.parametrize(("user", "size", "message"), [
    ("optimizer=adamm", "test", "optimizer=adamm is not an option: did you mean adam"),
    ("trainer.epoch=3", "test", "did you mean trainer.epochs?"),
    ("data.train_examples=5", "quick", "data.train_examples is not a key of data=cifar10"),  # synthetic data's key
    ("hydra.run.dir=elsewhere", "test", "use `--out elsewhere`"),
])
def test_a_bad_runner_override_is_one_line_before_any_run(capsys, tmp_path, user, size, message):
    out = tmp_path / "lesson"
    assert lesson_cli.main(["l1_sparsity", "--size", size, "--out", str(out), "--", user]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert not out.exists()


def _resume_command(err: str, out) -> list[str]:
    import shlex
    import sys

    line = err.strip().splitlines()[-1]
    command = shlex.split(line[line.index("python -m runner.lesson"):])
    assert command[command.index("--out") + 1] == str(out)
    return [sys.executable, *command[1:]]


def test_ctrl_c_between_runs_ends_the_lesson_in_one_line_with_its_resume_command(capsys, tmp_path, monkeypatch):
    from runner.lessons.lab import Lab

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Lab, "_fit", interrupted)
    out = tmp_path / "lesson"
    assert lesson_cli.main(["l1_sparsity", "seeds=[0]", "--size", "test", "--out", str(out)]) == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "interrupted" in err
    assert _resume_command(err, out)[1:] == ["-m", "runner.lesson", "l1_sparsity", "seeds=[0]", "--size=test",
                                             "--out", str(out)]


def test_sigterm_between_runs_ends_the_lesson_in_one_line_with_143_and_its_resume_command(capsys, tmp_path,
                                                                                           monkeypatch):
    """SIGTERM (a scheduler's stop) outside a run's own handler killed the lesson without a word."""
    import os
    import signal

    from runner.lessons.lab import Lab

    def terminated(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises before this ends

    monkeypatch.setattr(Lab, "_fit", terminated)
    before = signal.getsignal(signal.SIGTERM)
    out = tmp_path / "lesson"
    assert lesson_cli.main(["l1_sparsity", "seeds=[0]", "--size", "test", "--out", str(out)]) == 143
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "stopped by SIGTERM" in err
    assert _resume_command(err, out)[1:4] == ["-m", "runner.lesson", "l1_sparsity"]
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_run_stopped_by_a_signal_ends_the_lesson_with_130_not_a_traceback(capsys, tmp_path, monkeypatch):
    from runner.engine import train

    def stopped(cfg, run_dir, *args, **kwargs):
        return {"status": "interrupted", "message": f"interrupted by SIGINT in epoch 1 at step 3; {run_dir} ..."}

    monkeypatch.setattr(train, "fit", stopped)
    out = tmp_path / "lesson"
    assert lesson_cli.main(["l1_sparsity", "--size", "test", "--out", str(out), "--", "trainer.epochs=3"]) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err and "l1_seed0" in err
    assert _resume_command(err, out)[-2:] == ["--", "trainer.epochs=3"]


@pytest.mark.slow
def test_a_lesson_run_again_into_its_directory_reuses_its_runs_and_gives_the_same_verdict(tmp_path, capsys):
    first = lesson_cli.run_lesson("l1_sparsity", ["seeds=[0,1]"], "test", out=tmp_path)
    written = {p: p.stat().st_mtime_ns for p in tmp_path.glob("*_seed*/**/*") if p.is_file()}
    capsys.readouterr()
    again = lesson_cli.run_lesson("l1_sparsity", ["seeds=[0,1]"], "test", out=tmp_path)
    assert capsys.readouterr().out.count("(kept from an earlier run)") == 4
    assert again.verdict == first.verdict and again.rows == first.rows
    assert {p: p.stat().st_mtime_ns for p in written} == written  # no run trained or wrote again
    assert json.loads((tmp_path / "lesson.json").read_text())["runs"] == 4


@pytest.mark.slow
def test_an_interrupted_lesson_resumes_into_its_directory_and_gives_its_verdict(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "lesson"
    started = subprocess.Popen([sys.executable, "-m", "runner.lesson", "l1_sparsity", "seeds=[0]", "--size", "test",
                                "--out", str(out), "--", "trainer.epochs=6"], cwd=tmp_path, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out / "l1_seed0" / "checkpoints" / "last.pt").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    started.send_signal(signal.SIGINT)
    _, err = started.communicate(timeout=120)
    assert started.returncode == 130 and "Traceback" not in err, err
    assert json.loads((out / "l1_seed0" / "metrics.json").read_text())["status"] == "interrupted"
    resumed = subprocess.run(_resume_command(err, out), cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "Verdict:" in resumed.stdout and json.loads((out / "lesson.json").read_text())["runs"] == 2
    assert json.loads((out / "l1_seed0" / "metrics.json").read_text())["epochs_completed"] == 6
    assert not (out / "l1_seed0" / "previous").exists()  # resumed from its checkpoint, not started afresh
