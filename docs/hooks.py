"""MkDocs hooks (mkdocs.yml `hooks:`): the site's generated parts, made at build time and never written into docs/.

- one page per lesson (lessons/<name>.md), from docs/results/lessons/ (runner.docs_pages), put in the nav after the
  lessons' index;
- `<!-- generated: NAME [ARGUMENT] -->` in a page is replaced by the generated text NAME: the option reference
  (from configs/ and the schema, runner.config.reference), the lessons' table, the benchmark parts, the option
  grid, what a run records, a module's docstring (`docstring runner.commands.pictures`), and the home page's picture of
  TensorBoard once its screenshot exists.
"""

import ast
import importlib.util
import re
from pathlib import Path

from mkdocs.structure.files import File

from runner import docs_pages
from runner.config import reference
from runner.config.keys import option_names

DOCS = Path(__file__).resolve().parent
RESULTS = DOCS / "results"
# The picture of what a user gets, taken by the screenshot script; the home page shows it once it exists.
LANDING = "images/tensorboard_time_series.png"
MARKER = re.compile(r"<!-- generated: (\w+)(?: ([\w.]+))? -->")
LESSONS_INDEX = "lessons/index.md"
_found: dict = {}  # each part's status, read once per build


def _generators() -> dict:
    return {
        "options": lambda: reference.markdown(lesson_link="lessons/{name}.md"),
        "lessons": lambda: docs_pages.lessons_table(RESULTS, _found),
        "bench": lambda: docs_pages.bench_section(RESULTS, _found),
        "grid": lambda: docs_pages.grid_section(RESULTS, _found),
        "records": docs_pages.records_tables,
        "docstring": module_docstring,
        "picture": lambda: (f"![TensorBoard on a run: the learning curves first]({LANDING})"
                            if (DOCS / LANDING).is_file() else ""),
    }


def module_docstring(name: str) -> str:
    """A module's docstring as written (its own layout kept), read without importing the module."""
    source = Path(importlib.util.find_spec(name).origin).read_text()
    return "```text\n" + (ast.get_docstring(ast.parse(source)) or "") + "\n```\n"


def _with_lessons(nav: list) -> list:
    """`nav` with every lesson's page after the entry of the lessons' index."""
    out = []
    for entry in nav:
        if isinstance(entry, dict):
            entry = {title: _with_lessons(value) if isinstance(value, list) else value
                     for title, value in entry.items()}
        out.append(entry)
        if entry == LESSONS_INDEX or (isinstance(entry, dict) and LESSONS_INDEX in entry.values()):
            out += [{name: f"lessons/{name}.md"} for name in option_names("lesson")]
    return out


def on_config(config):
    _found.clear()
    _found.update(docs_pages.states(RESULTS, docs_pages.all_parts(RESULTS)))
    if config.nav:
        config.nav = _with_lessons(config.nav)
    return config


def on_files(files, config):
    for path, text in docs_pages.lesson_pages(RESULTS, _found).items():
        files.append(File.generated(config, path, content=text))
    return files


def on_page_markdown(markdown, page, config, files):
    generators = _generators()

    def generated(found: re.Match) -> str:
        if found[1] not in generators:
            raise ValueError(f"{page.file.src_uri}: no generated text is called {found[1]!r} "
                             f"(known: {', '.join(generators)})")
        return generators[found[1]](*[a for a in found.groups()[1:] if a])

    return MARKER.sub(generated, markdown)
