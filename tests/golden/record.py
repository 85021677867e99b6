"""Run every case of cases.py and write their comparable metrics to metrics.json beside this file.
Usage: python tests/golden/record.py [OUT.json]"""

import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from cases import CASES, SMALL, comparable  # noqa: E402

from conftest import choices_of, compose_config  # noqa: E402


def run_case(name, overrides, run_dir: Path, source_dir: Path | None):
    from runner.engine.train import fit

    overrides = [o.replace("SOURCE", str(source_dir)) for o in overrides]
    cfg = compose_config([*SMALL, *overrides], tiny=False)
    return fit(cfg, run_dir, choices_of([*SMALL, *overrides]))


def main(out: Path) -> None:
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, overrides in CASES.items():
            metrics = run_case(name, overrides, Path(tmp) / name, Path(tmp) / "source")
            results[name] = comparable(metrics)
            print(name, metrics["status"], metrics.get("test_acc"), flush=True)
    out.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "metrics.json")
