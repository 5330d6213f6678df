"""The Black Forest Labs provider over real loopback HTTP against a scripted BFL API (tests/job_servers.py):
submit bodies per model, every status, the sample fetched without the key, a polling URL on a sibling host (and on
a foreign one), moderation refusals, lost tasks, every error class, reported cost, keys and base URLs."""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pybase64
import pytest

from pixelmill.errors import (
    AuthError,
    ConfigError,
    ModelUnavailable,
    QuotaExhausted,
    RateLimited,
    Refused,
    Rejected,
    ResultLost,
    TransientError,
    UnknownOutcome,
)
from pixelmill.models.cost import actual_cost
from pixelmill.models.table import builtin_table
from pixelmill.params import ImageParams
from pixelmill.providers.base import ImageRequest, InputImage, JobHandle, JobStatus, ProviderSettings, Task
from pixelmill.providers.bfl.params import plan_bfl
from pixelmill.providers.bfl.provider import BflProvider
from tests.job_servers import PNG, BflServer
from tests.reliability.hostile_answers import Canned

KEY = "bfl_test-key-7e1c2d3a4b5c6d7e"


@pytest.fixture
async def server() -> AsyncIterator[BflServer]:
    async with BflServer() as scripted:
        yield scripted  # type: ignore[misc]


@pytest.fixture
async def bfl(server: BflServer) -> AsyncIterator[BflProvider]:
    provider = BflProvider(ProviderSettings(base_url=server.url), {"BFL_API_KEY": KEY})
    yield provider
    await provider.aclose()


def request(model: str = "flux-pro-1.1", task: Task = "generate", params: dict[str, Any] | None = None,
            images: list[InputImage] | None = None) -> ImageRequest:
    spec = builtin_table().get(model)
    assert spec is not None
    wire = plan_bfl(spec, ImageParams(**(params or {})), task).params
    return ImageRequest(task=task, model=model, prompt="a red bicycle", params=wire, images=images or [],
                        timeout=10.0)


async def run_job(bfl: BflProvider, req: ImageRequest, polls: int = 5) -> tuple[JobHandle, JobStatus]:
    spec = bfl.spec_for(req.model)
    handle = await bfl.submit(req, spec)
    status = JobStatus("pending")
    for _ in range(polls):
        status = await bfl.poll(handle, spec)
        if status.state != "pending":
            break
    return handle, status


async def test_a_task_is_submitted_polled_and_its_sample_fetched_without_the_key(
        bfl: BflProvider, server: BflServer) -> None:
    req = request(params={"size": "1024x768", "seed": 7, "output_format": "png", "extra": {"safety_tolerance": 4}})
    handle, status = await run_job(bfl, req)
    assert status.state == "done" and status.result is not None
    assert status.result.images[0].data == PNG and status.result.extra["seed"] == 7
    submit = server.api()[0]
    assert submit.path == "/v1/flux-pro-1.1" and submit.headers["x-key"] == KEY
    assert orjson.loads(submit.body) == {"prompt": "a red bicycle", "width": 1024, "height": 768, "seed": 7,
                                         "output_format": "png", "safety_tolerance": 4}
    assert handle.urls == {"polling": f"{server.url}/v1/get_result?id={server.task_id}"}
    polls = server.api("/v1/get_result")
    assert len(polls) == 2 and all(p.headers["x-key"] == KEY for p in polls)
    [media] = server.media_requests()
    assert "x-key" not in {k.lower() for k in media.headers} and KEY not in repr(media)
    # The cost the submit reported (4 credits) is the row's cost, not the table's $0.04 guess.
    spec = bfl.spec_for("flux-pro-1.1")
    assert status.result.usage == {"cost_usd": 0.04}
    server.script.submit = Canned(200, {"id": "t2", "cost": 7.5, "polling_url": f"{server.url}/v1/get_result?id=t2"})
    _, status = await run_job(bfl, req)
    assert status.result is not None
    assert actual_cost(spec, req.params, status.result.usage, 1) == pytest.approx(0.075)


async def test_edits_send_base64_inputs_in_numbered_fields(bfl: BflProvider, server: BflServer) -> None:
    one = InputImage(PNG, "image/png", "a.png", 16, 12)
    await run_job(bfl, request("flux-kontext-pro", "edit", {"aspect_ratio": "16:9"}, [one]))
    body = orjson.loads(server.api("/v1/flux-kontext-pro")[0].body)
    assert pybase64.b64decode(body["input_image"]) == PNG and body["aspect_ratio"] == "16:9"
    await run_job(bfl, request("flux-2-pro", "edit", None, [one, one, one]))
    body = orjson.loads(server.api("/v1/flux-2-pro")[0].body)
    assert sorted(k for k in body if k.startswith("input_image")) == ["input_image", "input_image_2",
                                                                      "input_image_3"]
    with pytest.raises(Exception, match="at most 1 input image"):
        await bfl.submit(request("flux-kontext-pro", "edit", None, [one, one]), bfl.spec_for("flux-kontext-pro"))


@pytest.mark.parametrize(("answer", "kind", "reason"), [
    ({"status": "Request Moderated", "details": {"Moderation Reasons": ["Derivative Works Filter"]}}, Refused,
     "request_moderated"),
    ({"status": "Content Moderated"}, Refused, "content_moderated"),
    ({"status": "Error", "message": "generation_timeout"}, TransientError, None),
    ({"state": "Failed"}, TransientError, None),
    ({"status": "Exploded"}, TransientError, None),
])
async def test_statuses_that_end_a_task(bfl: BflProvider, server: BflServer, answer: dict[str, Any], kind: type,
                                        reason: str | None) -> None:
    server.script.statuses = [Canned(200, {"id": server.task_id, **answer})]
    _, status = await run_job(bfl, request())
    assert status.state == "failed" and type(status.error) is kind
    if reason:
        assert getattr(status.error, "reason", None) == reason
    if answer.get("details"):
        assert "Derivative Works Filter" in str(status.error)
    assert not server.media_requests()


async def test_task_not_found_is_a_lost_result_once_the_task_is_old_enough(
        bfl: BflProvider, server: BflServer) -> None:
    spec = bfl.spec_for("flux-pro-1.1")
    handle = await bfl.submit(request(), spec)
    server.script.statuses = [Canned(200, {"id": server.task_id, "status": "Task not found"})]
    assert (await bfl.poll(handle, spec)).state == "pending"  # a sibling cluster may not know it yet
    journaled = JobHandle.from_json({**handle.as_json(), "submitted": time.time() - 3600})  # a resume, later
    status = await bfl.poll(journaled, spec)
    assert isinstance(status.error, ResultLost)
    assert "paid" in str(status.error) and "--retry-failed pays" in str(status.error)
    server.script.statuses = [Canned(404, {"detail": "Not Found"})]
    assert isinstance((await bfl.poll(journaled, spec)).error, ResultLost)


@pytest.mark.parametrize(("answer", "kind", "words"), [
    (Canned(401, {"detail": "Invalid API key"}), AuthError, "set BFL_API_KEY"),
    (Canned(402, {"detail": "Insufficient credits"}), QuotaExhausted, "out of credits"),
    (Canned(404, {"detail": "Not Found"}), ModelUnavailable, "No BFL endpoint /v1/flux-pro-1.1"),
    (Canned(429, {"error": "rate_limit_exceeded", "message": "Too many concurrent requests", "retry_after": 5}),
     RateLimited, "retry after 5 s"),
    (Canned(429, {"detail": "busy"}, {"Retry-After": "2"}), RateLimited, "retry after 2 s"),
    (Canned(422, {"detail": [{"loc": ["body", "width"], "msg": "must be a multiple of 32", "type": "value_error"}]}),
     Rejected, "(field width): must be a multiple of 32"),
    (Canned(502, b"bad gateway"), TransientError, "worth a retry"),
])
async def test_submit_errors_map_to_the_error_tree(bfl: BflProvider, server: BflServer, answer: Canned,
                                                   kind: type, words: str) -> None:
    server.script.submit = answer
    with pytest.raises(kind) as caught:
        await bfl.submit(request(), bfl.spec_for("flux-pro-1.1"))
    assert words in str(caught.value)


async def test_a_submit_answer_without_a_task_id_is_an_unknown_outcome(bfl: BflProvider, server: BflServer) -> None:
    for body in (b"<html>", orjson.dumps({"polling_url": "x"})):
        server.script.submit = Canned(200, body)
        with pytest.raises(UnknownOutcome):
            await bfl.submit(request(), bfl.spec_for("flux-pro-1.1"))


@pytest.fixture
def test_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    """Names under .bfl.test and .elsewhere.test resolve to loopback (the scripted server answers them all)."""
    real = socket.getaddrinfo

    def resolve(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(host, str) and host.endswith(".test"):
            host = "127.0.0.1"
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolve)


async def test_a_polling_url_on_a_sibling_host_gets_the_key_and_a_foreign_one_is_not_followed(
        server: BflServer, test_dns: None) -> None:
    base = f"http://api.bfl.test:{server.port}"
    bfl = BflProvider(ProviderSettings(base_url=base), {"BFL_API_KEY": KEY})
    try:
        server.polling_host = f"http://api.us1.bfl.test:{server.port}"
        # A sample on a private address other than the base URL's server is not fetched (the download policy).
        with pytest.raises(TransientError, match="does not fetch from"):
            await run_job(bfl, request())
        ready = {"id": server.task_id, "status": "Ready", "result": {"sample": f"{base}/media/a.png"}}
        server.script.statuses = [Canned(200, ready)]
        server.seen.clear()
        _, status = await run_job(bfl, request())
        assert status.state == "done"
        polls = server.api("/v1/get_result")
        assert {p.host for p in polls} == {f"api.us1.bfl.test:{server.port}"}
        assert all(p.headers["x-key"] == KEY for p in polls)
        assert server.api("/v1/flux")[0].host == f"api.bfl.test:{server.port}"
        server.polling_host = f"http://bfl.test.elsewhere.test:{server.port}"
        before = len(server.seen)
        _, status = await run_job(bfl, request())
        assert isinstance(status.error, ResultLost) and "does not send the key there" in str(status.error)
        assert len(server.seen) == before + 1  # the submit only
    finally:
        await bfl.aclose()


def test_keys_and_base_urls_resolve_in_order() -> None:
    with pytest.raises(ConfigError, match="no API key for bfl: set BFL_API_KEY \\(or DF_API_KEY\\)"):
        BflProvider(ProviderSettings(), {})
    assert BflProvider(ProviderSettings(), {"DF_API_KEY": "d"})._key == "d"
    assert BflProvider(ProviderSettings(api_key="f"), {"BFL_API_KEY": "b"})._key == "f"
    for url in ("https://api.bfl.ai", "https://api.bfl.ai/", "https://api.bfl.ai/v1", "https://api.bfl.ai/v1/"):
        assert BflProvider(ProviderSettings(base_url=url), {"BFL_API_KEY": "b"}).base_url == "https://api.bfl.ai/v1"
    assert BflProvider(ProviderSettings(), {"BFL_API_KEY": "b"}).base_url == "https://api.bfl.ai/v1"


def test_bfl_has_no_cancel_call() -> None:
    bfl = BflProvider(ProviderSettings(), {"BFL_API_KEY": "b"})
    import asyncio

    with pytest.raises(ConfigError, match="no call to cancel"):
        asyncio.run(bfl.cancel(JobHandle("t"), bfl.spec_for("flux-dev")))
