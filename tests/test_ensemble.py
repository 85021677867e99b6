"""`python -m runner.ensemble`: each member's test accuracy is its run's own, the ensemble's NLL is no worse than
its members' mean (Jensen), unfinished runs are skipped, and members on different data are refused."""

import json
import shutil

import pytest

from conftest import choices_of, compose_config
from runner import ensemble
from runner.config import ConfigError
from runner.engine import train

FAST = ["model.widths=[8,16]", "data.train_examples=700", "data.test_examples=100", "trainer.epochs=1",
        "diagnostics.every_steps=0"]


@pytest.fixture(scope="module")
def multirun(tmp_path_factory):
    """Two seeds of one configuration, laid out like a Hydra multirun: <dir>/0, <dir>/1."""
    root = tmp_path_factory.mktemp("multirun")
    for seed in (0, 1):
        overrides = [*FAST, f"seed={seed}"]
        train.fit(compose_config(overrides), root / str(seed), choices_of(overrides))
    return root


def test_ensemble_reports_members_and_their_average(multirun, capsys):
    ensemble.main([str(multirun), "--device", "cpu"])
    result = json.loads((multirun / "ensemble.json").read_text())
    assert [m["run"] for m in result["members"]] == [str(multirun / "0"), str(multirun / "1")]
    for member in result["members"]:
        own = json.loads((multirun / member["run"].rsplit("/", 1)[-1] / "metrics.json").read_text())
        assert member["acc"] == pytest.approx(own["test_acc"])
        assert member["nll"] == pytest.approx(own["test_loss"], rel=1e-5)
    mean_nll = sum(m["nll"] for m in result["members"]) / 2
    assert result["ensemble"]["nll"] <= mean_nll + 1e-9  # -log of a mean <= mean of -log
    assert result["test_images"] == 100
    out = capsys.readouterr().out
    assert "ensemble of 2" in out and f"{result['ensemble']['acc']:.4f}" in out


def test_unfinished_runs_are_skipped_and_other_data_is_refused(multirun, tmp_path):
    mixed = tmp_path / "mixed"
    shutil.copytree(multirun / "0", mixed / "a")
    shutil.copytree(multirun / "1", mixed / "b")
    metrics = json.loads((mixed / "b" / "metrics.json").read_text())
    (mixed / "b" / "metrics.json").write_text(json.dumps({**metrics, "status": "pruned"}))
    assert ensemble.find_runs([str(mixed)]) == [mixed / "a"]

    config = (mixed / "b" / "config.yaml").read_text()
    (mixed / "b" / "config.yaml").write_text(config.replace("test_examples: 100", "test_examples: 99"))
    with pytest.raises(ConfigError, match="other data"):
        ensemble.evaluate_ensemble([mixed / "a", mixed / "b"], "cpu")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no completed run"):
        ensemble.find_runs([str(tmp_path / "empty")])
