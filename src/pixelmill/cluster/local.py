"""Local diffusers models on every GPU of a Ray cluster: `--ray` with `--provider diffusers`.

`cluster_provider(provider, settings)` wraps the single-machine `DiffusersProvider`: its devices become Ray
actors, one model copy each (`num_gpus=1`, so one per GPU of the cluster), and everything else stays on the
driver, as it is on one machine:
- the engine (journal, retries, limits, files) calls `call` once per row; the row's work is prepared here (seed,
  pipeline kwargs, input images decoded) exactly as `DiffusersProvider.call` prepares it, with the same seed
  (given, or derived from the row's index and prompt), so a row makes the same image wherever it runs;
- the same `Batcher` groups the rows into batches (identical kwargs, up to `batch_size` images) and hands each
  batch to whichever actor is free, as it hands them to devices: rows flow continuously, one batch in flight per
  actor while the next one gathers, no barrier per block;
- an actor loads the model once, in itself, on its first batch; it runs the batch with the same `run_batch` as a
  device thread (per-image seeded generators on the CPU, out-of-memory fallback, refusals) and sends back PNG
  bytes through Ray's object store. The driver writes every file, so the cluster needs no shared filesystem; the
  model must be a hub id, or a folder at the same path on every node and on the driver (planning reads its
  `model_index.json` there).

Failures: an actor lost mid-batch (its node gone, its process killed) fails that batch's rows with a
`TransientError` that is not billed (the model is local): the engine sends them again and they go to another
actor. The pool starts a replacement for the lost actor; the replacement takes no rows until Ray has placed it,
and when it cannot be placed within `PLACE_TIMEOUT` (no free GPU left) its slot is dropped. When every slot is
dropped the rows get `ModelUnavailable`, which stops the run (its rows stay pending for a re-run).

Options (besides `LocalOptions`' own): `ray_resource=NAME` makes each copy take one unit of the custom resource
NAME instead of a GPU (CPU-only clusters and tests: nodes started with `resources={"gpu_slot": 1}`); the copy
then runs on that node's CPU. `ray_actors=N` sets how many copies (default: every GPU, or every unit of
`ray_resource`, the cluster has when the run starts). `devices` is not used: each actor takes its own GPU.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pixelmill.errors import ConfigError, ModelUnavailable, ProviderError, TransientError
from pixelmill.providers.base import GeneratedImage, ImageRequest, ImageResult, Provider, ProviderSettings
from pixelmill.providers.diffusers.batcher import Batcher
from pixelmill.providers.diffusers.families import LocalModel, inspect_model
from pixelmill.providers.diffusers.options import LocalOptions, device_list, parse_options
from pixelmill.providers.diffusers.provider import (
    DiffusersProvider,
    derive_seed,
    encode_pngs,
    load_mapped,
    prepare_work,
)

if TYPE_CHECKING:
    from pixelmill.models.table import ModelSpec
    from pixelmill.params import ImageParams, WirePlan
    from pixelmill.providers.base import Task
    from pixelmill.providers.diffusers.execute import Work
    from pixelmill.providers.diffusers.loader import LoadedCopy

__all__ = ["PLACE_TIMEOUT", "ClusterDiffusers", "ModelCopy", "Shipped", "cluster_provider"]

# Seconds a replacement actor may wait for Ray to place it (a free GPU) before its slot is dropped.
PLACE_TIMEOUT = float(os.environ.get("PIXELMILL_RAY_PLACE_TIMEOUT", "120"))


def cluster_provider(provider: DiffusersProvider, settings: ProviderSettings | None = None) -> Provider:
    """`provider` with its devices replaced by Ray actors, one model copy per GPU (or per unit of
    `ray_resource`) of the cluster `ray` is connected to (`ray.init()` with `RAY_ADDRESS`, when not yet)."""
    return ClusterDiffusers(provider, settings or provider.settings)


@dataclass(slots=True)
class Shipped:
    """What an actor sends back for one row: PNG bytes, and what the row's `pixelmill.response` records."""

    pngs: list[bytes]
    refused: int
    device: str
    batch_rows: int
    size: str


Answer = Shipped | ProviderError


class ModelCopy:
    """A Ray actor holding one model copy on its own GPU (Ray sets `CUDA_VISIBLE_DEVICES` to it), or on its
    node's CPU with `ray_resource`. Loads each model once, on its first batch, and keeps it."""

    def __init__(self, options: dict[str, Any]) -> None:
        from pixelmill.providers.diffusers.loader import visible_devices

        self.options = parse_options(options)
        cuda, mps = visible_devices()
        self.device = device_list("auto", cuda, mps)[0]
        self.copies: dict[str, LoadedCopy] = {}
        self.batches = 0

    def where(self) -> str:
        """Where this copy runs: the node's address and the device (answers once Ray has placed the actor)."""
        import ray

        address: Callable[[], str] = ray.util.get_node_ip_address  # typed name: ray's function is untyped
        return f"{address()}:{os.getpid()}/{self.device}"

    def run(self, local: LocalModel, works: list[Work]) -> list[Answer]:
        """One batch (rows sharing class and kwargs), as a device thread runs it; errors come back as values."""
        from pixelmill.providers.diffusers.execute import Made, run_batch

        copy = self.copies.get(local.source)
        if copy is None:
            try:
                copy = self.copies[local.source] = load_mapped(local, self.device, self.options)
            except ProviderError as exc:
                return [exc for _ in works]
        self.batches += 1
        where = self.where()
        answers: list[Answer] = []
        for outcome in run_batch(copy, works):
            if isinstance(outcome, Made):
                height, width = outcome.images[0].shape[:2]
                answers.append(Shipped(encode_pngs(outcome.images), outcome.refused, where, outcome.batch_rows,
                                       f"{width}x{height}"))
            else:
                answers.append(outcome)
        return answers

    def stats(self) -> dict[str, Any]:
        """For tests and benchmarks: where it runs, the batches it ran and the models it holds."""
        return {"where": self.where(), "batches": self.batches, "models": sorted(self.copies)}


class ClusterDiffusers(Provider):
    """The diffusers provider with one model copy per GPU of a Ray cluster (see the module docstring)."""

    name = "diffusers"
    family = "diffusers"
    chat = False

    def __init__(self, local: DiffusersProvider, settings: ProviderSettings) -> None:
        super().__init__(settings, {})
        import ray

        if not ray.is_initialized():
            ray.init()  # RAY_ADDRESS names the cluster, as Ray's own tools read it; else a local one
        self.local = local
        self.options: LocalOptions = local.options
        self.resource = self.options.ray_resource or "GPU"
        resources: Callable[[], dict[str, float]] = ray.cluster_resources  # typed name: ray's is untyped
        self.actors = self.options.ray_actors or int(resources().get(self.resource, 0))
        if self.actors < 1:
            hint = ("start the worker nodes with GPUs, or set ray_resource=NAME for nodes started with "
                    "resources={NAME: 1} to run on their CPU" if self.resource == "GPU"
                    else f"start nodes with resources={{{self.resource!r}: 1}}, or drop ray_resource to use GPUs")
            raise ConfigError(f"the Ray cluster has no {self.resource} for a diffusers model copy: {hint}")
        # Rows in flight that keep every actor busy with full batches (the engine reads this).
        self.preferred_concurrency = self.options.batch_size * self.actors * 2
        self._pool: _Pool | None = None

    def spec_for(self, model: str) -> ModelSpec:
        return self.local.spec_for(model)

    def plan(self, spec: ModelSpec, params: ImageParams, task: Task) -> WirePlan:
        plan = self.local.plan(spec, params, task)
        # The driver's own devices do not run anything here: the notice about them would mislead.
        plan.notices[:] = [n for n in plan.notices if not n.startswith("no GPU")]
        unit = "GPU" if self.resource == "GPU" else f"unit of {self.resource} (on that node's CPU)"
        plan.notices.append(f"on the Ray cluster: {self.actors} model copies, one per {unit}")
        return plan

    async def call(self, request: ImageRequest, spec: ModelSpec) -> ImageResult:
        try:
            local = inspect_model(request.model)
        except ConfigError as exc:
            raise ModelUnavailable(str(exc)) from None
        seed = request.params.get("seed")
        seed = derive_seed(request) if seed is None else int(seed)
        work, key, share = await asyncio.to_thread(prepare_work, local, request, seed, self.options.batch_size)
        answer = await self._actors().submit(local, work, key, share)
        if isinstance(answer, ProviderError):
            raise answer
        extra: dict[str, Any] = {"seed": seed, "device": answer.device, "batch_rows": answer.batch_rows,
                                 "size": answer.size}
        if answer.refused:
            extra["refused_images"] = answer.refused
        return ImageResult(
            images=[GeneratedImage(data, "image/png") for data in answer.pngs],
            finish_reason="nsfw_or_nan" if answer.refused else "stop",
            extra=extra,
        )

    async def aclose(self) -> None:
        if self._pool is not None:
            await self._pool.aclose()
            self._pool = None  # usable again: new actors (and model loads) on the next call

    # ------------------------------------------------------------------ for tests and benchmarks
    @property
    def pool(self) -> _Pool | None:
        return self._pool

    def _actors(self) -> _Pool:
        if self._pool is None:
            self._pool = _Pool(self.options, self.actors, self.resource)
        return self._pool


class _Pool:
    """`actors` slots, each holding a `ModelCopy` actor, fed by one `Batcher`. A slot whose actor is lost gets a
    replacement; a slot whose replacement cannot be placed is dropped (module docstring)."""

    def __init__(self, options: LocalOptions, actors: int, resource: str) -> None:
        import ray

        wants: dict[str, Any] = {"num_gpus": 1} if resource == "GPU" else {"resources": {resource: 1}}
        # num_cpus=0: a copy is bounded by its GPU (or resource), not by the node's CPU count.
        self._remote = ray.remote(num_cpus=0, **wants)(ModelCopy)
        self._options = options.model_dump()
        self._resource = resource
        self.slots: list[Any] = [None] * actors  # ActorHandle, or None while none is started
        self._placed: set[int] = set()
        self._dropped: set[int] = set()
        self.lost = 0  # actors lost while running a batch (for tests)
        self.used: dict[str, int] = {}  # batches per actor location (for tests and benchmarks)
        self.batcher: Batcher[tuple[LocalModel, Work], Answer] = Batcher(
            actors, options.batch_size, options.batch_window, self._run, ready=self._ready)

    async def submit(self, local: LocalModel, work: Work, key: Hashable, share: int) -> Answer:
        return await self.batcher.submit((local, work), key, share)

    async def _ready(self, slot: int) -> bool:
        """Before slot `slot` takes a batch: its actor is placed and constructed (a new one if it was lost)."""
        if slot in self._placed:
            return True
        if self.slots[slot] is None:
            self.slots[slot] = self._remote.remote(self._options)
        try:
            await asyncio.wait_for(_awaitable(self.slots[slot].where.remote()), PLACE_TIMEOUT)
        except Exception as exc:  # not placed in time (TimeoutError), or it died while starting
            self._kill(slot)
            self._dropped.add(slot)
            if len(self._dropped) == len(self.slots):
                self.batcher.fail(ModelUnavailable(
                    f"no Ray actor could hold the model ({_said(exc)}): the cluster has no free "
                    f"{self._resource} left for a model copy; add nodes, then run the same command again (the rows "
                    "not done are pending)"))
            return False
        self._placed.add(slot)
        return True

    async def _run(self, slot: int, items: list[tuple[LocalModel, Work]]) -> list[Answer]:
        import ray.exceptions

        local = items[0][0]
        actor = self.slots[slot]
        try:
            answers: list[Answer] = await _awaitable(actor.run.remote(local, [work for _, work in items]))
        except ray.exceptions.RayActorError as exc:
            self.lost += 1
            self._kill(slot)  # the next `_ready` of this slot starts a replacement
            error = TransientError(f"the Ray actor running this row was lost ({_said(exc)}): it is sent again to "
                                   "another model copy", maybe_billed=False)
            return [error for _ in items]
        except ray.exceptions.RayError as exc:  # an object lost in transfer, a worker crash: try the rows again
            error = TransientError(f"Ray could not run this row's batch ({_said(exc)})", maybe_billed=False)
            return [error for _ in items]
        where = answers[0].device if answers and isinstance(answers[0], Shipped) else f"slot {slot}"
        self.used[where] = self.used.get(where, 0) + 1
        return answers

    def _kill(self, slot: int) -> None:
        import ray

        actor, self.slots[slot] = self.slots[slot], None
        self._placed.discard(slot)
        if actor is not None:
            try:
                ray.kill(actor, no_restart=True)
            except Exception:  # already gone with its node: nothing to release
                pass

    async def aclose(self) -> None:
        await self.batcher.aclose()
        for slot in range(len(self.slots)):
            self._kill(slot)


async def _awaitable(ref: Any) -> Any:
    """An ObjectRef awaited on the running loop (Ray's refs are awaitable)."""
    return await ref


def _said(exc: BaseException) -> str:
    """A Ray error in one short line (Ray's own messages run to pages)."""
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(exc).__name__}: {first[:200]}" if first else type(exc).__name__
