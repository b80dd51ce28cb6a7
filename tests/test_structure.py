"""The package's shape, read from the source: no import cycles (imports inside functions count),
the ground floor (distillery.core) imports no stage, and no stage imports the package root or the
command line above it."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Where each subpackage's files live (pyproject's package-dir).
FOLDERS = {
    "distillery": "distillery",
    "distillery.core": "distillery/core",
    "distillery.annotate": "annotate",
    "distillery.distill": "distill",
    "distillery.evaluation": "evaluation",
    "distillery.serve": "serve",
    "distillery.active": "active",
    "distillery.review": "review",
}


def _modules() -> dict[str, Path]:
    out = {}
    for package, folder in FOLDERS.items():
        for file in sorted((ROOT / folder).glob("*.py")):
            out[package if file.stem == "__init__" else f"{package}.{file.stem}"] = file
    return out


def _imports(name: str, file: Path, modules: dict[str, Path]) -> set[str]:
    """The distillery modules ``name`` imports anywhere in its file (TYPE_CHECKING blocks left out)."""
    tree = ast.parse(file.read_text())
    skipped = {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for n in ast.walk(node)
    }
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in modules}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("distillery"):
            subs = {f"{node.module}.{a.name}" for a in node.names} & set(modules)
            found |= subs or ({node.module} & set(modules))
            if subs and len(subs) < len(node.names):  # names from the package itself too
                found.add(node.module)
    return found - {name}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, file, modules) for name, file in modules.items()}


def test_no_import_cycles():
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(nxt) :] + [nxt]))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_core_is_the_ground_floor_and_the_root_stays_on_top():
    graph = _graph()
    for name, imports in graph.items():
        if name.startswith("distillery.core"):
            assert all(i.startswith("distillery.core") for i in imports), (name, imports)
        if name not in ("distillery", "distillery.cli", "distillery.pipeline", "distillery.__main__"):
            assert not imports & {"distillery", "distillery.cli", "distillery.pipeline"}, (name, imports)
