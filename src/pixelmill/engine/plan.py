"""Planning a run: everything that can be wrong with a configuration, found before anything is opened or sent.

`plan_run` first checks that every optional package the run needs is installed (engine/prerequisites.py), then
builds each step's provider (and its fallbacks'), looks its model up in the model table (presets resolved, unknown
models allowed with a notice), checks that the model can do the step's task and take its mask, plans the wire
parameters, tells of retired or unknown models, and refuses `--max-cost` for a model without a price. A step with
`deployments` gets one provider and one limiter per entry (`StepPlan.pool`, engine/deployments.py), each key read
from the variable its entry names (a variable not set is a `ConfigError` naming it); steps with the same model over
the same entries share them. Last, it reads a bounded sample of the source's first rows (reading/sample.py) and
checks every field the configuration names against them (engine/preflight.py) and that no output field is an input
column. It opens no connection and writes nothing (the run directory is not touched): `reports/estimate.py` plans
the same way a run does and sends nothing; `spread_on_cluster` (--ray, called by the runner before it opens RUNDIR)
moves the providers' calls onto a Ray cluster. `StepPlan.turn_plan` is the one place that says which task and wire plan
each turn of a row uses, so a run (engine/row.py) and an estimate count the same calls.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pixelmill import defaults
from pixelmill.config import Deployment as DeploymentEntry
from pixelmill.config import Limits, ModelRef, RunConfig, StepConfig
from pixelmill.engine.deployments import Deployment, DeploymentPool
from pixelmill.engine.limiter import Limiter
from pixelmill.engine.preflight import check_fields
from pixelmill.engine.prerequisites import check_prerequisites
from pixelmill.errors import ConfigError
from pixelmill.models.cost import expected_cost
from pixelmill.models.table import ModelSpec, ModelTable, builtin_table
from pixelmill.params import WirePlan
from pixelmill.providers.base import Provider, ProviderSettings, is_job_provider, provider_class
from pixelmill.reading.sample import Sample, first_rows


@dataclass(slots=True)
class StepPlan:
    """One model a step can use: its provider, the model's rules and the wire plans, checked at planning."""

    config: StepConfig
    provider: Provider
    spec: ModelSpec
    wire_model: str  # the name sent: what the user wrote (a preset resolved), e.g. an Azure deployment
    plans: dict[tuple[str, bool], WirePlan] = field(default_factory=dict)
    fallbacks: list[StepPlan] = field(default_factory=list)  # tried in order when this model fails a row
    timeout: float = defaults.TIMEOUT  # seconds for one request (`request_timeout`)
    # The keys or endpoints this model's calls are spread over (engine/deployments.py); None: `provider` alone.
    # `provider` is then the first deployment's, which plans the wire parameters for all of them.
    pool: DeploymentPool | None = None

    def plan(self, task: str, single: bool = False) -> WirePlan:
        """The wire plan for `task`; `single` asks for one image (intermediate turns of a conversation)."""
        key = (task, single)
        if key not in self.plans:
            params = self.config.params
            if single:
                params = params.model_copy(update={"n": 1})
            self.plans[key] = self.provider.plan(self.spec, params, task)  # type: ignore[arg-type]
        return self.plans[key]

    def turn_plan(self, row_task: str, turn: int, turns: int, images: int) -> tuple[str, WirePlan]:
        """The task and wire plan of one turn of a row. The first turn edits when it sends input images, else
        does the row's task; every later turn edits the previous turn's output (a chain of edits, or a chat
        with its history). Turns before the last ask for one image: only the last turn's images are kept."""
        task = "edit" if images or turn > 0 else row_task
        return task, self.plan(task, single=turn < turns - 1)


def request_timeout(limits: Limits, spec: ModelSpec) -> float:
    """Seconds for one request: --timeout, else the model's own (`timeout` in the model table: the slowest
    models need minutes), else `defaults.TIMEOUT`."""
    return limits.timeout or spec.timeout or defaults.TIMEOUT


def call_deadline(limits: Limits, timeouts: list[float]) -> float:
    """Seconds for one call with its retries: --deadline, else long enough for a retry after a full timeout of
    the slowest model (twice its timeout plus room for the backoff), and at least `defaults.DEADLINE`."""
    if limits.deadline is not None:
        return limits.deadline
    return max([defaults.DEADLINE, *(2 * t + defaults.DEADLINE_RETRY_ROOM for t in timeouts)])


def images_per_call(params: Mapping[str, Any]) -> int:
    """How many images one call with these wire parameters asks for (`num_outputs`: Replicate's name)."""
    for key in ("n", "num_images_per_prompt", "num_outputs"):
        if key in params:
            return int(params[key] or 1)
    return 1


@dataclass(slots=True)
class RunPlan:
    """What a run sends with: one `StepPlan` per step in order, the keys to redact, and the concurrency."""

    steps: list[StepPlan]
    secrets: tuple[str, ...]
    # --concurrency, or more where a local model batches rows inside the provider and needs more rows in flight
    # to fill its batches (it has no rate limit to respect).
    concurrency: int
    deadline: float = defaults.DEADLINE  # seconds for one call with its retries (`call_deadline`)
    # The environment the providers were built from: --ray builds the same providers on the cluster's actors.
    env: Mapping[str, str] = field(default_factory=dict, repr=False)

    async def aclose(self) -> None:
        """Close every provider (their connection pools); errors while closing are not the run's concern."""
        closed: set[int] = set()  # steps may share deployments, and so providers
        for step in self.steps:
            for target in (step, *step.fallbacks):
                providers = [target.provider, *(d.provider for d in (target.pool.deployments if target.pool else ()))]
                for provider in providers:
                    if id(provider) not in closed:
                        closed.add(id(provider))
                        with contextlib.suppress(Exception):
                            await provider.aclose()


def plan_run(
    config: RunConfig,
    *,
    env: Mapping[str, str],
    notice: Callable[[str], None] = lambda _: None,
    table: ModelTable | None = None,
) -> RunPlan:
    """Plan every step of `config`. Raises `ConfigError` naming the file and step when the configuration is
    wrong: then nothing was sent and the run directory was not touched."""
    check_prerequisites(config)
    planner = _Planner(config, env, notice, table)
    steps: list[StepPlan] = []
    for step in config.steps:
        try:
            target = planner.target(step, step.model, step.deployments[0] if step.deployments else None)
            if step.deployments:
                target.pool = planner.pool(step, target)
            target.fallbacks = [planner.target(step, ref) for ref in step.fallback]
        except ConfigError as exc:
            where = f"{config.origin}: " if config.origin else ""
            raise ConfigError(f"{where}step {step.name!r}: {exc}") from None
        steps.append(target)
    names = [s.config.name for s in steps]
    if len(set(names)) != len(names):
        raise ConfigError(f"step names must be unique; got {names}")
    sample = _sample(config)
    check_fields(config, sample)
    _check_output_fields(config, sample)
    wanted = max([int(getattr(s.provider, "preferred_concurrency", 0)) for s in steps] or [0])
    timeouts = [t.timeout for s in steps for t in (s, *s.fallbacks)]
    return RunPlan(steps, planner.secrets, max(config.limits.concurrency, wanted),
                   call_deadline(config.limits, timeouts), env)


async def spread_on_cluster(plan: RunPlan, config: RunConfig, notice: Callable[[str], None]) -> None:
    """--ray: each step's provider (and its fallbacks') sends its calls from the cluster (pixelmill/cluster/);
    everything else of the run stays here. A `ConfigError` (no Ray, no cluster, actors that cannot start) comes
    before anything is sent or written; the pools already started are closed then."""
    import asyncio

    from pixelmill.cluster import connect, on_cluster

    info = await asyncio.to_thread(connect)
    notice(info.line())
    if config.batch:
        notice("--ray with --batch: the driver submits and collects the batches (the provider runs them)")
        return
    moved: dict[int, Provider] = {}  # a provider shared by steps (a deployment pool) is moved once

    async def move(provider: Provider) -> Provider:
        if id(provider) not in moved:
            moved[id(provider)] = await on_cluster(provider, plan.env, info, plan.concurrency, notice)
        return moved[id(provider)]

    try:
        for step in plan.steps:
            for target in (step, *step.fallbacks):
                for deployment in target.pool.deployments if target.pool is not None else ():
                    # Each key or endpoint keeps its limiter here; its calls go out from the cluster.
                    deployment.provider = await move(deployment.provider)
                target.provider = await move(target.provider)
                # A pool of model copies wants rows enough to batch on every copy: the planner sized for this machine.
                plan.concurrency = max(plan.concurrency, int(getattr(target.provider, "preferred_concurrency", 0)))
    except BaseException:
        await plan.aclose()
        raise


def _entry_name(entry: DeploymentEntry, index: int) -> str:
    """A deployment's name: its own, else its key variable's (a name, never the key), else its place."""
    return entry.name or entry.api_key_env or f"deployment{index + 1}"


def _check_output_fields(config: RunConfig, sample: Sample) -> None:
    """An output field must not be a column of the input: rows are promised unchanged in the output. The first
    readable row tells the columns (a table's are the same in every row)."""
    if not sample.rows:
        return
    first = sample.rows[0]
    for step in config.steps:
        if step.out_field in first:
            flag = "output_field" if config.pipeline else "--output-field"
            where = f"{config.origin}: step {step.name!r}: " if config.origin else ""
            raise ConfigError(f"{where}{flag} {step.out_field!r} is a column of the input: the output would "
                              "overwrite it (rows are kept unchanged); choose another name")


def _sample(config: RunConfig) -> Sample:
    """The source's first rows; none when it cannot be read (that is reported where the run reads it)."""
    try:
        return first_rows(config.source, config.source_format, limit=config.limit)
    except ConfigError:
        return Sample(config.source)


class _Planner:
    def __init__(self, config: RunConfig, env: Mapping[str, str], notice: Callable[[str], None],
                 table: ModelTable | None) -> None:
        self.config = config
        self.env = env
        self.notice = notice
        self.table = table or builtin_table()
        if config.models_file is not None:
            self.table = self.table.merged(config.models_file)
        self.secrets: tuple[str, ...] = ()
        # Steps with the same model over the same deployments share them: one limiter per key, not per step.
        self.pools: dict[tuple[str, str, tuple[DeploymentEntry, ...]], DeploymentPool] = {}

    def target(self, step: StepConfig, ref: ModelRef, entry: DeploymentEntry | None = None) -> StepPlan:
        """One model a step can use: its provider (`entry`: the first of the step's deployments), rules and wire
        plans, checked now."""
        provider = provider_class(ref.provider)(self.settings(ref, entry), self.env)
        model = self.table.resolve_preset(ref.provider, ref.model)
        lookup = ref.base_model or model
        provider = provider.for_model(self.table.get(lookup) or provider.spec_for(lookup))
        spec = self.spec(provider, model, ref.base_model)
        target = StepPlan(step, provider, spec, model, timeout=request_timeout(self.config.limits, spec))
        tasks = ["generate", "edit"] if step.task == "auto" else [step.task]
        for task in tasks:
            if task not in spec.tasks:
                raise ConfigError(f"{spec.name} cannot {task}; it can {', '.join(spec.tasks)}")
            for line in target.plan(task).notices:
                self.notice(f"step {step.name!r}, {model}: {line}")
        if step.mask_field and spec.known and not spec.mask:
            raise ConfigError(f"{spec.name} takes no mask (--mask-field {step.mask_field}); models with masks: "
                              + ", ".join(s.name for s in self.table.specs.values() if s.mask))
        if (notice := spec.retirement_notice()) is not None:
            self.notice(notice)
        if not spec.known:
            self.notice(f"{model} is not in the model table: its rules are not checked and its cost is unknown")
        if self.config.limits.max_cost is not None and expected_cost(spec, target.plan(tasks[0]).params, 1) is None:
            raise ConfigError(
                f"no price is known for {spec.name}, so --max-cost cannot be kept; "
                "add its price in a --models-file, or run without --max-cost"
            )
        self.secrets += provider.secrets()
        return target

    def settings(self, ref: ModelRef, entry: DeploymentEntry | None, index: int = 0) -> ProviderSettings:
        """A provider's settings: the model's, with a deployment's base URL, key and API version over them."""
        key = self.config.api_key
        if entry is not None and entry.api_key_env is not None:
            key = (self.env.get(entry.api_key_env) or "").strip()
            if not key:
                raise ConfigError(f"deployment {_entry_name(entry, index)!r}: the environment variable "
                                  f"{entry.api_key_env} is not set (api_key_env names the variable that holds "
                                  "this deployment's key)")
        return ProviderSettings(
            base_url=(entry and entry.base_url) or ref.base_url, api_key=key,
            api_version=(entry and entry.api_version) or ref.api_version, options=dict(ref.options),
            connect_timeout=float(ref.options.get("connect_timeout", 30.0)),  # seconds to open a connection
        )

    def pool(self, step: StepConfig, target: StepPlan) -> DeploymentPool:
        """The step's deployments: one provider and one limiter each, the first one `target`'s provider."""
        ref = step.model
        shared = (ref.provider, target.spec.name, step.deployments)
        if shared in self.pools:
            return self.pools[shared]
        if is_job_provider(target.provider) or target.provider.family == "diffusers" or ref.provider == "emulator":
            raise ConfigError(f"deployments spread calls over keys or endpoints of openai, azure, "
                              f"openai-compatible or gemini; provider {ref.provider!r} takes none")
        names = [_entry_name(entry, i) for i, entry in enumerate(step.deployments)]
        if len(set(names)) != len(names):
            raise ConfigError(f"deployment names must be unique (name them with name:); got {', '.join(names)}")
        deployments = []
        for i, (name, entry) in enumerate(zip(names, step.deployments, strict=True)):
            if i == 0:
                provider = target.provider
            else:
                settings = self.settings(ref, entry, i)
                try:
                    provider = provider_class(ref.provider)(settings, self.env)
                except ConfigError as exc:
                    raise ConfigError(f"deployment {name!r}: {exc}") from None
                provider = provider.for_model(target.spec)
                self.secrets += provider.secrets()
            limiter = Limiter(entry.concurrency or self.config.limits.concurrency, entry.rpm, entry.ipm)
            deployments.append(Deployment(name, provider, entry.deployment or target.wire_model, limiter))
        pool = self.pools[shared] = DeploymentPool(deployments)
        return pool

    def spec(self, provider: Provider, model: str, base_model: str | None) -> ModelSpec:
        lookup = base_model or model
        spec = self.table.get(lookup)
        if spec is None:
            spec = provider.spec_for(lookup)
        if spec.known and spec.family != provider.family:
            raise ConfigError(f"{spec.name} is a {spec.family} model; it cannot be used with provider "
                              f"{provider.name!r}")
        return spec
