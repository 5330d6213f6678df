"""Benchmark 3: client CPU per image, for ~1 MB images.

The emulator pads every PNG to about `image_bytes` bytes (an ancillary chunk: real bytes to download, parse,
base64-decode and write). Client CPU = user + sys of the measured client process over the `generate` command
(start-up and the one-off imports excluded; both reported), divided by the images made. The same run with
small images (~20 KB) gives the per-request part that does not grow with the image; micro-benchmarks on one
real answer body split the per-MB part into JSON parsing, base64 decoding and the file write
(`ImageStore.write`, the engine's own code path).
"""

from __future__ import annotations

import statistics
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import orjson
import pybase64

from bench.emulator import EmulatorProcess
from bench.harness import Row, client_command, run_client, write_prompts

TARGET_MS = 5.0
IMAGE_BYTES = 1_000_000


def run(workdir: Path, n: int, *, concurrency: int = 16, profile: bool = False) -> list[Row]:
    rows = []
    with EmulatorProcess(latency=0.0, seed=0) as emu:
        small = _measure(emu, workdir, n, concurrency, None, profile)
        big = _measure(emu, workdir, n, concurrency, IMAGE_BYTES, profile)
        micro = micro_benchmarks(fetch_answer(emu.openai_url), workdir)
    per_image = big["cpu_ms_per_image"]
    rows.append(Row(
        bench="cpu", case=f"~1 MB images, N={n} C={concurrency}", figure=round(per_image, 2), unit="ms CPU / image",
        target=f"<= {TARGET_MS}", ok=per_image <= TARGET_MS,
        details={**big, "small_images": small, "micro_ms": micro,
                 "size_dependent_ms_per_image": round(per_image - small["cpu_ms_per_image"], 3),
                 "share_base64": round(micro["base64_decode"] / per_image, 3),
                 "share_file_write": round(micro["image_store_write"] / per_image, 3),
                 "share_json_parse": round(micro["json_parse"] / per_image, 3)},
    ))
    return rows


def _measure(emu: EmulatorProcess, workdir: Path, n: int, concurrency: int, image_bytes: int | None,
             profile: bool) -> dict[str, float]:
    emu.configure(image_bytes=image_bytes)
    emu.warm(prompts=150)
    tag = f"cpu-{'1mb' if image_bytes else 'small'}-n{n}"
    prompts = write_prompts(workdir / f"{tag}.jsonl", n, tag)
    client = run_client(workdir, client_command(prompts, workdir / tag, emu.openai_url, "--concurrency",
                                                str(concurrency)), name=tag, profile=profile)
    log = [r for r in emu.log() if r.endpoint == "generations" and r.status == 200]
    report = client.report
    images = len(log)
    return {
        "images": images, "exit_code": client.exit_code,
        "answer_bytes_mean": round(statistics.fmean(r.bytes_out for r in log)),
        "cpu_ms_per_image": 1000 * report["command_cpu_s"] / max(1, images),
        # The same with the one-off imports of the engine and aiohttp (about 0.6 s per process) spread over
        # this run's images: what a short run really pays per image.
        "cpu_ms_per_image_with_imports": round(1000 * (report["command_cpu_s"] + report["import_cpu_s"])
                                               / max(1, images), 3),
        "import_cpu_s": round(report["import_cpu_s"], 3),
        "user_ms_per_image": round(1000 * report["command_user_s"] / max(1, images), 3),
        "sys_ms_per_image": round(1000 * report["command_sys_s"] / max(1, images), 3),
        "client_cpu_s": round(report["command_cpu_s"], 3), "client_wall_s": round(report["command_wall_s"], 3),
        "client_peak_rss_mb": round(report["peak_rss_mb"], 1),
    }


def fetch_answer(openai_url: str) -> bytes:
    """One real answer body, as the client receives it."""
    body = orjson.dumps({"model": "gpt-image-2", "prompt": "cpu micro-benchmark"})
    request = urllib.request.Request(openai_url + "/images/generations", data=body, method="POST",
                                     headers={"Content-Type": "application/json",
                                              "Authorization": "Bearer sk-test-bench"})
    with urllib.request.urlopen(request, timeout=60) as answer:
        return bytes(answer.read())


def micro_benchmarks(answer: bytes, workdir: Path, repeat: int = 30) -> dict[str, float]:
    """Median milliseconds of each per-image step on the same bytes the client gets."""
    from pixelmill.providers.http import decode_base64
    from pixelmill.writing.store import ImageStore

    parsed = orjson.loads(answer)
    text = parsed["data"][0]["b64_json"]
    image = decode_base64(text, label="bench")
    out: dict[str, float] = {"answer_mb": round(len(answer) / 1e6, 3), "image_mb": round(len(image) / 1e6, 3)}
    out["json_parse"] = _median_ms(lambda: orjson.loads(answer), repeat)
    out["base64_decode"] = _median_ms(lambda: decode_base64(text, label="bench"), repeat)
    out["base64_decode_stdlib"] = _median_ms(lambda: __import__("base64").b64decode(text, validate=True), repeat)
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        store = ImageStore(Path(tmp))
        counter = iter(range(10**9))
        out["image_store_write"] = _median_ms(lambda: store.write(f"bench/k_{next(counter)}", image), repeat)
    out["pybase64_encode"] = _median_ms(lambda: pybase64.b64encode(image), repeat)
    return {k: round(v, 4) for k, v in out.items()}


def _median_ms(fn: Callable[[], object], repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)
