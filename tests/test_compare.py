"""runner.compare: each arm's lr tuned at equal budget on the validation split, then every arm on the same seeds,
compared on paired differences; bad arguments are one line."""

import json

import pytest

from runner.commands import compare

TINY = ["--", "data=synthetic", "data.difficulty=0.6", "data.train_examples=600", "data.val_size=200",
        "data.test_examples=200", "model=mlp", "model.depth=1", "model.width=16", "trainer.epochs=1",
        "trainer.batch_size=50", "diagnostics.every_steps=0", "trainer.progress=false", "trainer.save_best=false",
        "device=cpu"]


@pytest.mark.parametrize("argv, message", [
    (["optimizer=adam"], "at least two arms"),
    (["optimizer=adam", "adam"], "is not a runner override"),
    (["optimizer=adam", "optimizer=sgd", "--seeds", "a,b"], "comma-separated numbers"),
    (["optimizer=adam", "optimizer=sgd", "--factors", "0,1"], "must be positive"),
])
def test_bad_arguments_are_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        compare.parse(argv)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_a_bad_override_is_refused_before_anything_runs(tmp_path, capsys):
    out = tmp_path / "cmp"
    assert compare.main(["optimizer=adam", "optimizer=nesterov,optimizer.lr=-1", "--out", str(out), *TINY]) == 2
    assert "optimizer.lr=-1" in capsys.readouterr().err and not out.exists()


@pytest.mark.slow  # ten tiny runs: about 15 s on 2 idle cores
def test_each_arm_runs_at_its_best_validation_lr(tmp_path):
    out = tmp_path / "cmp"
    argv = ["optimizer=nesterov,norm=none", "optimizer=adam", "--seeds", "0,1", "--factors", "0.1,1", "--out",
            str(out), *TINY]
    assert compare.main(argv) == 0
    written = json.loads((out / "compare.json").read_text())
    for arm, tuned in written["tuning"].items():
        done = [t for t in tuned["trials"] if t["status"] == "completed"]
        assert tuned["lr"] == max(done, key=lambda t: t["val_acc"])["lr"]  # the best validation accuracy won
        assert sorted(t["lr"] for t in tuned["trials"]) == pytest.approx([0.1 * tuned["base"], tuned["base"]])
        assert (out / f"tune_{arm}_lr{tuned['lr']:.3g}" / "metrics.json").exists()
    assert written["tuning"]["optimizer=adam"]["base"] == 0.001
    assert len(written["run_records"]) == 4 and {r["seed"] for r in written["run_records"]} == {0, 1}
    assert written["verdict"] in ("reproduced", "not reproduced here", "inconclusive")
    text = (out / "compare.md").read_text()
    assert "paired by seed" in text and "tuned on the validation split" in text
    assert (out / "compare.png").stat().st_size > 0 and (out / "compare_runs.png").stat().st_size > 0
