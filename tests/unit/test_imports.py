"""The package's modules import each other without a circle (every import counts: at
module level, in a function, under TYPE_CHECKING), so each layer stands on the ones below
it: settings and policy are pure data, the backends and the relay build on them, the
provisioner and the CLI on top."""

from __future__ import annotations

import ast
from pathlib import Path

import sandbox_kernel

ROOT = Path(sandbox_kernel.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[str]]:
    """module -> the package's modules it imports (package faces, __init__.py, left out)."""
    paths = {module_name(p): p for p in ROOT.rglob("*.py") if "programs" not in p.parts}
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    base = f"{anchor}.{base}" if base else anchor
                targets = [f"{base}.{a.name}" for a in node.names] + [base]
            # ``from pkg import sub`` names a module; ``from mod import name`` the module.
            for target in targets:
                if target in paths and paths[target].name != "__init__.py":
                    found.add(target)
                    break
        graph[name] = found - {name}
    return graph


def circle(graph: dict[str, set[str]]) -> list[str]:
    """One import circle, as the modules along it; [] if there is none."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        path.pop()
        return []

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return []


def test_the_finder_sees_a_circle() -> None:
    assert circle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert circle({"a": {"b"}, "b": set()}) == []


def test_no_import_circle_in_the_package() -> None:
    graph = imports()
    assert "sandbox_kernel.backends.registry" in graph["sandbox_kernel.configured"]
    found = circle(graph)
    assert not found, " -> ".join(found)
