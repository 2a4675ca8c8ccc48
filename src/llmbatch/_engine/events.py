"""One request's end, as the runner tells the sinks: its figures to those that count
them, an ``AttemptEnded`` to those that read events."""

from __future__ import annotations

from typing import Any

from llmbatch._core.events import AttemptEnded, AttemptFigures, EventBus
from llmbatch._core.exceptions import ProviderError
from llmbatch._core.jobs import Request
from llmbatch._core.models import ModelRef
from llmbatch._core.usage import Usage
from llmbatch._engine.tally import Sent, Tally
from llmbatch.providers._base import Answer

_NO_USAGE = Usage()


def emit_attempt(
    bus: EventBus, tally: Tally, ref: ModelRef, sent: Sent, backoff: float | None, now: float
) -> None:
    """The attempt, to the sinks: its figures to those that count them, and an
    ``AttemptEnded`` built only when some sink reads it (--log-json, --otlp, yours)."""
    if bus.has_readers:
        bus.emit_to_readers(attempt_ended(tally, ref, sent, backoff, now))
    if bus.counters:
        out = sent.outcome
        u = sent.usage or _NO_USAGE
        outcome = out.error_type if isinstance(out, ProviderError) else "ok"
        bus.count_attempt(
            AttemptFigures(
                now,
                sent.started,
                ref.provider,
                ref.model,
                outcome,
                u.input_tokens,
                u.output_tokens,
                sent.cost,
            )  # fmt: skip
        )


def attempt_ended(
    tally: Tally, ref: ModelRef, sent: Sent, backoff: float | None, now: float
) -> AttemptEnded:
    """One request that went out, with its outcome: exactly one per request."""
    out = sent.outcome
    answer = out if isinstance(out, Answer) else None
    err = out if isinstance(out, ProviderError) else None
    u = sent.usage or _NO_USAGE
    return AttemptEnded(
        ts=now,
        started_ts=sent.started,
        job_id=tally.pj.job.id,
        provider=ref.provider,
        model=ref.model,
        n=tally.attempts,
        outcome=err.error_type if err else "ok",
        http_status=err.status if err else 200,
        latency_ms=answer.latency_ms if answer else None,
        ttft_ms=answer.ttft_ms if answer else None,
        input_tokens=u.input_tokens,
        output_tokens=u.output_tokens,
        cost_usd=sent.cost,
        retry_after_s=err.retry_after if err else None,
        backoff_s=None if backoff is None else round(backoff, 3),
        message=err.message if err else None,
        finish_reason=answer.stop_reason if answer else None,
        repair=sent.repair,
        request_id=out.request_id,
        prompt=_prompt(sent.request),
    )


def _prompt(request: Request | None) -> Any:
    """What --log-prompts puts in the attempt's event: the system prompt and messages sent."""
    if request is None:
        return None
    return {"system": request.system, "messages": request.messages}
