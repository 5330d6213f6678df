"""The emulator package's inside: shared state in one module, one route module per API, and imports that run one
way. Read from the source with `ast` (every import statement, those inside functions included), so a lazy
import cannot hide a circle."""

from __future__ import annotations

from pathlib import Path

from tests.layers import cycles, graph

PACKAGE = "pixelmill.testing"
ROOT = Path(__file__).resolve().parents[1] / "src" / "pixelmill"


def _graph() -> dict[str, set[str]]:
    """The emulator package's own import graph (the whole package's rules are in test_layers.py)."""
    return {name: {d for d in deps if d.startswith(PACKAGE)} for name, deps in graph(ROOT).items()
            if name == PACKAGE or name.startswith(PACKAGE + ".")}


def test_the_emulator_is_read_lazy_imports_included() -> None:
    # server.py builds the app from the route modules: the edge must be seen wherever the import statement is
    assert f"{PACKAGE}.routes.openai" in _graph()[f"{PACKAGE}.server"]


def test_no_import_circle_in_the_emulator() -> None:
    assert cycles({name: dict.fromkeys(deps, 0) for name, deps in _graph().items()}) == []


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
    for api in ("openai", "gemini", "fal", "replicate", "bfl"):
        validation = f"{PACKAGE}.validation.{api}"
        assert validation in graph[f"{PACKAGE}.routes.{api}"]
        upward = {d for d in graph[validation] if d.startswith((f"{PACKAGE}.routes", f"{PACKAGE}.server"))}
        assert not upward, f"{validation} imports {sorted(upward)}"
