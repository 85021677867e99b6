"""The layers of runner's code, as docs/architecture.md's "How the code is laid out" states them: imports go one way, downward
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
    """Each module of the package at `root` -> the modules of that package it imports, anywhere in its code.
    `from runner.config import schema` imports the module runner.config.schema; `from runner.config import
    ConfigError` takes a name the package's __init__ defines or imports, so it imports runner.config itself."""
    modules = {module_name(p, root): p for p in root.rglob("*.py")}
    packages = {name for name, p in modules.items() if p.name == "__init__.py"}
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
                inner = [f"{base}.{a.name}" for a in node.names]
                from_init = base not in packages or any(n not in modules for n in inner)
                names = [*([base] if from_init else []), *(n for n in inner if n in modules)]
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
    """The import circles, each as the modules around it. A module that takes a name from its own package's __init__
    closes a circle when that __init__ imports the module (runner.config -> runner.config.schema -> runner.config):
    then which of the two finishes first depends on which a caller imports first."""
    edges = graph
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


def test_a_circle_through_a_package_init_counts(tmp_path):
    """A package's __init__ that imports its modules, one of which takes a name back from the __init__, is a circle;
    the same modules taking the name from a leaf module are not, nor is a module imported by its package's name."""
    package = tmp_path / "runner"
    (package / "config").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "config" / "__init__.py").write_text("from runner.config.schema import walk\nclass ConfigError: pass\n")
    (package / "config" / "schema.py").write_text("from runner.config import ConfigError\n")
    assert cycles(imports(package)) == [["runner.config", "runner.config.schema", "runner.config"]]
    (package / "config" / "errors.py").write_text("class ConfigError: pass\n")
    (package / "config" / "__init__.py").write_text("from runner.config import schema\n"
                                                     "from runner.config.errors import ConfigError\n")
    (package / "config" / "schema.py").write_text("from runner.config.errors import ConfigError\n")
    (package / "config" / "rules.py").write_text("from runner.config import errors, schema\n")
    assert cycles(imports(package)) == []
