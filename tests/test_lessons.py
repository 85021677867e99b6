"""The lessons framework: verdicts from measured numbers, the lesson files, the command."""

import json
import math

import pytest

from runner import lesson as lesson_cli
from runner import lessons
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
