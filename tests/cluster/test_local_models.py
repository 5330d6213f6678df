"""Local diffusers models on a Ray cluster (pixelmill/cluster/local.py, pixelmill/ray.py), on a local cluster of a
head and two worker nodes whose `gpu_slot` resource stands for a GPU, with a tiny random pipeline on the CPU:
the same images as one machine makes, both model copies used, a worker node lost mid-run, and
`pixelmill.ray.map_dataset` over a small Dataset (a local model, and an API provider through the emulator).

Same images: each actor runs torch with one thread (Ray's OMP_NUM_THREADS for an actor without CPUs), and float
sums in another order differ in their last bits, so the single-machine runs here use one thread too.
"""

from __future__ import annotations

import asyncio
import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.local_fixtures import SLOT, LocalCluster, local_cluster, tiny_models  # noqa: F401  (before ray)

pytest.importorskip("ray")
pytest.importorskip("torch")
pytest.importorskip("diffusers")

import orjson

import pixelmill
from pixelmill.cluster.local import ClusterDiffusers, cluster_provider
from pixelmill.engine.plan import plan_run
from pixelmill.engine.runner import Runner
from pixelmill.options import build_config, job_options
from pixelmill.writing.journal import Journal
from pixelmill.writing.output import write_output
from tests.runs import read_output, write_jsonl

# Ray Data's own deprecations (its DataContext warns about its own defaults): not this project's to fix.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray")

ROWS = 12
LOST_ROWS, LOST_STEPS = 24, 12
OPTIONS: dict[str, Any] = {"size": "32x32", "steps": 2}


@pytest.fixture
def one_thread() -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _prompts(n: int = ROWS) -> list[dict[str, Any]]:
    return [{"id": f"r{i}", "prompt": f"a tiny red cube number {i}"} for i in range(n)]


async def _run_on_cluster(src: Path, out: Path, model: str, *, during: Any = None, steps: int = 2,
                          **param: Any) -> ClusterDiffusers:
    """The run `--ray` makes: planned on the driver, the step's provider replaced by the cluster's, the engine
    (journal, retries, files) on the driver. `during(provider)` runs beside it."""
    options = job_options(provider="diffusers", model=model, output=out, id_field="id",
                          param={"ray_resource": SLOT, **param}, **{**OPTIONS, "steps": steps})
    config = build_config("generate", src, options)
    plan = plan_run(config, env=os.environ)
    step = plan.steps[0]
    provider = cluster_provider(step.provider)  # type: ignore[arg-type]
    step.provider = provider
    plan.concurrency = max(plan.concurrency, provider.preferred_concurrency)
    run = asyncio.create_task(Runner(config, plan).run())
    if during is not None:
        await during(provider)
    outcome = await run
    assert outcome.aborted is None, outcome.aborted
    journal = Journal.open(out)
    try:
        write_output(config, journal)
    finally:
        journal.close()
    return provider


def _single_machine(src: Path, out: Path, model: str, seed: int | None = None, steps: int = 2,
                    **param: Any) -> list[dict[str, Any]]:
    report = pixelmill.generate(str(src), output=out, provider="diffusers", model=model, id_field="id",
                                param={"devices": "cpu", **param}, seed=seed, **{**OPTIONS, "steps": steps})
    assert report.exit_code == 0
    return read_output(out)


def _images(rundir: Path, rows: list[dict[str, Any]]) -> list[list[bytes]]:
    return [[(rundir / p).read_bytes() for p in row["images"]] for row in rows]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, tiny_models: dict[str, str]  # noqa: F811
              ) -> tuple[Path, Path, list[dict[str, Any]]]:
    """One machine's run of ROWS prompts, batches of 2, torch on one thread."""
    import torch

    root = tmp_path_factory.mktemp("reference")
    src = write_jsonl(root / "prompts.jsonl", _prompts())
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rows = _single_machine(src, root / "out", tiny_models["sd"], batch_size=2)
    finally:
        torch.set_num_threads(before)
    assert [r["pixelmill"]["status"] for r in rows] == ["done"] * ROWS
    return src, root / "out", rows


async def test_the_cluster_makes_the_images_one_machine_makes_on_both_copies(
        local_cluster: LocalCluster, tiny_models: dict[str, str],  # noqa: F811
        reference: tuple[Path, Path, list[dict[str, Any]]], tmp_path: Path) -> None:
    src, ref_dir, ref_rows = reference
    provider = await _run_on_cluster(src, tmp_path / "out", tiny_models["sd"], batch_size=2)
    rows = read_output(tmp_path / "out")
    assert [r["id"] for r in rows] == [r["id"] for r in ref_rows]
    assert [r["pixelmill"]["status"] for r in rows] == ["done"] * ROWS
    assert [r["images"] for r in rows] == [r["images"] for r in ref_rows]  # same file names
    assert _images(tmp_path / "out", rows) == _images(ref_dir, ref_rows)  # and the same bytes
    assert [r["pixelmill"]["response"]["seed"] for r in rows] == [r["pixelmill"]["response"]["seed"] for r in ref_rows]
    # Both copies took batches, as full as the single-machine provider makes them.
    devices = {r["pixelmill"]["response"]["device"] for r in rows}
    assert len(devices) == 2, devices
    assert provider.pool is None  # closed at the end of the run: its actors are gone
    assert sum(r["pixelmill"]["response"]["batch_rows"] for r in rows) >= ROWS + 2  # mostly batches of two


async def test_the_ray_option_runs_a_local_model_on_the_clusters_copies(
        local_cluster: LocalCluster, tiny_models: dict[str, str],  # noqa: F811
        reference: tuple[Path, Path, list[dict[str, Any]]], tmp_path: Path) -> None:
    """`ray=True` (the `--ray` path: plan, then `spread_on_cluster`) with a local model: the same rows, file names
    and image bytes as one machine, made on the cluster's model copies."""
    src, ref_dir, ref_rows = reference
    report = await pixelmill.agenerate(str(src), output=tmp_path / "out", provider="diffusers",
                                       model=tiny_models["sd"], id_field="id", ray=True,
                                       param={"ray_resource": SLOT, "batch_size": 2}, **OPTIONS)
    assert report.exit_code == 0
    rows = read_output(tmp_path / "out")
    assert [r["pixelmill"]["status"] for r in rows] == ["done"] * ROWS
    assert [r["images"] for r in rows] == [r["images"] for r in ref_rows]
    assert _images(tmp_path / "out", rows) == _images(ref_dir, ref_rows)
    assert len({r["pixelmill"]["response"]["device"] for r in rows}) == 2  # both copies took rows


async def test_the_cluster_needs_a_resource_it_has(local_cluster: LocalCluster,  # noqa: F811
                                                   tiny_models: dict[str, str], tmp_path: Path) -> None:  # noqa: F811
    from pixelmill.errors import ConfigError
    from pixelmill.providers.base import ProviderSettings
    from pixelmill.providers.diffusers.provider import DiffusersProvider

    local = DiffusersProvider(ProviderSettings(options={"ray_resource": "tpu_slot"}), {})
    with pytest.raises(ConfigError, match=r"no tpu_slot for a diffusers model copy: start nodes with "
                                          r"resources=\{'tpu_slot': 1\}"):
        cluster_provider(local)


async def test_pixelmill_ray_maps_a_dataset_through_a_local_model(
        local_cluster: LocalCluster, tiny_models: dict[str, str], tmp_path: Path,  # noqa: F811
        one_thread: None) -> None:
    import ray.data

    import pixelmill.ray

    rows = _prompts(6)
    rows[3] = {"id": "r3", "prompt": None}  # a bad row: it fails alone
    dataset = ray.data.from_items(rows)
    mapped = pixelmill.ray.map_dataset(
        dataset, provider="diffusers", model=tiny_models["sd"], seed=11, param={"devices": "cpu"},
        concurrency=2, batch_size=3, num_cpus=0, resources={SLOT: 1}, **OPTIONS)
    got = sorted(mapped.take_all(), key=lambda r: r["id"])
    assert [r["id"] for r in got] == [r["id"] for r in rows]
    statuses = {r["id"]: r["pixelmill_status"] for r in got}
    assert statuses == {**{f"r{i}": "done" for i in range(6)}, "r3": "failed"}
    bad = next(r for r in got if r["id"] == "r3")
    assert bad["images"] == [] and "prompt" in bad["pixelmill_error"]
    assert orjson.loads(bad["pixelmill"])["error"]["kind"] == "input"
    good = [r for r in got if r["id"] != "r3"]
    assert all(r["pixelmill_error"] is None for r in good)
    meta = [orjson.loads(r["pixelmill"]) for r in good]
    assert {m["response"]["seed"] for m in meta} == {11}
    # The same images as one machine makes with the same seed.
    src = write_jsonl(tmp_path / "prompts.jsonl", [r for r in rows if r["id"] != "r3"])
    ref_rows = _single_machine(src, tmp_path / "ref", tiny_models["sd"], seed=11)
    assert [r["images"] for r in good] == _images(tmp_path / "ref", ref_rows)
    _png_of(good[0]["images"][0])


async def test_pixelmill_ray_maps_a_dataset_through_an_api_provider(local_cluster: LocalCluster) -> None:  # noqa: F811
    import ray.data

    import pixelmill.ray

    rows = [{"n": i, "prompt": f"a lighthouse at dusk, view {i}"} for i in range(5)] + [{"n": 5}]
    mapped = pixelmill.ray.map_dataset(ray.data.from_items(rows), provider="emulator", model="gpt-image-1",
                                       size="1024x1024", concurrency=1, batch_size=3, num_cpus=0)
    got = sorted(mapped.take_all(), key=lambda r: r["n"])
    assert [r["pixelmill_status"] for r in got] == ["done"] * 5 + ["failed"]
    for row in got[:5]:
        assert len(row["images"]) == 1
        assert _png_of(row["images"][0]).size == (1024, 1024)
        assert orjson.loads(row["pixelmill"])["model"] == "gpt-image-1"
    assert got[5]["images"] == [] and got[5]["pixelmill_error"]


def test_pixelmill_ray_refuses_what_a_map_cannot_keep() -> None:
    import ray.data

    import pixelmill.ray
    from pixelmill.errors import ConfigError

    with pytest.raises(ConfigError, match="map_dataset does not take 'max_cost': no journal keeps a budget"):
        pixelmill.ray.map_dataset(ray.data.range(1), provider="emulator", max_cost=1.0)


async def test_a_worker_node_lost_mid_run_fails_only_its_batch_and_the_run_completes(
        local_cluster: LocalCluster, tiny_models: dict[str, str],  # noqa: F811
        tmp_path: Path, one_thread: None) -> None:
    # More rows and steps than the other tests: batches long enough for the node to go while rows are left.
    src = write_jsonl(tmp_path / "prompts.jsonl", _prompts(LOST_ROWS))
    ref_dir = tmp_path / "ref"
    ref_rows = _single_machine(src, ref_dir, tiny_models["sd"], steps=LOST_STEPS)
    doomed = local_cluster.workers[0]

    async def remove_a_node(provider: ClusterDiffusers) -> None:
        # Once both copies have run a batch, one node goes (the rows of its batch in flight are lost with it).
        for _ in range(6000):  # two minutes at most
            if provider.pool is not None and len(provider.pool.used) >= 2:
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError("the two model copies never both ran a batch")
        await asyncio.to_thread(local_cluster.remove_worker, doomed)

    try:
        provider = await _run_on_cluster(src, tmp_path / "out", tiny_models["sd"], batch_size=1,
                                         steps=LOST_STEPS, during=remove_a_node)
    finally:
        local_cluster.add_worker()  # the cluster as it was, for whatever runs next
    rows = read_output(tmp_path / "out")
    assert [r["id"] for r in rows] == [r["id"] for r in ref_rows]  # every row, once
    assert [r["pixelmill"]["status"] for r in rows] == ["done"] * LOST_ROWS
    assert _images(tmp_path / "out", rows) == _images(ref_dir, ref_rows)  # redone rows make the same images
    repeated = [r["id"] for r in rows if r["pixelmill"]["attempts"] > 1]
    assert len(repeated) == 1, repeated  # the one row (batch_size=1) the lost copy had in flight
    assert provider.pool is None


def _png_of(data: bytes) -> Any:
    from PIL import Image

    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    return image
