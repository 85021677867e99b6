"""The pages of the documentation site made from docs/results/, the output of `python -m runner.results`: one page per
lesson (its command, machine, date, commit, verdict, and a STALE mark where the code changed since it was made, as
runner.results decides it), the lessons' table, the benchmark parts and the option grid. The site's build
(docs/hooks.py) calls these; no number on them is typed by hand. Also the table of what a run records, from
runner.engine.records.

Plain Python and the stored json: nothing is run, no torch."""

import json
import re
from pathlib import Path

from omegaconf import OmegaConf

from runner.commands import results
from runner.config import CONFIG_DIR, reference
from runner.config.keys import option_names
from runner.engine import records

NOTE = {"present": "fresh: made from the code as it is now",
        "stale": "**STALE**: the code it describes changed since it was made",
        "undecided": "staleness cannot be decided here (no git checkout, or made without one)"}


def states(into: Path, names: list[str]) -> dict[str, tuple[str, dict | None]]:
    """{part: (missing | present | stale | undecided, its provenance)} of the parts `names`."""
    return {part: results.status(part, into) for part in names}


def bench_parts(into: Path) -> list[str]:
    """The stored benchmark parts (bench/a, bench/hi, ...), in the bench's order."""
    return sorted(f"bench/{p.parent.name}" for p in (into / "bench").glob("*/provenance.json")
                  if not p.parent.name.startswith("."))


def all_parts(into: Path) -> list[str]:
    return [f"lesson/{n}" for n in option_names("lesson")] + ["grid"] + bench_parts(into)


def _body(path: Path) -> str:
    """A stored page without its first line (the provenance, which the site renders itself), with a blank line
    before a list that follows a paragraph (markdown's rule, which a terminal page need not keep)."""
    text = path.read_text().partition("\n")[2].strip() if path.is_file() else ""
    return re.sub(r"^([^-\n|][^\n]*)\n(- )", r"\1\n\n\2", text, flags=re.M)


def provenance(part: str, state: str, prov: dict | None, verdict: str = "") -> list[str]:
    """The lines that say where `part`'s numbers came from, after a warning box where they are stale or missing."""
    again = f"`python -m runner.results {part}`"
    if prov is None:
        return ['!!! note "Not measured yet"', "", f"    {again} measures it.", ""]
    lines = []
    if state == "stale":
        lines += ['!!! warning "STALE: the code changed since these numbers were made"', "",
                  f"    They come from commit {prov.get('commit', 'unknown')[:10]}; the code this part describes has "
                  f"changed since. {again} regenerates them.", ""]
    rows = [("verdict", f"**{verdict}**" if verdict else ""),
            ("made by", f"`{prov.get('command', '?')}` (size {prov.get('size', '?')})"),
            ("machine", results.describe(prov)), ("date", prov.get("date", "?")),
            ("commit", f"`{prov.get('commit', 'unknown')}`"), ("wall time", f"{prov.get('wall_s', 0):.0f} s"),
            ("status", NOTE.get(state, state))]
    return lines + [f"- {k}: {v}" for k, v in rows if v] + [""]


def _lesson_record(into: Path, name: str) -> dict:
    path = into / "lessons" / name / "lesson.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def lesson_page(name: str, into: Path, state: str, prov: dict | None, results_url: str) -> str:
    """The page of lesson `name`: where its numbers came from (command, machine, date, commit, verdict, status),
    then its stored page (claim, command, table, verdict, notes, every run) with the figures. results_url: where
    docs/results/ is, seen from the page (e.g. "../results")."""
    record = _lesson_record(into, name)
    lines = [f"# {name}", "", *provenance(f"lesson/{name}", state, prov, record.get("verdict", ""))]
    body = _body(into / "lessons" / name / "lesson.md")
    body = re.sub(rf"^## {re.escape(name)}\s*$", "", body, count=1, flags=re.M).strip()
    body = re.sub(r"\]\(([\w.-]+\.png)\)", rf"]({results_url}/lessons/{name}/\1)", body)
    if not body:
        claim = (OmegaConf.load(CONFIG_DIR / "lesson" / f"{name}.yaml").get("claim") or "").strip()
        body = f"**Claim**: {claim}\n\nRun it with `python -m runner.lesson {name}`."
    return "\n".join([*lines, body, ""])


def lessons_table(into: Path, found: dict) -> str:
    """Every lesson: what it checks (its file's opening comment), verdict, size, date and status, each linked to its
    page."""
    lines = ["| lesson | what it checks | verdict | size | date | status |", "|---|---|---|---|---|---|"]
    for name in option_names("lesson"):
        state, prov = found.get(f"lesson/{name}", ("missing", None))
        record = _lesson_record(into, name)
        about = reference.cell(" ".join(reference.comments((CONFIG_DIR / "lesson" / f"{name}.yaml").read_text())[0]
                                        .split()))
        date = (prov or {}).get("date", "-")[:10]
        status = {"missing": "not measured yet", "stale": "**STALE**"}.get(state, "fresh" if state == "present"
                                                                            else state)
        lines.append(f"| [{name}]({name}.md) | {about} | {record.get('verdict', '-')} | "
                     f"{(prov or {}).get('size', '-')} | {date} | {status} |")
    return "\n".join(lines) + "\n"


def bench_section(into: Path, found: dict) -> str:
    """Each stored benchmark part: where it came from, then its printout."""
    lines = []
    for part in bench_parts(into):
        state, prov = found.get(part) or results.status(part, into)
        letters = part.partition("/")[2]
        body = _body(into / "bench" / letters / "bench.md")
        body = re.sub(r"^## Benchmark \(\w+\)\s*$", "", body, count=1, flags=re.M).strip()
        lines += [f"### Part ({letters})", "", *provenance(part, state, prov), body, ""]
    if not lines:
        lines = ["No benchmark part is stored yet: `python -m runner.results bench/abcde` measures the first five.",
                 ""]
    return "\n".join(lines)


def grid_section(into: Path, found: dict) -> str:
    state, prov = found.get("grid") or results.status("grid", into)
    body = _body(into / "grid" / "grid.md")
    body = re.sub(r"^## .*$", "", body, count=1, flags=re.M).strip()
    return "\n".join([*provenance("grid", state, prov), body, ""])


def lesson_pages(into: Path, found: dict, results_url: str = "../results") -> dict[str, str]:
    """{page path in the site: markdown} of every lesson of configs/lesson/."""
    pages = {}
    for name in option_names("lesson"):
        state, prov = found.get(f"lesson/{name}", ("missing", None))
        pages[f"lessons/{name}.md"] = lesson_page(name, into, state, prov, results_url)
    return pages


def records_tables() -> str:
    """What a run records: every TensorBoard tag and metrics.json key with its meaning (runner.engine.records)."""
    def rows(table: dict[str, str]) -> list[str]:
        return [f"| `{name}` | {meaning.replace('|', chr(92) + '|').replace('<', '&lt;')} |"
                for name, meaning in table.items()]

    return "\n".join(["### TensorBoard tags", "", "| tag | what it is |", "|---|---|", *rows(records.TAGS), "",
                      "### metrics.json", "", "| key | what it is |", "|---|---|", *rows(records.METRICS), ""])
