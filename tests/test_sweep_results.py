"""`python -m runner.results sweep/architecture`: the multi-objective architecture search as a published part, at the
test size (synthetic data), stored whole with its front, report and figures."""

import json

import pytest

from runner.commands import results


def test_the_architecture_sweep_is_a_part_stored_under_sweep(tmp_path):
    assert "sweep/architecture" in results.parts(tmp_path)
    assert results.folder("sweep/architecture", tmp_path) == tmp_path / "sweep" / "architecture"
    assert results.needs_cifar("sweep/architecture", "quick") and not results.needs_cifar("sweep/architecture", "test")


@pytest.mark.slow  # four trials and the test pass of their front: about 30 s on 2 CPU cores
def test_the_architecture_sweep_part_stores_its_pareto_front(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # its runs go to outputs/results/ under the working directory
    prov = results.run_part("sweep/architecture", "test", "data", tmp_path / "docs", "python -m runner.results ...")
    stored = tmp_path / "docs" / "sweep" / "architecture"
    data = json.loads((stored / "sweep.json").read_text())
    assert data["front"] and data["verdict"] == f"{len(data['front'])} of 4 trials on the front"
    assert all(row["on_front"] == "True" and row["status"] == "completed" for row in data["front"])
    page = (stored / "sweep.md").read_text()
    assert "Pareto front (max best_val_acc, min model_params)" in page and "![front.png](front.png)" in page
    assert (stored / "front.png").stat().st_size > 10_000 and prov["wall_s"] > 0
