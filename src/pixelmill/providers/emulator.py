"""`--provider emulator`: the built-in emulator (`pixelmill.testing`), a registered provider like the others.

Nothing rewrites a configuration for it: a step names `provider: emulator` (its model, or any fallback), the
planner asks this provider for the wire that serves the model (`for_model`: Gemini's for Gemini models; fal's,
Black Forest Labs', Replicate's and Hugging Face's for their families' models, each the provider registered under
that entry-point name, pointed at the emulator's root; OpenAI's for the rest), and that wire talks to the emulator
over real HTTP on loopback. The emulator starts when the first
call is sent (planning, `estimate` and the checks before a run start nothing), is shared by every step of the
process, and stops when the last provider using it is closed. Rows record `emulator` as their provider, so a
rehearsal is never taken for a paid run.

This is the one product module that imports the emulator.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from pixelmill.errors import ResultLost
from pixelmill.models.table import ModelSpec, builtin_table, permissive_spec
from pixelmill.providers.base import (
    ImageRequest,
    ImageResult,
    JobHandle,
    JobProvider,
    JobStatus,
    Provider,
    ProviderSettings,
    Task,
    provider_class,
)
from pixelmill.providers.gemini.provider import GeminiProvider, api_base
from pixelmill.providers.openai.provider import OpenAIProvider, normalize_base_url

if TYPE_CHECKING:
    from pixelmill.params import ImageParams, WirePlan
    from pixelmill.testing import Emulator, ThreadRunner

# The emulator's key: it checks that one is sent, not which. A user's real key is never sent to it.
EMULATOR_KEY = "sk-emulator"
LATENCY = 0.05  # seconds per answer: quick, yet long enough for progress, Ctrl-C and pacing to be seen
# The handle's note of the emulator that runs a job (its URL: one per process).
EMULATED_BY = "emulated_by"
# Model families served by a remote-job (or Hugging Face) wire on the emulator: family -> entry-point name.
JOB_FAMILIES = {"fal": "fal", "bfl": "bfl", "replicate": "replicate", "hf": "hf"}


class _SharedEmulator:
    """One emulator for the process, started on first use and stopped when its last user is done."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._runner: ThreadRunner | None = None
        self._emulator: Emulator | None = None
        self._users = 0

    def acquire(self) -> Emulator:
        with self._lock:
            if self._emulator is None:
                from pixelmill.testing import Emulator, EmulatorConfig

                self._runner = Emulator(EmulatorConfig(latency=LATENCY, serve_retired=True)).run_in_thread()
                self._emulator = self._runner.start()
            self._users += 1
            return self._emulator

    def release(self) -> None:
        with self._lock:
            self._users -= 1
            if self._users <= 0 and self._runner is not None:
                self._runner.stop()
                self._runner = self._emulator = None
                self._users = 0


_SHARED = _SharedEmulator()


class _EmulatedWire(Provider):
    """Mixed in before a real wire provider (OpenAI's or Gemini's): its base URL is the shared emulator's, known
    once the first call starts it. `super()` here is that wire provider."""

    name: ClassVar[str] = "emulator"
    base_url: str
    _emulator: Emulator | None = None
    _starting: asyncio.Lock | None = None

    def _point_at(self, emulator: Emulator) -> None:
        raise NotImplementedError

    async def _started(self) -> None:
        if self._emulator is None:
            if self._starting is None:
                self._starting = asyncio.Lock()
            async with self._starting:
                if self._emulator is None:
                    emulator = await asyncio.to_thread(_SHARED.acquire)
                    self._point_at(emulator)
                    self._emulator = emulator

    async def call(self, request: ImageRequest, spec: ModelSpec) -> ImageResult:
        await self._started()
        return await super().call(request, spec)  # type: ignore[safe-super]  # the wire provider's

    async def aclose(self) -> None:
        await super().aclose()
        if self._emulator is not None:
            self._emulator = None
            _SHARED.release()


class _EmulatedOpenAI(_EmulatedWire, OpenAIProvider):
    def _point_at(self, emulator: Emulator) -> None:
        self.base_url = normalize_base_url(emulator.openai_base_url)


class _EmulatedGemini(_EmulatedWire, GeminiProvider):
    def _point_at(self, emulator: Emulator) -> None:
        self.base_url = api_base(emulator.gemini_base_url)


class _EmulatedRoot(_EmulatedWire):
    """A wire whose base URL is the emulator's root (fal, BFL, Replicate, the HF router): the base URL is what the
    wire's own constructor makes of `jobs_base_url` (BFL adds `/v1`, ...)."""

    _wire: ClassVar[type[Provider]]
    settings: ProviderSettings

    def _point_at(self, emulator: Emulator) -> None:
        pointed = self._wire(dataclasses.replace(self.settings, base_url=emulator.jobs_base_url), {})
        self.base_url = pointed.base_url  # type: ignore[attr-defined]  # every wire here has one


class _EmulatedJobs(_EmulatedRoot):
    """A remote-job wire on the emulator: each of its calls starts the emulator first, like `call`."""

    async def submit(self, request: ImageRequest, spec: ModelSpec) -> JobHandle:
        await self._started()
        handle: JobHandle = await super().submit(request, spec)  # type: ignore[misc]  # the wire's
        assert self._emulator is not None
        handle.data[EMULATED_BY] = self._emulator.url  # which emulator holds the job (it lives in this process)
        return handle

    async def poll(self, handle: JobHandle, spec: ModelSpec) -> JobStatus:
        await self._started()
        if not self._holds(handle):
            return JobStatus("failed", error=ResultLost(
                "the job ran on the emulator of an earlier process (`--provider emulator` keeps its jobs in that "
                "process's memory): its result is gone; a rehearsal, nothing was paid"))
        return await super().poll(handle, spec)  # type: ignore[misc,no-any-return]

    async def cancel(self, handle: JobHandle, spec: ModelSpec) -> str:
        await self._started()
        if not self._holds(handle):
            return "not_found"
        return await super().cancel(handle, spec)  # type: ignore[misc,no-any-return]

    def _holds(self, handle: JobHandle) -> bool:
        """Whether this process's emulator ran the job (a re-run starts an emulator of its own, on another port)."""
        return self._emulator is not None and handle.data.get(EMULATED_BY) == self._emulator.url

    async def recover(self, request: ImageRequest, spec: ModelSpec, since: float) -> JobHandle | None:
        await self._started()
        return await super().recover(request, spec, since)  # type: ignore[misc,no-any-return]


def emulated_wire(family: str) -> type[Provider]:
    """The class that serves `family`'s models on the emulator: the provider registered for the family, with the
    emulator's lazy start and base URL mixed in before it."""
    wire = provider_class(JOB_FAMILIES[family])
    mixin = _EmulatedJobs if issubclass(wire, JobProvider) else _EmulatedRoot
    attributes: dict[str, Any] = {"_wire": wire, "__module__": __name__}
    return type(f"_Emulated{wire.__name__}", (mixin, wire), attributes)


class EmulatorProvider(Provider):
    """The emulator, for every model of the table: `for_model` hands each model to the wire that serves it."""

    name = "emulator"
    family = "openai"  # models the table does not know get OpenAI's wire and permissive rules

    def __init__(self, settings: ProviderSettings, env: Mapping[str, str]) -> None:
        super().__init__(settings, env)
        # The placeholder base URL is replaced when the emulator starts; no environment variable is read, so a
        # real key or base URL in the environment never reaches the emulator.
        self._wire_settings = ProviderSettings(
            base_url="http://127.0.0.1:9", api_key=settings.api_key or EMULATOR_KEY, api_version=None,
            connect_timeout=settings.connect_timeout, max_download_bytes=settings.max_download_bytes,
            options=dict(settings.options),
        )
        self._wires: dict[str, Provider] = {}

    def spec_for(self, model: str) -> ModelSpec:
        return builtin_table().get(model) or permissive_spec(model, "openai")

    def for_model(self, spec: ModelSpec) -> Provider:
        family = spec.family if spec.family in ("gemini", *JOB_FAMILIES) else "openai"
        if family not in self._wires:
            wire: type[Provider]
            if family in JOB_FAMILIES:
                wire = emulated_wire(family)
            else:
                wire = _EmulatedGemini if family == "gemini" else _EmulatedOpenAI
            self._wires[family] = wire(self._wire_settings, {})
        return self._wires[family]

    def plan(self, spec: ModelSpec, params: ImageParams, task: Task) -> WirePlan:
        return self.for_model(spec).plan(spec, params, task)

    async def call(self, request: ImageRequest, spec: ModelSpec) -> ImageResult:
        return await self.for_model(spec).call(request, spec)

    async def aclose(self) -> None:
        for wire in self._wires.values():
            await wire.aclose()

    def secrets(self) -> tuple[str, ...]:
        return tuple(s for wire in self._wires.values() for s in wire.secrets())
