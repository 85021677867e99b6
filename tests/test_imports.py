"""The layers of runner's code, as the README's "How the code is laid out" states them: imports go one way, downward
(config < data < nets, optimization < engine < sweeps < the commands and lessons), nets and optimization do not
import each other, and no module of runner imports itself back through others. Every import counts: at the top of a
module and inside a function (one inside a function keeps torch out of start-up, yet it is a dependency all the
same)."""

import ast
from pathlib import Path

import pytest

import runner

SRC = Path(runner.__file__).parent

# Each layer's rank, lowest first: a module imports only from its own layer and from layers of a lower rank. The
# modules at the top of the package are the commands a user runs; the lessons run beside them (they use the commands'
# ensembles, pictures and grids). `runner` itself (its version, the start time) is below everything.
RANKS = {"config": 1, "data": 2, "nets": 3, "optimization": 3, "engine": 4, "sweeps": 5, "lessons": 6, "commands": 6}
SAME_LAYER = {"lessons": "commands"}  # the lessons and the commands are one layer


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(root: Path) -> dict[str, set[str]]:
    """Each module of the package at `root` -> the modules of that package it imports, anywhere in its code."""
    modules = {module_name(p, root): p for p in root.rglob("*.py")}
    found = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*up, *([node.module] if node.module else [])])
                names = [base, *(f"{base}.{a.name}" for a in node.names)]
            else:
                continue
            for target in names:
                while target not in modules and "." in target:  # a name defined in a module: that module
                    target = target.rpartition(".")[0]
                if target in modules and target != name:
                    targets.add(target)
        found[name] = targets
    return found


def layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "runner"
    if len(parts) == 2 and parts[1] not in RANKS:
        return "commands"
    return SAME_LAYER.get(parts[1], parts[1])


def upward(graph: dict[str, set[str]]) -> list[str]:
    """The imports that go up a layer, or sideways into another layer of the same rank."""
    wrong = []
    for module, targets in sorted(graph.items()):
        for target in sorted(targets):
            mine, theirs = layer(module), layer(target)
            if theirs == "runner" or mine == theirs:
                continue
            if mine == "runner" or RANKS[theirs] >= RANKS[mine]:
                wrong.append(f"{module} ({mine}) imports {target} ({theirs})")
    return wrong


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import circles, each as the modules around it. A package's __init__ is loaded before any of its modules,
    so a module that takes names from its own package adds no order of its own: that import is left out."""
    edges = {m: {t for t in ts if not m.startswith(t + ".")} for m, ts in graph.items()}
    found, state = [], {}

    def visit(module, path):
        state[module] = "open"
        for target in sorted(edges[module]):
            if state.get(target) == "open":
                found.append([*path[path.index(target):], target])
            elif target not in state:
                visit(target, [*path, target])
        state[module] = "done"

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    return found


@pytest.fixture(scope="module")
def graph():
    return imports(SRC)


def test_every_module_is_read(graph):
    assert {"runner.config", "runner.engine.train", "runner.nets.diagnostics", "runner.__main__"} <= graph.keys()
    assert "runner.engine.run" in graph["runner.engine.train"]


def test_imports_go_down_the_layers(graph):
    assert upward(graph) == []


def test_no_module_imports_itself_back(graph):
    assert cycles(graph) == []


def test_a_function_level_import_counts(tmp_path):
    """The check sees what it must: an upward import hidden in a function, and a circle closed by one."""
    package = tmp_path / "runner"
    for folder in ("nets", "engine"):
        (package / folder).mkdir(parents=True)
        (package / folder / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "nets" / "diagnostics.py").write_text("def figure():\n    from runner.engine.tracking import plot\n")
    (package / "engine" / "tracking.py").write_text("from runner.engine import records\n")
    (package / "engine" / "records.py").write_text("def pictures():\n    from .tracking import grid\n")
    found = imports(package)
    assert upward(found) == ["runner.nets.diagnostics (nets) imports runner.engine.tracking (engine)"]
    assert cycles(found) == [["runner.engine.records", "runner.engine.tracking", "runner.engine.records"]]
