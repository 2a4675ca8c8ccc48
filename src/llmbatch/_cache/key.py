"""The response cache's key: a hash of what the provider sees (SPEC §11).

Provider, base URL, model and the canonical request; the job id joins it unless
the provider was asked for a deterministic answer: a temperature of 0 that was
really sent. Anthropic's API takes no temperature (the adapter drops it), so its
answers are samples and are kept per job id, whatever the job asked for.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from llmbatch._config.settings import RunConfig
    from llmbatch._core.jobs import Request
    from llmbatch._core.models import ModelRef

KEY_VERSION = 1  # bump when the canonical request changes shape: old entries then miss


def canonical_request(request: Request) -> dict[str, Any]:
    """Every field of a request that decides the answer, in one shape for every line shape."""
    return {
        "messages": request.messages,
        "system": request.system,
        "max_tokens": request.max_tokens,
        "temperature": request.temperature,
        "schema": request.schema,
        "wire_format": request.wire_format,
        "body": request.body,  # a Batch-API line's own body, sent as it is
        "appended": request.appended,
    }


class CacheKey(bytes):
    """A key as the cache file stores it (the sha256's first 16 bytes) that knows whether
    its answer is shared across job ids (for ``cache stats``)."""

    shared: bool | None = None


def is_deterministic(request: Request, *, temperature_sent: bool = True) -> bool:
    """Whether the provider was asked for a deterministic answer: temperature 0, sent.

    Only those answers are shared across job ids; sampled ones, and any answer from a
    provider that takes no temperature, are kept per job id.
    """
    return temperature_sent and request.temperature == 0


def cache_key(
    provider: str,
    base_url: str,
    model: str,
    request: Request,
    job_id: str,
    *,
    settings: Any = None,
    temperature_sent: bool = True,
) -> CacheKey:
    """The sha256 of what the provider sees; the job id joins it unless it is shared.

    ``settings`` is anything else that changes the body on the wire (for example a
    provider's structured-output mode); it must be JSON-serialisable.
    ``temperature_sent``: whether the provider receives the request's temperature.
    """
    shared = is_deterministic(request, temperature_sent=temperature_sent)
    material = {
        "v": KEY_VERSION,
        "provider": provider,
        "base_url": base_url.rstrip("/"),
        "model": model,
        "request": canonical_request(request),
        "settings": settings,
        "job": None if shared else job_id,
    }
    data = orjson.dumps(material, option=_SORTED)
    return _key(data, shared)


_SORTED = orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS


def canonical_json(request: Request) -> bytes:
    """:func:`canonical_request` as the key hashes it, keys sorted. Keys that are all
    strings (every request read from JSON) take orjson's fast path: the same bytes,
    in a third less time than with ``OPT_NON_STR_KEYS``, which only a request built
    in Python with other keys needs."""
    canonical = canonical_request(request)
    try:
        return orjson.dumps(canonical, option=orjson.OPT_SORT_KEYS)
    except TypeError:
        return orjson.dumps(canonical, option=_SORTED)


class _SharedKey(CacheKey):
    shared = True


class _OwnKey(CacheKey):
    shared = False


KEY_TYPES = (_SharedKey, _OwnKey)  # what a CacheKey is made as
# A key made for one job id (a sampled answer): in a run, only its own job asks for it,
# once, before its answer is kept (the cache skips asking a new file for it).
OwnKey = _OwnKey


def _key(data: bytes, shared: bool) -> CacheKey:
    return (_SharedKey if shared else _OwnKey)(hashlib.sha256(data).digest()[:16])


def cache_key_for(config: RunConfig, ref: ModelRef, request: Request, job_id: str) -> CacheKey:
    """:func:`cache_key` with the provider's base URL and wire settings taken from ``config``."""
    return KeyMaker(config)(ref, request, job_id)


class KeyMaker:
    """:func:`cache_key_for` for a run: the same bytes hashed, but what is fixed for a model
    (provider, base URL, model, wire settings) is encoded once, not once a job."""

    def __init__(self, config: RunConfig) -> None:
        self.config = config
        self._fixed: dict[ModelRef, tuple[Any, bytes, bytes, bool]] = {}

    def __call__(self, ref: ModelRef, request: Request, job_id: str) -> CacheKey:
        fixed = self._fixed.get(ref)
        if fixed is None:
            head, middle, tail, sent = self._encode_fixed(ref)
            # The head hashed once: each key copies that state (cheaper than a new hash).
            fixed = self._fixed[ref] = (hashlib.sha256(head), middle, tail, sent)
        hashed_head, middle, tail, temperature_sent = fixed
        shared = temperature_sent and request.temperature == 0
        h = hashed_head.copy()
        h.update(
            b"".join(
                (
                    b"null" if shared else orjson.dumps(job_id),
                    middle,
                    canonical_json(request),
                    tail,
                )
            )
        )
        return (_SharedKey if shared else _OwnKey)(h.digest()[:16])

    def _encode_fixed(self, ref: ModelRef) -> tuple[bytes, bytes, bytes, bool]:
        """:func:`cache_key`'s material around the job and the request, as orjson sorts
        it: ``base_url``, ``job``, ``model``, ``provider``, ``request``, ``settings``, ``v``."""
        s = self.config.providers[ref.provider]
        settings = [s.kind, s.structured_output, s.max_tokens_field]

        def enc(value: Any) -> bytes:
            return orjson.dumps(value, option=_SORTED)

        head = b'{"base_url":' + enc(s.resolved_base_url().rstrip("/")) + b',"job":'
        middle = b',"model":' + enc(ref.model) + b',"provider":' + enc(ref.provider)
        tail = b',"settings":' + enc(settings) + b',"v":' + enc(KEY_VERSION) + b"}"
        return head, middle + b',"request":', tail, s.sends_temperature
