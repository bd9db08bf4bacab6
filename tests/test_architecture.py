"""The package's import graph has no cycle, counting imports under TYPE_CHECKING and inside
functions: each module can be read (and replaced) without the ones that import it."""

from __future__ import annotations

import ast
from pathlib import Path

import minapp_async

PACKAGE = Path(minapp_async.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_in(source: str, package: str, known: set[str]) -> set[str]:
    """The modules of *known* that *source* (a module of *package*) imports, anywhere."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                origin = ".".join([*base, node.module] if node.module else base)
            else:
                origin = node.module or ""
            # `from .pkg import mod` imports the module pkg.mod; `from .mod import x`, mod.
            found.update(
                f"{origin}.{alias.name}" if f"{origin}.{alias.name}" in known else origin
                for alias in node.names
            )
    return found & known


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports anywhere in its text."""
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        graph[name] = imports_in(path.read_text(encoding="utf-8"), package, set(files)) - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path (first module repeated at the end), or None."""
    done: set[str] = set()
    path: list[str] = []
    on_path: set[str] = set()

    def visit(node: str) -> list[str] | None:
        path.append(node)
        on_path.add(node)
        for nxt in sorted(graph[node]):
            if nxt in on_path:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in done and (cycle := visit(nxt)):
                return cycle
        path.pop()
        on_path.discard(node)
        done.add(node)
        return None

    for start in sorted(graph):
        if start not in done and (cycle := visit(start)):
            return cycle
    return None


def test_the_parser_sees_every_kind_of_import() -> None:
    """Not blind: imports for the type checker, inside functions, relative and absolute."""
    source = """
from typing import TYPE_CHECKING
from . import _b
if TYPE_CHECKING:
    from ._c import C
def f():
    import pkg._d
    from .sub import _e
"""
    known = {"pkg._b", "pkg._c", "pkg._d", "pkg.sub._e", "pkg._unused"}
    assert imports_in(source, "pkg", known) == known - {"pkg._unused"}
    assert "minapp_async._protocol" in import_graph()["minapp_async._invoke"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_import_cycle() -> None:
    assert find_cycle(import_graph()) is None


def test_fan_out_does_not_know_the_session() -> None:
    assert "minapp_async._session" not in import_graph()["minapp_async._fanout"]
