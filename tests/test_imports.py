"""The package's modules import each other without cycles (module-level and function-level imports both count)."""

from __future__ import annotations

import ast
from pathlib import Path

import tomllib

from tests.helpers import ROOT

PACKAGE = ROOT / "rrt"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """rrt modules that ``path`` imports anywhere in its body (``from rrt.x import y``: ``rrt.x`` or ``rrt.x.y``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        found.update(name for name in names if name in known)
    return found


def import_graph() -> dict[str, set[str]]:
    paths = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    known = set(paths)
    graph = {name: imported_modules(path, known) - {name} for name, path in paths.items()}
    for name in known:  # importing rrt.a.b runs rrt/a/__init__.py first; a package never depends on its children here
        graph[name] = {dep for dep in graph[name] if not name.startswith(dep + ".")}
    return {
        name: {dep for dep in deps if not (dep.startswith(name + ".") and name in known)}
        for name, deps in graph.items()
    }


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return stack[stack.index(dep) :] + [dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_rrt_has_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def entry_point_modules() -> set[str]:
    """The ``rrt.cli`` modules that are commands: a console script names them, or they run as ``python -m``."""
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"].values()
    named = {target.split(":")[0] for target in scripts}
    runnable = {
        module_name(path) for path in (PACKAGE / "cli").glob("*.py") if '__name__ == "__main__"' in path.read_text()
    }
    return {name for name in named | runnable if name.startswith("rrt.cli.")}


def test_no_cli_module_imports_another_cli_module():
    """Entry points share code through the library (rrt.factory, rrt.evaluation, ...) or a helper such as
    ``rrt.cli.errors``, never by importing another command's module."""
    commands = entry_point_modules()
    known = {module_name(path) for path in PACKAGE.rglob("*.py")}
    assert {"rrt.cli.train", "rrt.cli.evaluate", "rrt.cli.convert", "rrt.cli.serve"} <= commands
    imports = {name: imported_modules(PACKAGE / "cli" / f"{name.rsplit('.', 1)[1]}.py", known) for name in commands}
    crossing = {name: sorted(deps & commands - {name}) for name, deps in imports.items() if deps & commands - {name}}
    assert not crossing, crossing
