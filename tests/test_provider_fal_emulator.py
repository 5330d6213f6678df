"""The fal provider against the emulator's fal queue (`pixelmill.testing`): every model generates, Kontext edits,
refusals, failed jobs, every error, expiry, cancel, and the key never sent to a media URL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from pixelmill.errors import (
    AuthError,
    ModelUnavailable,
    QuotaExhausted,
    Refused,
    Rejected,
    ResultLost,
    TransientError,
)
from pixelmill.models.table import builtin_table
from pixelmill.params import ImageParams
from pixelmill.providers.base import ImageRequest, InputImage, JobHandle, JobStatus, ProviderSettings, Task
from pixelmill.providers.fal.params import plan_fal
from pixelmill.providers.fal.provider import FalProvider
from pixelmill.testing import Emulator, EmulatorConfig
from tests.job_servers import PNG

KEY = "fal-emu-key-id:fal-emu-secret-31415926"


@pytest.fixture
async def emu() -> AsyncIterator[Emulator]:
    async with Emulator(EmulatorConfig(job_latency=0.05)) as emulator:
        yield emulator


@pytest.fixture
async def fal(emu: Emulator) -> AsyncIterator[FalProvider]:
    provider = FalProvider(ProviderSettings(base_url=emu.jobs_base_url), {"FAL_KEY": KEY})
    yield provider
    await provider.aclose()


def request(model: str, prompt: str = "a red bicycle", task: Task = "generate", images: list[InputImage] | None = None,
            **params: Any) -> ImageRequest:
    spec = builtin_table().get(model)
    assert spec is not None
    wire = plan_fal(spec, ImageParams(**params), task).params
    return ImageRequest(task=task, model=model, prompt=prompt, params=wire, images=images or [], timeout=10.0)


async def finish(fal: FalProvider, handle: JobHandle, model: str) -> JobStatus:
    spec = fal.spec_for(model)
    for _ in range(200):
        status = await fal.poll(handle, spec)
        if status.state != "pending":
            return status
        await asyncio.sleep(0.02)
    raise AssertionError("the job did not end")


async def run(fal: FalProvider, req: ImageRequest) -> JobStatus:
    return await finish(fal, await fal.submit(req, fal.spec_for(req.model)), req.model)


@pytest.mark.parametrize(("model", "params"), [
    ("fal-ai/flux/schnell", {"size": "512x512", "steps": 4, "seed": 3}),
    ("fal-ai/flux/dev", {"aspect_ratio": "16:9", "n": 2, "guidance_scale": 3.5}),
    ("fal-ai/flux-pro/v1.1", {"aspect_ratio": "3:4", "extra": {"safety_tolerance": 2}}),
    ("fal-ai/flux-pro/v1.1-ultra", {"aspect_ratio": "21:9", "output_format": "png"}),
    ("fal-ai/fast-lightning-sdxl", {"steps": 4, "output_format": "png"}),
])
async def test_every_model_generates_and_media_never_get_the_key(fal: FalProvider, emu: Emulator, model: str,
                                                                 params: dict[str, Any]) -> None:
    status = await run(fal, request(model, **params))
    assert status.state == "done" and status.result is not None, status.error
    assert len(status.result.images) == int(params.get("n", 1))
    assert all(image.mime in ("image/png", "image/jpeg") for image in status.result.images)
    assert status.result.extra.get("emulated")
    assert emu.count(family="fal", endpoint="media") == len(status.result.images)
    assert emu.records(endpoint="media", key_sent=True) == []
    assert emu.submits("fal") == {"a red bicycle": 1}


async def test_kontext_edits_an_inline_image(fal: FalProvider, emu: Emulator) -> None:
    image = InputImage(PNG, "image/png", "in.png", 16, 12)
    status = await run(fal, request("fal-ai/flux-pro/kontext", "make it blue", "edit", [image], aspect_ratio="4:3"))
    assert status.state == "done" and status.result is not None
    assert emu.records(endpoint="submit")[0].input_images == 1


@pytest.mark.parametrize(("marker", "kind", "words"), [
    ("moderation", Refused, "flagged every image"),
    ("prompt_blocked", Refused, "flagged every image"),
    ("job_failed", TransientError, "failed on fal's side (runner_disconnected)"),
])
async def test_jobs_refused_or_failed_on_the_emulator(fal: FalProvider, marker: str, kind: type,
                                                      words: str) -> None:
    status = await run(fal, request("fal-ai/flux/dev", f"x [[fault:{marker}]]"))
    assert status.state == "failed" and type(status.error) is kind and words in str(status.error)


@pytest.mark.parametrize(("model", "prompt", "params", "kind", "words"), [
    ("fal-ai/flux/dev", "x [[fault:quota]]", {}, QuotaExhausted, "add credit"),
    ("fal-ai/flux/dev", "x [[fault:unavailable]]", {}, TransientError, "runner_scheduling_failure"),
    ("fal-ai/no-such-model", "x", {}, ModelUnavailable, "No fal endpoint named fal-ai/no-such-model"),
    ("fal-ai/flux-pro/v1.1-ultra", "x", {"aspect_ratio": "5:1"}, Rejected, "(field aspect_ratio)"),
])
async def test_submit_errors_on_the_emulator(fal: FalProvider, model: str, prompt: str, params: dict[str, str],
                                             kind: type, words: str) -> None:
    spec = fal.spec_for(model)
    req = ImageRequest(task="generate", model=model, prompt=prompt, params=params, timeout=10.0)
    with pytest.raises(kind) as caught:
        await fal.submit(req, spec)
    assert words in str(caught.value)


async def test_a_wrong_key_stops_the_run(emu: Emulator) -> None:
    emu.configure(api_keys=frozenset({"the-right-key"}))
    fal = FalProvider(ProviderSettings(base_url=emu.jobs_base_url), {"FAL_KEY": "a-wrong-key-123456"})
    try:
        with pytest.raises(AuthError, match="set FAL_KEY"):
            await fal.submit(request("fal-ai/flux/dev"), fal.spec_for("fal-ai/flux/dev"))
    finally:
        await fal.aclose()


async def test_an_expired_result_is_lost_and_not_submitted_again(fal: FalProvider, emu: Emulator) -> None:
    emu.configure(job_latency=0, retention_scale=0.0002)  # results kept 0.72 s
    req = request("fal-ai/flux/dev", "expires")
    handle = await fal.submit(req, fal.spec_for(req.model))
    # The handle as the journal keeps it; the process is gone for longer than the result lives.
    journaled = JobHandle.from_json(handle.as_json())
    await asyncio.sleep(1.0)
    status = await finish(fal, journaled, req.model)
    assert isinstance(status.error, ResultLost) and "--retry-failed pays" in str(status.error)
    assert emu.submits("fal") == {"expires": 1}


async def test_cancel_on_the_emulator(fal: FalProvider, emu: Emulator) -> None:
    emu.configure(job_latency=5.0)
    spec = fal.spec_for("fal-ai/flux/dev")
    handle = await fal.submit(request("fal-ai/flux/dev"), spec)
    assert await fal.cancel(handle, spec) in ("cancelled", "requested")
    assert await fal.cancel(JobHandle("nope", {"cancel": handle.urls["cancel"].replace(handle.id, "nope")}),
                            spec) == "not_found"
