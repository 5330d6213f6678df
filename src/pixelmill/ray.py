"""`pixelmill.ray`: one pixelmill step over a Ray Data `Dataset` (extra `pixelmill[ray]`).

```python
import ray, pixelmill.ray

ds = ray.data.read_parquet("s3://bucket/prompts/")           # rows with a `prompt` column, as the CLI reads them
out = pixelmill.ray.map_dataset(ds, provider="diffusers", model="black-forest-labs/FLUX.1-schnell",
                                concurrency=8, num_gpus=1, steps=4, size="1024x1024", seed=7)
out.write_parquet("s3://bucket/images/")   # the rows, plus `images` (PNG bytes), `pixelmill`, `pixelmill_status`
```

`map_dataset` is Ray Data's `map_batches` with an actor pool (`concurrency` actors, each taking `num_gpus` /
`num_cpus` / `resources`): each actor (`Step`) builds the step's provider once (a local model loads once per
actor and stays) and runs every batch through pixelmill's own engine on it, so a batch gets what a run gets:
prompt templates and fields, input images, parameters checked for the model, retries with backoff, rate limits
learned from 429s, the local model's batching and per-image seeds. It returns the batch's rows unchanged plus:
- the output field (`images` for generate, `output_image` for edit, or `output_field=`): the images' bytes;
- `pixelmill`: the row's `pixelmill` object as a JSON string (as in Parquet output: provider, model,
  parameters, usage, cost, error, ...);
- `pixelmill_status`: "done" or "failed" (a bad row fails that row, never the batch), and `pixelmill_error`:
  the failure's message, or null.

What it is not: a run. There is no journal and no run directory (each batch runs in a scratch folder on the
actor's node that is removed afterwards), so nothing resumes: a Ray Data job that fails or is stopped sends its
rows again, and an API provider bills them again. Limits (`concurrency_per_actor` becomes `--concurrency`,
`rpm`, `ipm`) hold per actor, not for the whole dataset, and `max_cost` is refused (no budget can be kept
without a journal). For a resumable run with one budget and one rate limit across a cluster, use the command
line or `pixelmill.generate` with `--ray`.

Keys: an API provider reads its key from the environment of the node the actor runs on (set it there, or pass
`runtime_env={"env_vars": {...}}`, or `api_key=`: both travel in the job's definition, visible to whoever can
see the cluster's jobs). Input images given as paths must be visible at the same path on every node (a path
relative to the driver's working directory resolves against it); URLs and data URLs work anywhere.
A fatal error (a wrong key, an exhausted quota, a model that cannot load) raises in the actor: Ray Data stops
the job with it.

A row's image does not depend on which actor made it for a local model given `seed=` (each image of a row
seeded `seed + i`). Without a seed, one is derived from the row's prompt and its index in its batch, which
depends on how Ray Data cut the blocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shutil
import tempfile
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import orjson

from pixelmill.engine.plan import RunPlan, plan_run
from pixelmill.engine.runner import Runner
from pixelmill.errors import ConfigError, FatalError
from pixelmill.options import build_config, job_options
from pixelmill.reading.memory import spool_path, write_spool
from pixelmill.writing.journal import Journal
from pixelmill.writing.output import OutputCounts, output_rows

if TYPE_CHECKING:
    import pyarrow
    import ray.data

__all__ = ["ERROR_COLUMN", "STATUS_COLUMN", "Step", "map_dataset"]

STATUS_COLUMN = "pixelmill_status"
ERROR_COLUMN = "pixelmill_error"
T = TypeVar("T")


def map_dataset(
    dataset: ray.data.Dataset,
    task: Literal["generate", "edit"] = "generate",
    *,
    concurrency: int = 1,
    batch_size: int = 16,
    num_gpus: float | None = None,
    num_cpus: float | None = None,
    resources: dict[str, float] | None = None,
    runtime_env: dict[str, Any] | None = None,
    concurrency_per_actor: int | None = None,
    **options: Any,
) -> ray.data.Dataset:
    """`dataset`'s rows through one pixelmill step (`task`), on `concurrency` actors (see the module docstring).

    `options` are the keyword arguments of `pixelmill.generate` / `pixelmill.edit` (provider, model, size,
    steps, seed, prompt_field, prompt_template, image_field, output_field, param, rpm, max_retries, ...);
    `output`, `format`, `embed_images`, `limit`, `max_cost` and the run options (`restart`, `retry_failed`,
    `ray`, ...) do not apply. A local model (`provider="diffusers"`) takes one GPU per actor unless `num_gpus`,
    `num_cpus` or `resources` say otherwise (`resources={"gpu_slot": 1}` and `param={"devices": "cpu"}` for
    CPU nodes). Raises `ConfigError` (or `TypeError` for an unknown option) before anything starts.
    """
    for name in ("output", "format", "embed_images", "limit", "max_cost", "restart", "restart_step",
                 "retry_failed", "batch", "detach", "progress", "ray"):
        if options.get(name) not in (None, False, [], ()):
            why = ("no journal keeps a budget across a map: use pixelmill.generate(..., ray=True)"
                   if name == "max_cost" else "a map returns its rows and keeps no run directory")
            raise ConfigError(f"map_dataset does not take {name!r}: {why}")
    if concurrency_per_actor is not None:
        options["concurrency"] = concurrency_per_actor
    build_config(task, Path("rows"), job_options(**options), input_dir=Path.cwd())  # fails here, not per actor
    local = options.get("provider") == "diffusers"
    if local and num_gpus is None and num_cpus is None and not resources:
        num_gpus = 1  # one model copy per GPU
    wants: dict[str, Any] = {}
    for key, value in (("num_gpus", num_gpus), ("num_cpus", num_cpus), ("resources", resources),
                       ("runtime_env", runtime_env)):
        if value is not None:
            wants[key] = value
    return dataset.map_batches(
        Step, batch_size=batch_size, batch_format="pyarrow", concurrency=concurrency,
        fn_constructor_kwargs={"task": task, "options": options, "input_dir": str(Path.cwd())}, **wants)


class Step:
    """A Ray Data actor: one pixelmill step, its provider built once, run on each batch it is given.

    Usable directly as `ds.map_batches(Step, fn_constructor_kwargs={"task": ..., "options": {...}},
    batch_format="pyarrow", concurrency=N)`; `map_dataset` does that with checks and defaults."""

    def __init__(self, task: str, options: dict[str, Any], input_dir: str | None = None) -> None:
        self._scratch = Path(tempfile.mkdtemp(prefix="pixelmill-ray-"))
        base = input_dir or str(Path.cwd())
        opts = job_options(**{**options, "output": self._scratch / "run"})
        self.config = build_config(task, self._scratch / "rows", opts, input_dir=Path(base))
        self._batches = 0
        # One event loop for the actor's life: the providers' connections and a local model's batcher live on it.
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="pixelmill-step", daemon=True)
        self._thread.start()
        self.plan = _Kept.of(self._wait(_plan(self.config)))  # providers built once (ConfigError: nothing sent)

    def __call__(self, batch: pyarrow.Table) -> pyarrow.Table:
        self._batches += 1
        rundir = self._scratch / f"batch-{self._batches}"
        try:
            return self._wait(self._run(batch, rundir))
        finally:
            shutil.rmtree(rundir, ignore_errors=True)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # the actor is going: its providers close, its scratch folder goes
            self._wait(RunPlan.aclose(self.plan), timeout=30.0)
            self._loop.call_soon_threadsafe(self._loop.stop)
        shutil.rmtree(self._scratch, ignore_errors=True)

    def _wait(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _run(self, batch: pyarrow.Table, rundir: Path) -> pyarrow.Table:
        import pyarrow as pa

        out_field = self.config.steps[0].out_field
        if out_field in batch.column_names:
            raise ConfigError(f"output_field {out_field!r} is a column of the dataset: choose another name")
        source = spool_path(rundir, "table")
        await asyncio.to_thread(write_spool, batch, "table", source)
        config = self.config.model_copy(update={"output": rundir, "source": source, "source_format": None})
        outcome = await Runner(config, self.plan).run()
        if outcome.aborted is not None:
            raise FatalError(f"pixelmill stopped on a batch: {outcome.aborted}")
        images: list[list[bytes]] = []
        objects: list[str] = []
        statuses: list[str] = []
        errors: list[str | None] = []
        journal = Journal.open(rundir)
        try:
            for row in output_rows(config, journal, OutputCounts()):
                obj = row["pixelmill"]
                images.append([(rundir / path).read_bytes() for path in row.get(out_field) or []])
                objects.append(orjson.dumps(obj).decode())
                statuses.append(str(obj.get("status", "failed")))
                error = obj.get("error")
                errors.append(str(error.get("message")) if isinstance(error, dict) else None)
        finally:
            journal.close()
        if len(images) != batch.num_rows:  # one output row per input row is the output's contract
            raise AssertionError(f"{len(images)} output rows for {batch.num_rows} input rows")
        return (batch.append_column(out_field, pa.array(images, type=pa.list_(pa.binary())))
                .append_column("pixelmill", pa.array(objects, type=pa.string()))
                .append_column(STATUS_COLUMN, pa.array(statuses, type=pa.string()))
                .append_column(ERROR_COLUMN, pa.array(errors, type=pa.string())))


async def _plan(config: Any) -> RunPlan:
    return plan_run(config, env=os.environ)


@dataclasses.dataclass(slots=True)
class _Kept(RunPlan):
    """The step's plan with its providers kept open between batches (a run closes them at its end); they close
    with the actor."""

    @classmethod
    def of(cls, plan: RunPlan) -> _Kept:
        return cls(**{f.name: getattr(plan, f.name) for f in dataclasses.fields(plan)})

    async def aclose(self) -> None:
        return None
