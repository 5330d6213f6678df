"""The emulator package's inside: shared state in one module, one route module per API, and imports that run one
way. Read from the source with `ast` (every import statement, those inside functions included), so a lazy
import cannot hide a circle."""

from __future__ import annotations

import ast
from pathlib import Path

import pixelmill.testing

PACKAGE = "pixelmill.testing"
ROOT = Path(pixelmill.testing.__file__).resolve().parent


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join([PACKAGE, *parts])] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that `name` imports anywhere in its body. `from pkg import x` counts as `pkg.x`
    when that is a module, else as `pkg`; relative imports are resolved against the module's package."""
    is_package = path.name == "__init__.py"
    here = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = here.split(".")[: len(here.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for target in targets:
            # `import a.b.c` also runs a and a.b: count the deepest module of the package it names
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_checker_sees_circles_and_lazy_imports() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
    graph = _graph()
    # server.py builds the app from the route modules: the edge must be seen wherever the import statement is
    assert f"{PACKAGE}.routes.openai" in graph[f"{PACKAGE}.server"]


def test_no_import_circle_in_the_emulator() -> None:
    assert _cycle(_graph()) is None


def test_routes_share_state_not_each_other() -> None:
    graph = _graph()
    routes = {name for name in graph if name.startswith(f"{PACKAGE}.routes.")}
    assert {f"{PACKAGE}.routes.openai", f"{PACKAGE}.routes.gemini"} <= routes
    for name in routes:
        assert not graph[name] & routes, f"{name} imports another route module: {sorted(graph[name] & routes)}"
        assert f"{PACKAGE}.state" in graph[name] or f"{PACKAGE}.exchange" in graph[name], name
    importers = sorted(name for name, deps in graph.items() if f"{PACKAGE}.server" in deps)
    assert importers == [PACKAGE], f"only the package's __init__ may import the server: {importers}"


def test_validation_is_per_api_and_below_the_routes() -> None:
    graph = _graph()
    for api in ("openai", "gemini"):
        validation = f"{PACKAGE}.validation.{api}"
        assert validation in graph[f"{PACKAGE}.routes.{api}"]
        upward = {d for d in graph[validation] if d.startswith((f"{PACKAGE}.routes", f"{PACKAGE}.server"))}
        assert not upward, f"{validation} imports {sorted(upward)}"
