"""The shape of the code (docs/architecture.md): no function of src/ over MAX_LINES lines, and every import of runner's
own modules inside a function says in a comment why it is there (keeping start-up torch-free, or a heavy library
lazy); an import that needs no reason belongs at the top of its module."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
MAX_LINES = 60  # a function read in one screen; the loop's are the longest


def _files(root: Path = SRC):
    for path in sorted(root.rglob("*.py")):
        yield path.relative_to(root).as_posix(), path


def _functions(tree: ast.AST):
    return [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


def long_functions(root: Path = SRC) -> list[str]:
    """Every function (its decorators left out, its docstring in) over MAX_LINES lines, as "file:line name (n lines)"."""
    found = []
    for name, path in _files(root):
        for fn in _functions(ast.parse(path.read_text(), str(path))):
            lines = fn.end_lineno - fn.lineno + 1
            if lines > MAX_LINES:
                found.append(f"{name}:{fn.lineno} {fn.name} ({lines} lines)")
    return found


def unexplained_imports(root: Path = SRC) -> list[str]:
    """Imports of runner's modules inside a function with no reason: a comment on the line, on the line above, or
    above the block of imports it belongs to."""
    found = []
    for name, path in _files(root):
        lines = path.read_text().splitlines()
        for fn in _functions(ast.parse("\n".join(lines), str(path))):
            for node in ast.walk(fn):
                module = node.module if isinstance(node, ast.ImportFrom) else None
                if not isinstance(node, (ast.Import, ast.ImportFrom)) or not (
                        (module or "").startswith("runner") or getattr(node, "level", 0)
                        or any(a.name.startswith("runner") for a in node.names)):
                    continue
                row = node.lineno - 1
                while "#" not in lines[row] and row > 0 and lines[row - 1].strip().startswith(("from ", "import ")):
                    row -= 1  # up the block of imports
                if "#" not in lines[row] and not lines[row - 1].strip().startswith("#"):
                    found.append(f"{name}:{node.lineno} {lines[node.lineno - 1].strip()}")
    return found


def test_no_function_is_longer_than_a_screen():
    assert long_functions() == []


def test_every_import_inside_a_function_says_why():
    assert unexplained_imports() == []


def test_the_checks_see_a_long_function_and_an_import_without_a_reason(tmp_path):
    package = tmp_path / "runner"
    package.mkdir()
    body = "".join(f"    x{i} = {i}\n" for i in range(MAX_LINES))
    (package / "long.py").write_text(f"def short():\n    pass\n\n\ndef long():\n{body}")
    (package / "lazy.py").write_text(
        "def quiet():\n    import json\n\n    from runner.engine import train\n\n\n"
        "def told():\n    # torch from here on\n    from runner.engine import train\n    from runner.data import loading\n\n\n"
        "def inline():\n    from runner.engine import train  # torch from here on\n")
    assert long_functions(tmp_path) == [f"runner/long.py:5 long ({MAX_LINES + 1} lines)"]
    assert unexplained_imports(tmp_path) == ["runner/lazy.py:4 from runner.engine import train"]


COMMANDS = sorted(p.stem for p in (SRC / "runner" / "commands").glob("*.py") if p.stem != "__init__")


def test_every_command_lives_in_runner_commands_and_keeps_its_python_m_name():
    """`python -m runner.<name>` is a three-line entry point; importing runner.<name> gives the command's module, so
    code and tests that import or patch it reach the one module."""
    import importlib

    assert {"bench", "lesson", "lr_find", "report", "results"} <= set(COMMANDS)
    for name in COMMANDS:
        entry = SRC / "runner" / f"{name}.py"
        assert entry.is_file(), f"python -m runner.{name} has no entry point"
        assert len([line for line in entry.read_text().splitlines() if line.strip()]) <= 8, entry
        assert importlib.import_module(f"runner.{name}") is importlib.import_module(f"runner.commands.{name}")
