"""``--otlp URL``: the run as OpenTelemetry spans over OTLP/HTTP.

One trace per run: a ``llmbatch run`` span, a ``llmbatch job`` span per job under
it, and a ``chat MODEL`` span per attempt under its job, with the GenAI semantic
conventions' attributes (``gen_ai.*``, ``error.type``) and ``llmbatch.cost_usd``.
Prompts and answers are never put in spans.

Every span's times and attributes come from the events, so no live span is ever
needed: an ended attempt or job is appended, as its event or a plain record, to a
queue that a background thread encodes (``_otlp_encode``) and POSTs
(``_otlp_http``) once a second or every ``batch_spans`` spans. Neither the SDK nor
``requests`` nor protobuf is imported: together they cost a run more CPU than all
its spans (README, "OpenTelemetry"); the official packages are the reference the
tests hold these bytes and requests to. A slow or absent collector never holds the
run up; at the end what is queued is flushed, for a bounded time.
"""

from __future__ import annotations

import os
import random
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

from llmbatch._core.events import (
    AttemptEnded,
    AttemptStarted,
    BreakerChanged,
    BudgetStopped,
    CacheHit,
    Event,
    JobEnded,
    LimitChanged,
    RunEnded,
    RunStarted,
)
from llmbatch._core.keys import without_credentials
from llmbatch._observe.jsonlog import REDACTED
from llmbatch._observe.otlp_encode import (
    KIND_INTERNAL,
    JobSpan,
    SpanRecord,
    encode_attempt,
    encode_job,
    encode_record,
    encode_request,
    resource_and_scope,
)

TRACES_PATH = "/v1/traces"


class Sender(Protocol):
    """Takes one encoded ExportTraceServiceRequest; says whether the collector took it."""

    last_error: str | None

    def send(self, body: bytes) -> bool: ...

    def close(self) -> None: ...


def traces_url(endpoint: str) -> str:
    """A collector's base URL gets the OTLP traces path; a full traces URL is kept."""
    if urlsplit(endpoint).path.rstrip("/").endswith(TRACES_PATH):
        return endpoint
    return endpoint.rstrip("/") + TRACES_PATH


def _ns(ts: float) -> int:
    return int(ts * 1e9)


def _warn_stderr(message: str) -> None:
    sys.stderr.write(f"llmbatch: warning: {message}\n")


def _span_id() -> bytes:
    while True:  # all zeroes is OTLP's "no span"
        span_id = random.randbytes(8)
        if span_id != b"\0\0\0\0\0\0\0\0":
            return span_id


def resource_attributes(version: str, environ: dict[str, str] | None = None) -> dict[str, Any]:
    """The process's resource, as the SDK builds it from OTEL_RESOURCE_ATTRIBUTES and
    OTEL_SERVICE_NAME; ``service.name`` defaults to ``llmbatch``."""
    env = os.environ if environ is None else environ
    attrs: dict[str, Any] = {
        "telemetry.sdk.language": "python",
        "telemetry.sdk.name": "llmbatch",
        "telemetry.sdk.version": version,
    }
    for item in env.get("OTEL_RESOURCE_ATTRIBUTES", "").split(","):
        key, sep, value = item.partition("=")
        if sep and key.strip():
            attrs[key.strip()] = unquote(value.strip())
    attrs["service.name"] = env.get("OTEL_SERVICE_NAME") or attrs.get("service.name") or "llmbatch"
    attrs["service.version"] = version
    return attrs


@dataclass(slots=True)
class _Open:
    """The run's span, begun but not ended: what it will be built from."""

    span_id: bytes
    start_ns: int
    attributes: dict[str, Any]
    events: list[tuple[str, int, dict[str, Any]]] = field(default_factory=list)


def _run_event(
    e: LimitChanged | BreakerChanged | BudgetStopped, redact: Callable[[str], str]
) -> tuple[str, int, dict[str, Any]]:
    if isinstance(e, LimitChanged):
        attrs: dict[str, Any] = {"llmbatch.model": e.model, "llmbatch.reason": e.reason}
        if e.rpm_before is not None:
            attrs["llmbatch.rpm_before"] = e.rpm_before
        if e.rpm_after is not None:
            attrs["llmbatch.rpm_after"] = e.rpm_after
        return "limit_change", _ns(e.ts), attrs
    if isinstance(e, BreakerChanged):
        attrs = {
            "llmbatch.model": e.model,
            "llmbatch.state": e.state,
            "llmbatch.consecutive_failures": e.consecutive_failures,
        }
        return "breaker", _ns(e.ts), attrs
    attrs = {"llmbatch.reason": e.reason, "llmbatch.message": redact(e.message)}
    return "budget_stop", _ns(e.ts), attrs


# What the queue holds: an attempt (event, span id, parent id), a job's span, the run's.
_Item = tuple[AttemptEnded, bytes, bytes] | JobSpan | SpanRecord


class OtelExporter:
    """An EventSink turning the run's events into spans, exported over OTLP/HTTP."""

    wants_started = True

    def __init__(
        self,
        endpoint: str,
        *,
        sender: Sender | None = None,
        secrets: Iterable[str] = (),
        close_timeout_s: float = 10.0,
        export_timeout_s: float = 5.0,
        warn: Callable[[str], None] = _warn_stderr,
        interval_s: float = 1.0,
        batch_spans: int = 2048,
        max_queued: int = 1 << 16,
    ) -> None:
        from llmbatch import __version__

        self.endpoint = traces_url(endpoint)
        self._shown = without_credentials(self.endpoint)  # what warnings may print
        userinfo = urlsplit(self.endpoint).netloc.rpartition("@")[0]
        self._hidden = [p for p in (userinfo, *userinfo.split(":")) if len(p) >= 4]
        if sender is None:
            from llmbatch._observe.otlp_http import HttpSender

            sender = HttpSender(self.endpoint, export_timeout_s)
        self._sender = sender
        self._secrets = [s for s in secrets if s and len(s) >= 8]
        self._close_timeout = close_timeout_s
        self._warn = warn
        self._resource, self._scope = resource_and_scope(
            resource_attributes(__version__), "llmbatch", __version__
        )
        self.trace_id = random.randbytes(15) + b"\x01"  # never all zeroes
        self._trace_field = b"\x0a\x10" + self.trace_id
        self._run: _Open | None = None
        self._jobs: dict[str, JobSpan] = {}
        self._run_id = b""  # the run span's id, the jobs' parent
        # deque.append and popleft are atomic: the event loop appends, the thread pops.
        self._queue: deque[_Item] = deque()
        self._batch = batch_spans
        self._max_queued = max_queued
        self._interval = interval_s
        self._wake = threading.Event()
        self._closing = False
        self.closed = False
        self.batches = self.failed = self.spans = self.dropped = 0
        self._thread = threading.Thread(target=self._export_loop, name="llmbatch-otlp")
        self._thread.daemon = True  # a dead collector must never keep the process alive
        self._thread.start()

    # -- events (on the event loop: cheap) -----------------------------------------

    def emit(self, event: Event) -> None:
        if self.closed:
            return
        if isinstance(event, AttemptEnded):
            job = self._jobs.get(event.job_id) or self._job(event.job_id, event.started_ts)
            self._put((event, _span_id(), job.span_id))
        elif isinstance(event, AttemptStarted):
            if event.job_id not in self._jobs:
                self._job(event.job_id, event.ts)
        elif isinstance(event, JobEnded):
            self._job_ended(event)
        elif isinstance(event, CacheHit):
            job = self._job(event.job_id, event.ts)
            job.cache_hit, job.saved_usd = True, event.saved_usd
        elif isinstance(event, RunStarted):
            self._run_id = _span_id()
            self._run = _Open(
                self._run_id,
                _ns(event.ts),
                {
                    "llmbatch.jobs.total": event.total,
                    "llmbatch.jobs.skipped_done": event.skipped_done,
                    "llmbatch.models": list(event.models),
                    "llmbatch.concurrency": event.concurrency,
                },
            )
        elif isinstance(event, LimitChanged | BreakerChanged | BudgetStopped):
            if self._run is not None:
                self._run.events.append(_run_event(event, self._redact))
        elif isinstance(event, RunEnded):
            self._run_ended(event)

    def _put(self, item: _Item) -> None:
        queue = self._queue
        if len(queue) >= self._max_queued:  # the collector cannot keep up: drop, count, say so
            self.dropped += 1
            return
        queue.append(item)
        if len(queue) >= self._batch and not self._wake.is_set():
            self._wake.set()

    def _job(self, job_id: str, ts: float) -> JobSpan:
        job = self._jobs.get(job_id)
        if job is None:
            job = self._jobs[job_id] = JobSpan(job_id, _span_id(), self._run_id, _ns(ts))
        return job

    def _job_ended(self, e: JobEnded) -> None:
        r = e.result
        job = self._jobs.pop(r.id, None) or JobSpan(r.id, _span_id(), self._run_id, _ns(e.ts))
        job.end_ns = _ns(e.ts)
        job.status = r.status
        job.attempts = r.attempts
        job.cost_usd = r.cost_usd
        if r.status != "ok":
            job.error_type = r.error.type if r.error is not None else "other"
        self._put(job)

    def _run_ended(self, e: RunEnded) -> None:
        end = _ns(e.ts)
        for job in self._jobs.values():  # stopped mid-job: resumable, never written
            job.end_ns = end
            self._put(job)
        self._jobs.clear()
        if self._run is not None:
            rep = e.report
            self._run.attributes.update(
                {
                    "llmbatch.jobs.ok": rep.ok,
                    "llmbatch.jobs.failed": rep.failed,
                    "llmbatch.jobs.not_run": rep.not_run,
                    "llmbatch.cost_usd": rep.cost_usd,
                    "llmbatch.exit_code": e.exit_code,
                    "gen_ai.usage.input_tokens": rep.input_tokens,
                    "gen_ai.usage.output_tokens": rep.output_tokens,
                }
            )
            if rep.stopped_by:
                self._run.attributes["llmbatch.stopped_by"] = rep.stopped_by
            run = self._run
            error = f"exit code {e.exit_code}" if e.exit_code != 0 else None
            self._put(
                SpanRecord(
                    "llmbatch run",
                    KIND_INTERNAL,
                    run.span_id,
                    b"",
                    run.start_ns,
                    end,
                    run.attributes,
                    run.events,
                    error,
                )
            )
            self._run = None
        self.close()

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        return text

    # -- export (on its own thread) -------------------------------------------------

    def _export_loop(self) -> None:
        while True:
            self._wake.wait(self._interval)
            self._wake.clear()
            closing = self._closing  # read before draining: what was queued by then goes out
            self._drain()
            if closing:
                self._sender.close()
                return

    def _drain(self) -> None:
        queue, pop = self._queue, self._queue.popleft
        while queue:
            items = [pop() for _ in range(min(len(queue), self._batch))]
            body = self.encode(items)
            self.batches += 1
            if self._sender.send(body):
                self.spans += len(items)
            else:
                self.failed += 1

    def encode(self, items: list[_Item]) -> bytes:
        """One ExportTraceServiceRequest holding these queued spans."""
        trace, redact = self._trace_field, self._redact
        spans = [
            encode_attempt(trace, item[0], item[1], item[2], redact)
            if isinstance(item, tuple)
            else encode_job(trace, item)
            if isinstance(item, JobSpan)
            else encode_record(self.trace_id, item, redact)
            for item in items
        ]
        return encode_request(self._resource, self._scope, spans)

    # -- the end ----------------------------------------------------------------------

    def close(self) -> None:
        """Export what is queued, for ``close_timeout_s`` at most; say once if spans were lost."""
        if self.closed:
            return
        self.closed = True
        self._closing = True
        self._wake.set()
        self._thread.join(self._close_timeout)
        if self._thread.is_alive():
            self._say(
                f"--otlp: the collector at {self._shown} did not take the last spans within "
                f"{self._close_timeout:g} s; they are lost"
            )
        elif self.failed or self.dropped:
            why = f" ({self._sender.last_error})" if self._sender.last_error else ""
            lost = f"{self.failed} of {self.batches} span batches" if self.failed else ""
            if self.dropped:
                lost += f"{' and ' if lost else ''}{self.dropped} spans (queue full)"
            self._say(f"--otlp: {lost} could not be exported to {self._shown}{why}")

    def _say(self, message: str) -> None:
        """Warn, with any user name or password of the URL cut out (an error may quote it)."""
        for secret in sorted(self._hidden, key=len, reverse=True):
            message = message.replace(secret, "…")
        self._warn(message)
