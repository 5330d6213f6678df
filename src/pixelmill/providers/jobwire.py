"""Wire helpers that the remote-job providers share (fal, Black Forest Labs; Replicate and Hugging Face may use
them too): credentials and base URLs, which URLs an answer may send the key to, input images as data URIs,
media fetched without the key, FastAPI-style error bodies, and the answer of a submit or a poll read as JSON.

Public API (small and stable):

    first(*values)                                   -> str | None   (the first non-blank value, stripped)
    resolve_key(settings, env, ("FAL_KEY", "DF_API_KEY"), provider="fal")   -> str  (ConfigError when none)
    job_base_url(url, provider=..., example=..., version="v1")  -> "https://api.bfl.ai/v1" (version added or kept)
    provider_url(url, base) -> bool       (may this URL from an answer carry the key? see the rule below)
    data_uri(image)                                  -> "data:image/png;base64,..."
    await fetch_media(http, url, time_limit=..., max_bytes=..., trusted_origin=..., label=...) -> (bytes, mime)
                                                     (a URL answering 403/404/410: MediaGone, a ResultLost)
    submit_answer(reply, label=...)                  -> dict   (a 2xx whose body is no JSON object: UnknownOutcome)
    poll_answer(reply, label=...)                    -> dict   (not JSON: TransientError; polls are free)
    quiet_poll(exc)                                  -> TransientError (a poll's transport failure, never billed)
    detail_fields(body)                              -> Detail(message, field, type, categories)
    KeyedJobProvider                                 (base class: key, base URL, connection pool, secrets,
                                                      model look-up of one family)

The key rule (`provider_url`). URLs an answer hands back are followed exactly as given; the key goes only to the
provider's own API: the base URL's host itself, or a host of the same site, that is the same registrable domain
(its last two labels, `bfl.ai` for `api.bfl.ai`, so `api.us1.bfl.ai` gets the key and `bfl.ai.evil.example`
does not; three labels under a two-letter country code with a short second level, `example.co.uk`). An IP
address only matches itself, except that a base URL on loopback (the emulator, a local gateway) trusts every
loopback host. An https base never sends the key over plain http. A URL that fails the rule is not followed at
all (the provider cannot be polled without its key): the job is reported as paid and its result out of reach.
The AI SDK's rule for BFL (the `bfl.ai` family) is the same for BFL's own hosts; ours extends to any base URL.

Media URLs (generated images) never carry the key and are fetched under `providers/http.py`'s download policy:
the size cap, public addresses only (or the provider's own server, `trusted_origin`), redirects checked.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import urlsplit

import orjson
import pybase64

from pixelmill.errors import ConfigError, ResultLost, TransientError, UnknownOutcome, redact_clip
from pixelmill.models.table import Family, ModelSpec, builtin_table, permissive_spec
from pixelmill.netpolicy import userinfo_secrets
from pixelmill.providers.base import InputImage, JobProvider, ProviderSettings
from pixelmill.providers.boundary import code, seq, text
from pixelmill.providers.http import HttpClient, Reply, decode_base64, parse_json, sniff_image_mime

__all__ = ["Detail", "KeyedJobProvider", "MediaGone", "data_uri", "detail_fields", "fetch_media", "first",
           "job_base_url", "poll_answer", "provider_url", "quiet_poll", "resolve_key", "submit_answer"]

_MAX_MESSAGE = 400


class KeyedJobProvider(JobProvider):
    """What the remote-job providers share before their wire: the key (`key_variables`, then DF_API_KEY), the base
    URL (`base_url_of`), one connection pool, the secrets a message must never show, and the model look-up of one
    family (a model of another family is refused naming its provider; an unknown id goes to the provider as is)."""

    family: ClassVar[Family]
    key_variables: ClassVar[tuple[str, ...]]  # the environment variables of the key, in order (DF_API_KEY last)
    key_where: ClassVar[str]  # where a user makes a key (said when none is found)
    display: ClassVar[str]  # the provider's name in a sentence ("fal", "BFL", "Replicate")
    other_model: ClassVar[str]  # what to give instead of another family's model ("a BFL model")

    def __init__(self, settings: ProviderSettings, env: Mapping[str, str]) -> None:
        super().__init__(settings, env)
        self._key = resolve_key(settings, env, self.key_variables, provider=self.name, where=self.key_where)
        self.base_url = self.base_url_of(settings, env)
        self._http = HttpClient(self.name, connect_timeout=settings.connect_timeout,
                                max_connections=int(settings.options.get("max_connections", 1024)))

    def base_url_of(self, settings: ProviderSettings, env: Mapping[str, str]) -> str:
        raise NotImplementedError

    def key_parts(self) -> tuple[str, ...]:
        """Parts of the key that are secrets on their own (fal's `id:secret`)."""
        return ()

    def secrets(self) -> tuple[str, ...]:
        found = (self._key, *self.key_parts(), *userinfo_secrets(self.base_url))
        return tuple(dict.fromkeys(v for v in found if v and len(v) >= 8))

    def spec_for(self, model: str) -> ModelSpec:
        spec = builtin_table().get(model)
        if spec is None:
            return permissive_spec(model, self.family)  # an endpoint the table does not know: the provider decides
        if spec.family != self.family:
            raise ConfigError(f"{model} is a {spec.family} model, not a {self.display} one: use --provider "
                              f"{spec.family}, or {self.other_model} (`pixelmill models --provider {self.name}` "
                              "lists them)")
        return spec

    async def aclose(self) -> None:
        await self._http.aclose()

    def _label(self, model: str) -> str:
        return f"{self.name} {model}"


def first(*values: str | None) -> str | None:
    for value in values:
        if value and value.strip():
            return value.strip()
    return None


def resolve_key(settings: ProviderSettings, env: Mapping[str, str], variables: tuple[str, ...], *,
                provider: str, where: str = "") -> str:
    """`--api-key`, else the first of `variables` that is set. `ConfigError` naming them when none is."""
    key = first(settings.api_key, *(env.get(var) for var in variables))
    if key is None:
        listed = variables[0] + (f" (or {', '.join(variables[1:])})" if len(variables) > 1 else "")
        raise ConfigError(f"no API key for {provider}: set {listed} or pass --api-key" + (f"; {where}" if where
                                                                                          else ""))
    return key


def job_base_url(url: str, *, provider: str, example: str, version: str | None = None) -> str:
    """The base URL without a trailing slash; with `version` ("v1"), the version segment added when the URL does
    not end in it already (`https://api.bfl.ai` and `https://api.bfl.ai/v1/` both give `https://api.bfl.ai/v1`)."""
    base = url.strip().rstrip("/")
    parts = urlsplit(base)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"{provider} base URL {url!r} is not an http(s) URL: give one like {example}")
    if parts.query or parts.fragment:
        raise ConfigError(f"the {provider} base URL must not carry a query or fragment: give one like {example}")
    if version and not base.endswith("/" + version):
        base += "/" + version
    return base


def provider_url(url: str, base: str) -> bool:
    """Whether `url`, handed back by an answer, is the provider's own API (and so may carry the key): see the
    module docstring for the rule."""
    try:
        target, origin = urlsplit(url), urlsplit(base)
        target_host, origin_host = (target.hostname or "").lower(), (origin.hostname or "").lower()
        target.port  # noqa: B018 - a port that is not a number raises here
    except ValueError:
        return False
    if target.scheme not in ("http", "https") or not target_host or "@" in target.netloc:
        return False
    if origin.scheme == "https" and target.scheme != "https":
        return False  # never downgrade the key to plain http
    if target_host == origin_host:
        return True
    target_ip, origin_ip = _ip(target_host), _ip(origin_host)
    if origin_ip is not None or origin_host == "localhost":
        loopback = origin_host == "localhost" or (origin_ip is not None and origin_ip.is_loopback)
        return loopback and (target_host == "localhost" or (target_ip is not None and target_ip.is_loopback))
    if target_ip is not None:
        return False
    site = _site(origin_host)
    return site is not None and (target_host == site or target_host.endswith("." + site))


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def _site(host: str) -> str | None:
    """The registrable domain of a DNS name: its last two labels, or three under a two-letter country code
    whose second level is short (`co.uk`, `com.au`). None for a single-label name."""
    labels = [label for label in host.split(".") if label]
    if len(labels) < 2:
        return None
    keep = 3 if len(labels) >= 3 and len(labels[-1]) == 2 and len(labels[-2]) <= 3 else 2
    return ".".join(labels[-keep:])


def data_uri(image: InputImage) -> str:
    """An input image inline, as fal and BFL take it (`data:image/png;base64,...`)."""
    return f"data:{image.mime};base64,{pybase64.b64encode(image.data).decode()}"


async def fetch_media(http: HttpClient, url: str, *, time_limit: float, max_bytes: int,
                      trusted_origin: str | None, label: str, request_id: str | None = None) -> tuple[bytes, str]:
    """A generated image given as a URL (fetched without the key, under the download policy) or as a data URI
    (decoded, within the same size cap)."""
    if url.startswith("data:"):
        head, comma, payload = url.partition(",")
        if not comma or ";base64" not in head or len(payload) > max_bytes * 4 // 3 + 4:
            raise TransientError(f"{label}: the answer's image data URI is not base64 or is over {max_bytes} "
                                 "bytes", maybe_billed=True, request_id=request_id)
        data = decode_base64(payload, label=label, request_id=request_id)
        mime = sniff_image_mime(data)
        if mime is None:
            raise TransientError(f"{label}: the answer's data URI holds {len(data)} bytes that are not an image",
                                 maybe_billed=True, request_id=request_id)
        return data, mime
    try:
        return await http.download_image(url, time_limit=time_limit, max_bytes=max_bytes,
                                         trusted_origin=trusted_origin)
    except TransientError as exc:
        if exc.http_status in _GONE:
            raise MediaGone(f"{label}: the generated image's URL answered HTTP {exc.http_status}: it has expired",
                            http_status=exc.http_status, request_id=request_id) from None
        raise


class MediaGone(ResultLost):
    """A generated image whose URL no longer serves it (403, 404, 410: a signed URL or media lifetime that ran out):
    the job was paid and its result is lost. The provider words the message for its job."""


_GONE = frozenset({403, 404, 410})


def submit_answer(reply: Reply, *, label: str, request_id: str | None = None) -> dict[str, Any]:
    """A submit's 2xx answer as a JSON object. A body that is not one means the job was probably created and its
    handle lost: `UnknownOutcome` (the engine records it as possibly billed; it never submits blindly again)."""
    try:
        answer = orjson.loads(reply.body)
    except orjson.JSONDecodeError:
        answer = None
    if not isinstance(answer, dict):
        raise UnknownOutcome(f"{label}: the submit was accepted (HTTP {reply.status}) but its answer is not a "
                             "JSON object, so the job's handle is unknown: it may have been billed",
                             http_status=reply.status, request_id=request_id)
    return answer


def poll_answer(reply: Reply, *, label: str, request_id: str | None = None) -> dict[str, Any]:
    """A poll's answer as a JSON object; anything else is a `TransientError` (polled again, never billed)."""
    answer = parse_json(reply.body, label=label, request_id=request_id)
    if not isinstance(answer, dict):
        raise TransientError(f"{label}: the status answer is not a JSON object; polling again",
                             http_status=reply.status, request_id=request_id)
    return answer


def quiet_poll(exc: TransientError) -> TransientError:
    """A poll's transport failure as a plain `TransientError`: a poll creates nothing and costs nothing, so a lost
    answer is not an unknown outcome."""
    if isinstance(exc, UnknownOutcome) or exc.maybe_billed:
        return TransientError(str(exc).replace(": the provider may have billed it", ""),
                              http_status=exc.http_status, request_id=exc.request_id, code=exc.code)
    return exc


@dataclass(frozen=True, slots=True)
class Detail:
    """What an error body says, in the FastAPI shape (`{"detail": [{loc, msg, type}]}` or `{"detail": "text"}`)
    that fal and BFL use, or `{"message"|"error": ...}`."""

    message: str = ""
    field: str | None = None  # the first validation error's field ("prompt", "image_size.width")
    type: str | None = None  # its machine code ("missing", "content_policy_violation")
    error_type: str | None = None  # fal's request-error category (`error_type`)
    categories: tuple[str, ...] = ()


def detail_fields(body: bytes | Any, secrets: tuple[str, ...] = ()) -> Detail:
    if isinstance(body, bytes | bytearray):
        try:
            body = orjson.loads(body)
        except orjson.JSONDecodeError:
            return Detail(message=_clip(bytes(body[:65536]).decode("utf-8", "replace"), secrets))
    if not isinstance(body, dict):
        return Detail(message=_clip(orjson.dumps(body).decode(), secrets) if body is not None else "")
    detail = body.get("detail")
    error_type = code(body.get("error_type"))
    items = [item for item in seq(detail) if isinstance(item, dict)]
    if items:
        item = items[0]
        loc = [str(part) for part in seq(item.get("loc")) if isinstance(part, str | int)]
        if loc and loc[0] in ("body", "query"):
            loc = loc[1:]
        categories = tuple(c for c in (code(x) for x in seq(item.get("categories"))) if c)[:16]
        message = "; ".join(_clip(text(i.get("msg")) or "", secrets) for i in items[:3] if text(i.get("msg")))
        return Detail(message=message, field=".".join(loc) or None, type=code(item.get("type")),
                      error_type=error_type, categories=categories)
    said = text(detail) or text(body.get("message")) or text(body.get("error"))
    if said is None and isinstance(body.get("error"), dict):
        said = text(body["error"].get("message"))
    return Detail(message=_clip(said or "", secrets), type=code(body.get("error")) if text(body.get("message"))
                  else None, error_type=error_type)


def _clip(value: str, secrets: tuple[str, ...]) -> str:
    return redact_clip(value, _MAX_MESSAGE, secrets)
