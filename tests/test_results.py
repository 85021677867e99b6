"""`python -m runner.results`: the parts and their status, a lesson part stored with its provenance, resuming,
--force, staleness against git, the index rendered from the stored json, and bad input refused before anything
runs."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from runner import lessons
from runner.commands import results

LESSON = "lesson/initial_loss"  # seconds at --size test on 2 CPU cores, and a figure
PROVENANCE = ("part", "commit", "date", "machine", "command", "size", "wall_s")
MACHINE = {"cpu": "Test CPU", "cores": 2, "threads": 2, "torch": "2.0", "device": "cpu", "load_average": 0.5}


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """initial_loss run for real at --size test into a folder of its own (the process's cwd is a tmp folder, so
    outputs/results/ lands there too); returns (into, the command's output, its return code)."""
    work = tmp_path_factory.mktemp("work")
    into = work / "results"
    here = Path.cwd()
    os.chdir(work)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(results, "fingerprint", same_code)
            rc = results.main([LESSON, "--size", "test", "--into", str(into), "--data-root", str(work / "nodata")])
    finally:
        os.chdir(here)
    return into, work, rc


def same_code(part, at):
    """The fingerprint of code that does not change while a test runs (staleness has tests of its own)."""
    return "same code"


def fake_lesson(verdict="reproduced"):
    """A stand-in for run_lesson_part: the files a lesson part stores, at once."""
    def run(name, size, root, into):
        (into / "lesson.json").write_text(json.dumps({"lesson": name, "verdict": verdict}))
        (into / f"{name}.png").write_bytes(b"png")
        return f"## {name}\n"
    return run


def store(monkeypatch, into, part=LESSON, verdict="reproduced"):
    monkeypatch.setattr(results, "run_lesson_part", fake_lesson(verdict))
    monkeypatch.setattr(results, "machine", lambda: MACHINE)
    return results.run_part(part, "test", "data", into, f"python -m runner.results {part} --size test")


def test_the_listing_names_every_lesson_the_grid_and_each_bench_letter(tmp_path, capsys):
    from runner.commands import bench

    assert results.main(["--into", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for part in [*(f"lesson/{n}" for n in lessons.names()), "grid", *(f"bench/{c}" for c in bench.PARTS if c != "k")]:
        assert any(line.split()[:2] == [part, "missing"] for line in out.splitlines()), part
    assert "bench/k" not in out  # the bench's option grid is the part `grid`
    assert not (tmp_path / "README.md").exists()  # listing writes nothing


def test_a_lesson_part_is_stored_with_its_files_provenance_and_no_run_directories(stored):
    into, work, rc = stored
    assert rc == 0
    part = into / "lessons" / "initial_loss"
    assert sorted(p.name for p in part.iterdir()) == ["initial_loss.png", "lesson.json", "lesson.md",
                                                       "provenance.json"]
    prov = json.loads((part / "provenance.json").read_text())
    assert set(PROVENANCE) <= set(prov) and set(MACHINE) == set(prov["machine"])
    assert prov["size"] == "test" and prov["command"].startswith(f"python -m runner.results {LESSON} --size test")
    assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?|unknown", prov["commit"]) and prov["wall_s"] > 0
    first = (part / "lesson.md").read_text().splitlines()[0]
    for value in (prov["command"], prov["commit"], prov["date"], "size test", prov["machine"]["cpu"]):
        assert value in first
    lesson = json.loads((part / "lesson.json").read_text())
    assert lesson["verdict"] in ("reproduced", "not reproduced here", "inconclusive")
    assert lesson["figure"] == "initial_loss.png"  # beside the page, not in the run directory
    assert (work / "outputs" / "results" / "lessons" / "initial_loss" / "lesson.json").is_file()
    for path in into.rglob("*"):  # no path of this machine in what the docs hold
        if path.suffix in (".md", ".json"):
            assert str(work) not in path.read_text(), path
    index = (into / "README.md").read_text()
    assert f"[{LESSON}](lessons/initial_loss/lesson.md) | {lesson['verdict']} | test" in index


def test_a_fresh_part_is_skipped_and_force_reruns_it(stored, monkeypatch, capsys):
    into, work, _ = stored
    monkeypatch.setattr(results, "fingerprint", same_code)
    path = into / "lessons" / "initial_loss" / "provenance.json"
    before = path.read_text()
    assert results.reason_to_run(LESSON, into, "test", force=False) is None
    assert results.reason_to_run("lesson/l1_sparsity", into, "test", force=False) == "missing"
    assert results.reason_to_run(LESSON, into, "quick", force=False) == "stored at size test"
    args = [LESSON, "--size", "test", "--into", str(into)]
    here = Path.cwd()
    os.chdir(work)
    try:
        assert results.main(args) == 0
        assert "fresh" in capsys.readouterr().out and path.read_text() == before
        assert results.main([*args, "--force"]) == 0
    finally:
        os.chdir(here)
    assert json.loads(path.read_text())["date"] != json.loads(before)["date"]


def test_an_interrupted_part_stores_nothing_and_keeps_the_version_before(tmp_path, monkeypatch):
    store(monkeypatch, tmp_path, verdict="reproduced")

    def interrupted(name, size, root, into):
        (into / "lesson.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(results, "run_lesson_part", interrupted)
    with pytest.raises(KeyboardInterrupt):
        results.run_part(LESSON, "test", "data", tmp_path, "python -m runner.results")
    with pytest.raises(KeyboardInterrupt):
        results.run_part("lesson/l1_sparsity", "test", "data", tmp_path, "python -m runner.results")
    assert sorted(p.name for p in (tmp_path / "lessons").iterdir()) == ["initial_loss"]  # no partial folder
    assert json.loads((tmp_path / "lessons/initial_loss/lesson.json").read_text())["verdict"] == "reproduced"
    assert results.status("lesson/l1_sparsity", tmp_path)[0] == "missing"


def git(repo, *args):
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "commit.gpgsign=false",
                    *args], cwd=repo, check=True, capture_output=True)


@pytest.fixture
def repo(tmp_path, monkeypatch):
    """A git checkout with runner's layout, as results.ROOT."""
    repo = tmp_path / "repo"
    for name, text in [("src/runner/engine/train.py", "lr = 0.1\n"), ("src/runner/commands/bench.py", "a = 1\n"),
                       ("configs/config.yaml", "seed: 0\n"), ("configs/lesson/initial_loss.yaml", "seeds: [0]\n"),
                       ("configs/lesson/l1_sparsity.yaml", "seeds: [0]\n"), ("README.md", "runner\n")]:
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text)
    git(repo, "init", "-q")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "start")
    monkeypatch.setattr(results, "ROOT", repo)
    return repo


def test_a_part_is_stale_when_the_code_it_describes_changed_and_the_index_says_so(repo, tmp_path, monkeypatch,
                                                                                  capsys):
    into = tmp_path / "results"
    store(monkeypatch, into)
    assert results.status(LESSON, into)[0] == "present"
    for unrelated in ("README.md", "configs/lesson/l1_sparsity.yaml", "src/runner/commands/bench.py"):
        (repo / unrelated).write_text("changed\n")
    assert results.status(LESSON, into)[0] == "present"
    own = repo / "configs/lesson/initial_loss.yaml"
    own.write_text("seeds: [0, 1]\n")
    assert results.status(LESSON, into)[0] == "stale"
    assert results.reason_to_run(LESSON, into, "test", force=False) == "stale: the code changed since"
    assert results.main(["--into", str(into)]) == 0
    assert any(line.split()[:2] == [LESSON, "stale"] for line in capsys.readouterr().out.splitlines())
    assert results.main(["index", "--into", str(into)]) == 0
    row = next(line for line in (into / "README.md").read_text().splitlines() if f"[{LESSON}]" in line)
    assert "STALE: the code changed since" in row
    own.write_text("seeds: [0]\n")  # back to the code it was made with
    assert results.status(LESSON, into)[0] == "present"
    git(repo, "commit", "-q", "-am", "unrelated changes")  # a new commit, same code for this lesson
    assert results.status(LESSON, into)[0] == "present"
    (repo / "src/runner/engine/train.py").write_text("lr = 0.2\n")
    git(repo, "commit", "-q", "-am", "engine")
    assert results.status(LESSON, into)[0] == "stale"


def test_a_part_made_from_a_dirty_tree_is_fresh_until_that_code_changes(repo, tmp_path, monkeypatch):
    into = tmp_path / "results"
    (repo / "src/runner/engine/train.py").write_text("lr = 0.3\n")
    prov = store(monkeypatch, into)
    assert prov["commit"].endswith("-dirty")
    git(repo, "commit", "-q", "-am", "the change the part was made with")
    assert results.status(LESSON, into)[0] == "present"
    (repo / "src/runner/engine/ema.py").write_text("decay = 0.99\n")  # a new, untracked file of the engine
    assert results.status(LESSON, into)[0] == "stale"


def test_without_git_the_commit_is_unknown_and_the_index_says_staleness_cannot_be_decided(tmp_path, monkeypatch,
                                                                                          capsys):
    monkeypatch.setattr(results, "_git", lambda *args: None)
    into = tmp_path / "results"
    assert store(monkeypatch, into)["commit"] == "unknown"
    assert results.status(LESSON, into)[0] == "undecided"
    assert results.reason_to_run(LESSON, into, "test", force=False) is None
    assert results.main(["--into", str(into)]) == 0
    assert "staleness cannot be decided" in capsys.readouterr().out
    index = results.index(into)
    assert "No git checkout here" in index
    row = next(line for line in index.splitlines() if f"[{LESSON}]" in line)
    assert "unknown" in row and "staleness cannot be decided" in row


def test_the_index_is_rendered_from_the_stored_json(tmp_path):
    part = tmp_path / "lessons" / "l1_sparsity"
    part.mkdir(parents=True)
    prov = {"part": "lesson/l1_sparsity", "commit": "unknown", "date": "2024-05-01T10:20:30+00:00",
            "machine": {"cpu": "Some CPU 9000", "cores": 16, "torch": "2.5", "device": "NVIDIA H100"},
            "command": "python -m runner.results lesson/l1_sparsity --size quick", "size": "quick", "wall_s": 83.2}
    (part / "provenance.json").write_text(json.dumps(prov))
    lesson = {"verdict": "inconclusive", "runs": [{"arm": "l1", "seed": 0, "status": "completed"}]}
    (part / "lesson.json").write_text(json.dumps(lesson))
    (part / "l1_sparsity.png").write_bytes(b"png")
    (tmp_path / "grid").mkdir()
    (tmp_path / "grid" / "provenance.json").write_text(json.dumps({**prov, "part": "grid", "wall_s": 600}))
    (tmp_path / "grid" / "grid.json").write_text(json.dumps({"verdict": "40 of 41 train", "rows": []}))
    assert results.main(["index", "--into", str(tmp_path)]) == 0
    lines = (tmp_path / "README.md").read_text().splitlines()
    row = next(line for line in lines if "[lesson/l1_sparsity]" in line)
    for cell in ("(lessons/l1_sparsity/lesson.md)", "inconclusive", "quick", "2024-05-01 10:20", "Some CPU 9000",
                 "16 cores", "NVIDIA H100", "83 s", "[l1_sparsity.png](lessons/l1_sparsity/l1_sparsity.png)"):
        assert cell in row, cell
    assert "| [grid](grid/grid.md) | 40 of 41 train |" in "\n".join(lines)
    assert any(line.startswith("| lesson/constant_init |") and "missing" in line for line in lines)
    (part / "lesson.json").write_text(json.dumps({**lesson, "verdict": "reproduced"}))
    assert "| reproduced |" in results.index(tmp_path)


def test_a_bad_part_name_is_one_line_with_the_allowed_names_and_a_suggestion_before_anything_runs(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "runner.results", "lesson/l1_sparsty", "--into", str(tmp_path / "r")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "'lesson/l1_sparsty'" in proc.stderr and "did you mean lesson/l1_sparsity" in proc.stderr
    assert "allowed: all, index, grid, lesson/<name>, bench/<letters" in proc.stderr
    assert not (tmp_path / "r").exists()
    known = results.parts(tmp_path)
    assert results.check_part("bench/ih", known) == "bench/hi"
    for bad in ("bench/xz", "bench/aa", "grids"):
        with pytest.raises(results.UserError, match=bad):
            results.check_part(bad, known)


def test_quick_lessons_without_cifar10_stop_with_one_line_before_anything_runs(tmp_path, monkeypatch, capsys):
    def must_not_run(*args):
        raise AssertionError("a part ran")

    monkeypatch.setattr(results, "run_part", must_not_run)
    into = tmp_path / "results"
    assert results.main(["lesson/l1_sparsity", "grid", "--into", str(into), "--data-root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "lesson/l1_sparsity needs CIFAR-10 at --size quick" in err and "cifar-10-batches-py" in err
    assert not into.exists()
    assert not results.needs_cifar("lesson/optimizers_bowl", "quick")  # trains on no images
    assert not results.needs_cifar("lesson/l1_sparsity", "test") and results.needs_cifar("bench/hi", "test")


def test_all_at_test_size_without_cifar10_leaves_out_the_bench_parts_that_need_it_but_not_when_named(tmp_path):
    args = results.parse(["all", "--size", "test", "--into", str(tmp_path), "--data-root", str(tmp_path)])
    todo = [part for part, why in results.plan(args, tmp_path, str(tmp_path))]
    assert f"lesson/{lessons.names()[0]}" in todo and "grid" in todo and "bench/a" in todo
    assert "bench/h" not in todo and "bench/i" not in todo
    args = results.parse(["bench/h", "--size", "test", "--into", str(tmp_path), "--data-root", str(tmp_path)])
    with pytest.raises(results.UserError, match="bench/h needs CIFAR-10"):
        results.plan(args, tmp_path, str(tmp_path))


def test_a_lesson_depends_on_its_own_module_and_what_that_imports_not_on_other_topics():
    modules = results.lesson_modules("leaky_relu_elu")  # runner.lessons.claims, which reuses init's measures
    assert {"claims", "init", "lab", "verdict", "__init__"} <= set(modules)
    assert "optimization" not in modules and "regularization" not in modules
    specs = results.code_specs("lesson/leaky_relu_elu")
    assert ":(exclude)src/runner/lessons" in specs[0] and "src/runner/lessons/claims.py" in specs[2]
