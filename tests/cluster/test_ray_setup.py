"""`--ray` before any cluster work: the missing extra, what travels to the actors, and which providers stay on
the driver. No cluster is started here (and Ray need not be installed)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from pixelmill.cluster import ClusterInfo, on_cluster
from pixelmill.errors import ConfigError
from pixelmill.providers.base import ProviderSettings, provider_class
from tests.runs import TEST_KEY, cli, prompts, write_jsonl

INFO = ClusterInfo("127.0.0.1:1", ["node"], 1.0, 0.0)


def test_without_the_extra_ray_is_a_config_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError, as when it is not installed
    src = write_jsonl(tmp_path / "in.jsonl", prompts(3))
    result = cli("generate", src, "-o", tmp_path / "run", "--base-url", "http://127.0.0.1:9/v1", "--ray")
    assert result.code == 2
    assert "--ray needs the extra: pip install 'pixelmill[ray]'" in " ".join(result.output.split())
    assert not (tmp_path / "run").exists()  # nothing written, nothing sent


def test_only_the_variables_a_provider_reads_travel_sealed() -> None:
    from pixelmill.cluster.remote import read_env

    provider = provider_class("openai")(ProviderSettings(), {"OPENAI_API_KEY": TEST_KEY})
    env = {"OPENAI_API_KEY": TEST_KEY, "OPENAI_BASE_URL": "http://127.0.0.1:9/v1", "UNRELATED_TOKEN": "x" * 20}
    sealed = read_env(provider, env)
    assert sealed.open() == {"OPENAI_API_KEY": TEST_KEY, "OPENAI_BASE_URL": "http://127.0.0.1:9/v1"}
    assert TEST_KEY not in repr(sealed) and TEST_KEY not in str(sealed)


async def test_job_providers_stay_on_the_driver() -> None:
    provider = provider_class("fal")(ProviderSettings(), {"FAL_KEY": TEST_KEY})
    notes: list[str] = []
    assert await on_cluster(provider, {}, INFO, 4, notes.append) is provider
    assert any("the driver submits and polls them" in n for n in notes), notes


async def test_local_models_wait_for_their_cluster_pool() -> None:
    """Until `pixelmill.cluster.local` exists, --ray with a local model says so instead of running it here."""
    import importlib.util

    if importlib.util.find_spec("pixelmill.cluster.local") is not None:
        pytest.skip("the local-model pool is built: tests/cluster/test_local*.py test it")
    provider = provider_class("diffusers")(ProviderSettings(), {})
    with pytest.raises(ConfigError, match="--ray with local models: not built yet"):
        await on_cluster(provider, {}, INFO, 4, lambda _: None)


def ray_importers(root: Path) -> list[str]:
    """Modules outside pixelmill/cluster/ and the public `pixelmill.ray` (Ray Data) that import Ray (inside
    functions too)."""
    import ast

    found = []
    for path in sorted(root.rglob("*.py")):
        if path.relative_to(root).parts[0] == "cluster" or path.relative_to(root) == Path("ray.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            if any(name == "ray" or name.startswith("ray.") for name in names):
                found.append(f"{path.relative_to(root)}:{node.lineno}")
    return found


def test_only_the_cluster_package_imports_ray(tmp_path: Path) -> None:
    """`import ray` lives in pixelmill/cluster/ and pixelmill/ray.py only (the optional extra); the check sees a
    stray one."""
    import shutil

    package = Path(__file__).resolve().parents[2] / "src" / "pixelmill"
    assert ray_importers(package) == []
    copy = tmp_path / "pixelmill"
    shutil.copytree(package, copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "engine" / "stray.py").write_text("def f():\n    import ray.util\n", encoding="utf-8")
    assert ray_importers(copy) == ["engine/stray.py:2"]
