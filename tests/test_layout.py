"""The shape of the package: modules import each other in one direction only, and the template (everything
outside ``binclf/study``) never imports the study, which can therefore be deleted."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "binclf"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[str]]:
    """Each binclf module and the binclf modules it imports anywhere in its body (lazy imports included)."""
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module)
                found |= {f"{node.module}.{alias.name}" for alias in node.names}
        graph[name] = {module for module in found if module in modules and module != name}
    return graph


def test_no_template_module_imports_the_study():
    offenders = {
        name: sorted(module for module in imported if module.startswith("binclf.study"))
        for name, imported in imports().items()
        if not name.startswith("binclf.study")
    }
    assert {name: found for name, found in offenders.items() if found} == {}


def test_no_module_takes_part_in_an_import_circle():
    graph = imports()
    circles = []

    def visit(name: str, path: list[str]) -> None:
        for imported in sorted(graph[name]):
            if imported in path:
                circles.append(" -> ".join([*path[path.index(imported) :], imported]))
            elif imported not in done:
                visit(imported, [*path, imported])
        done.add(name)

    done: set[str] = set()
    for name in sorted(graph):
        if name not in done:
            visit(name, [name])
    assert circles == []


def test_no_package_takes_part_in_an_import_circle():
    """As for modules, so for packages: ``runs`` may use ``monitoring``, or ``monitoring`` may use ``runs``,
    never both."""

    def package(name: str) -> str:
        parts = name.split(".")
        return ".".join(parts[:2]) if len(parts) > 2 else name

    graph: dict[str, set[str]] = {}
    for name, imported in imports().items():
        graph.setdefault(package(name), set()).update(
            package(m) for m in imported if package(m) != package(name)
        )
    circles = []
    for start in sorted(graph):
        stack = [(start, [start])]
        while stack:
            node, path = stack.pop()
            for nxt in sorted(graph.get(node, ())):
                if nxt == start:
                    circles.append(" -> ".join([*path, nxt]))
                elif nxt not in path:
                    stack.append((nxt, [*path, nxt]))
    assert circles == []
