"""The response cache's key: a hash of what the provider sees (SPEC §11).

Provider, base URL, model and the canonical request; the job id joins it only
for sampled requests (temperature unset or above 0).
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


def is_deterministic(request: Request) -> bool:
    """Temperature 0 answers are shared across job ids; sampled ones are not."""
    return request.temperature == 0


def cache_key(
    provider: str,
    base_url: str,
    model: str,
    request: Request,
    job_id: str,
    *,
    settings: Any = None,
) -> str:
    """The sha256 of what the provider sees; the job id joins it for sampled requests.

    ``settings`` is anything else that changes the body on the wire (for example a
    provider's structured-output mode); it must be JSON-serialisable.
    """
    material = {
        "v": KEY_VERSION,
        "provider": provider,
        "base_url": base_url.rstrip("/"),
        "model": model,
        "request": canonical_request(request),
        "settings": settings,
        "job": None if is_deterministic(request) else job_id,
    }
    data = orjson.dumps(material, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
    return hashlib.sha256(data).hexdigest()


def cache_key_for(config: RunConfig, ref: ModelRef, request: Request, job_id: str) -> str:
    """:func:`cache_key` with the provider's base URL and wire settings taken from ``config``."""
    s = config.providers[ref.provider]
    return cache_key(
        ref.provider,
        s.resolved_base_url(),
        ref.model,
        request,
        job_id,
        settings=[s.kind, s.structured_output, s.max_tokens_field],
    )
