"""The Replicate provider over real loopback HTTP, against a scripted server that speaks Replicate's predictions
API (both create routes, `Prefer: wait`, polling by `urls.get`, cancel, the paged list, media files): every
status, every error, expiry, and the recovery by listing of a create whose answer was cut after the server
made the prediction. The key must never reach a media request or a message."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from aiohttp import web

from pixelmill.errors import (
    AuthError,
    ConfigError,
    InputError,
    ModelUnavailable,
    ProviderError,
    QuotaExhausted,
    RateLimited,
    Refused,
    Rejected,
    ResultLost,
    TransientError,
    UnknownOutcome,
)
from pixelmill.models.table import ModelSpec
from pixelmill.providers.base import ImageRequest, InputImage, JobHandle, JobStatus, ProviderSettings
from pixelmill.providers.replicate.provider import CANCEL_AFTER, ReplicateProvider, normalize_base_url
from tests.reliability.hostile_servers import LocalServer, png_bytes

KEY = "r8_test-replicate-0123456789abcdef"
PNG = png_bytes((16, 16))
VERSION = "5599ed30703defd1d160a25a63321b4dec97101d98b4674bcc56e41f62f35637"


@dataclass
class Script:
    """How the server treats a prediction, chosen by its prompt."""

    polls_pending: int = 0  # GETs answered `processing` before the end state
    end: str = "succeeded"  # succeeded | failed | canceled | aborted | removed
    error: str | None = None
    single: bool = False  # output as one URI (flux-1.1-pro) instead of an array
    create_status: int = 201
    create_body: Any = None  # an error answer to the create, instead of a prediction
    create_headers: dict[str, str] = field(default_factory=dict)
    cut: bool = False  # create the prediction, then close the connection without answering
    media_gone: bool = False  # the output URL answers 404
    poll_reset: bool = False  # the first GETs of the prediction close the connection without answering


class ReplicateServer(LocalServer):
    def __init__(self) -> None:
        super().__init__()
        self.scripts: dict[str, Script] = {}
        self.predictions: dict[str, dict[str, Any]] = {}
        self.order: list[str] = []  # creation order
        self.gets: dict[str, int] = {}
        self.requests: list[tuple[str, str, dict[str, str], Any]] = []  # method, path, headers, json body
        self.page_size = 2
        self.ids = (f"p{n:04d}qorzdhgbfurvjtvhg6d" for n in itertools.count())

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/models/{owner}/{name}/predictions", self.create)
        app.router.add_post("/v1/predictions", self.create)
        app.router.add_get("/v1/predictions", self.listing)
        app.router.add_get("/v1/predictions/{id}", self.get)
        app.router.add_post("/v1/predictions/{id}/cancel", self.cancel)
        app.router.add_get("/media/{id}/{n}", self.media)

    def _log(self, request: web.Request, body: Any = None) -> None:
        self.requests.append((request.method, request.path, dict(request.headers), body))

    def add(self, model: str | None, version: str, inputs: dict[str, Any], created: dt.datetime,
            status: str = "succeeded") -> dict[str, Any]:
        ident = next(self.ids)
        prediction = {
            "id": ident, "model": model, "version": version, "input": inputs, "output": None, "error": None,
            "status": status, "created_at": created.isoformat().replace("+00:00", "Z"), "data_removed": False,
            "urls": {"get": f"{self.url}/v1/predictions/{ident}", "cancel": f"{self.url}/v1/predictions/{ident}/cancel",
                     "web": f"https://replicate.com/p/{ident}"},
        }
        self.predictions[ident] = prediction
        self.order.append(ident)
        return prediction

    def _finish(self, prediction: dict[str, Any]) -> None:
        script = self.scripts.get(prediction["input"].get("prompt", ""), Script())
        prediction["status"] = "failed" if script.end == "removed" else script.end
        if script.end in ("succeeded", "removed"):
            prediction["status"] = "succeeded"
            count = int(prediction["input"].get("num_outputs", 1))
            urls = [f"{self.url}/media/{prediction['id']}/{n}" for n in range(count)]
            prediction["output"] = urls[0] if script.single else urls
            prediction["metrics"] = {"predict_time": 0.6, "total_time": 1.1}
            if script.end == "removed":
                prediction["output"], prediction["data_removed"] = None, True
        elif script.end == "failed":
            prediction["error"] = script.error or "CUDA out of memory"

    async def create(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self._log(request, body)
        inputs = body.get("input", {})
        script = self.scripts.get(inputs.get("prompt", ""), Script())
        if script.create_body is not None:
            return web.json_response(script.create_body, status=script.create_status, headers=script.create_headers)
        owner, name = request.match_info.get("owner"), request.match_info.get("name")
        model = f"{owner}/{name}" if owner else "someone/custom"
        prediction = self.add(model, body.get("version", "hidden"), inputs, dt.datetime.now(dt.UTC), "starting")
        if script.polls_pending == 0:
            self._finish(prediction)  # finished within the Prefer: wait window
        if script.cut:
            assert request.transport is not None
            request.transport.close()
            await asyncio.sleep(0.05)
        return web.json_response(prediction, status=script.create_status)

    async def get(self, request: web.Request) -> web.Response:
        self._log(request)
        prediction = self.predictions.get(request.match_info["id"])
        if prediction is None:
            return web.json_response({"detail": "Not found.", "status": 404}, status=404)
        script = self.scripts.get(prediction["input"].get("prompt", ""), Script())
        seen = self.gets[prediction["id"]] = self.gets.get(prediction["id"], 0) + 1
        if script.poll_reset and seen <= 2:  # aiohttp retries a GET once on a reused connection that closed
            assert request.transport is not None
            request.transport.close()
            await asyncio.sleep(0.05)
            return web.Response()
        if prediction["status"] in ("starting", "processing"):
            if seen > script.polls_pending:
                self._finish(prediction)
            else:
                prediction["status"] = "processing"
        return web.json_response(prediction)

    async def cancel(self, request: web.Request) -> web.Response:
        self._log(request)
        prediction = self.predictions.get(request.match_info["id"])
        if prediction is None:
            return web.json_response({"detail": "Not found."}, status=404)
        if prediction["status"] in ("starting", "processing"):
            prediction["status"] = "canceled"
        return web.json_response(prediction)

    async def listing(self, request: web.Request) -> web.Response:
        self._log(request)
        newest = list(reversed(self.order))
        start = int(request.query.get("cursor", "0"))
        page = [self.predictions[i] for i in newest[start:start + self.page_size]]
        following = f"{self.url}/v1/predictions?cursor={start + self.page_size}" \
            if start + self.page_size < len(newest) else None
        return web.json_response({"previous": None, "next": following, "results": page})

    async def media(self, request: web.Request) -> web.Response:
        self._log(request)
        prediction = self.predictions.get(request.match_info["id"], {})
        script = self.scripts.get(prediction.get("input", {}).get("prompt", ""), Script())
        if script.media_gone:
            return web.Response(status=404, text="gone")
        return web.Response(body=PNG, content_type="image/png")


@pytest.fixture
async def server() -> AsyncIterator[ReplicateServer]:
    scripted = ReplicateServer()
    await scripted.start()
    yield scripted
    await scripted.stop()


@pytest.fixture
async def provider(server: ReplicateServer) -> AsyncIterator[ReplicateProvider]:
    made = ReplicateProvider(ProviderSettings(base_url=server.url), {"REPLICATE_API_TOKEN": KEY})
    yield made
    await made.aclose()


def request_for(model: str, prompt: str, **params: Any) -> ImageRequest:
    return ImageRequest("generate", model, prompt, dict(params), timeout=10.0)


async def run_job(provider: ReplicateProvider, request: ImageRequest, spec: ModelSpec,
                  max_polls: int = 10) -> tuple[JobHandle, JobStatus]:
    """Submit, journal (the handle through JSON, as the engine stores it), then poll from the stored copy."""
    handle = await provider.submit(request, spec)
    stored = JobHandle.from_json(orjson.loads(orjson.dumps(handle.as_json())))
    for _ in range(max_polls):
        status = await provider.poll(stored, spec)
        if status.state != "pending":
            return stored, status
    raise AssertionError("still pending")


def no_key_anywhere(server: ReplicateServer, *errors: BaseException) -> None:
    for _method, path, headers, _ in server.requests:
        if path.startswith("/media/"):
            assert "Authorization" not in headers and KEY not in str(headers), "the key reached a media request"
        else:
            assert headers.get("Authorization") == f"Bearer {KEY}"
    for error in errors:
        assert KEY not in str(error) and KEY not in repr(vars(error))


# ---------------------------------------------------------------- generate and statuses


async def test_fast_model_finishes_in_the_create_and_needs_no_poll(server: ReplicateServer,
                                                                    provider: ReplicateProvider) -> None:
    spec = provider.spec_for("black-forest-labs/flux-schnell")
    request = request_for("black-forest-labs/flux-schnell", "a red bicycle", num_outputs=2, aspect_ratio="16:9")
    handle, status = await run_job(provider, request, spec)
    assert status.state == "done" and status.result is not None
    assert [image.data for image in status.result.images] == [PNG, PNG]
    assert status.result.request_id == handle.id and status.result.extra["predict_time"] == 0.6
    method, path, headers, body = server.requests[0]
    assert (method, path) == ("POST", "/v1/models/black-forest-labs/flux-schnell/predictions")
    assert headers["Prefer"] == "wait=5" and headers["Cancel-After"] == CANCEL_AFTER == "15m"
    assert body == {"input": {"prompt": "a red bicycle", "num_outputs": 2, "aspect_ratio": "16:9"}}
    assert not any(m == "GET" and p.startswith("/v1/predictions/") for m, p, _, _ in server.requests), \
        "a prediction finished inside the create is collected without polling it"
    no_key_anywhere(server)


async def test_slow_model_is_polled_until_done_and_a_single_uri_is_one_image(
        server: ReplicateServer, provider: ReplicateProvider) -> None:
    server.scripts["a lighthouse"] = Script(polls_pending=2, single=True)
    spec = provider.spec_for("black-forest-labs/flux-1.1-pro")
    handle = await provider.submit(request_for("black-forest-labs/flux-1.1-pro", "a lighthouse"), spec)
    assert "done" not in handle.data and handle.urls["get"].endswith(f"/v1/predictions/{handle.id}")
    states = [await provider.poll(handle, spec) for _ in range(3)]
    assert [s.state for s in states] == ["pending", "pending", "done"]
    assert states[0].detail == "processing"
    assert states[2].result is not None and [i.data for i in states[2].result.images] == [PNG]
    no_key_anywhere(server)


async def test_versions_go_to_the_predictions_route(server: ReplicateServer, provider: ReplicateProvider) -> None:
    for model in (f"someone/custom:{VERSION}", VERSION):
        spec = provider.spec_for(model)
        assert not spec.known
        _, status = await run_job(provider, request_for(model, "a cat", width=512), spec)
        assert status.state == "done"
    posts = [(p, b) for m, p, _, b in server.requests if m == "POST"]
    assert posts == [("/v1/predictions", {"version": VERSION, "input": {"prompt": "a cat", "width": 512}})] * 2


async def test_a_pinned_version_of_a_listed_model_keeps_its_rules(provider: ReplicateProvider) -> None:
    spec = provider.spec_for(f"black-forest-labs/flux-dev:{VERSION}")
    assert spec.known and spec.name == "black-forest-labs/flux-dev"


async def test_edit_sends_the_image_inline(server: ReplicateServer, provider: ReplicateProvider) -> None:
    spec = provider.spec_for("black-forest-labs/flux-dev")
    image = InputImage(PNG, "image/png", "photo.png", 16, 16)
    request = ImageRequest("edit", "black-forest-labs/flux-dev", "make it blue", {"prompt_strength": 0.7},
                           images=[image], timeout=10.0)
    _, status = await run_job(provider, request, spec)
    assert status.state == "done"
    sent = server.requests[0][3]["input"]
    assert sent["image"].startswith("data:image/png;base64,") and sent["prompt_strength"] == 0.7
    big = InputImage(b"\x89PNG" + bytes(300_000), "image/png", "big.png", 2048, 2048)
    with pytest.raises(InputError, match="262144 bytes"):
        await provider.submit(ImageRequest("edit", "black-forest-labs/flux-dev", "x", images=[big]), spec)


@pytest.mark.parametrize(("script", "kind", "code"), [
    (Script(end="failed", error="CUDA out of memory"), TransientError, "failed"),
    (Script(end="failed", error="NSFW content detected. Try running it again, or try a different prompt."),
     Refused, None),
    (Script(polls_pending=1, end="canceled"), TransientError, "canceled"),
    (Script(polls_pending=1, end="aborted"), TransientError, "aborted"),
    (Script(end="removed"), ResultLost, "data_removed"),
    (Script(media_gone=True), ResultLost, "output_expired"),
])
async def test_end_states(server: ReplicateServer, provider: ReplicateProvider, script: Script,
                          kind: type[ProviderError], code: str | None) -> None:
    server.scripts["a dog"] = script
    spec = provider.spec_for("black-forest-labs/flux-schnell")
    _, status = await run_job(provider, request_for("black-forest-labs/flux-schnell", "a dog"), spec)
    assert status.state == "failed" and type(status.error) is kind
    assert status.error is not None and (code is None or status.error.code == code)
    if kind is ResultLost:
        assert "paid" in str(status.error) and "--retry-failed" in str(status.error)
    if script.end == "aborted":
        assert not status.error.maybe_billed  # type: ignore[attr-defined]
    no_key_anywhere(server, status.error)


async def test_a_prediction_the_server_no_longer_knows_is_lost(server: ReplicateServer,
                                                               provider: ReplicateProvider) -> None:
    spec = provider.spec_for("black-forest-labs/flux-schnell")
    handle = JobHandle("gone123", {"get": f"{server.url}/v1/predictions/gone123"})
    status = await provider.poll(handle, spec)
    assert status.state == "failed" and isinstance(status.error, ResultLost)
    assert "no longer knows" in str(status.error)


async def test_urls_on_another_host_never_get_the_key(server: ReplicateServer,
                                                      provider: ReplicateProvider) -> None:
    server.scripts["a fox"] = Script(polls_pending=1)
    spec = provider.spec_for("black-forest-labs/flux-schnell")
    original = server.add
    def hostile(*args: Any, **kw: Any) -> dict[str, Any]:
        prediction = original(*args, **kw)
        prediction["urls"] = {"get": "http://198.51.100.7/steal", "cancel": "http://198.51.100.7/steal"}
        return prediction
    server.add = hostile  # type: ignore[method-assign]
    handle = await provider.submit(request_for("black-forest-labs/flux-schnell", "a fox"), spec)
    assert handle.urls["get"] == f"{provider.base_url}/predictions/{handle.id}"
    assert handle.urls["cancel"] == f"{provider.base_url}/predictions/{handle.id}/cancel"


async def test_cancel(server: ReplicateServer, provider: ReplicateProvider) -> None:
    server.scripts["slow"] = Script(polls_pending=100)
    spec = provider.spec_for("black-forest-labs/flux-schnell")
    handle = await provider.submit(request_for("black-forest-labs/flux-schnell", "slow"), spec)
    assert await provider.cancel(handle, spec) == "cancelled"
    assert server.predictions[handle.id]["status"] == "canceled"
    finished = await provider.submit(request_for("black-forest-labs/flux-schnell", "fast"), spec)
    assert await provider.cancel(finished, spec) == "already_completed"
    assert await provider.cancel(JobHandle("nope"), spec) == "not_found"


async def test_call_without_a_journal(server: ReplicateServer, provider: ReplicateProvider) -> None:
    server.scripts["quick"] = Script(polls_pending=1)
    spec = provider.spec_for("black-forest-labs/flux-schnell")
    result = await provider.call(request_for("black-forest-labs/flux-schnell", "quick"), spec)
    assert [i.data for i in result.images] == [PNG]


# ---------------------------------------------------------------- errors


def problem(status: int, detail: str, title: str = "Error") -> dict[str, Any]:
    return {"type": "https://replicate.com/docs/errors", "title": title, "status": status, "detail": detail}


@pytest.mark.parametrize(("status", "body", "kind", "says"), [
    (401, problem(401, f"You did not pass a valid authentication token ({KEY})"), AuthError, "REPLICATE_API_TOKEN"),
    (402, problem(402, "You have insufficient credit to run this model"), QuotaExhausted, "add credit"),
    (404, problem(404, "The requested resource could not be found."), ModelUnavailable, "owner/name"),
    (422, problem(422, "Invalid version or not permitted", "Invalid version or not permitted"), ModelUnavailable,
     "not available"),
    (422, problem(422, "- input.aspect_ratio: aspect_ratio must be one of the following: \"1:1\", \"16:9\"",
                  "Input validation failed"), Rejected, "(input aspect_ratio)"),
    (429, {"detail": "Request was throttled. Your rate limit resets in ~30s.", "status": 429}, RateLimited,
     "retry after 30 s"),
    (500, b"<html>upstream error</html>", TransientError, "worth a retry"),
])
async def test_create_errors(server: ReplicateServer, provider: ReplicateProvider, status: int, body: Any,
                             kind: type[ProviderError], says: str) -> None:
    server.scripts["boom"] = Script(create_status=status, create_body=body)
    spec = provider.spec_for("black-forest-labs/flux-schnell")
    with pytest.raises(ProviderError) as caught:
        await provider.submit(request_for("black-forest-labs/flux-schnell", "boom"), spec)
    error = caught.value
    assert type(error) is kind and error.http_status == status and says in str(error)
    if kind is RateLimited:
        assert error.retry_after == 30.0  # type: ignore[attr-defined]
    no_key_anywhere(server, error)


async def test_retry_after_header_wins_over_the_text(server: ReplicateServer, provider: ReplicateProvider) -> None:
    server.scripts["busy"] = Script(create_status=429, create_headers={"Retry-After": "7"},
                                    create_body={"detail": "Request was throttled. Your rate limit resets in ~30s."})
    spec = provider.spec_for("black-forest-labs/flux-schnell")
    with pytest.raises(RateLimited) as caught:
        await provider.submit(request_for("black-forest-labs/flux-schnell", "busy"), spec)
    assert caught.value.retry_after == 7.0


# ---------------------------------------------------------------- a lost create, recovered by listing


async def test_a_cut_create_is_an_unknown_outcome_recovered_by_listing(
        server: ReplicateServer, provider: ReplicateProvider) -> None:
    spec = provider.spec_for("black-forest-labs/flux-schnell")
    now = dt.datetime.now(dt.UTC)
    since = now.timestamp()
    # Older predictions, and newer ones that differ in model, input or prompt, fill the pages around it.
    server.add("black-forest-labs/flux-schnell", "hidden", {"prompt": "a cut create", "seed": 3},
               now - dt.timedelta(hours=2))
    server.scripts["a cut create"] = Script(cut=True)
    request = request_for("black-forest-labs/flux-schnell", "a cut create", seed=3)
    with pytest.raises(UnknownOutcome) as caught:
        await provider.submit(request, spec)
    assert caught.value.maybe_billed
    created = server.order[-1]
    server.add("black-forest-labs/flux-dev", "hidden", {"prompt": "a cut create", "seed": 3}, now)
    server.add("black-forest-labs/flux-schnell", "hidden", {"prompt": "a cut create", "seed": 4}, now)
    server.add("black-forest-labs/flux-schnell", "hidden", {"prompt": "another", "seed": 3}, now)
    found = await provider.recover(request, spec, since)
    assert found is not None and found.id == created, "the prediction the lost create made"
    assert sum(1 for m, p, _, _ in server.requests if (m, p) == ("GET", "/v1/predictions")) >= 2, "paged"
    status = await provider.poll(found, spec)
    assert status.state == "done" and status.result is not None and status.result.images[0].data == PNG
    creates = [p for m, p, _, _ in server.requests if m == "POST"]
    assert len(creates) == 1, "recovered, not submitted again"
    # A different input, or a window that starts after it, finds nothing.
    assert await provider.recover(request_for("black-forest-labs/flux-schnell", "a cut create", seed=9), spec,
                                  since) is None
    server.predictions[created]["created_at"] = (now - dt.timedelta(hours=1)).isoformat().replace("+00:00", "Z")
    assert await provider.recover(request, spec, since) is None
    no_key_anywhere(server)


async def test_a_create_answered_with_a_broken_body_is_an_unknown_outcome(
        server: ReplicateServer, provider: ReplicateProvider) -> None:
    server.scripts["broken"] = Script(create_status=201, create_body="not a prediction")
    server.scripts["no id"] = Script(create_status=201, create_body={"status": "starting"})
    spec = provider.spec_for("black-forest-labs/flux-schnell")
    with pytest.raises(UnknownOutcome, match="handle is unknown"):
        await provider.submit(request_for("black-forest-labs/flux-schnell", "broken"), spec)
    with pytest.raises(UnknownOutcome, match="no prediction id"):
        await provider.submit(request_for("black-forest-labs/flux-schnell", "no id"), spec)


async def test_a_poll_whose_answer_is_lost_is_not_an_unknown_outcome(
        server: ReplicateServer, provider: ReplicateProvider) -> None:
    """A poll creates nothing: a reset there is a plain TransientError (never charged as maybe billed)."""
    server.scripts["flaky"] = Script(polls_pending=1, poll_reset=True)
    spec = provider.spec_for("black-forest-labs/flux-schnell")
    handle = await provider.submit(request_for("black-forest-labs/flux-schnell", "flaky"), spec)
    with pytest.raises(TransientError) as caught:
        await provider.poll(handle, spec)
    assert not isinstance(caught.value, UnknownOutcome) and not caught.value.maybe_billed
    assert (await provider.poll(handle, spec)).state in ("pending", "done")


# ---------------------------------------------------------------- configuration


def test_keys_and_base_urls() -> None:
    with pytest.raises(ConfigError, match="REPLICATE_API_TOKEN"):
        ReplicateProvider(ProviderSettings(), {})
    assert ReplicateProvider(ProviderSettings(), {"DF_API_KEY": KEY}).secrets() == (KEY,)
    flag = ReplicateProvider(ProviderSettings(api_key="r8_from-the-flag-000"), {"REPLICATE_API_TOKEN": KEY})
    assert flag.secrets() == ("r8_from-the-flag-000",)
    for url in ("https://api.replicate.com", "https://api.replicate.com/", "https://api.replicate.com/v1",
                "https://api.replicate.com/v1/"):
        assert normalize_base_url(url) == "https://api.replicate.com/v1"
    assert ReplicateProvider(ProviderSettings(), {"REPLICATE_API_TOKEN": KEY}).base_url == \
        "https://api.replicate.com/v1"


def test_model_names() -> None:
    provider = ReplicateProvider(ProviderSettings(), {"REPLICATE_API_TOKEN": KEY})
    for bad in ("flux", "owner/name:notahexversion", "a/b/c"):
        with pytest.raises(ConfigError, match="not a Replicate model"):
            provider.spec_for(bad)
    with pytest.raises(ConfigError, match="--provider openai"):
        provider.spec_for("gpt-image-2")
