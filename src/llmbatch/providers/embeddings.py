"""Embeddings on the wire: OpenAI ``/v1/embeddings`` (Azure, compatible servers), Gemini
``batchEmbedContents``, and the simulator's deterministic vectors.

``embed(provider, model, texts, dimensions, time_limit)`` sends one request for
``texts`` and returns an ``Embedded`` (a float32 matrix, one row per text). Like a
chat attempt it raises ProviderError subclasses only: the HTTP ones run inside
the same error seam (``translate_errors``) and read error bodies the same way.
OpenAI is asked for ``encoding_format: "base64"`` (a quarter of the bytes of JSON
floats), decoded with ``numpy.frombuffer``.
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import anyio
import orjson

from llmbatch._core.embed import decode_vectors
from llmbatch._core.exceptions import ProviderError, RateLimited, UsageError
from llmbatch._core.headers import RateLimitHint
from llmbatch.providers._errors import translate_errors, unexpected_shape
from llmbatch.providers._http import _TIME_LIMIT, HttpProvider

if TYPE_CHECKING:
    from llmbatch._config.settings import ProviderSettings, RunConfig
    from llmbatch.providers._base import Provider

SIM_DIMENSIONS = 256  # the simulator's vectors when a job names no dimensions
_REFUSES_BASE64 = re.compile(r"encoding_format|base64", re.IGNORECASE)
_FLOAT_NOTE = "the server refused encoding_format base64: embeddings were asked as JSON floats"


@dataclass(slots=True)
class Embedded:
    """One embeddings answer: a float32 matrix (row i: texts[i]) and its usage."""

    vectors: Any
    tokens: int
    latency_ms: float
    request_id: str | None = None
    limits: RateLimitHint | None = None


def can_embed(provider: Provider) -> bool:
    kind = _kind(provider)
    return kind is not None


def _kind(provider: Any) -> str | None:
    from llmbatch.providers.gemini import GeminiProvider
    from llmbatch.providers.openai import OpenAIProvider
    from llmbatch.providers.sim import SimProvider

    if isinstance(provider, SimProvider):
        return "sim"
    if isinstance(provider, OpenAIProvider):
        return "openai"
    if isinstance(provider, GeminiProvider):
        return "gemini"
    return None


async def embed(
    provider: Provider, model: str, texts: list[str], dimensions: int | None, time_limit: float
) -> Embedded:
    """One embeddings request through ``provider``; raises ProviderError subclasses only."""
    own = getattr(provider, "embed", None)
    if own is not None:  # a provider of the caller's own (tests, plugins)
        result: Embedded = await own(model, texts, dimensions, time_limit)
        return result
    kind = _kind(provider)
    if kind == "sim":
        return await sim_embed(provider, model, texts, dimensions, time_limit)
    if kind is None:
        raise UsageError(f"provider {provider.name} cannot embed")
    assert isinstance(provider, HttpProvider)
    _TIME_LIMIT.set(time_limit)
    with translate_errors(
        key=provider.api_key,
        idle_timeout=provider.idle_timeout,
        timeout_message=f"no complete answer within --timeout {time_limit:g} s",
    ):
        if kind == "gemini":
            return await _gemini(provider, model, texts, dimensions)
        return await _openai(provider, model, texts, dimensions)


class _Whole:
    """An EventStream that takes the one JSON body an embeddings endpoint answers with."""

    done = False

    def __init__(self) -> None:
        self.body: bytes | None = None

    def feed(self, event: Any) -> None:  # not a stream: a server that streams is wrong
        raise unexpected_shape("an event stream where a JSON body was expected")

    def whole(self, raw: bytes) -> None:
        self.body = raw


async def _post(
    provider: HttpProvider, url: str, body: dict[str, Any], headers: dict[str, str]
) -> tuple[Any, RateLimitHint | None, str | None, float]:
    started = time.perf_counter()
    stream = _Whole()
    hint, request_id = await provider._exchange(url, body, headers, stream)
    if stream.body is None:
        raise unexpected_shape("an empty answer")
    try:
        obj = orjson.loads(stream.body)
    except orjson.JSONDecodeError:
        raise unexpected_shape(stream.body[:200].decode("utf-8", "replace")) from None
    return obj, hint, request_id, (time.perf_counter() - started) * 1000


def openai_url(provider: Any, model: str) -> str:
    return openai_url_of(provider.wire, model)


def openai_url_of(wire: Any, model: str) -> str:
    """The embeddings URL of an ``OpenAIWire`` (Azure by deployment or the v1 path)."""
    if wire.deployment_path:
        path = f"/deployments/{quote(model, safe='')}/embeddings"
        return f"{wire.base_url}{path}?api-version={wire.api_version}"
    return f"{wire.base_url}/embeddings"


def openai_body(
    model: str, texts: list[str], dimensions: int | None, encoding: str = "base64"
) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "input": texts, "encoding_format": encoding}
    if dimensions is not None:
        body["dimensions"] = dimensions
    return body


async def _openai(provider: Any, model: str, texts: list[str], dimensions: int | None) -> Embedded:
    headers = {**provider.headers, "accept": "application/json"}
    # A server that refuses base64 (some compatible ones) is asked for floats from then on.
    encoding = "float" if provider.notes & {_FLOAT_NOTE} else "base64"
    body = openai_body(model, texts, dimensions, encoding)
    try:
        obj, hint, request_id, ms = await _post(
            provider, openai_url(provider, model), body, headers
        )
    except ProviderError as err:
        if encoding == "base64" and err.status == 400 and _REFUSES_BASE64.search(err.message):
            provider.notes.add(_FLOAT_NOTE)
            err.retryable, err.retry_after, err.retry_now = True, 0.0, True
        raise
    data = obj.get("data") if isinstance(obj, dict) else None
    if not isinstance(data, list) or len(data) != len(texts):
        got = len(data) if isinstance(data, list) else "no"
        raise unexpected_shape(f"{got} embeddings for {len(texts)} inputs")
    if any(item.get("index", i) != i for i, item in enumerate(data)):
        data = sorted(data, key=lambda item: item.get("index", 0))
    vectors = decode_vectors(data)
    usage = obj.get("usage") or {}
    tokens = usage.get("prompt_tokens") or usage.get("total_tokens") or 0
    return Embedded(vectors, int(tokens), ms, request_id, hint)


def gemini_body(model: str, texts: list[str], dimensions: int | None) -> dict[str, Any]:
    from llmbatch.providers.gemini_wire import model_path

    one: dict[str, Any] = {"model": model_path(model)}
    if dimensions is not None:
        one["outputDimensionality"] = dimensions
    return {"requests": [{**one, "content": {"parts": [{"text": t}]}} for t in texts]}


def preview(
    settings: ProviderSettings, config: RunConfig, model: str, texts: list[str], dims: int | None
) -> tuple[str | None, dict[str, Any]]:
    """(URL, body) of one embeddings request, for ``--dry-run`` (the key goes in no URL;
    sim answers locally: no URL, the body in the OpenAI shape)."""
    if settings.kind == "gemini":
        from llmbatch.providers.gemini_wire import model_url

        url = model_url(settings.resolved_base_url(), model, "batchEmbedContents")
        return url, gemini_body(model, texts, dims)
    body = openai_body(model, texts, dims)
    if settings.kind in ("openai", "azure"):
        from llmbatch.providers.openai import OpenAIWire

        return openai_url_of(OpenAIWire.of(settings, config), model), body
    return None, body


async def _gemini(provider: Any, model: str, texts: list[str], dimensions: int | None) -> Embedded:
    from llmbatch.providers.gemini_wire import model_url

    headers = {**provider.headers, "accept": "application/json"}
    url = model_url(provider.base_url, model, "batchEmbedContents")
    body = gemini_body(model, texts, dimensions)
    obj, hint, request_id, ms = await _post(provider, url, body, headers)
    items = obj.get("embeddings") if isinstance(obj, dict) else None
    if not isinstance(items, list) or len(items) != len(texts):
        raise unexpected_shape(f"no embeddings for {len(texts)} inputs")
    vectors = decode_vectors(items, "values")
    tokens = sum(max(1, len(t) // 4) for t in texts)  # Gemini reports none: an estimate
    return Embedded(vectors, tokens, ms, request_id, hint)


# -- the simulator ------------------------------------------------------------------


async def sim_embed(
    provider: Any, model: str, texts: list[str], dimensions: int | None, time_limit: float
) -> Embedded:
    """Deterministic unit vectors from each text's hash (numpy, no Python float a dimension)."""
    started = time.perf_counter()
    fail_rate = getattr(provider, "fail_rate", 0.0)
    if fail_rate and provider._faults.random() < fail_rate:
        raise RateLimited("simulated 429", status=429, retry_after=None)
    if getattr(provider, "latency_ms", 0) > 0:
        await provider._sleep(1.0, time_limit)
    else:
        await anyio.lowlevel.checkpoint()
    # The vectors after the wait, as a server's arrive: made before it, every request
    # in flight held a matrix it had no use for yet (16 × 2 MiB more at the peak).
    vectors = sim_vectors(model, texts, dimensions or SIM_DIMENSIONS)
    tokens = sum(len(t) for t in texts) // 4 + len(texts)
    return Embedded(vectors, tokens, (time.perf_counter() - started) * 1000)


def sim_vectors(model: str, texts: list[str], dim: int) -> Any:
    import numpy as np

    salt = model.encode()
    digests = b"".join(
        hashlib.blake2b(t.encode(), digest_size=8, key=salt[:64]).digest() for t in texts
    )
    seeds = np.frombuffer(digests, dtype="<u8").reshape(-1, 1)
    steps = np.arange(1, dim + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    out = np.empty((len(texts), dim), dtype=np.float32)
    # A few hundred rows at a time, in place: the uint64 scratch stays small (it was
    # several n × dim × 8-byte temporaries, the largest allocations of a sim run).
    rows = max(1, (256 << 10) // (8 * dim))
    z = np.empty((min(rows, len(texts)), dim), dtype=np.uint64)
    t = np.empty_like(z)
    for at in range(0, len(texts), rows):
        n = min(rows, len(texts) - at)
        zz, tt = z[:n], t[:n]
        np.bitwise_xor(seeds[at : at + n], steps, out=zz)
        for shift, mul in ((30, 0xBF58476D1CE4E5B9), (27, 0x94D049BB133111EB)):
            np.right_shift(zz, np.uint64(shift), out=tt)
            zz ^= tt
            zz *= np.uint64(mul)
        np.right_shift(zz, np.uint64(31), out=tt)
        zz ^= tt
        zz >>= np.uint64(40)
        block = out[at : at + n]
        block[:] = zz
        block *= np.float32(2.0 / (1 << 24))
        block -= np.float32(1.0)
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out


__all__ = ["Embedded", "ProviderError", "can_embed", "embed", "sim_vectors"]
