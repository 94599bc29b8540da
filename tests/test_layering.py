"""The package's floors (docs/reference/layout.md): an import only goes down, never up, and never in a circle.

The graph is read from the source with `ast` (module-level and function-level imports, `TYPE_CHECKING` ones
too: a type-only import is still a dependency a reader has to follow), so the test needs no import side effects.
"""

from __future__ import annotations

import ast
from pathlib import Path

from helpers.paths import REPO_ROOT

PACKAGE = REPO_ROOT / "clipctl"

# Room -> floor. A module may import its own room, any room on a lower floor, and a room on its own floor only
# where no circle results. Top-level modules are rooms of their own. Each section's config model lives with the
# code that reads it (losses/, model/), so recipe.py, which composes them into a Recipe, sits above them.
FLOORS: dict[str, int] = {
    "__init__": 0,
    "errors": 0,
    "paths": 0,
    "atomic": 0,
    "console": 0,
    "schema": 0,
    "data": 2,
    "model": 2,
    "losses": 2,
    "recipe": 3,
    "run": 4,
    "doctor": 4,  # what this machine has: it reads the built-in recipes, the data hub and the model's hub repos
    "evaluate": 5,
    "train": 6,
    # exports, clipctl.load, embed and zeroshot: they read checkpoints through run/ and encode through evaluate/
    # (floor 5), and nothing below needs them; beside train/, which they do not import (nor it them)
    "interop": 6,
    "report": 7,
    "tune": 7,
    "cli": 8,
    "__main__": 9,
}


# The package face's lazy entry points: `clipctl.load` imports its implementation when called (a function-level
# import), so `import clipctl` stays light and no module runs while the package is being imported. These edges are
# the only ones exempt from the floors; each must stay inside a function of clipctl/__init__.py.
FACADE: dict[str, set[str]] = {"clipctl": {"clipctl.interop.api"}}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def room_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imported_modules(path: Path, module: str, known: set[str]) -> set[str]:
    """The clipctl modules `path` imports, resolved to the longest known module name."""
    found: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # `from pkg import sub` imports the module pkg.sub where there is one, else a name of pkg itself
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the clipctl modules it imports, less the package face's lazy entry points (FACADE)."""
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    known = set(paths)
    graph = {module: imported_modules(path, module, known) for module, path in paths.items()}
    return {module: targets - FACADE.get(module, set()) for module, targets in graph.items()}


def module_level_imports(path: Path) -> set[str]:
    """Names imported by statements at the top of a module (not inside a function)."""
    names: set[str] = set()
    for node in ast.parse(path.read_text(), str(path)).body:
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(
        f"{src} -> {dst} ({room_of(src)} is on floor {FLOORS[room_of(src)]}, {room_of(dst)} on {FLOORS[room_of(dst)]})"
        for src, targets in graph.items()
        for dst in targets
        if FLOORS[room_of(src)] < FLOORS[room_of(dst)]
    )


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One circle of `edges` as a path that ends where it starts, or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in sorted(edges):
        if state.get(start):
            continue
        path, iterators = [start], [iter(sorted(edges.get(start, ())))]
        state[start] = 1
        while path:
            nxt = next(iterators[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                iterators.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                iterators.append(iter(sorted(edges.get(nxt, ()))))
    return None


def room_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    rooms: dict[str, set[str]] = {}
    for src, targets in graph.items():
        rooms.setdefault(room_of(src), set()).update(room_of(t) for t in targets if room_of(t) != room_of(src))
    return rooms


def layering_problems(graph: dict[str, set[str]]) -> list[str]:
    problems = upward_imports(graph)
    for name, edges in (("modules", graph), ("rooms", room_graph(graph))):
        cycle = find_cycle(edges)
        if cycle:
            problems.append(f"circle of {name}: " + " -> ".join(cycle))
    return problems


def test_every_room_has_a_floor():
    rooms = {room_of(module) for module in import_graph()}
    assert rooms <= set(FLOORS), f"rooms without a floor in FLOORS: {sorted(rooms - set(FLOORS))}"


def test_the_graph_sees_known_imports():
    graph = import_graph()
    assert "clipctl.errors" in graph["clipctl.recipe"]
    assert "clipctl.cli" in graph["clipctl.__main__"]


def test_no_import_goes_up_and_none_runs_in_a_circle():
    assert layering_problems(import_graph()) == []


def test_the_package_face_imports_its_entry_points_only_lazily():
    """The FACADE exemption holds only while those imports stay inside functions: a module-level one would run the
    whole package on `import clipctl` (and form a circle with every module that reads `clipctl.__version__`)."""
    face = PACKAGE / "__init__.py"
    assert not module_level_imports(face) & FACADE["clipctl"]
    lazy = imported_modules(face, "clipctl", {module_name(p) for p in PACKAGE.rglob("*.py")})
    assert lazy == FACADE["clipctl"], "clipctl/__init__.py imports more than its documented lazy entry points"


def test_a_planted_back_edge_is_caught():
    graph = import_graph()
    graph["clipctl.losses.clip"] = graph["clipctl.losses.clip"] | {"clipctl.train.trainer"}
    problems = layering_problems(graph)
    assert any(p.startswith("clipctl.losses.clip -> clipctl.train.trainer (losses is on floor 2") for p in problems)


def test_a_planted_circle_inside_a_room_is_caught():
    graph = import_graph()
    graph["clipctl.errors"] = graph["clipctl.errors"] | {"clipctl.atomic"}
    graph["clipctl.atomic"] = graph["clipctl.atomic"] | {"clipctl.errors"}
    problems = layering_problems(graph)
    assert any(p.startswith("circle of modules:") and "clipctl.atomic" in p and "clipctl.errors" in p for p in problems)


def test_a_planted_circle_between_sibling_rooms_is_caught():
    graph = import_graph()
    graph["clipctl.data.text"] = graph["clipctl.data.text"] | {"clipctl.losses.clip"}
    graph["clipctl.losses.clip"] = graph["clipctl.losses.clip"] | {"clipctl.data.fetch"}
    assert any(p.startswith("circle of rooms:") for p in layering_problems(graph))
