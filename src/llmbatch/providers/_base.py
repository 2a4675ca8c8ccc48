"""What every provider adapter offers the engine."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from llmbatch._core.headers import RateLimitHint
from llmbatch._core.jobs import Request
from llmbatch._core.usage import Usage


@dataclass(slots=True)
class Answer:
    """One successful attempt."""

    text: str
    usage: Usage
    stop_reason: str | None
    latency_ms: float
    ttft_ms: float | None
    request_id: str | None = None
    limits: RateLimitHint | None = None


class Provider(Protocol):
    """Sends one request and streams its answer.

    ``send`` returns an Answer or raises a ProviderError subclass; nothing else
    escapes: the built-in providers run each attempt inside
    ``providers._errors.translate_errors``, the one seam for foreign exceptions.
    An error with ``retryable`` set and ``retry_after == 0`` asks to be retried at
    once (the provider changed how it sends, e.g. its structured-output mode).
    """

    name: str
    notes: set[str]  # things the report should say once (e.g. a setting not sent)

    async def send(self, model: str, request: Request, time_limit: float) -> Answer: ...

    async def aclose(self) -> None: ...
