"""The restructured engine computes what the engine before it did: the 24 fixed runs of tests/golden/cases.py (every
option of every config group) give the metrics recorded before the restructuring (tests/golden/metrics.json),
timings aside. Keys added since may be there; every recorded key must match."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "golden"))
from cases import CASES, SMALL, comparable  # noqa: E402

from conftest import choices_of, compose_config  # noqa: E402

RECORDED = json.loads((Path(__file__).parent / "golden" / "metrics.json").read_text())


def differences(recorded, now, path=""):
    if isinstance(recorded, dict):
        return [d for k in recorded for d in (differences(recorded[k], now[k], f"{path}.{k}") if k in now
                                              else [f"{path}.{k} is gone"])]
    if isinstance(recorded, list):
        if len(recorded) != len(now):
            return [f"{path}: {len(recorded)} entries, now {len(now)}"]
        return [d for i, (a, b) in enumerate(zip(recorded, now, strict=True)) for d in differences(a, b, f"{path}[{i}]")]
    return [] if recorded == now else [f"{path}: {recorded!r} -> {now!r}"]


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """The run whose weights the transfer cases load."""
    from runner.engine.train import fit

    run_dir = tmp_path_factory.mktemp("golden") / "source"
    overrides = [*SMALL, *CASES["source"]]
    fit(compose_config(overrides, tiny=False), run_dir, choices_of(overrides))
    return run_dir


@pytest.mark.parametrize("name", [n for n in CASES if n != "source"])
@pytest.mark.slow  # over 2 s on 2 idle cores: `make test-all` and CI run it
def test_fixed_run_gives_the_recorded_metrics(name, source, tmp_path):
    from runner.engine.train import fit

    overrides = [*SMALL, *(o.replace("SOURCE", str(source)) for o in CASES[name])]
    metrics = fit(compose_config(overrides, tiny=False), tmp_path, choices_of(overrides))
    assert differences(RECORDED[name], comparable(metrics)) == []
