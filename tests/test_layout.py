"""The layout holds: the library is a leaf, the lab's services know nothing of the tools that
run and measure them, nothing imports in a circle, and no file outgrows one reading.

The wings, lowest first (README, "Layout"): ``exactly_once`` (the library), ``examples`` (built
on it alone) and ``testing`` (the test kit for users' services: on the library alone, as it
ships with it); ``patterns`` and ``service`` (the lab's services and what runs them, with
``config``); ``stack`` (the processes of a lab); ``measure`` (the bench and its kin); ``cli``
and ``chaos`` (the commands and the fault-injection suite). Every import is read from the
source (``ast``), at module level or inside a function alike.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from dbpatterns.config import PROJECT_ROOT

PACKAGES = ("dbpatterns", "chaos")
MAX_LINES = 450

#: What each wing must not import (by module prefix).
FORBIDDEN = {
    "dbpatterns.exactly_once": ("dbpatterns.", "chaos"),  # but itself: see ALLOWED
    "dbpatterns.examples": ("dbpatterns.", "chaos"),
    "dbpatterns.testing": ("dbpatterns.", "chaos"),  # but the library: see ALLOWED
    "dbpatterns.patterns": (
        "dbpatterns.stack",
        "dbpatterns.measure",
        "dbpatterns.cli",
        "chaos",
    ),
    "dbpatterns.service": (
        "dbpatterns.stack",
        "dbpatterns.measure",
        "dbpatterns.cli",
        "chaos",
    ),
    "dbpatterns.config": ("dbpatterns.", "chaos"),
    "dbpatterns.stack": ("dbpatterns.measure", "dbpatterns.cli", "chaos"),
    "dbpatterns.measure": ("dbpatterns.cli", "chaos"),
    "dbpatterns.cli": ("chaos",),
    "chaos": ("dbpatterns.cli",),
}
#: What a wing may import although a prefix above forbids it.
ALLOWED = {
    "dbpatterns.exactly_once": ("dbpatterns.exactly_once",),
    "dbpatterns.examples": ("dbpatterns.exactly_once",),
    "dbpatterns.testing": ("dbpatterns.exactly_once", "dbpatterns.testing"),
}


def modules() -> dict[str, Path]:
    """Every module of the packages, by dotted name."""
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((PROJECT_ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(PROJECT_ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def imports(module: str, path: Path) -> Iterator[str]:
    """The modules ``path`` imports, as dotted names (relative imports resolved)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)


def graph() -> dict[str, set[str]]:
    """Module -> the modules of the packages it imports."""
    known = modules()
    return {
        module: {i for i in imports(module, path) if i in known and i != module}
        for module, path in known.items()
    }


def wing(module: str) -> str | None:
    for name in sorted(FORBIDDEN, key=len, reverse=True):
        if module == name or module.startswith(name + "."):
            return name
    return None


def test_every_wing_imports_only_what_lies_below_it() -> None:
    wrong = []
    for module, path in modules().items():
        name = wing(module)
        if name is None:
            continue
        allowed = ALLOWED.get(name, ())
        for imported in imports(module, path):
            if imported.startswith(FORBIDDEN[name]) and not imported.startswith(allowed):
                wrong.append(f"{module} imports {imported}")
    assert wrong == []


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The import circles (strongly connected components of more than one module)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_no_module_imports_in_a_circle() -> None:
    # A package imports its own modules to re-export them; a module importing its own package
    # for a sibling is not a circle of meaning: only module-to-module edges between different
    # packages' files and siblings count.
    edges = {
        module: {i for i in targets if not module.startswith(i + ".")}
        for module, targets in graph().items()
    }
    assert cycles(edges) == []


def test_the_circle_finder_finds_a_circle() -> None:
    """The check above can fail: a made-up graph with one circle is reported."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("package", PACKAGES)
def test_no_file_outgrows_one_reading(package: str) -> None:
    long = {
        str(path.relative_to(PROJECT_ROOT)): n
        for path in sorted((PROJECT_ROOT / package).rglob("*.py"))
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}
