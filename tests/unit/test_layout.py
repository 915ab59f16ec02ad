"""The shape of the source tree: no import cycles, no big module without a reason.

A newcomer should find each concern in one named module, and be able to read the tree
bottom-up. Two rules hold that, checked here by reading the source (nothing imported):

- **No import cycles.** First among the imports that run when a module is imported:
  statements at module level (also inside ``try``/``if``/``with`` and class bodies), not
  under ``if TYPE_CHECKING:`` (never run). Then, stricter, with the imports deferred into
  functions counted too: a deferred import is still a dependency, and one that points
  back up (the chat's assistant once imported the service that runs it, inside a
  function) hides a cycle rather than removing it. ``from package import name`` is an
  edge to the submodule when ``name`` is one, else to the package.
- **Modules stay under 500 lines**, or say why at the top: a line of their docstring
  starting ``Length:`` gives the reason.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

import datasources

PACKAGE = Path(datasources.__file__).parent
MAX_LINES = 500

# Being split into packages on the ``lifecycle`` branch (issue 11): allowed by name until
# that lands, then removed from here.
BEING_SPLIT = frozenset(
    {
        "datasources.registry",
        "datasources.connectors.base",
        "datasources.connectors.postgresql",
        "datasources.connectors.azure_blob",
    }
)
_REASON = re.compile(r"^Length: \S.{20,}", re.MULTILINE)


def modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name)."""
    found: dict[str, Path] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


_BLOCKS = (ast.With, ast.AsyncWith, ast.For, ast.AsyncFor, ast.While, ast.ClassDef)
_FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef)


def _statements(body: list[ast.stmt], *, deferred: bool) -> Iterator[ast.stmt]:
    """The statements of ``body`` that run on import (with ``deferred``: or later)."""
    nested = _BLOCKS + _FUNCTIONS if deferred else _BLOCKS
    for node in body:
        yield node
        if isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                yield from _statements(node.body, deferred=deferred)
            yield from _statements(node.orelse, deferred=deferred)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody):
                yield from _statements(block, deferred=deferred)
            for handler in node.handlers:
                yield from _statements(handler.body, deferred=deferred)
        elif isinstance(node, nested):
            yield from _statements(node.body, deferred=deferred)


def imports_of(
    name: str, path: Path, known: dict[str, Path], *, deferred: bool = False
) -> set[str]:
    """The package's modules that ``name`` imports directly (on import, or ever)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in _statements(tree.body, deferred=deferred):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            targets = [
                f"{module}.{alias.name}" if f"{module}.{alias.name}" in known else module
                for alias in node.names
            ]
        else:
            continue
        found |= {t for t in targets if t in known and t != name}
    return found


def import_graph(*, deferred: bool = False) -> dict[str, set[str]]:
    known = modules()
    return {name: imports_of(name, path, known, deferred=deferred) for name, path in known.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def sizes() -> dict[str, int]:
    """Lines per module."""
    return {
        name: len(path.read_text(encoding="utf-8").splitlines()) for name, path in modules().items()
    }


@pytest.mark.parametrize("deferred", [False, True], ids=["on-import", "deferred-too"])
def test_the_import_graph_has_no_cycles(deferred: bool) -> None:
    graph = import_graph(deferred=deferred)
    assert graph["datasources.cli"] >= {"datasources.cli.sources", "datasources.cli.root"}
    assert "datasources.chat.service" not in graph["datasources.chat.assistant"]
    found = cycles(graph)
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_the_checker_sees_a_cycle_and_what_does_not_make_one() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    known = {n: Path() for n in ("p", "p.a", "p.b", "p.c")}
    source = (
        "from typing import TYPE_CHECKING\n"
        "import p.a\n"
        "from . import c\n"
        "if TYPE_CHECKING:\n    from p import b\n"
        "def later():\n    import p.b\n"
    )
    path = PACKAGE.parent / "layout_probe.py"
    try:
        path.write_text(source)
        assert imports_of("p.x", path, known) == {"p.a", "p.c"}
        assert imports_of("p.x", path, known, deferred=True) == {"p.a", "p.b", "p.c"}
    finally:
        path.unlink()


def test_big_modules_say_why() -> None:
    unexplained = {}
    for name, lines in sizes().items():
        if lines <= MAX_LINES or name in BEING_SPLIT:
            continue
        tree = ast.parse(modules()[name].read_text(encoding="utf-8"))
        if not _REASON.search(ast.get_docstring(tree) or ""):
            unexplained[name] = lines
    assert not unexplained, (
        f"over {MAX_LINES} lines without a 'Length:' reason in the docstring: {unexplained}"
    )


def test_the_package_ships_its_type_information() -> None:
    assert (PACKAGE / "py.typed").is_file()
