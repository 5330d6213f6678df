"""The Replicate provider against the emulator's Replicate routes (pixelmill.testing), over real loopback HTTP:
generate, edit, each end state, each error, the removal of outputs after retention, and the recovery by listing
of a create whose answer was lost after the emulator made the prediction (counted by the emulator's submits)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from pixelmill.errors import (
    AuthError,
    ModelUnavailable,
    ProviderError,
    QuotaExhausted,
    Refused,
    Rejected,
    ResultLost,
    TransientError,
    UnknownOutcome,
)
from pixelmill.models.table import ModelSpec
from pixelmill.providers.base import ImageRequest, InputImage, JobHandle, JobStatus, ProviderSettings
from pixelmill.providers.replicate.provider import ReplicateProvider
from pixelmill.testing import Emulator
from tests.reliability.hostile_servers import png_bytes

KEY = "r8_emulated-0123456789abcdef"
SCHNELL, DEV, PRO = ("black-forest-labs/flux-schnell", "black-forest-labs/flux-dev", "black-forest-labs/flux-1.1-pro")


@pytest.fixture
async def provider(emulator: Emulator) -> AsyncIterator[ReplicateProvider]:
    made = ReplicateProvider(ProviderSettings(base_url=emulator.url, options={"prefer_wait": 1}),
                             {"REPLICATE_API_TOKEN": KEY})
    yield made
    await made.aclose()


def ask(model: str, prompt: str, task: str = "generate", images: list[InputImage] | None = None,
        **params: Any) -> ImageRequest:
    return ImageRequest(task, model, prompt, dict(params), images=images or [], timeout=20.0)  # type: ignore[arg-type]


async def until_done(provider: ReplicateProvider, handle: JobHandle, spec: ModelSpec) -> JobStatus:
    for polls in range(60):
        status = await provider.poll(handle, spec)
        if status.state != "pending":
            return status
        await asyncio.sleep(min(0.5, provider.poll_delay(polls)))
    raise AssertionError("still pending")


def media_without_key(emulator: Emulator) -> None:
    media = emulator.records(family="replicate", endpoint="media")
    assert media and all(record.key_sent is False for record in media)


async def test_generate_fast_and_slow(emulator: Emulator, provider: ReplicateProvider) -> None:
    emulator.configure(job_latency=0.1)
    spec = provider.spec_for(SCHNELL)
    handle = await provider.submit(ask(SCHNELL, "a red bicycle", num_outputs=2, output_format="png"), spec)
    assert handle.data["done"]["status"] == "succeeded", "finished within Prefer: wait"
    status = await until_done(provider, handle, spec)
    assert status.state == "done" and status.result is not None and len(status.result.images) == 2
    assert status.result.images[0].mime == "image/png" and status.result.extra["emulated"]
    emulator.configure(job_latency=2.5)
    pro = provider.spec_for(PRO)
    slow = await provider.submit(ask(PRO, "a lighthouse", aspect_ratio="custom", width=704, height=512), pro)
    assert "done" not in slow.data
    status = await until_done(provider, slow, pro)
    assert status.result is not None and len(status.result.images) == 1
    assert emulator.submits("replicate") == {"a red bicycle": 1, "a lighthouse": 1}
    media_without_key(emulator)


async def test_edit_with_flux_dev(emulator: Emulator, provider: ReplicateProvider) -> None:
    emulator.configure(job_latency=0.1)
    image = InputImage(png_bytes((64, 64)), "image/png", "photo.png", 64, 64)
    spec = provider.spec_for(DEV)
    handle = await provider.submit(ask(DEV, "make it blue", "edit", [image], prompt_strength=0.6), spec)
    status = await until_done(provider, handle, spec)
    assert status.state == "done" and status.result is not None and status.result.images


@pytest.mark.parametrize(("fault", "kind"), [("job_failed", TransientError), ("moderation", Refused)])
async def test_failed_predictions(emulator: Emulator, provider: ReplicateProvider, fault: str,
                                  kind: type[ProviderError]) -> None:
    emulator.configure(job_latency=0.1)
    spec = provider.spec_for(SCHNELL)
    handle = await provider.submit(ask(SCHNELL, f"a dog [[fault:{fault}]]"), spec)
    status = await until_done(provider, handle, spec)
    assert status.state == "failed" and type(status.error) is kind


async def test_outputs_removed_after_retention_are_lost(emulator: Emulator, provider: ReplicateProvider) -> None:
    emulator.configure(job_latency=0.1, retention_scale=0.0005)  # the hour becomes 1.8 s
    spec = provider.spec_for(SCHNELL)
    handle = await provider.submit(ask(SCHNELL, "collected too late"), spec)
    await asyncio.sleep(2.5)
    status = await provider.poll(handle, spec)
    assert status.state == "failed" and isinstance(status.error, ResultLost)
    assert "paid" in str(status.error) and "--retry-failed" in str(status.error)
    assert emulator.submits("replicate") == {"collected too late": 1}


@pytest.mark.parametrize(("model", "prompt", "params", "kind", "says"), [
    (SCHNELL, "x [[fault:auth]]", {}, AuthError, "REPLICATE_API_TOKEN"),
    (SCHNELL, "x [[fault:quota]]", {}, QuotaExhausted, "credit"),
    ("nobody/no-such-model", "x", {}, ModelUnavailable, "not available"),
    ("nobody/no-such-model:" + "0" * 64, "x", {}, ModelUnavailable, "not available"),
    (SCHNELL, "x", {"num_inference_steps": 9}, Rejected, "(input num_inference_steps)"),
    (SCHNELL, "x [[fault:server_error]]", {}, TransientError, "worth a retry"),
])
async def test_errors(provider: ReplicateProvider, model: str, prompt: str, params: dict[str, Any],
                      kind: type[ProviderError], says: str) -> None:
    with pytest.raises(ProviderError) as caught:
        await provider.submit(ask(model, prompt, **params), provider.spec_for(model))
    assert type(caught.value) is kind and says in str(caught.value) and KEY not in str(caught.value)


async def test_a_lost_create_is_recovered_by_listing_not_sent_again(emulator: Emulator,
                                                                   provider: ReplicateProvider) -> None:
    emulator.configure(job_latency=0.1)
    spec = provider.spec_for(SCHNELL)
    for other in ("before one", "before two"):
        await provider.submit(ask(SCHNELL, other, seed=1), spec)
    since = time.time()
    lost = ask(SCHNELL, "lost answer [[fault:reset]]", seed=1)
    with pytest.raises(UnknownOutcome):
        await provider.submit(lost, spec)
    await provider.submit(ask(SCHNELL, "after", seed=1), spec)
    found = await provider.recover(lost, spec, since)
    assert found is not None
    status = await until_done(provider, found, spec)
    assert status.state == "done"
    assert emulator.submits("replicate")["lost answer [[fault:reset]]"] == 1, "recovered, not submitted again"
    assert await provider.recover(ask(SCHNELL, "never sent", seed=1), spec, since) is None


async def test_cancel_a_running_prediction(emulator: Emulator, provider: ReplicateProvider) -> None:
    emulator.configure(job_latency=30)
    spec = provider.spec_for(SCHNELL)
    handle = await provider.submit(ask(SCHNELL, "a slow one"), spec)
    assert await provider.cancel(handle, spec) == "cancelled"
    status = await provider.poll(handle, spec)
    assert status.state == "failed" and isinstance(status.error, TransientError) and status.error.code == "canceled"
