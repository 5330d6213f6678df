"""A provider whose calls run on a Ray actor pool spread over the cluster's nodes (`--ray`, API providers).

The driver stays the engine: it plans, admits (limiter, budget), retries, journals and writes every image file;
`RemoteProvider.call` only carries one call to an actor and its `ImageResult` back (image bytes through Ray's
object store). So the cluster needs no shared filesystem, and the limits and the budget are the whole cluster's.

- The pool: one async actor per live node when the run starts (pinned softly to that node), each building the
  real provider from the driver's settings and exactly the environment variables the provider read on the
  driver (`_Recorder`), sealed so that no repr or log line shows a key. Each actor takes as many calls at once as
  the run's concurrency, so the pool never queues what the engine let in; a call goes to the actor with the
  fewest calls in flight, the moment the engine sends it (no batches, no barrier).
- Answers: the actor returns the result, or the provider's error as data (`_pack`: errors whose constructors
  take keywords would not survive pickling as exceptions), and the driver raises the same error, so the
  engine's policy sees exactly what it sees on one machine.
- A lost actor or node (`RayActorError`, a crashed worker, a lost object) is an `UnknownOutcome`: the request
  may have reached the provider, so the engine charges it as possibly billed and, within --max-billed-retries,
  sends it again; the dead actor is replaced by a new one wherever Ray finds room (`SPREAD`), and calls go on.
  Ray itself retries nothing (`max_task_retries=0`, `max_restarts=0`): a silent retry would be a second payment.
- A call abandoned by the engine (a second Ctrl-C) is cancelled on its actor too.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from pixelmill.cluster.connect import import_ray
from pixelmill.errors import InternalError, ProviderError, UnknownOutcome, redact
from pixelmill.models.table import ModelSpec
from pixelmill.params import ImageParams, WirePlan
from pixelmill.providers.base import ImageRequest, ImageResult, Provider, ProviderSettings, Task

READY_TIMEOUT = 120.0  # seconds for the pool's actors to start (a node may have to start a worker process)


class Sealed:
    """Values that travel to the actors and must never be shown: the environment variables a provider read
    (its key among them). Pickled as they are (Ray carries them to the actor); never in a repr or a message."""

    __slots__ = ("_values",)

    def __init__(self, values: Mapping[str, str]) -> None:
        self._values = dict(values)

    def open(self) -> dict[str, str]:
        return dict(self._values)

    def __repr__(self) -> str:
        return f"Sealed({len(self._values)} values)"

    def __getstate__(self) -> dict[str, str]:
        return self._values

    def __setstate__(self, state: dict[str, str]) -> None:
        self._values = state


class _Recorder(Mapping[str, str]):
    """The environment as a provider's constructor reads it, remembering which variables it asked for."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env
        self.read: dict[str, str] = {}

    def __getitem__(self, key: str) -> str:
        value = self._env[key]
        self.read[key] = value
        return value

    def __iter__(self) -> Iterator[str]:  # a provider listing the environment reads none of it here
        return iter(())

    def __len__(self) -> int:
        return 0

    def get(self, key: str, default: Any = None) -> Any:
        return self[key] if key in self._env else default

    def __contains__(self, key: object) -> bool:
        return key in self._env


def read_env(provider: Provider, env: Mapping[str, str]) -> Sealed:
    """The environment variables `provider`'s constructor reads (keys, endpoints, API versions), sealed."""
    recorder = _Recorder(env)
    type(provider)(provider.settings, recorder)
    return Sealed(recorder.read)


# ---------------------------------------------------------------- on the actor
def _pack(exc: ProviderError) -> tuple[type[ProviderError], str, dict[str, Any]]:
    return type(exc), str(exc), dict(vars(exc))


def _unpack(packed: tuple[type[ProviderError], str, dict[str, Any]]) -> ProviderError:
    cls, message, state = packed
    exc = cls.__new__(cls)
    Exception.__init__(exc, message)
    exc.__dict__.update(state)
    return exc


class CallWorker:
    """The actor: the real provider, built on its node, sending the calls the driver hands it."""

    def __init__(self, cls: type[Provider], settings: ProviderSettings, env: Sealed) -> None:
        self.provider = cls(settings, env.open())

    async def ready(self) -> str:
        """The node this actor runs on (answered once the actor is up)."""
        return str(import_ray().get_runtime_context().get_node_id())

    async def call(self, request: ImageRequest, spec: ModelSpec) -> tuple[str, Any]:
        try:
            return "ok", await self.provider.call(request, spec)
        except ProviderError as exc:
            return "error", _pack(exc)
        except Exception as exc:  # a bug: named, redacted, and the row fails (engine/row.py), as on one machine
            return "internal", redact(f"{type(exc).__name__}: {exc}", self.provider.secrets())

    async def aclose(self) -> None:
        await self.provider.aclose()


# ---------------------------------------------------------------- on the driver
@dataclass(slots=True)
class _Slot:
    actor: Any  # a Ray ActorHandle
    calls: int = 0  # in flight now


class CallPool:
    """The actors that send one provider's calls, and which of them takes the next call."""

    def __init__(self, provider: Provider, env: Sealed, nodes: list[str], concurrency: int) -> None:
        self._ray = import_ray()
        self._args = (type(provider), provider.settings, env)
        self._concurrency = concurrency
        wanted: list[str | None] = list(nodes[:concurrency]) or [None]  # no more actors than calls at once
        self.slots = [_Slot(self._start(node)) for node in wanted]
        self.replaced = 0

    def _start(self, node: str | None) -> Any:
        ray = self._ray
        if node is not None:
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            strategy: Any = NodeAffinitySchedulingStrategy(node, soft=False)
        else:
            strategy = "SPREAD"
        actor_class = ray.remote(CallWorker)
        return actor_class.options(
            num_cpus=0, max_concurrency=self._concurrency + 2, max_restarts=0, max_task_retries=0,
            scheduling_strategy=strategy,
        ).remote(*self._args)

    async def ready(self) -> list[str]:
        """Wait for every actor to start; the node each runs on."""
        refs = [slot.actor.ready.remote() for slot in self.slots]
        try:
            return list(await asyncio.wait_for(asyncio.gather(*refs), READY_TIMEOUT))
        except (TimeoutError, self._ray.exceptions.RayError) as exc:
            from pixelmill.errors import ConfigError

            raise ConfigError(
                "--ray: the actors that send the calls could not start on the cluster "
                f"({type(exc).__name__}): install pixelmill[ray], the same version as the driver's, on every node"
            ) from None

    async def call(self, request: ImageRequest, spec: ModelSpec) -> ImageResult:
        slot = min(self.slots, key=lambda s: s.calls)
        slot.calls += 1
        ref = slot.actor.call.remote(request, spec)
        try:
            kind, value = await ref
        except asyncio.CancelledError:  # abandoned by the engine (stopped at once): stop it on the actor too
            with contextlib.suppress(Exception):
                self._ray.cancel(ref)
            raise
        except self._ray.exceptions.RayTaskError as exc:  # the actor's own method failed: a bug, not a lost node
            raise InternalError(f"internal error on a Ray actor: {type(exc.cause).__name__} (please report it; "
                                "--retry-failed sends the row again)") from None
        except self._ray.exceptions.RayError as exc:
            self._replace(slot)
            raise UnknownOutcome(
                f"the Ray worker sending this call was lost ({type(exc).__name__}: a node or actor died): the "
                "request may have reached the provider, so it is charged as possibly billed and sent again on "
                "another node") from None
        finally:
            slot.calls -= 1
        if kind == "ok":
            result: ImageResult = value
            return result
        if kind == "error":
            raise _unpack(value)
        raise InternalError(f"internal error on a Ray actor: {value} (please report it; --retry-failed sends "
                            "the row again)")

    def _replace(self, slot: _Slot) -> None:
        """A dead actor's place goes to a new one wherever Ray finds room (once, whichever call saw it die)."""
        if slot not in self.slots:
            return
        old = slot.actor
        self.slots[self.slots.index(slot)] = _Slot(self._start(None))
        self.replaced += 1
        with contextlib.suppress(Exception):
            self._ray.kill(old, no_restart=True)

    async def close(self) -> None:
        """Close each actor's connections, then end the actors."""
        closing = [slot.actor.aclose.remote() for slot in self.slots]
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.gather(*closing, return_exceptions=True), 10.0)
        for slot in self.slots:
            with contextlib.suppress(Exception):
                self._ray.kill(slot.actor, no_restart=True)


class RemoteProvider(Provider):
    """`inner`'s calls, sent from the pool's actors; planning, rules and secrets stay `inner`'s (on the driver).
    `remote_provider` makes one subclass per wrapped class, carrying its name, family and chat."""

    name = "remote"
    family = "openai"

    def __init__(self, inner: Provider, pool: CallPool) -> None:
        self.settings = inner.settings
        self.inner = inner
        self.pool = pool

    @property
    def base_url(self) -> str | None:
        url = getattr(self.inner, "base_url", None)
        return url if isinstance(url, str) else None

    def spec_for(self, model: str) -> ModelSpec:
        return self.inner.spec_for(model)

    def plan(self, spec: ModelSpec, params: ImageParams, task: Task) -> WirePlan:
        return self.inner.plan(spec, params, task)

    async def call(self, request: ImageRequest, spec: ModelSpec) -> ImageResult:
        return await self.pool.call(request, spec)

    async def aclose(self) -> None:
        await self.pool.close()
        await self.inner.aclose()

    def secrets(self) -> tuple[str, ...]:
        return self.inner.secrets()


async def remote_provider(provider: Provider, env: Mapping[str, str], nodes: list[str], concurrency: int,
                          notice: Callable[[str], None]) -> RemoteProvider:
    """`provider`'s calls on an actor pool over `nodes` (one actor each), started and ready."""
    pool = CallPool(provider, read_env(provider, env), nodes, concurrency)
    where = await pool.ready()
    n = len(where)
    notice(f"--ray: {provider.name} calls go out from {n} actor{'s' if n != 1 else ''} on {len(set(where))} "
           f"node{'s' if len(set(where)) != 1 else ''}")
    cls = type(f"Remote{type(provider).__name__}", (RemoteProvider,),
               {"name": provider.name, "family": provider.family, "chat": provider.chat, "__module__": __name__})
    wrapper: RemoteProvider = cls(provider, pool)
    return wrapper
