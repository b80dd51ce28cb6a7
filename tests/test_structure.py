"""The package's shape, read from the source: no import cycles, and every arrow between two rooms
one that :data:`ALLOWED` lists. Every import counts: at module level, inside functions, and under
``if TYPE_CHECKING:`` (an annotation that names a module above is an arrow up all the same).

A room is ``distillery.core`` (the ground floor), ``distillery.student`` (a saved student's
runtime), a stage (``distillery.<stage>``) or the top, ``root``: the modules directly in
distillery/ (the public API, the command line, the pipeline).

    python tests/test_structure.py      # the rooms and the arrows the code has now
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Where each subpackage's files live (pyproject's package-dir).
FOLDERS = {
    "distillery": "distillery",
    "distillery.core": "distillery/core",
    "distillery.student": "distillery/student",
    "distillery.annotate": "annotate",
    "distillery.distill": "distill",
    "distillery.evaluation": "evaluation",
    "distillery.serve": "serve",
    "distillery.active": "active",
    "distillery.review": "review",
}
# room -> the rooms it may import (an arrow points down; nothing imports root)
ALLOWED = {
    "core": set(),
    "student": {"core"},
    "annotate": {"core"},
    "distill": {"core", "student", "annotate"},
    "evaluation": {"core", "student"},  # the annotations format is core's: they never import annotate
    "serve": {"core", "student"},
    "review": {"core", "student"},
    "active": {"core", "student", "annotate", "distill", "evaluation"},
    "root": {"core", "student", "annotate", "distill", "evaluation", "serve", "review", "active"},
}


def _modules() -> dict[str, Path]:
    out = {}
    for package, folder in FOLDERS.items():
        for file in sorted((ROOT / folder).glob("*.py")):
            out[package if file.stem == "__init__" else f"{package}.{file.stem}"] = file
    return out


def _imports(name: str, file: Path, modules: dict[str, Path]) -> set[str]:
    """The distillery modules ``name`` imports anywhere in its file, TYPE_CHECKING blocks included."""
    found = set()
    for node in ast.walk(ast.parse(file.read_text())):
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


def room(module: str) -> str:
    """``distillery.student.card`` -> ``student``; a module directly in distillery/ -> ``root``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and f"distillery.{parts[1]}" in FOLDERS else "root"


def room_arrows(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """room -> the other rooms its modules import."""
    arrows: dict[str, set[str]] = {r: set() for r in ALLOWED}
    for name, imports in graph.items():
        arrows[room(name)] |= {room(i) for i in imports} - {room(name)}
    return arrows


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1: on the path, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycles():
    cycle = _cycle(_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_every_module_has_a_room_in_the_table():
    assert {room(name) for name in _graph()} <= set(ALLOWED)
    assert {room(f"{package}.x") for package in FOLDERS} == set(ALLOWED)


def test_the_allowed_arrows_have_no_cycle_between_rooms():
    assert set().union(*ALLOWED.values()) <= set(ALLOWED)
    assert not any("root" in allowed for allowed in ALLOWED.values()), "nothing imports root"
    cycle = _cycle(ALLOWED)
    assert cycle is None, "ALLOWED has a cycle between rooms: " + " -> ".join(cycle or [])


def test_every_arrow_between_rooms_is_allowed():
    wrong = [
        f"{name} imports {imported}: {room(name)} -> {room(imported)} is not an allowed arrow "
        f"(ALLOWED['{room(name)}'] = {sorted(ALLOWED[room(name)])})"
        for name, imports in sorted(_graph().items())
        for imported in sorted(imports)
        if room(imported) != room(name) and room(imported) not in ALLOWED[room(name)]
    ]
    assert not wrong, "\n".join(wrong)


def test_the_table_is_as_tight_as_the_code():
    """An arrow the table allows but no module uses is one the next change could take unnoticed."""
    used = room_arrows(_graph())
    unused = {r: sorted(ALLOWED[r] - used[r]) for r in ALLOWED if ALLOWED[r] - used[r]}
    assert not unused, f"allowed but not used (drop them from ALLOWED): {unused}"


if __name__ == "__main__":
    arrows = room_arrows(_graph())
    print(f"{len(arrows)} rooms, {sum(len(a) for a in arrows.values())} arrows between them")
    for r, targets in arrows.items():
        print(f"{r} -> {', '.join(sorted(targets)) if targets else '(none)'}")
