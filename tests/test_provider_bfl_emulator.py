"""The BFL provider against the emulator's BFL API (`pixelmill.testing`): generate and edit, a polling URL on a
sibling host (with the key) and on a foreign one (not followed), moderation, failed and lost tasks, expiry, the
active-task limit, credits, reported cost, and the key never sent to a media URL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import pytest

from pixelmill.errors import AuthError, QuotaExhausted, RateLimited, Refused, Rejected, ResultLost, TransientError
from pixelmill.models.table import builtin_table
from pixelmill.params import ImageParams
from pixelmill.providers.base import ImageRequest, InputImage, JobHandle, JobStatus, ProviderSettings, Task
from pixelmill.providers.bfl.params import plan_bfl
from pixelmill.providers.bfl.provider import BflProvider
from pixelmill.testing import Emulator, EmulatorConfig
from tests.job_servers import PNG

KEY = "bfl_emu-key-2718281828"


@pytest.fixture
async def emu() -> AsyncIterator[Emulator]:
    async with Emulator(EmulatorConfig(job_latency=0.05)) as emulator:
        yield emulator


@pytest.fixture
async def bfl(emu: Emulator) -> AsyncIterator[BflProvider]:
    provider = BflProvider(ProviderSettings(base_url=emu.jobs_base_url), {"BFL_API_KEY": KEY})
    yield provider
    await provider.aclose()


def request(model: str = "flux-pro-1.1", prompt: str = "a red bicycle", task: Task = "generate",
            images: list[InputImage] | None = None, **params: Any) -> ImageRequest:
    spec = builtin_table().get(model)
    assert spec is not None
    wire = plan_bfl(spec, ImageParams(**params), task).params
    return ImageRequest(task=task, model=model, prompt=prompt, params=wire, images=images or [], timeout=10.0)


async def finish(bfl: BflProvider, handle: JobHandle, model: str) -> JobStatus:
    spec = bfl.spec_for(model)
    for _ in range(200):
        status = await bfl.poll(handle, spec)
        if status.state != "pending":
            return status
        await asyncio.sleep(0.02)
    raise AssertionError("the task did not end")


async def run(bfl: BflProvider, req: ImageRequest) -> tuple[JobHandle, JobStatus]:
    handle = await bfl.submit(req, bfl.spec_for(req.model))
    return handle, await finish(bfl, handle, req.model)


@pytest.mark.parametrize(("model", "params", "cost"), [
    ("flux-pro-1.1", {"size": "1024x768", "seed": 7}, 0.04),
    ("flux-pro-1.1-ultra", {"aspect_ratio": "16:9", "output_format": "png"}, 0.06),
    ("flux-kontext-pro", {"aspect_ratio": "1:1"}, 0.04),
    ("flux-2-pro", {"size": "1024x1024", "extra": {"safety_tolerance": 2}}, 0.03),
    ("flux-dev", {"steps": 20, "guidance_scale": 3.0}, 0.025),
])
async def test_every_model_generates_polling_a_sibling_host(bfl: BflProvider, emu: Emulator, model: str,
                                                            params: dict[str, Any], cost: float) -> None:
    handle, status = await run(bfl, request(model, **params))
    assert status.state == "done" and status.result is not None, status.error
    assert urlsplit(handle.urls["polling"]).hostname == "localhost"  # the emulator's sibling of 127.0.0.1
    assert status.result.usage == {"cost_usd": pytest.approx(cost)}  # the submit's `cost`, in credits
    assert emu.count(family="bfl", endpoint="status") >= 1
    assert all(r.key_sent for r in emu.records(family="bfl", endpoint="status"))
    assert emu.records(endpoint="media", key_sent=True) == [] and emu.count(endpoint="media") == 1


async def test_edits_send_the_input_images(bfl: BflProvider, emu: Emulator) -> None:
    image = InputImage(PNG, "image/png", "in.png", 16, 12)
    _, status = await run(bfl, request("flux-kontext-pro", "bluer", "edit", [image]))
    assert status.state == "done"
    _, status = await run(bfl, request("flux-2-pro", "bluer", "edit", [image, image]))
    assert status.state == "done" and status.result is not None
    assert [r.input_images for r in emu.records(endpoint="submit")] == [1, 2]


@pytest.mark.parametrize(("marker", "kind", "reason"), [
    ("prompt_blocked", Refused, "request_moderated"),
    ("moderation", Refused, "content_moderated"),
    ("job_failed", TransientError, None),
])
async def test_tasks_that_end_badly(bfl: BflProvider, marker: str, kind: type, reason: str | None) -> None:
    _, status = await run(bfl, request(prompt=f"x [[fault:{marker}]]"))
    assert status.state == "failed" and type(status.error) is kind
    assert getattr(status.error, "reason", None) == reason


async def test_submit_errors(bfl: BflProvider, emu: Emulator) -> None:
    spec = bfl.spec_for("flux-pro-1.1")
    with pytest.raises(QuotaExhausted):
        await bfl.submit(request(prompt="x [[fault:quota]]"), spec)
    with pytest.raises(Rejected, match="field width"):
        await bfl.submit(ImageRequest("generate", "flux-pro-1.1", "x", {"width": 1000}), spec)
    emu.configure(job_latency=30, bfl_active_limit=1)
    await bfl.submit(request(prompt="first"), spec)
    with pytest.raises(RateLimited) as caught:
        await bfl.submit(request(prompt="second"), spec)
    assert caught.value.retry_after == 5.0 and "Lower --concurrency" in str(caught.value)
    emu.configure(api_keys=frozenset({"another-key"}))
    with pytest.raises(AuthError):
        await bfl.submit(request(prompt="third"), spec)


async def test_an_expired_sample_or_a_forgotten_task_is_a_lost_result(bfl: BflProvider, emu: Emulator) -> None:
    emu.configure(job_latency=0, retention_scale=0.0005)  # samples kept 0.3 s
    req = request(prompt="soon gone")
    handle = await bfl.submit(req, bfl.spec_for(req.model))
    await asyncio.sleep(0.5)
    status = await finish(bfl, JobHandle.from_json(handle.as_json()), req.model)
    assert isinstance(status.error, ResultLost) and "sample URL has expired" in str(status.error)
    assert emu.submits("bfl") == {"soon gone": 1}
    emu.reset_log()  # the emulator forgets its tasks
    old = JobHandle.from_json({**handle.as_json(), "submitted": handle.submitted - 3600})
    status = await finish(bfl, old, req.model)
    assert isinstance(status.error, ResultLost) and "no longer knows it" in str(status.error)


async def test_a_polling_url_on_a_foreign_host_is_not_followed(bfl: BflProvider, emu: Emulator) -> None:
    emu.configure(bfl_polling_host="polls.example")
    req = request(prompt="elsewhere")
    handle, status = await run(bfl, req)
    assert urlsplit(handle.urls["polling"]).hostname == "polls.example"
    assert isinstance(status.error, ResultLost) and "does not send the key there" in str(status.error)
    assert emu.count(family="bfl", endpoint="status") == 0
