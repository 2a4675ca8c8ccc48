"""``--log-json``: the run's events as one JSON object a line (SPEC §12; README "Event log").

Lines are buffered and written at most a second apart (and at the end of the run),
so a busy run does not write once per request. A line never holds a key — the
sink redacts any value it was told is secret, whatever the event says — and holds
no prompt text unless ``--log-prompts``.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

import orjson

from llmbatch._core.events import (
    AttemptEnded,
    BreakerChanged,
    BudgetStopped,
    CacheHit,
    Event,
    LimitChanged,
    RunEnded,
    RunStarted,
)

REDACTED = "[redacted]"


_SECOND: list[Any] = [None, ""]  # the last second formatted: most events share it


def rfc3339_ms(ts: float) -> str:
    """Wall-clock seconds as RFC 3339 in UTC with milliseconds: 2026-11-28T14:03:07.042Z."""
    secs, ms = divmod(round(ts * 1000), 1000)
    if secs != _SECOND[0]:
        _SECOND[:] = [secs, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs))]
    return f"{_SECOND[1]}.{ms:03d}Z"


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _run_start(e: RunStarted) -> dict[str, Any]:
    return {
        "event": "run_start",
        "ts": rfc3339_ms(e.ts),
        "total": e.total,
        "skipped_done": e.skipped_done,
        "models": list(e.models),
        "concurrency": e.concurrency,
        "jobs": e.jobs,
        "output": e.output,
    }


def _attempt(e: AttemptEnded) -> dict[str, Any]:
    return {
        "event": "attempt",
        "ts": rfc3339_ms(e.ts),
        "started": rfc3339_ms(e.started_ts),
        "job": e.job_id,
        "provider": e.provider,
        "model": e.model,
        "n": e.n,
        "outcome": e.outcome,
        "http_status": e.http_status,
        "latency_ms": _ms(e.latency_ms),
        "ttft_ms": _ms(e.ttft_ms),
        "input_tokens": e.input_tokens,
        "output_tokens": e.output_tokens,
        "cost_usd": None if e.cost_usd is None else round(e.cost_usd, 8),
        "retry_after_s": e.retry_after_s,
        "backoff_s": None if e.backoff_s is None else round(e.backoff_s, 3),
        "finish_reason": e.finish_reason,
        "repair": e.repair,
        "request_id": e.request_id,
        "message": e.message,
    }


def _limit_change(e: LimitChanged) -> dict[str, Any]:
    return {
        "event": "limit_change",
        "ts": rfc3339_ms(e.ts),
        "model": e.model,
        "rpm_before": e.rpm_before,
        "rpm_after": e.rpm_after,
        "reason": e.reason,
    }


def _breaker(e: BreakerChanged) -> dict[str, Any]:
    return {
        "event": "breaker",
        "ts": rfc3339_ms(e.ts),
        "model": e.model,
        "state": e.state,
        "consecutive_failures": e.consecutive_failures,
    }


def _budget_stop(e: BudgetStopped) -> dict[str, Any]:
    return {
        "event": "budget_stop",
        "ts": rfc3339_ms(e.ts),
        "reason": e.reason,
        "message": e.message,
        "resets_at": None if e.resets_at is None else rfc3339_ms(e.resets_at),
    }


def _cache_hit(e: CacheHit) -> dict[str, Any]:
    return {
        "event": "cache_hit",
        "ts": rfc3339_ms(e.ts),
        "job": e.job_id,
        "provider": e.provider,
        "model": e.model,
        "saved_usd": e.saved_usd,
    }


def _run_end(e: RunEnded) -> dict[str, Any]:
    return {
        "event": "run_end",
        "ts": rfc3339_ms(e.ts),
        "exit_code": e.exit_code,
        "report": e.report.to_dict(),
    }


# AttemptStarted and JobEnded are not logged: an attempt is one line when it ends,
# and the result file already has one line per job.
_LINES: dict[type, Callable[[Any], dict[str, Any]]] = {
    RunStarted: _run_start,
    AttemptEnded: _attempt,
    LimitChanged: _limit_change,
    BreakerChanged: _breaker,
    BudgetStopped: _budget_stop,
    CacheHit: _cache_hit,
    RunEnded: _run_end,
}


class JsonEventLog:
    """An EventSink writing JSON lines to a file (appended) or, for ``"-"``, to stderr."""

    def __init__(
        self,
        path: str | Path,
        *,
        log_prompts: bool = False,
        secrets: Iterable[str] = (),
        flush_interval_s: float = 1.0,
        flush_bytes: int = 1 << 16,
    ) -> None:
        self.log_prompts = log_prompts
        # Short values would redact ordinary words; real keys are long.
        self._secrets = [s.encode() for s in secrets if s and len(s) >= 8]
        self._flush_interval = flush_interval_s
        self._flush_bytes = flush_bytes
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._last_flush = 0.0
        self._run: str | None = None
        self._file: IO[bytes] | None = None
        self._to_stderr = str(path) == "-"
        if not self._to_stderr:
            p = Path(path)
            p.parent.mkdir(parents=True, exist_ok=True)
            self._file = p.open("ab")
        self.closed = False

    def emit(self, event: Event) -> None:
        make = _LINES.get(type(event))
        if make is None or self.closed:
            return
        if isinstance(event, RunStarted):
            self._run = os.urandom(8).hex()
            self._last_flush = event.ts
        line = make(event)
        if self._run is not None:
            line["run"] = self._run
        if self.log_prompts and isinstance(event, AttemptEnded) and event.prompt is not None:
            line["prompt"] = event.prompt
        raw = orjson.dumps(line, option=orjson.OPT_APPEND_NEWLINE | orjson.OPT_NON_STR_KEYS)
        for secret in self._secrets:
            if secret in raw:
                raw = raw.replace(secret, REDACTED.encode())
        self._buffer.append(raw)
        self._buffered += len(raw)
        if isinstance(event, RunEnded):
            self.close()
        elif self._buffered >= self._flush_bytes or event.ts - self._last_flush >= (
            self._flush_interval
        ):
            self._last_flush = event.ts
            self.flush()

    def flush(self) -> None:
        if not self._buffer:
            return
        data = b"".join(self._buffer)
        self._buffer.clear()
        self._buffered = 0
        if self._file is not None:
            self._file.write(data)
            self._file.flush()
        elif self._to_stderr:
            sys.stderr.write(data.decode())
            sys.stderr.flush()

    def close(self) -> None:
        """Write what is buffered and let go of the file; later events are ignored."""
        if self.closed:
            return
        self.closed = True
        try:
            self.flush()
        finally:
            if self._file is not None:
                self._file.close()
                self._file = None
