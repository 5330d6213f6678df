"""OpenAI Images API providers: OpenAI itself, Azure OpenAI, and any OpenAI-compatible endpoint.

One module, three thin classes over the same wire adapter (reference image-apis.md 1 and 2):
- generations: `POST {base}/images/generations`, JSON (orjson);
- edits: `POST {base}/images/edits`, multipart: `image` for one input, `image[]` repeated for several, `mask`;
- variations: `POST {base}/images/variations`, multipart (dall-e-2).
Answers: `data[].b64_json` decoded with pybase64, or `data[].url` downloaded (bounded; public addresses or
the base URL's own server only); `usage`, `revised_prompt`, `size`, `quality`, `output_format`, `background`
and the request id are kept. Every field is read through `pixelmill.providers.boundary` (an odd shape is a
`TransientError`, never a crash); the answer is bounded by n images of the model's largest size; images beyond
the n asked for are not decoded or fetched, only counted (`extra["surplus_images"]`); everything the server
said is redacted with `secrets()` (the key, and a password in the base URL) before it is returned. The
`x-ratelimit-*` headers of every answer go back as `ImageResult.rate_limits` (and on a 429, as
`RateLimited.limits`) for the engine to pace by.
Errors: `pixelmill.providers.openai.errors`.

Credentials and base URLs (a flag beats the provider's variable, which beats the DF_* seed variables):

- `openai`: key OPENAI_API_KEY > DF_API_KEY (required); URL OPENAI_BASE_URL > DF_BASE_URL > api.openai.com.
- `azure`: key AZURE_OPENAI_API_KEY > DF_API_KEY, else an Entra ID token in AZURE_OPENAI_AD_TOKEN;
  endpoint AZURE_OPENAI_ENDPOINT > DF_BASE_URL (required).
- `openai-compatible`: key OPENAI_API_KEY > DF_API_KEY (optional: local servers often need none);
  URL OPENAI_BASE_URL > DF_BASE_URL (required).

An OpenAI base URL may be given with or without `/v1` (and a trailing slash): a bare host gets `/v1`; a URL
with any path is used as it is (gateways such as `https://gw.example/openai` expect exactly that).
Azure: `api-key` header; deployment URLs `{endpoint}/openai/deployments/{model}/images/...?api-version=` with
`OPENAI_API_VERSION` (default 2025-04-01-preview), or the v1 API when the endpoint ends in `/openai/v1` (or
`options["azure_api"] == "v1"`), where `api-version` is sent only when given as a flag.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, ClassVar
from urllib.parse import quote, urljoin, urlsplit

import aiohttp
import orjson

from pixelmill.errors import ConfigError, ProviderError, Refused
from pixelmill.models.table import ModelSpec, builtin_table, permissive_spec
from pixelmill.netpolicy import strip_userinfo, userinfo_secrets
from pixelmill.params import ImageParams, WirePlan
from pixelmill.providers.base import (
    GeneratedImage,
    ImageRequest,
    ImageResult,
    InputImage,
    Provider,
    ProviderSettings,
    Task,
)
from pixelmill.providers.boundary import (
    answer_limit,
    field,
    malformed,
    scrub_error,
    scrub_result,
    text,
)
from pixelmill.providers.http import EMULATOR_HEADER, HttpClient, decode_base64, parse_json, parse_rate_limits
from pixelmill.providers.openai.errors import ErrorContext, error_from_reply, request_id_of
from pixelmill.providers.openai.params import check_inputs, check_prompt, plan_openai

__all__ = ["AzureProvider", "OpenAICompatibleProvider", "OpenAIProvider", "normalize_base_url"]

DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_AZURE_API_VERSION = "2025-04-01-preview"
_ENDPOINTS: dict[Task, str] = {"generate": "generations", "edit": "edits", "variation": "variations"}
_FORMAT_MIME = {"png": "image/png", "jpeg": "image/jpeg", "jpg": "image/jpeg", "webp": "image/webp"}
_MIME_EXT = {"image/png": ".png", "image/jpeg": ".jpg", "image/webp": ".webp", "image/gif": ".gif"}
_RESPONSE_EXTRA = ("size", "quality", "output_format", "background", "created")
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")
# Room for the JSON around base64 images: 4/3 of the image bytes, plus the envelope.
_ENVELOPE = 256 * 1024


def normalize_base_url(url: str) -> str:
    """`https://api.openai.com`, `.../v1` and `.../v1/` all become `https://api.openai.com/v1`; a URL with a
    path other than `/` is kept as given (minus the trailing slash), so `/v1/v1` never happens."""
    url = url.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"base URL {url!r} is not an http(s) URL: give one like https://api.openai.com/v1")
    if parts.query or parts.fragment:
        raise ConfigError("the base URL must not carry a query or fragment: give the URL up to /v1")
    return url if parts.path else url + "/v1"


def _asked(request: ImageRequest, spec: ModelSpec) -> int:
    """How many images the call asked for (`n`), within what the model can give."""
    try:
        n = int(request.params.get("n") or 1)
    except (TypeError, ValueError):
        n = 1
    return max(1, min(n, spec.n_max if spec.known else 100))


def _scalar(value: Any) -> bool:
    return isinstance(value, str | int | float) and value != ""


def _first(*values: str | None) -> str | None:
    for value in values:
        if value and value.strip():
            return value.strip()
    return None


class OpenAIProvider(Provider):
    """api.openai.com, or a server given with --base-url that speaks the same wire (models from the table)."""

    name: ClassVar[str] = "openai"
    family: ClassVar[str] = "openai"
    key_vars: ClassVar[tuple[str, ...]] = ("OPENAI_API_KEY", "DF_API_KEY")
    url_vars: ClassVar[tuple[str, ...]] = ("OPENAI_BASE_URL", "DF_BASE_URL")
    key_required: ClassVar[bool] = True
    azure: ClassVar[bool] = False

    def __init__(self, settings: ProviderSettings, env: Mapping[str, str]) -> None:
        super().__init__(settings, env)
        self._key = _first(settings.api_key, *(env.get(var) for var in self.key_vars))
        # `headers` (the key's), `http` (the connection pool), `key_hint` and `read_result` are public: the batch
        # wire (openai/batch.py) sends with the same key and pool and reads a batch line's body as a call's answer.
        self.headers = self._auth_headers(settings, env)
        self.base_url = self._base_url(settings, env)
        if userinfo_secrets(self.base_url) and "Authorization" in self.headers:
            # aiohttp sends the URL's user and password as an Authorization header, which the key's would clash
            # with; refused here rather than as an exception in the middle of the run.
            raise ConfigError(f"the base URL carries a user and password, and a key is set for {self.name}: "
                              "use one of them (drop the credentials from the URL, or unset the key)")
        max_connections = int(settings.options.get("max_connections", 1024))
        self.http = HttpClient(self.name, connect_timeout=settings.connect_timeout,
                               max_connections=max_connections)

    # ------------------------------------------------------------ configuration

    def key_hint(self) -> str:
        first, *rest = self.key_vars
        return f"set {first}" + (f" (or {', '.join(rest)})" if rest else "") + " to a valid key"

    def _auth_headers(self, settings: ProviderSettings, env: Mapping[str, str]) -> dict[str, str]:
        if self._key is None:
            if self.key_required:
                raise ConfigError(f"no API key for {self.name}: {self.key_hint()}")
            return {}
        headers = {"Authorization": f"Bearer {self._key}"}
        optional = (("OpenAI-Organization", "OPENAI_ORG_ID"), ("OpenAI-Project", "OPENAI_PROJECT_ID"))
        for header, var in optional:
            value = _first(env.get(var))
            if value:
                headers[header] = value
        return headers

    def _base_url(self, settings: ProviderSettings, env: Mapping[str, str]) -> str:
        return normalize_base_url(
            _first(settings.base_url, *(env.get(var) for var in self.url_vars)) or DEFAULT_BASE_URL
        )

    def endpoint(self, task: Task, model: str) -> tuple[str, dict[str, str] | None]:
        """The URL (and query) for `task` on `model`."""
        return f"{self.base_url}/images/{_ENDPOINTS[task]}", None

    def secrets(self) -> tuple[str, ...]:
        found = (self._key, *self.headers.values(), *userinfo_secrets(self.base_url))
        return tuple(dict.fromkeys(v for v in found if v and len(v) >= 8))

    def spec_for(self, model: str) -> ModelSpec:
        spec = builtin_table().get(model)
        if spec is None:
            return permissive_spec(model, "openai")
        if spec.family != "openai":
            raise ConfigError(
                f"{model} is a {spec.family} model, not an OpenAI one: use --provider {spec.family}"
            )
        return spec

    def plan(self, spec: ModelSpec, params: ImageParams, task: Task) -> WirePlan:
        return plan_openai(spec, params, task, azure=self.azure)

    # ------------------------------------------------------------ the call

    async def call(self, request: ImageRequest, spec: ModelSpec) -> ImageResult:
        secrets = self.secrets()
        try:
            result = await self._call(request, spec)
        except ProviderError as exc:
            raise scrub_error(exc, secrets) from exc.__cause__
        return scrub_result(result, secrets)

    def check(self, request: ImageRequest, spec: ModelSpec) -> None:
        if request.task != "variation":
            check_prompt(spec, request.prompt)
        check_inputs(spec, request.task, request.images, request.mask)

    async def _call(self, request: ImageRequest, spec: ModelSpec) -> ImageResult:
        self.check(request, spec)
        url, query = self.endpoint(request.task, request.model)
        label = f"{self.name} {request.model}"
        data: bytes | aiohttp.FormData
        if request.task == "generate":
            data = orjson.dumps({"model": request.model, "prompt": request.prompt, **request.params})
            headers = {**self.headers, "Content-Type": "application/json"}
        else:
            data = _multipart(request)
            headers = self.headers
        reply = await self.http.send(
            "POST", url, data=data, headers=headers, params=query, time_limit=request.timeout,
            max_bytes=answer_limit(spec, _asked(request, spec), per_image_cap=self.settings.max_download_bytes,
                                   envelope=_ENVELOPE),
            label=label,
        )
        ctx = ErrorContext(label=label, model=request.model, spec=spec, key_hint=self.key_hint(),
                           secrets=self.secrets(), deployment=self._deployment_urls())
        if reply.status != 200:
            raise error_from_reply(reply, ctx)
        request_id = request_id_of(reply)
        answer = parse_json(reply.body, label=label, http_status=200, request_id=request_id)
        if isinstance(answer, dict) and answer.get("error") and not answer.get("data"):
            raise error_from_reply(reply, ctx, error_body=answer)  # Azure: content filter inside a 200
        result = await self.read_result(answer, request, spec, request_id, label)
        if reply.headers.get(EMULATOR_HEADER):  # a rehearsal's image: never a real run's (engine/runner.py)
            result.extra["emulated"] = strip_userinfo(self.base_url)  # done again only for this same emulator
        result.rate_limits = parse_rate_limits(reply.headers)
        return result

    async def read_result(
        self, answer: Any, request: ImageRequest, spec: ModelSpec, request_id: str | None, label: str
    ) -> ImageResult:
        if not isinstance(answer, dict):
            raise malformed(label, "not a JSON object", request_id)
        items = field(answer, "data", list, label=label, request_id=request_id)
        if items is None:
            raise malformed(label, "no `data` list: not an images answer", request_id)
        if not items:
            raise Refused(
                f"{label}: the answer holds no image (no reason given); not retried",
                reason="no_image", http_status=200, request_id=request_id,
            )
        fmt = text(answer.get("output_format"))
        labelled = _FORMAT_MIME.get(fmt.lower()) if fmt else None
        if labelled is None and spec.known and spec.response_formats:
            labelled = "image/png"  # DALL·E answers are PNG
        # What was asked for is kept; a server that sends more is not paid more attention (nor memory).
        asked = _asked(request, spec)
        images: list[GeneratedImage] = []
        for item in items[:asked]:
            images.append(await self._image(item, labelled, request, label, request_id))
        extra: dict[str, Any] = {key: answer[key] for key in _RESPONSE_EXTRA if _scalar(answer.get(key))}
        if len(items) > asked:
            extra["surplus_images"] = len(items) - asked
        if images[0].revised_prompt:
            extra["revised_prompt"] = images[0].revised_prompt
        if request_id:
            extra["request_id"] = request_id
        usage = answer.get("usage")
        return ImageResult(
            images=images,
            usage=usage if isinstance(usage, dict) else None,
            request_id=request_id,
            extra=extra,
        )

    async def _image(self, item: Any, labelled: str | None, request: ImageRequest, label: str,
                     request_id: str | None) -> GeneratedImage:
        """One item of `data`: base64 decoded, or its URL fetched."""
        if not isinstance(item, dict):
            raise malformed(label, "an item of `data` is not an object", request_id)
        revised = text(item.get("revised_prompt"))
        b64 = field(item, "b64_json", str, label=label, request_id=request_id)
        url = field(item, "url", str, label=label, request_id=request_id)
        if b64:
            return GeneratedImage(decode_base64(b64, label=label, request_id=request_id), labelled, revised)
        if url:
            data, mime = await self._fetch(url, request, label, request_id)
            return GeneratedImage(data, mime, revised)
        raise malformed(label, "an image item has neither b64_json nor url", request_id)

    async def _fetch(
        self, url: str, request: ImageRequest, label: str, request_id: str | None
    ) -> tuple[bytes, str | None]:
        """An image given as a URL: downloaded (bounded; public addresses, or the base URL's own server), or
        decoded when a compatible server inlines it as a data URL; a relative URL is resolved against the base
        URL."""
        if url.startswith("data:"):
            head, _, payload = url.partition(",")
            data = decode_base64(payload, label=label, request_id=request_id)
            return data, (head[5:].split(";", 1)[0] or None)
        try:
            absolute = urljoin(self.base_url + "/", url)
        except ValueError:  # "http://[::1" and the like
            raise malformed(label, "an image URL that is not a URL", request_id) from None
        return await self.http.download_image(
            absolute, time_limit=request.timeout,
            max_bytes=self.settings.max_download_bytes, trusted_origin=self.base_url,
        )

    def _deployment_urls(self) -> bool:
        return False

    async def aclose(self) -> None:
        await self.http.aclose()


class OpenAICompatibleProvider(OpenAIProvider):
    """Any server that speaks the OpenAI Images wire (gateways, local servers). Models the table does not
    know get permissive rules; `--param` values pass unchecked. The base URL is required, a key optional."""

    name: ClassVar[str] = "openai-compatible"
    key_required: ClassVar[bool] = False

    def _base_url(self, settings: ProviderSettings, env: Mapping[str, str]) -> str:
        url = _first(settings.base_url, *(env.get(var) for var in self.url_vars))
        if url is None:
            raise ConfigError(
                "openai-compatible needs the server's URL: pass --base-url (or set OPENAI_BASE_URL or "
                "DF_BASE_URL)"
            )
        return normalize_base_url(url)

    def spec_for(self, model: str) -> ModelSpec:
        spec = builtin_table().get(model)
        if spec is None or spec.family != "openai":
            return permissive_spec(model, "openai")
        return spec


class AzureProvider(OpenAIProvider):
    """Azure OpenAI: deployment-scoped URLs with `api-version`, or the v1 API; `api-key` authentication.
    `--model` is the deployment name; the table's rules apply when it matches a model name."""

    name: ClassVar[str] = "azure"
    key_vars: ClassVar[tuple[str, ...]] = ("AZURE_OPENAI_API_KEY", "DF_API_KEY")
    url_vars: ClassVar[tuple[str, ...]] = ("AZURE_OPENAI_ENDPOINT", "DF_BASE_URL")
    azure: ClassVar[bool] = True
    v1: bool = False  # set from the endpoint while resolving it

    def __init__(self, settings: ProviderSettings, env: Mapping[str, str]) -> None:
        self._ad_token = _first(env.get("AZURE_OPENAI_AD_TOKEN"))
        self._v1_opt_in = str(settings.options.get("azure_api", "")).lower() == "v1"
        super().__init__(settings, env)
        # The v1 API takes no dated version; send one there only when the user gave it as a flag.
        self.api_version: str | None = _first(settings.api_version) if self.v1 else (
            _first(settings.api_version, env.get("OPENAI_API_VERSION")) or DEFAULT_AZURE_API_VERSION
        )

    def _auth_headers(self, settings: ProviderSettings, env: Mapping[str, str]) -> dict[str, str]:
        if self._key is not None:
            return {"api-key": self._key}
        if self._ad_token is not None:
            return {"Authorization": f"Bearer {self._ad_token}"}
        raise ConfigError(
            f"no API key for azure: {self.key_hint()} (or AZURE_OPENAI_AD_TOKEN to an Entra ID token), and "
            "AZURE_OPENAI_ENDPOINT to https://<resource>.openai.azure.com"
        )

    def key_hint(self) -> str:
        return "set AZURE_OPENAI_API_KEY (or DF_API_KEY) to a key of the resource"

    def _base_url(self, settings: ProviderSettings, env: Mapping[str, str]) -> str:
        url = _first(settings.base_url, *(env.get(var) for var in self.url_vars))
        if url is None:
            raise ConfigError(
                "azure needs the resource endpoint: set AZURE_OPENAI_ENDPOINT (or pass --base-url) to "
                "https://<resource>.openai.azure.com"
            )
        url = url.rstrip("/")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.query:
            raise ConfigError(f"AZURE_OPENAI_ENDPOINT {url!r} is not like https://<resource>.openai.azure.com")
        self.v1 = self._v1_opt_in or url.endswith("/openai/v1")
        root = url.removesuffix("/openai/v1").removesuffix("/openai")
        return f"{root}/openai/v1" if self.v1 else root

    def endpoint(self, task: Task, model: str) -> tuple[str, dict[str, str] | None]:
        query = {"api-version": self.api_version} if self.api_version else None
        op = _ENDPOINTS[task]
        if self.v1:
            return f"{self.base_url}/images/{op}", query
        return f"{self.base_url}/openai/deployments/{quote(model, safe='')}/images/{op}", query

    def _deployment_urls(self) -> bool:
        return not self.v1

    def spec_for(self, model: str) -> ModelSpec:
        spec = builtin_table().get(model)
        if spec is None or spec.family != "openai":
            return permissive_spec(model, "openai")  # a custom deployment name
        return spec


# ---------------------------------------------------------------- multipart bodies


def _multipart(request: ImageRequest) -> aiohttp.FormData:
    """Edits and variations as multipart/form-data, the way the official SDK sends them."""
    form = aiohttp.FormData()
    form.add_field("model", request.model)
    if request.task == "edit":
        form.add_field("prompt", request.prompt)
    field = "image" if len(request.images) == 1 or request.task == "variation" else "image[]"
    for index, image in enumerate(request.images):
        form.add_field(field, image.data, filename=_filename(image, index), content_type=image.mime)
    if request.mask is not None:
        form.add_field("mask", request.mask.data, filename=_filename(request.mask, 0, "mask"),
                       content_type=request.mask.mime)
    for key, value in request.params.items():
        text = _form_value(value)
        if text is not None:
            form.add_field(key, text)
    return form


def _form_value(value: Any) -> str | None:
    """Form encodings the API reads: true/false, plain numbers, JSON for structures."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return str(value)
    return orjson.dumps(value).decode()


def _filename(image: InputImage, index: int, stem: str = "image") -> str:
    """A safe file name with the extension of the real format (the API reads the type from it too); local
    paths are not sent."""
    ext = _MIME_EXT.get(image.mime, ".bin")
    base = _UNSAFE_NAME.sub("_", image.name.replace("\\", "/").rsplit("/", 1)[-1]).strip("._")[:64]
    base = base.rsplit(".", 1)[0] if "." in base else base
    return f"{base or f'{stem}_{index}'}{ext}"
