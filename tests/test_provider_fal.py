"""The fal provider over real loopback HTTP against a scripted fal queue (tests/job_servers.py): submit headers
and bodies, every status, the result and its media (fetched without the key), NSFW refusals, every error class,
lost results, foreign URLs, cancel, keys and base URLs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
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
from pixelmill.models.table import builtin_table
from pixelmill.params import ImageParams
from pixelmill.providers.base import ImageRequest, InputImage, JobHandle, JobStatus, ProviderSettings, Task
from pixelmill.providers.fal.params import plan_fal
from pixelmill.providers.fal.provider import FalProvider
from tests.job_servers import PNG, FalServer
from tests.reliability.hostile_answers import Canned

KEY = "fal-key-id-4411:fal-secret-9d8e7f6a5b4c"
DEV = "fal-ai/flux/dev"
KONTEXT = "fal-ai/flux-pro/kontext"


@pytest.fixture
async def server() -> AsyncIterator[FalServer]:
    async with FalServer() as scripted:
        yield scripted  # type: ignore[misc]


@pytest.fixture
async def fal(server: FalServer) -> AsyncIterator[FalProvider]:
    provider = FalProvider(ProviderSettings(base_url=server.url), {"FAL_KEY": KEY})
    yield provider
    await provider.aclose()


def request(model: str = DEV, task: Task = "generate", params: dict[str, Any] | None = None,
            images: list[InputImage] | None = None) -> ImageRequest:
    spec = builtin_table().get(model)
    assert spec is not None
    wire = plan_fal(spec, ImageParams(**(params or {})), task).params
    return ImageRequest(task=task, model=model, prompt="a red bicycle", params=wire, images=images or [],
                        timeout=10.0)


async def run_job(fal: FalProvider, req: ImageRequest, polls: int = 10) -> tuple[JobHandle, JobStatus]:
    spec = fal.spec_for(req.model)
    handle = await fal.submit(req, spec)
    status = JobStatus("pending")
    for _ in range(polls):
        status = await fal.poll(handle, spec)
        if status.state != "pending":
            break
    return handle, status


async def test_a_job_is_submitted_polled_and_collected_and_media_go_without_the_key(
        fal: FalProvider, server: FalServer) -> None:
    req = request(params={"size": "1024x768", "seed": 7, "steps": 20, "guidance_scale": 3.5, "n": 2,
                          "output_format": "png"})
    server.script.result = Canned(200, server.result_body("a.png", "b.png"))
    handle, status = await run_job(fal, req)
    assert status.state == "done" and status.result is not None
    assert [image.data for image in status.result.images] == [PNG, server.media["b.png"]]
    assert status.result.extra["seed"] == 7 and status.result.request_id == server.request_id
    submit = server.api()[0]
    assert submit.method == "POST" and submit.path == "/fal-ai/flux/dev"
    assert orjson.loads(submit.body) == {"prompt": "a red bicycle", "image_size": {"width": 1024, "height": 768},
                                         "seed": 7, "num_inference_steps": 20, "guidance_scale": 3.5,
                                         "output_format": "png", "num_images": 2}
    assert submit.headers["Authorization"] == f"Key {KEY}"
    assert orjson.loads(submit.headers["X-Fal-Object-Lifecycle-Preference"]) == {
        "expiration_duration_seconds": 172800}
    assert "x-fal-no-retry" not in {k.lower() for k in submit.headers}
    # The handle holds the URLs fal answered (under owner/app), and polls follow them with the key.
    assert handle.id == server.request_id and handle.urls["status"].endswith(f"/fal-ai/flux/requests/{handle.id}"
                                                                             "/status")
    assert JobHandle.from_json(orjson.loads(orjson.dumps(handle.as_json()))) == handle
    polls = server.api("/fal-ai/flux/requests/")
    assert [p.path.rsplit("/", 1)[-1] for p in polls] == ["status", "status", "status", handle.id]
    assert all(p.headers["Authorization"] == f"Key {KEY}" for p in polls)
    media = server.media_requests()
    assert len(media) == 2
    for seen in media:
        assert "Authorization" not in seen.headers
        assert KEY not in repr(seen) and KEY.split(":")[1] not in repr(seen)


async def test_pending_statuses_say_where_the_job_is(fal: FalProvider, server: FalServer) -> None:
    spec = fal.spec_for(DEV)
    handle = await fal.submit(request(), spec)
    assert (await fal.poll(handle, spec)).detail == "IN_QUEUE position 2"
    assert (await fal.poll(handle, spec)).detail == "IN_PROGRESS"
    assert (await fal.poll(handle, spec)).state == "done"


async def test_kontext_edits_send_the_image_inline_or_as_its_url(fal: FalProvider, server: FalServer) -> None:
    image = InputImage(PNG, "image/png", "in.png", 16, 12)
    _, status = await run_job(fal, request(KONTEXT, "edit", {"aspect_ratio": "16:9"}, [image]))
    assert status.state == "done"
    body = orjson.loads(server.api()[0].body)
    assert body["image_url"].startswith("data:image/png;base64,") and body["aspect_ratio"] == "16:9"
    assert server.api()[0].path == "/fal-ai/flux-pro/kontext"
    linked = InputImage(PNG, "image/png", "in.png", 16, 12, url="https://images.example/in.png")
    server.script.statuses = [Canned(200, {"status": "COMPLETED"})]
    await run_job(fal, request(KONTEXT, "edit", None, [linked]))
    assert orjson.loads(server.api("/fal-ai/flux-pro/kontext")[-1].body)["image_url"] == \
        "https://images.example/in.png"


async def test_nsfw_images_are_dropped_and_a_job_of_only_those_is_refused(
        fal: FalProvider, server: FalServer) -> None:
    server.script.statuses = [Canned(200, {"status": "COMPLETED"})]
    server.script.result = Canned(200, server.result_body("a.png", "b.png", nsfw=[True, False]))
    _, status = await run_job(fal, request(params={"n": 2}))
    assert status.state == "done" and status.result is not None
    assert [i.data for i in status.result.images] == [server.media["b.png"]]
    assert status.result.extra["nsfw_dropped"] == 1
    assert [m.path for m in server.media_requests()] == ["/media/b.png"]  # the flagged one is not fetched
    server.script.result = Canned(200, server.result_body("a.png", nsfw=[True]))
    _, status = await run_job(fal, request())
    assert status.state == "failed" and isinstance(status.error, Refused)
    assert status.error.reason == "nsfw_concepts" and "enable_safety_checker=false" in str(status.error)


@pytest.mark.parametrize(("answer", "kind", "words"), [
    (Canned(422, {"detail": [{"loc": ["body", "prompt"], "msg": "field required", "type": "missing"}]}),
     Rejected, "(field prompt): field required"),
    (Canned(422, {"detail": [{"loc": ["body", "prompt"], "msg": "flagged", "type": "content_policy_violation",
                              "categories": ["sexual"]}]}), Refused, "content_policy_violation: sexual"),
    (Canned(401, {"detail": "Invalid key"}), AuthError, "set FAL_KEY"),
    (Canned(403, {"detail": "User is locked. Reason: Exhausted balance."}), QuotaExhausted, "add credit"),
    (Canned(404, {"detail": "Application 'nope' not found"}), ModelUnavailable, "No fal endpoint named"),
    (Canned(429, {"detail": "Too many requests"}, {"Retry-After": "3"}), RateLimited, "retry after 3 s"),
    (Canned(503, {"detail": "No runner", "error_type": "runner_scheduling_failure"}), TransientError,
     "HTTP 503 runner_scheduling_failure"),
    (Canned(504, {"detail": "timeout"}, {"X-Fal-Error-Type": "request_timeout"}), TransientError,
     "request_timeout"),
    (Canned(400, b"<html>bad gateway config</html>"), Rejected, "bad gateway config"),
])
async def test_submit_errors_map_to_the_error_tree(fal: FalProvider, server: FalServer, answer: Canned,
                                                   kind: type, words: str) -> None:
    server.script.submit = answer
    with pytest.raises(kind) as caught:
        await fal.submit(request(), fal.spec_for(DEV))
    assert words in str(caught.value)
    if isinstance(caught.value, RateLimited):
        assert caught.value.retry_after == 3.0


async def test_a_submit_answer_without_a_handle_is_an_unknown_outcome(fal: FalProvider, server: FalServer) -> None:
    for body in (b"{not json", orjson.dumps({"status": "IN_QUEUE"})):
        server.script.submit = Canned(200, body)
        with pytest.raises(UnknownOutcome, match="may have been billed"):
            await fal.submit(request(), fal.spec_for(DEV))


@pytest.mark.parametrize(("completed", "kind", "words"), [
    ({"status": "COMPLETED", "error": "CUDA out of memory", "error_type": "runner_disconnected"}, TransientError,
     "failed on fal's side (runner_disconnected): CUDA out of memory"),
    ({"status": "COMPLETED", "error": "flagged", "error_type": "content_policy_violation"}, Refused,
     "refused by fal's content policy"),
    ({"status": "CANCELED"}, Rejected, "was cancelled"),
    ({"status": "EXPLODED"}, TransientError, "ended in status 'EXPLODED'"),
])
async def test_jobs_that_end_badly_fail(fal: FalProvider, server: FalServer, completed: dict[str, str],
                                        kind: type, words: str) -> None:
    server.script.statuses = [Canned(200, completed)]
    _, status = await run_job(fal, request())
    assert status.state == "failed" and isinstance(status.error, kind)
    assert words in str(status.error)
    assert not server.api(f"/fal-ai/flux/requests/{server.request_id}") or all(
        s.path.endswith("/status") for s in server.api("/fal-ai/flux/requests/"))  # no result fetched


async def test_a_result_that_repeats_the_model_error_fails_the_job(fal: FalProvider, server: FalServer) -> None:
    server.script.result = Canned(422, {"detail": [{"loc": ["body", "image_size"], "msg": "too large",
                                                    "type": "value_error"}]})
    _, status = await run_job(fal, request())
    assert isinstance(status.error, Rejected) and "(field image_size): too large" in str(status.error)


@pytest.mark.parametrize("where", ["status", "result"])
async def test_a_job_fal_no_longer_knows_is_a_lost_result(fal: FalProvider, server: FalServer, where: str) -> None:
    if where == "status":
        server.script.statuses = [Canned(404, {"detail": "Request not found"})]
    else:
        server.script.result = Canned(404, {"detail": "Request not found"})
    _, status = await run_job(fal, request())
    assert status.state == "failed" and isinstance(status.error, ResultLost)
    assert "paid" in str(status.error) and "--retry-failed" in str(status.error)


async def test_poll_errors_are_polled_again_except_a_refused_key(fal: FalProvider, server: FalServer) -> None:
    spec = fal.spec_for(DEV)
    handle = await fal.submit(request(), spec)
    server.script.statuses = [Canned(503, {"detail": "busy"}), Canned(401, {"detail": "bad key"})]
    with pytest.raises(TransientError) as caught:
        await fal.poll(handle, spec)
    assert not caught.value.maybe_billed  # polls cost nothing
    with pytest.raises(AuthError):
        await fal.poll(handle, spec)


async def test_urls_on_another_host_get_no_key_and_are_not_followed(fal: FalProvider, server: FalServer) -> None:
    spec = fal.spec_for(DEV)
    handle = await fal.submit(request(), spec)
    foreign = JobHandle(handle.id, {k: v.replace("127.0.0.1", "queue.example") for k, v in handle.urls.items()},
                        handle.submitted, handle.data)
    before = len(server.seen)
    status = await fal.poll(foreign, spec)
    assert isinstance(status.error, ResultLost) and "does not send the key there" in str(status.error)
    assert len(server.seen) == before
    # The same server under another loopback name is the emulator's other host: followed, with the key.
    local = JobHandle(handle.id, {k: v.replace("127.0.0.1", "localhost") for k, v in handle.urls.items()})
    assert (await fal.poll(local, spec)).state == "pending"
    assert server.seen[-1].headers["Authorization"] == f"Key {KEY}" and server.seen[-1].host.startswith("localhost")


async def test_the_key_never_leaves_in_a_result_or_an_error(fal: FalProvider, server: FalServer) -> None:
    server.script.submit = Canned(422, {"detail": [{"loc": ["body", "prompt"], "msg": f"bad key {KEY}",
                                                    "type": "x"}]})
    with pytest.raises(Rejected) as caught:
        await fal.submit(request(), fal.spec_for(DEV))
    assert KEY not in str(caught.value) and KEY.split(":")[1] not in str(caught.value)
    server.script.submit = None
    server.script.statuses = [Canned(200, {"status": "COMPLETED", "error": f"echo {KEY}"})]
    _, status = await run_job(fal, request())
    assert status.error is not None and KEY.split(":")[1] not in str(status.error)


@pytest.mark.parametrize(("answer", "word"), [
    (Canned(202, {"status": "CANCELLATION_REQUESTED"}), "requested"),
    (Canned(200, {"status": "OK"}), "cancelled"),
    (Canned(400, {"status": "ALREADY_COMPLETED"}), "already_completed"),
    (Canned(404, {"status": "NOT_FOUND"}), "not_found"),
])
async def test_cancel_reports_what_fal_said(fal: FalProvider, server: FalServer, answer: Canned, word: str) -> None:
    spec = fal.spec_for(DEV)
    handle = await fal.submit(request(), spec)
    server.script.cancel = answer
    assert await fal.cancel(handle, spec) == word
    assert server.seen[-1].method == "PUT" and server.seen[-1].path.endswith("/cancel")


def test_keys_and_base_urls_resolve_in_order() -> None:
    with pytest.raises(ConfigError, match="no API key for fal: set FAL_KEY \\(or DF_API_KEY\\)"):
        FalProvider(ProviderSettings(), {})
    assert FalProvider(ProviderSettings(), {"DF_API_KEY": "df-key"})._key == "df-key"
    assert FalProvider(ProviderSettings(), {"FAL_KEY": "a", "DF_API_KEY": "b"})._key == "a"
    assert FalProvider(ProviderSettings(api_key="flag"), {"FAL_KEY": "a"})._key == "flag"
    assert FalProvider(ProviderSettings(), {"FAL_KEY": "a"}).base_url == "https://queue.fal.run"
    assert FalProvider(ProviderSettings(base_url="https://queue.fal.run/"), {"FAL_KEY": "a"}).base_url == \
        "https://queue.fal.run"
    assert FalProvider(ProviderSettings(), {"FAL_KEY": "a", "FAL_QUEUE_RUN_HOST": "queue.eu.fal.run"}).base_url == \
        "https://queue.eu.fal.run"
    with pytest.raises(ConfigError, match="not an http"):
        FalProvider(ProviderSettings(base_url="queue.fal.run"), {"FAL_KEY": "a"})


def test_models_of_other_families_are_refused_and_unknown_ids_pass() -> None:
    fal = FalProvider(ProviderSettings(), {"FAL_KEY": "a"})
    with pytest.raises(ConfigError, match="gpt-image-2 is a openai model"):
        fal.spec_for("gpt-image-2")
    assert not fal.spec_for("fal-ai/recraft/v3").known
