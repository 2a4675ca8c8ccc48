"""What one job becomes inside a provider batch: its request body and its ``custom_id``."""

from __future__ import annotations

import hashlib
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

from llmbatch._config.settings import ProviderSettings, RunConfig
from llmbatch._core.jobs import Request
from llmbatch.providers.anthropic import build_anthropic_body
from llmbatch.providers.gemini_wire import build_gemini_body
from llmbatch.providers.openai import OpenAIWire

_CUSTOM_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def request_body(
    settings: ProviderSettings,
    model: str,
    request: Request,
    notes: set[str],
    config: RunConfig | None = None,
) -> dict[str, Any]:
    """Exactly what ``run`` would send, minus the streaming flags and the service tier."""
    if settings.kind == "anthropic":
        body = build_anthropic_body(model, request, settings.structured_output, notes)
    elif settings.kind == "gemini":
        return build_gemini_body(model, request, settings.structured_output, notes, with_model=True)
    else:
        wire = replace(OpenAIWire.of(settings, config or RunConfig(jobs=Path())), service_tier=None)
        body = wire.body(model, request, settings.structured_output, notes)
    body.pop("stream", None)
    body.pop("stream_options", None)
    return body


def custom_id(job_id: str, used: set[str], nonce: str = "") -> str:
    """``JOBID_NONCE`` when the providers accept the job id; else a stable mapped one
    (``m-…``, never rejected). The nonce is the submission's: a result line is written
    only for a custom_id this submission sent, never for another output's batch."""
    room = 64 - (len(nonce) + 1 if nonce else 0)
    cid = (
        job_id
        if _CUSTOM_ID.match(job_id) and len(job_id) <= room
        else "m-" + hashlib.blake2b(job_id.encode(), digest_size=8).hexdigest()
    )
    n = 1
    base = cid
    while cid in used:
        n += 1
        cid = f"{base[: room - 8]}-{n}"
    used.add(cid)
    return f"{cid}_{nonce}" if nonce else cid
