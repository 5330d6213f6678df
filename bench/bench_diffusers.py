"""Local diffusers throughput: images per second through the provider against the pipeline called directly.

    .venv/bin/python -m bench.bench_diffusers                      # tiny random SD pipeline, CPU, < 2 minutes
    .venv/bin/python -m bench.bench_diffusers --model PATH --size 1024x1024 --steps 28 --images 64 --dtype bf16

For each batch size, the same images are made twice, in alternation, best of `--repeats`:
- direct: a loop over `pipe(prompt=[...batch...], generator=[one per image], output_type="pil")`, the way a
  diffusers user writes it (the PIL images are kept; nothing is saved);
- provider: `DiffusersProvider.call` once per row, with as many rows in flight as the provider asks for
  (`preferred_concurrency`, as the engine does), each answer a PNG in memory: batching, per-row generators,
  the refusal checks and PNG encoding included.
The figure is provider / direct images per second at the same batch size (target >= 0.95). Model loading is
outside both clocks (one warm-up call each). The device is printed with the results: on a machine with a GPU
the default device is the GPU (`--device cpu` to force the CPU).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.harness import Row

REPO = Path(__file__).resolve().parents[1]


def _device_words(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return f"{device} ({torch.cuda.get_device_name(int(device.split(':')[1]) if ':' in device else 0)})"
    model = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"cpu ({os.cpu_count()} cores, {model}; torch threads {torch.get_num_threads()})"


def _direct(pipe: Any, prompts: list[str], batch: int, kwargs: dict[str, Any]) -> float:
    """Seconds to make every prompt's image calling the pipeline in a loop, `batch` prompts a call."""
    import torch

    start = time.perf_counter()
    for i in range(0, len(prompts), batch):
        chunk = prompts[i:i + batch]
        generators = [torch.Generator("cpu").manual_seed(1000 + i + j) for j in range(len(chunk))]
        images = pipe(prompt=chunk, generator=generators, output_type="pil", **kwargs).images
        assert len(images) == len(chunk)
    _sync()
    return time.perf_counter() - start


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


async def _through_provider(provider: Any, spec: Any, params: dict[str, Any], model: str,
                            prompts: list[str]) -> float:
    from pixelmill.providers.base import ImageRequest

    slots = asyncio.Semaphore(provider.preferred_concurrency)

    async def row(i: int, prompt: str) -> None:
        async with slots:
            request = ImageRequest(task="generate", model=model, prompt=prompt,
                                   params={**params, "seed": 1000 + i}, row=i)
            result = await provider.call(request, spec)
            assert len(result.images) == 1

    start = time.perf_counter()
    await asyncio.gather(*[row(i, p) for i, p in enumerate(prompts)])
    return time.perf_counter() - start


async def _alternate(model: str, options: dict[str, Any], wire: dict[str, Any], pipe: Any, batch: int,
                     kwargs: dict[str, Any], prompts: list[str], repeats: int
                     ) -> tuple[list[float], list[float], int, list[float]]:
    """Direct and provider runs in alternation (the machine's drift hits both alike): their times, the
    provider's pipeline calls in one run, and the share of each provider run its device spent in the
    pipeline (what the provider adds around the pipeline is the rest)."""
    from pixelmill.params import ImageParams
    from pixelmill.providers.base import ProviderSettings
    from pixelmill.providers.diffusers.provider import DiffusersProvider

    provider = DiffusersProvider(ProviderSettings(options=options), {})
    direct: list[float] = []
    through: list[float] = []
    busy: list[float] = []
    try:
        spec = provider.spec_for(model)
        params = dict(provider.plan(spec, ImageParams(**wire), "generate").params)
        await _through_provider(provider, spec, params, model, prompts[:1])  # load + warm up
        for _ in range(repeats):
            direct.append(_direct(pipe, prompts, batch, kwargs))
            before, busy_before = provider.pipeline_calls, provider.busy_seconds
            through.append(await _through_provider(provider, spec, params, model, prompts))
            calls = provider.pipeline_calls - before
            busy.append((provider.busy_seconds - busy_before) / through[-1])
        return direct, through, calls, busy
    finally:
        await provider.aclose()


def run(model: str | None = None, *, batch_sizes: tuple[int, ...] = (1, 2, 4, 8), images: int = 32,
        size: str = "64x64", steps: int = 4, dtype: str = "auto", device: str = "auto",
        repeats: int = 3) -> list[Row]:
    import torch

    from pixelmill.providers.diffusers.families import inspect_model
    from pixelmill.providers.diffusers.loader import load_copy
    from pixelmill.providers.diffusers.options import device_list, parse_options

    workdir = Path(tempfile.mkdtemp(prefix="pixelmill-bench-diffusers-"))
    if model is None:
        sys.path.insert(0, str(REPO))
        from tests.tiny_pipelines import build_sd

        model = str(build_sd(workdir / "tiny-sd"))
    cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    target = device_list(device if device != "auto" else "auto", cuda, False)[0]
    local = inspect_model(model)
    # The direct pipeline is loaded as the provider loads its copy (same class, dtype and device).
    pipe = load_copy(local, target, parse_options({"dtype": dtype})).base
    width, height = (int(v) for v in size.split("x"))
    kwargs = {"width": width, "height": height, "num_inference_steps": steps}
    prompts = [f"benchmark prompt {i}: a small red house by a lake" for i in range(images)]
    _direct(pipe, prompts[:2], 2, kwargs)  # warm up
    words = _device_words(target)
    rows: list[Row] = []
    for batch in batch_sizes:
        options = {"batch_size": batch, "devices": target, "dtype": dtype}
        direct_times, provider_times, calls, busy = asyncio.run(_alternate(
            model, options, {"size": size, "steps": steps}, pipe, batch, kwargs, prompts, repeats))
        direct_ips = images / min(direct_times)
        provider_ips = images / min(provider_times)
        ratio = provider_ips / direct_ips
        rows.append(Row("diffusers", f"batch {batch}", round(ratio, 3), "provider/direct", ">= 0.95",
                        ratio >= 0.95, {
                            "device": words, "model": local.describe(), "size": size, "steps": steps,
                            "images": images, "direct_images_per_s": round(direct_ips, 2),
                            "provider_images_per_s": round(provider_ips, 2),
                            "direct_s": [round(t, 3) for t in direct_times],
                            "provider_s": [round(t, 3) for t in provider_times],
                            "provider_pipeline_calls": calls,
                            "device_busy": round(max(busy), 3),
                            "spread_direct": round(statistics.pstdev(direct_times), 3),
                        }))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="a diffusers model folder or hub id (default: a tiny random SD pipeline)")
    parser.add_argument("--batch-sizes", default="1,2,4,8")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--size", default="64x64")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--device", default="auto", help="auto (the first GPU, else the CPU), cuda:N or cpu")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    rows = run(args.model, batch_sizes=tuple(int(b) for b in args.batch_sizes.split(",")), images=args.images,
               size=args.size, steps=args.steps, dtype=args.dtype, device=args.device, repeats=args.repeats)
    print(f"device: {rows[0].details['device']}")
    print(f"model: {rows[0].details['model']}, {args.size}, {args.steps} steps, {args.images} images a run")
    print(f"{'batch':>5}  {'direct img/s':>12}  {'provider img/s':>14}  {'ratio':>6}  {'calls':>5}  {'busy':>5}  "
          "target")
    for row in rows:
        d = row.details
        verdict = "ok" if row.ok else "BELOW"
        print(f"{row.case.split()[1]:>5}  {d['direct_images_per_s']:>12.2f}  {d['provider_images_per_s']:>14.2f}  "
              f"{row.figure:>6.3f}  {d['provider_pipeline_calls']:>5}  {d['device_busy']:>5.3f}  "
              f"{row.target} {verdict}")
    print("busy: the share of the provider's wall time its device spent inside pipeline calls (best run)")
    print(f"({time.perf_counter() - started:.0f} s)")
    return 0 if all(row.ok for row in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
