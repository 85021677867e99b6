"""The documentation: the option reference holds every option file of configs/ and every key it sets (read here
from the files themselves, not from the generator), the README stays a front door, no tracked file names a path of
a particular machine or tells how the project was made, the generated lesson pages carry their provenance and STALE
mark, and (slow) the site builds with `mkdocs build --strict`."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from runner import docs_pages
from runner.config import keys, reference

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
# Top-level files of configs/ besides config.yaml: the configs of the other commands.
COMMAND_CONFIGS = ("lr_find", "pictures", "transfer_grid")


def _leaves(node, prefix=""):
    if not isinstance(node, dict) or not node:
        return [prefix]
    return [leaf for key, value in node.items() for leaf in _leaves(value, f"{prefix}{key}.")]


def expected(path: Path) -> tuple[str, list[str]]:
    """(the heading of the option file `path` in the reference, the keys its section must name)."""
    rel = path.relative_to(CONFIGS)
    values = yaml.safe_load(path.read_text()) or {}
    if len(rel.parts) == 1:
        if rel.stem == "config":
            return "## Run-wide keys", [k.rstrip(".") for k in _leaves({k: values[k] for k in reference.RUN_WIDE})]
        assert rel.stem in COMMAND_CONFIGS, f"configs/{rel} has no place in the reference"
        return f"#### `{rel.name}`", [k.rstrip(".") for k in _leaves({k: v for k, v in values.items()
                                                                       if k not in ("defaults", "hydra")})]
    folder, name = rel.parts[0], str(rel.relative_to(rel.parts[0]).with_suffix(""))
    if folder in ("experiment", "sweep", "lesson"):
        sign = "" if folder == "lesson" else "+"
        body = {k: v for k, v in values.items() if k != "defaults"}
        return f"#### `{sign}{folder}={name}`", [k.rstrip(".") for k in _leaves(body) if k]
    if folder == "hydra":
        kind = rel.parts[2] if len(rel.parts) > 3 else None
        prefix = f"hydra.sweeper.{kind}." if kind else "hydra.sweeper."
        heading = f"#### `hydra/sweeper/{kind}={rel.stem}`" if kind else f"### `hydra/sweeper={rel.stem}`"
        return heading, [prefix + k.rstrip(".") for k in _leaves({k: v for k, v in values.items() if k != "defaults"})
                         if not k.startswith("_")]
    assert folder in reference.RUN_GROUPS, f"configs/{folder}/ has no place in the reference"
    if folder == "regularization":
        values = values.get(name) or {}
    return f"#### `{folder}={name}`", [k for k in values if not k.startswith("_") and k != "name"]


def section(text: str, heading: str) -> str:
    """The reference's text under `heading`, up to the next heading of any level."""
    lines = text.splitlines()
    assert heading in lines, f"{heading} is missing from the reference"
    start = lines.index(heading) + 1
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("#")), len(lines))
    return "\n".join(lines[start:end])


@pytest.fixture(scope="module")
def ref() -> str:
    return reference.markdown()


@pytest.mark.parametrize("path", sorted(CONFIGS.rglob("*.yaml")), ids=lambda p: str(p.relative_to(CONFIGS)))
def test_the_reference_names_every_option_file_and_every_key_it_sets(ref, path):
    heading, names = expected(path)
    body = section(ref, heading) if not heading.startswith("## ") else ref.split("## The groups of a run")[0]
    missing = [k for k in names if f"`{k}`" not in body]
    assert not missing, f"{heading}: keys missing from the reference: {missing}"


def test_a_key_row_says_the_schemas_type_and_range_and_the_files_default(ref):
    row = next(line for line in ref.splitlines() if line.startswith("| `trainer.epochs` |"))
    epochs = yaml.safe_load((CONFIGS / "config.yaml").read_text())["trainer"]["epochs"]
    assert row.split(" | ")[1:4] == ["integer", "a positive integer", f"`{epochs}`"]
    row = next(line for line in section(ref, "#### `optimizer=adam`").splitlines() if line.startswith("| `betas` |"))
    assert "a list of two numbers in \\[0, 1)" in row and "`[0.9, 0.999]`" in row


def test_an_option_file_added_or_removed_changes_the_reference(tmp_path, monkeypatch):
    configs = tmp_path / "configs"
    shutil.copytree(CONFIGS, configs)
    (configs / "optimizer" / "mine.yaml").write_text(
        "# My SGD, for the test.\n_target_: torch.optim.SGD\n_partial_: true\n"
        "lr: 0.5\n# The velocity's decay.\nmomentum: 0.3\nimpl: torch\n")
    (configs / "averaging" / "ema.yaml").unlink()
    monkeypatch.setattr(reference, "CONFIG_DIR", configs)
    monkeypatch.setattr(keys, "CONFIG_DIR", configs)
    reference._described.cache_clear()
    try:
        text = reference.markdown()
    finally:
        reference._described.cache_clear()
    mine = section(text, "#### `optimizer=mine`")
    assert "My SGD, for the test." in mine and "Builds `torch.optim.SGD`" in mine
    assert "| `momentum` | number | a number in \\[0, 1) | `0.3` | The velocity's decay. |" in mine
    assert "#### `averaging=ema`" not in text


def test_comments_are_read_above_a_key_and_beside_it_and_a_multi_line_string_is_no_key():
    opening, about = reference.comments(
        "# @package _global_\n# What the file is.\n#   python -m runner +x=y\n"
        "trainer:\n  # The epochs.\n  epochs: 3  # at most\n\n  # Unrelated, a blank line before the key.\n\n"
        "  batch_size: 8\nclaim: >-\n  not: a key\nseed: 1\n")
    assert opening == "What the file is.\n  python -m runner +x=y"
    assert about == {"trainer": "", "trainer.epochs": "The epochs. at most", "trainer.batch_size": "",
                     "claim": "", "seed": ""}
    assert reference.prose(opening) == ["What the file is.", "", "```text", "  python -m runner +x=y", "```", ""]


def test_the_readme_is_a_front_door():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 300, f"README.md has {len(lines)} lines; move the details into docs/"
    text = "\n".join(lines)
    for command in ("make install", "make test", "python -m runner.lesson", "python -m runner.results",
                    "make tensorboard", "python -m runner.report", "-m optimizer="):
        assert command in text, f"the README lost {command!r}"
    for link in re.findall(r"\]\((docs/[^)#]+)", text):
        if not link.startswith("docs/images/"):  # the screenshots are retaken by their own script
            assert (ROOT / link).is_file(), f"the README links to {link}, which does not exist"


# A path of a particular machine: its home, its work folder, its temporary folder (examples use relative paths).
MACHINE_PATH = re.compile(r"(?<![\w.~])(/work/|/home/|/root/|/Users/|/tmp/|[A-Z]:\\)")
# Words that tell how the project was made rather than what it does.
MAKING = re.compile(r"\bissues? #?\d+|\b(?:this|previous|earlier|later|next|last|another) session\b|\bsub-?agents?\b|"
                    r"\bhelper agents?\b|\bthe deadline\b|\bin the time left\b", re.I)
# Tracked files allowed to hold a match, each with its reason.
EXCEPTIONS = {"tests/test_docs.py": "it states the patterns"}


def tracked_text_files() -> list[Path]:
    if shutil.which("git") is None:
        pytest.skip("no git: the tracked files cannot be listed")
    # the files of the checkout that git keeps or would keep: tracked, and new ones it does not ignore
    proc = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                          capture_output=True)
    if proc.returncode != 0:
        pytest.skip("not a git checkout")
    files = []
    for name in proc.stdout.decode().split("\0"):
        path = ROOT / name
        if name and name not in EXCEPTIONS and path.is_file() and b"\0" not in path.read_bytes()[:8192]:
            files.append(path)
    return files


@pytest.mark.parametrize(("pattern", "what"), [(MACHINE_PATH, "a path of a particular machine"),
                                               (MAKING, "words about how the project was made")])
def test_no_tracked_file_names_a_machine_path_or_how_the_project_was_made(pattern, what):
    found = []
    for path in tracked_text_files():
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if pattern.search(line):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:100]}")
    assert not found, f"{what}:\n" + "\n".join(found[:20])


def test_the_patterns_catch_what_they_are_for_and_leave_legitimate_uses():
    for bad in ("data.root=/home/me/cifar", "C:\\Users\\me", "see /tmp/x.png", "(issue 16 changed it)",
                "measured in this session", "a helper agent ran it"):
        assert MACHINE_PATH.search(bad) or MAKING.search(bad), bad
    for good in ("deadline = time.monotonic() + 5", "_hparams_/session_start_info", "~/.cache/runner/",
                 "data.root=path/to/folder", "outputs/2026-01-01/12-00-00", "python -m runner.lesson"):
        assert not MACHINE_PATH.search(good) and not MAKING.search(good), good


def _stored_lesson(into: Path, name: str, commit: str) -> None:
    folder = into / "lessons" / name
    folder.mkdir(parents=True)
    (folder / "lesson.json").write_text(json.dumps({"verdict": "reproduced", "claim": "c"}))
    (folder / "lesson.md").write_text(
        f"_made by_\n\n## {name}\n\n**Claim**: c\n\nA line.\n- a note\n\n![f.png](f.png)\n")
    (folder / "provenance.json").write_text(json.dumps({
        "part": f"lesson/{name}", "commit": commit, "code": "0" * 64, "date": "2026-01-02T03:04:05+00:00",
        "machine": {"cpu": "Some CPU", "cores": 2, "device": "cpu", "torch": "2.x"},
        "command": f"python -m runner.results lesson/{name} --size quick", "size": "quick", "wall_s": 12.0}))


def test_a_lesson_page_shows_its_provenance_verdict_figures_and_stale_mark(tmp_path):
    name = "l1_sparsity"
    _stored_lesson(tmp_path, name, "a" * 40)
    found = {f"lesson/{name}": ("stale", json.loads((tmp_path / "lessons" / name / "provenance.json").read_text()))}
    page = docs_pages.lesson_pages(tmp_path, found)[f"lessons/{name}.md"]
    assert page.startswith(f"# {name}\n")
    assert '!!! warning "STALE' in page and f"python -m runner.results lesson/{name}" in page
    for shown in ("verdict: **reproduced**", "Some CPU, 2 cores", "2026-01-02T03:04:05", "a" * 40, "12 s",
                  f"](../results/lessons/{name}/f.png)", "A line.\n\n- a note"):
        assert shown in page, shown
    assert "_made by_" not in page and f"## {name}" not in page  # the stored header and heading, replaced
    fresh = docs_pages.lesson_page(name, tmp_path, "present", found[f"lesson/{name}"][1], "../results")
    assert "STALE" not in fresh and "fresh" in fresh
    missing = docs_pages.lesson_page("constant_init", tmp_path, "missing", None, "../results")
    assert "Not measured yet" in missing and "python -m runner.results lesson/constant_init" in missing


def test_every_lesson_of_configs_has_a_page_and_a_row(tmp_path):
    names = keys.option_names("lesson")
    pages = docs_pages.lesson_pages(tmp_path, {})
    assert sorted(pages) == sorted(f"lessons/{n}.md" for n in names)
    table = docs_pages.lessons_table(tmp_path, {})
    assert all(f"[{n}]({n}.md)" in table for n in names)


@pytest.mark.slow
def test_the_site_builds_strict_and_offline_with_every_generated_page(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("material")
    site = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)], cwd=ROOT,
                          capture_output=True, text=True, env={**__import__("os").environ, "NO_MKDOCS_2_WARNING": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    reference_page = (site / "reference" / "index.html").read_text()
    assert "optimizer=nesterov" in reference_page and "generated: options" not in reference_page
    assert (site / "lessons" / "l1_sparsity" / "index.html").is_file()
    assert "fonts.googleapis" not in (site / "index.html").read_text()
