"""Hugging Face text-to-image, synchronous: Inference Providers through the router (`hf`) and dedicated
Inference Endpoints (`hf-endpoint`) (reference async-apis.md 6).

Both post `{"inputs": prompt, "parameters": {...}}` with `Accept: image/png` and get the image's bytes back:
- `hf`: `POST {router}/hf-inference/models/{hub id}`; router `https://router.huggingface.co` (`--base-url` >
  DF_BASE_URL), key `--api-key` > HF_TOKEN > DF_API_KEY (required), `Authorization: Bearer`.
  Models are named as the router names them, `<hub id>:<route>` (`black-forest-labs/FLUX.1-dev:hf-inference`);
  a bare hub id means the hf-inference route. Only hf-inference is served now: it is the route whose body is
  HF's own and whose model id is the hub id. The router's other text-to-image routes need the Hub's model
  mapping and are better served otherwise: `fal-ai` and `replicate` are remote jobs, which `--provider fal` and
  `--provider replicate` journal (the router's synchronous forms lose a paid job on a timeout); `together` and
  `nscale` speak OpenAI's images API (`--provider openai-compatible --base-url
  https://router.huggingface.co/together/v1`). Another route is refused with that advice.
- `hf-endpoint`: the same body, posted unchanged to the endpoint's URL (`--base-url`, required); `--model`
  names what it serves, for the table's rules; the key is optional (public endpoints need none).
No handle exists on these routes: a timeout after sending is an `UnknownOutcome` (it may be billed).
A model that is loading (503 with `estimated_time`) is a `RateLimited` wait (errors.py).
The answer must be image bytes (sniffed, not trusted from Content-Type); anything else is a malformed answer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar
from urllib.parse import quote, urlsplit

import orjson

from pixelmill.errors import ConfigError, ProviderError
from pixelmill.models.table import ModelSpec, builtin_table, permissive_spec
from pixelmill.netpolicy import strip_userinfo, userinfo_secrets
from pixelmill.params import ImageParams, WirePlan
from pixelmill.providers.base import GeneratedImage, ImageRequest, ImageResult, Provider, ProviderSettings, Task
from pixelmill.providers.boundary import answer_limit, malformed, scrub_error, scrub_result
from pixelmill.providers.hf.errors import ErrorContext, error_from_reply
from pixelmill.providers.hf.params import hub_id, plan_hf
from pixelmill.providers.http import EMULATOR_HEADER, HttpClient, sniff_image_mime
from pixelmill.providers.jobwire import first
from pixelmill.providers.openai.params import check_prompt

__all__ = ["DEFAULT_ROUTE", "HfEndpointProvider", "HfProvider", "split_route"]

DEFAULT_ROUTER = "https://router.huggingface.co"
DEFAULT_ROUTE = "hf-inference"
_ELSEWHERE = {
    "fal-ai": "use --provider fal with the fal model id (fal's queue journals each job)",
    "replicate": "use --provider replicate with the Replicate model (its predictions are journaled)",
    "together": "use --provider openai-compatible --base-url https://router.huggingface.co/together/v1",
    "nscale": "use --provider openai-compatible --base-url https://router.huggingface.co/nscale/v1",
}
_ENVELOPE = 64 * 1024


def split_route(model: str) -> tuple[str, str]:
    """`<hub id>[:<route>]` -> (hub id, route), the route hf-inference when none is given."""
    hub, _, route = model.partition(":")
    return hub, route or DEFAULT_ROUTE


def _http_url(url: str, what: str) -> str:
    url = url.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.fragment:
        raise ConfigError(f"{what} {url!r} is not an http(s) URL")
    return url


class HfProvider(Provider):
    """Hugging Face Inference Providers through the router, hf-inference route (see the module docstring)."""

    name: ClassVar[str] = "hf"
    family: ClassVar[str] = "hf"
    key_required: ClassVar[bool] = True

    def __init__(self, settings: ProviderSettings, env: Mapping[str, str]) -> None:
        super().__init__(settings, env)
        self._key = first(settings.api_key, env.get("HF_TOKEN"), env.get("DF_API_KEY"))
        if self._key is None and self.key_required:
            raise ConfigError(f"no token for {self.name}: set HF_TOKEN (or DF_API_KEY) to a token from "
                              "huggingface.co/settings/tokens with Inference Providers permission")
        self.base_url = self._base_url(settings, env)
        if userinfo_secrets(self.base_url) and self._key is not None:
            raise ConfigError("the base URL carries a user and password, and a token is set: use one of them")
        self._http = HttpClient(self.name, connect_timeout=settings.connect_timeout,
                                max_connections=int(settings.options.get("max_connections", 1024)))

    def _base_url(self, settings: ProviderSettings, env: Mapping[str, str]) -> str:
        url = _http_url(first(settings.base_url, env.get("DF_BASE_URL")) or DEFAULT_ROUTER, "the router URL")
        return url.removesuffix("/models").removesuffix("/" + DEFAULT_ROUTE)  # given with the route: accepted

    def _url(self, model: str) -> str:
        return f"{self.base_url}/{DEFAULT_ROUTE}/models/{quote(hub_id(model), safe='/')}"

    def _key_hint(self) -> str:
        return "set HF_TOKEN (or DF_API_KEY) to a token with Inference Providers permission"

    def secrets(self) -> tuple[str, ...]:
        found = (self._key, *userinfo_secrets(self.base_url))
        return tuple(dict.fromkeys(v for v in found if v and len(v) >= 8))

    def spec_for(self, model: str) -> ModelSpec:
        hub, route = split_route(model)
        if route != DEFAULT_ROUTE:
            advice = _ELSEWHERE.get(route, "the hf provider serves the hf-inference route only")
            raise ConfigError(f"{model}: the {route} route is not served by --provider hf: {advice}")
        spec = builtin_table().get(f"{hub}:{DEFAULT_ROUTE}")
        return spec if spec is not None else permissive_spec(model, "hf")

    def plan(self, spec: ModelSpec, params: ImageParams, task: Task) -> WirePlan:
        return plan_hf(spec, params, task)

    async def call(self, request: ImageRequest, spec: ModelSpec) -> ImageResult:
        secrets = self.secrets()
        try:
            result = await self._call(request, spec)
        except ProviderError as exc:
            raise scrub_error(exc, secrets) from exc.__cause__
        return scrub_result(result, secrets)

    async def _call(self, request: ImageRequest, spec: ModelSpec) -> ImageResult:
        check_prompt(spec, request.prompt)
        label = f"{self.name} {request.model}"
        headers = {"Content-Type": "application/json", "Accept": "image/png"}
        if self._key is not None:
            headers["Authorization"] = f"Bearer {self._key}"
        body = {"inputs": request.prompt, "parameters": request.params}
        reply = await self._http.send(
            "POST", self._url(request.model), data=orjson.dumps(body), headers=headers, time_limit=request.timeout,
            max_bytes=answer_limit(spec, 1, per_image_cap=self.settings.max_download_bytes, envelope=_ENVELOPE),
            label=label,
        )
        if reply.status != 200:
            raise error_from_reply(reply, ErrorContext(label=label, model=request.model, key_hint=self._key_hint(),
                                                       endpoint=self.name == "hf-endpoint", secrets=self.secrets()))
        request_id = reply.headers.get("x-request-id")
        mime = sniff_image_mime(reply.body)
        if mime is None:
            raise malformed(label, f"{len(reply.body)} bytes of {reply.content_type or 'no type'}, not an image",
                            request_id)
        extra: dict[str, object] = {}
        if request_id:
            extra["request_id"] = request_id
        if reply.headers.get(EMULATOR_HEADER):
            extra["emulated"] = strip_userinfo(self.base_url)
        return ImageResult(images=[GeneratedImage(reply.body, mime)], request_id=request_id, extra=extra)

    async def aclose(self) -> None:
        await self._http.aclose()


class HfEndpointProvider(HfProvider):
    """A dedicated Inference Endpoint: the hf-inference body, posted unchanged to `--base-url`."""

    name: ClassVar[str] = "hf-endpoint"
    key_required: ClassVar[bool] = False

    def _base_url(self, settings: ProviderSettings, env: Mapping[str, str]) -> str:
        url = first(settings.base_url, env.get("DF_BASE_URL"))
        if url is None:
            raise ConfigError("hf-endpoint needs the endpoint's URL: pass --base-url "
                              "https://<name>.<region>.<vendor>.endpoints.huggingface.cloud")
        return _http_url(url, "the endpoint URL")

    def _url(self, model: str) -> str:
        return self.base_url

    def _key_hint(self) -> str:
        return "set HF_TOKEN (or DF_API_KEY) to a token of the endpoint's owner"

    def spec_for(self, model: str) -> ModelSpec:
        table = builtin_table()
        spec = table.get(model) or table.get(f"{split_route(model)[0]}:{DEFAULT_ROUTE}")
        if spec is not None and spec.family == "hf":
            return spec
        return permissive_spec(model, "hf")
