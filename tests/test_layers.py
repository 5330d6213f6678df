"""The layers of the package, kept by a check that reads every import statement (inside functions too).

Top to bottom; a module imports its own layer and the layers below it, never one above:

    entry points     cli, __main__
    front ends       the package itself (`import pixelmill`), api, report, console, demo, compat, ray (Ray Data)
    reports          reports/ (status, estimate, gallery, progress, model listing)
    options          options, pipeline (what a run is told, turned into a RunConfig)
    engine           engine/
    cluster          cluster/ (provider calls on a Ray cluster: the only place besides `pixelmill.ray` that
                     imports ray)
    data             reading/, writing/, config
    providers        providers/
    emulator         testing/ (the emulator: a product part, reached only through its provider and `emulate`)
    foundations      params, models/, errors, defaults, version

Besides: nothing imports the command line but `__main__`; nothing imports the emulator but the `emulator`
provider and the command line's `emulate`; there is no import circle anywhere in the package.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.layers import cycles, graph

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "pixelmill"

LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("entry points", ("pixelmill.cli", "pixelmill.__main__")),
    ("front ends", ("pixelmill", "pixelmill.api", "pixelmill.report", "pixelmill.console", "pixelmill.demo",
                    "pixelmill.compat", "pixelmill.ray")),
    ("reports", ("pixelmill.reports",)),
    ("options", ("pixelmill.options", "pixelmill.pipeline")),
    ("engine", ("pixelmill.engine",)),
    ("cluster", ("pixelmill.cluster",)),
    ("data", ("pixelmill.reading", "pixelmill.writing", "pixelmill.config")),
    ("providers", ("pixelmill.providers",)),
    ("emulator", ("pixelmill.testing",)),
    ("foundations", ("pixelmill.params", "pixelmill.models", "pixelmill.errors", "pixelmill.defaults",
                     "pixelmill.version", "pixelmill.netpolicy")),
]
CLI_IMPORTERS = {"pixelmill.__main__"}
EMULATOR_IMPORTERS = {"pixelmill.providers.emulator", "pixelmill.cli"}


def layer_of(module: str) -> int:
    best: tuple[int, int] | None = None  # (prefix length, layer): the longest matching prefix wins
    for rank, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            matches = module == prefix or module.startswith(prefix + ".")
            if matches and (best is None or len(prefix) > best[0]):
                best = (len(prefix), rank)
    if best is None:
        raise AssertionError(f"{module} belongs to no layer: add it to LAYERS in {__file__}")
    return best[1]


def violations(root: Path) -> list[str]:
    """Every broken rule, one line each."""
    edges = graph(root)
    found = []
    for component in cycles(edges):
        found.append("import circle: " + " -> ".join(component))
    for module, targets in sorted(edges.items()):
        mine = layer_of(module)
        for target, line in sorted(targets.items()):
            where = f"{module} (line {line}) imports {target}"
            if target == "pixelmill.cli" and module not in CLI_IMPORTERS:
                found.append(f"{where}: only the entry point imports the command line")
            elif target.split(".")[:2] == ["pixelmill", "testing"] and layer_of(module) != layer_of(target) \
                    and module not in EMULATOR_IMPORTERS:
                found.append(f"{where}: only the emulator provider and `pixelmill emulate` import the emulator")
            elif layer_of(target) < mine:
                found.append(f"{where}: the {LAYERS[mine][0]} layer imports the {LAYERS[layer_of(target)][0]} "
                             "layer above it")
    return found


def test_the_package_keeps_its_layers() -> None:
    assert violations(PACKAGE) == []


@pytest.mark.parametrize(("module", "statement", "expected"), [
    # Inside a function, as the cheap imports of a fast `--help` are written: still counted.
    ("reading/records.py", "def _late():\n    from pixelmill.cli import app\n", "only the entry point"),
    ("providers/base.py", "import pixelmill.engine.runner\n", "layer imports the engine layer above it"),
    ("writing/output.py", "def _late():\n    from pixelmill.testing import Emulator\n", "import the emulator"),
    ("reports/status.py", "def _late():\n    from pixelmill import api\n", "layer above it"),
    # Same layer, so only the circle check sees it: params imports errors.
    ("errors.py", "def _late():\n    from pixelmill.params import ImageParams\n", "import circle"),
])
def test_a_violating_import_is_caught(tmp_path: Path, module: str, statement: str, expected: str) -> None:
    """The check fails on an import that breaks a rule (so it cannot pass by seeing nothing)."""
    copy = tmp_path / "pixelmill"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    path = copy / module
    path.write_text(path.read_text(encoding="utf-8") + "\n\n" + statement, encoding="utf-8")
    found = violations(copy)
    assert any(expected in line for line in found), found


def test_type_only_imports_are_not_counted(tmp_path: Path) -> None:
    """`if TYPE_CHECKING:` imports never run: a report may name the run's result type."""
    copy = tmp_path / "pixelmill"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    path = copy / "reports" / "status.py"
    type_only = "\n\nif TYPE_CHECKING:\n    from pixelmill.api import RunReport\n"
    path.write_text(path.read_text(encoding="utf-8") + type_only, encoding="utf-8")
    assert violations(copy) == violations(PACKAGE)
