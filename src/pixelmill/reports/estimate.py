"""`pixelmill estimate`: the rows, requests, images and cost a run would make, per step, without sending anything.

The configuration is checked exactly as a run checks it (the run's own planner, `engine.plan.plan_run`:
providers, models, parameters), with a placeholder key where none is set, since nothing is sent. Then the
source is read row by row, the way the engine reads it: each row's prompt or conversation turns, its input
images (counted, not loaded) and the wire plan of each turn (`StepPlan.turn_plan`, as a run plans it) give the
requests and images; the model table's prices give the cost (`cost.expected_cost`: for token-billed models the
documented token counts per size and quality). Rows that would fail before sending (no prompt, no image to
edit, a prompt too long) are counted apart, with an example; a field the configuration names that is in none of
the first rows stops the estimate as it stops a run (engine/preflight.py), rather than pricing a run that would
fail. When RUNDIR already holds this run, rows done
there are not counted again: the estimate is what is left to pay.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pixelmill.config import RunConfig, StepConfig
from pixelmill.engine.inputs import image_refs
from pixelmill.engine.plan import RunPlan, StepPlan, images_per_call, plan_run
from pixelmill.errors import ConfigError, InputError
from pixelmill.models.cost import ZERO, Expected, batch_cost, expected_cost
from pixelmill.reading.records import Record, read_records, user_turns
from pixelmill.writing.journal import Journal, RowIdentity

PLACEHOLDER_KEY = "sk-estimate-nothing-is-sent"
# Enough for every provider to build itself; never contacted.
_PLACEHOLDER_ENV = {"AZURE_OPENAI_ENDPOINT": "https://estimate.openai.azure.com"}


@dataclass(slots=True)
class StepEstimate:
    name: str
    task: str
    provider: str
    model: str
    rows: int = 0  # rows this step would send
    requests: int = 0
    images: int = 0
    cost: Expected = ZERO
    priced: bool = True  # False when the table has no price for the model
    batch: Expected | None = None  # the same through the provider's batch API, where it has a discount
    online: Expected | None = None  # with --batch: what the same rows would cost online (`cost` is the batch's)
    failing: int = 0  # rows that would fail before anything is sent
    failure_example: str | None = None
    already_done: int = 0  # rows done in an earlier run of RUNDIR
    fallbacks: int = 0  # fallback models: they cost only for rows the first model fails


@dataclass(slots=True)
class RunEstimate:
    rows: int  # rows in the source (after --limit)
    steps: list[StepEstimate]
    budget: float | None
    spent_before: float = 0.0  # what RUNDIR has already spent
    unreadable: int = 0  # source rows that cannot be parsed (failed rows, nothing sent)
    notices: list[str] = field(default_factory=list)

    @property
    def total(self) -> Expected:
        out = ZERO
        for step in self.steps:
            out = out + step.cost
        return out

    @property
    def requests(self) -> int:
        return sum(s.requests for s in self.steps)

    @property
    def images(self) -> int:
        return sum(s.images for s in self.steps)

    def to_json(self) -> dict[str, Any]:
        def money(e: Expected | None) -> dict[str, float] | None:
            return None if e is None else {"low": round(e.low, 6), "expected": round(e.expected, 6),
                                           "high": round(e.high, 6)}

        return {
            "rows": self.rows,
            "requests": self.requests,
            "images": self.images,
            "cost_usd": money(self.total),
            "budget": self.budget,
            "spent_before": round(self.spent_before, 6),
            "unreadable_rows": self.unreadable,
            "steps": [
                {"name": s.name, "task": s.task, "provider": s.provider, "model": s.model, "rows": s.rows,
                 "requests": s.requests, "images": s.images, "cost_usd": money(s.cost) if s.priced else None,
                 "batch_cost_usd": money(s.batch), "failing_rows": s.failing,
                 "failure_example": s.failure_example, "already_done": s.already_done}
                for s in self.steps
            ],
            "notices": self.notices,
        }


def estimate(config: RunConfig, *, env: Mapping[str, str] | None = None) -> RunEstimate:
    """What `config` would send and cost. Raises `ConfigError` where the run itself would refuse to start."""
    notices: list[str] = []
    offline = _offline(config)
    # Deployments' keys are named by variables an estimate does not need set (it sends nothing).
    named = {d.api_key_env: PLACEHOLDER_KEY for step in config.steps for d in step.deployments if d.api_key_env}
    environment = {**_PLACEHOLDER_ENV, **named, **(os.environ if env is None else env)}
    plan = plan_run(offline, env=environment, notice=notices.append)  # the run's own checks; opens nothing
    done_rows, spent_before, notes = _journal_state(config, offline)
    notices += notes
    steps = [
        StepEstimate(s.config.name, s.config.task, s.config.model.provider, s.wire_model,
                     priced=expected_cost(s.spec, s.plan(_first_task(s.config)).params, 1) is not None,
                     fallbacks=len(s.fallbacks))
        for s in plan.steps
    ]
    result = RunEstimate(rows=0, steps=steps, budget=config.limits.max_cost, spent_before=spent_before,
                         notices=notices)
    for record in read_records(config.source, config.source_format):
        if config.limit is not None and record.index >= config.limit:
            break
        result.rows += 1
        if record.data is None:
            result.unreadable += 1
            continue
        _row(plan, steps, record.index, record.data, done_rows)
    for runtime, step in zip(plan.steps, steps, strict=True):
        step.batch = batch_cost(runtime.spec, step.cost) if step.priced else None
        # --batch (or a pipeline step's `batch: true`): the run pays the batch rate; online is the aside.
        if (config.batch or runtime.config.batch) and step.batch is not None:
            step.online, step.cost = step.cost, step.batch
        if step.fallbacks:
            notices.append(f"step {step.name!r}: {step.fallbacks} fallback model(s) are not counted: they are "
                           "paid only for rows the first model fails")
    return result


def _offline(config: RunConfig) -> RunConfig:
    """The configuration with a placeholder key where none is given: providers are built and checked as a run
    builds them, and nothing is started or sent."""
    return config.model_copy(update={"api_key": config.api_key or PLACEHOLDER_KEY})


def _journal_state(config: RunConfig, offline: RunConfig) -> tuple[dict[str, set[int]], float, list[str]]:
    """Rows already finished per step in RUNDIR (done, and failed unless --retry-failed), what RUNDIR has
    spent, and notes; empty when RUNDIR holds no run, or a configuration it would refuse, or --restart discards
    it. Steps that the configuration changes (or --restart-step names) are made again: none of their rows count."""
    from pixelmill.errors import ConfigError
    from pixelmill.reports.status import journal_path, open_journal

    if config.restart or not journal_path(config.output).is_file():
        return {}, 0.0, []
    journal = open_journal(config.output)
    try:
        try:
            binding = journal.plan_binding(offline.fingerprint(), offline.snapshot(), restart=False,
                                           restart_steps=config.restart_steps)
        except ConfigError as exc:
            return {}, 0.0, [f"{exc} Until then every row is counted."]
        done = _finished_rows(config, journal)
        for step in binding.steps:
            done.pop(step, None)
        spent = journal.spent()
    finally:
        journal.close()
    rows = max((len(v) for v in done.values()), default=0)
    notes = [f"{config.output} already holds this run: {rows} rows finished there are not counted "
             f"(${spent:.4f} spent so far)"] if rows else []
    return done, spent, notes


def _finished_rows(config: RunConfig, journal: Journal) -> dict[str, set[int]]:
    """Per step, the positions of the source rows whose results in RUNDIR are finished (done, and failed unless
    --retry-failed), found by identity as a run finds them, without writing to the journal."""
    finished = ("done", "failed") if not config.retry_failed else ("done",)
    used: set[int] = set()  # entries already given to an earlier identical row
    done: dict[str, set[int]] = {}
    chunk: list[Record] = []

    def look_up(records: list[Record]) -> None:
        identities = {RowIdentity.of(r, config.id_field).identity: r for r in records}
        entries: dict[tuple[str, str], list[int]] = {}
        marks = ",".join("?" * len(identities))
        for slot, identity, digest in journal.db.execute(
                f"SELECT row, identity, digest FROM records WHERE identity IN ({marks}) ORDER BY row",
                list(identities)):
            entries.setdefault((identity, digest), []).append(int(slot))
        for record in records:
            free = [s for s in entries.get((RowIdentity.of(record, config.id_field).identity, record.digest()), [])
                    if s not in used]
            if not free:
                continue
            used.add(free[0])
            for (step,) in journal.db.execute(
                    f"SELECT step FROM results WHERE row = ? AND status IN ({','.join('?' * len(finished))})",
                    (free[0], *finished)):
                done.setdefault(step, set()).add(record.index)

    for record in read_records(config.source, config.source_format):
        if config.limit is not None and record.index >= config.limit:
            break
        chunk.append(record)
        if len(chunk) >= 256:
            look_up(chunk)
            chunk = []
    if chunk:
        look_up(chunk)
    return done


def _first_task(step: StepConfig) -> str:
    return "generate" if step.task == "auto" else step.task


def _row(plan: RunPlan, steps: list[StepEstimate], index: int, data: dict[str, Any],
         done_rows: dict[str, set[int]]) -> None:
    """Count one row through every step; a step that would fail stops the row, as in a run."""
    outputs: dict[str, int] = {}  # output field -> images an earlier step gives this row
    for runtime, step in zip(plan.steps, steps, strict=True):
        config = runtime.config
        if index in done_rows.get(config.name, ()):
            step.already_done += 1
            outputs[config.out_field] = max(1, config.params.n or 1)
            continue
        try:
            made = _count_step(runtime, step, data, outputs)
        except (InputError, ConfigError) as exc:
            step.failing += 1
            if step.failure_example is None:
                step.failure_example = f"row {index}: {exc}"
            return
        outputs[config.out_field] = made


def _count_step(runtime: StepPlan, step: StepEstimate, data: dict[str, Any], outputs: dict[str, int]) -> int:
    """Add one row's requests, images and cost to `step`; returns the images it would make. The task and
    images follow `engine.inputs.gather_inputs` (counted, not loaded); the calls are the run's own plan of each
    turn (`StepPlan.turn_plan`)."""
    config = runtime.config
    spec = runtime.spec
    turns = user_turns(data, prompt_field=config.prompt_field, template=config.prompt)
    image_field = config.image_field or ("images" if config.task != "generate" else None)
    if image_field in outputs:  # an earlier step's output
        inputs = outputs[image_field]
    else:
        inputs = len(image_refs(data.get(image_field))) if image_field else 0
    inputs += len(turns[0].images)
    task = "edit" if inputs else "generate"
    if config.task == "edit" and not inputs:
        raise InputError(f"field {image_field!r} holds no image to edit")
    if config.task == "generate" and config.image_field is None:
        task, inputs = "generate", 0
    if spec.known and inputs > spec.max_input_images:
        raise InputError(f"{inputs} input images; {spec.name} takes at most {spec.max_input_images}")
    for t, turn in enumerate(turns):
        if len(turn.prompt) > spec.max_prompt_chars:
            raise InputError(f"prompt of turn {t + 1} has {len(turn.prompt)} characters; {spec.name} takes at "
                             f"most {spec.max_prompt_chars}")
    chat = bool(runtime.provider.chat)
    cost = ZERO
    requests = images = 0
    previous = 0
    history_chars = 0
    for t, turn in enumerate(turns):
        last = t == len(turns) - 1
        # Later turns edit the previous turn's image(s), plus any the turn adds.
        sent = inputs if t == 0 else previous + len(turn.images)
        _, plan = runtime.turn_plan(task, t, len(turns), sent)
        made = 0
        for params in plan.calls:
            n = images_per_call(params)
            # A chat sends the whole history again: earlier prompts and images are input tokens too.
            priced = expected_cost(spec, params, n, len(turn.prompt) + history_chars, sent)
            if priced is not None:
                cost = cost + priced
            requests += 1
            made += n
        if chat:
            history_chars += len(turn.prompt)
        previous = made
        if last:
            images += made
    step.rows += 1
    step.requests += requests
    step.images += images
    step.cost = step.cost + cost
    return images


# ---------------------------------------------------------------- what the user reads


def describe(result: RunEstimate, config: RunConfig) -> list[str]:
    """The estimate as lines of plain text."""
    lines = [f"estimate for {config.source} -> {config.output} (nothing was sent)"]
    header = ("step", "model", "rows", "requests", "images", "low", "expected", "at most")
    table = []
    for s in result.steps:
        money = (f"${s.cost.low:.4f}", f"${s.cost.expected:.4f}", f"${s.cost.high:.4f}") if s.priced else \
            ("?", "?", "?")
        table.append((s.name, f"{s.provider} {s.model}", str(s.rows), str(s.requests), str(s.images), *money))
    total = result.total
    if len(result.steps) > 1:
        table.append(("total", "", str(max((s.rows for s in result.steps), default=0)), str(result.requests),
                      str(result.images), f"${total.low:.4f}", f"${total.expected:.4f}", f"${total.high:.4f}"))
    widths = [max(len(r[i]) for r in [header, *table]) for i in range(len(header))]
    for r in [header, *table]:
        lines.append("  " + "  ".join(r[i].ljust(widths[i]) if i < 2 else r[i].rjust(widths[i])
                                      for i in range(len(header))))
    lines.append(f"{result.rows} rows in the source" + (f" (--limit {config.limit})" if config.limit else "")
                 + (f"; {result.unreadable} cannot be read" if result.unreadable else ""))
    for s in result.steps:
        if s.failing:
            lines.append(f"step {s.name!r}: {s.failing} rows would fail before sending; e.g. {s.failure_example}")
        if not s.priced:
            lines.append(f"step {s.name!r}: no price is known for {s.model}: add one with --models-file")
        if s.online is not None:
            lines.append(f"step {s.name!r}: priced at the batch rate (--batch); online it would cost about "
                         f"${s.online.expected:.4f}")
        elif s.batch is not None:
            lines.append(f"step {s.name!r}: the provider's batch API would cost about ${s.batch.expected:.4f} "
                         "(pixelmill sends online requests)")
    if result.budget is not None:
        lines.append(_budget_line(result))
    lines += [f"note: {n}" for n in result.notices]
    lines.append("low: every call at its cheapest outcome; expected: quality auto priced as high, prompts at "
                 "4 characters a token; at most: what --max-cost reserves per call")
    return lines


def _budget_line(result: RunEstimate) -> str:
    budget = result.budget or 0.0
    left = max(0.0, budget - result.spent_before)
    total = result.total
    spent = f" (${result.spent_before:.4f} spent already)" if result.spent_before else ""
    if total.high <= left:
        return f"--max-cost ${budget:.2f}{spent}: the whole run fits, even at most"
    if total.expected <= left:
        return (f"--max-cost ${budget:.2f}{spent}: the expected cost fits, but calls are sent only while their "
                f"most possible cost fits: the run may stop near the end")
    share = left / total.expected if total.expected else 0.0
    return (f"--max-cost ${budget:.2f}{spent}: about {share:.0%} of the run fits; it will stop there (exit 3) and "
            "resume when the budget is raised")
