"""``--otlp URL``: the run as OpenTelemetry spans over OTLP/HTTP (extra ``llmbatch[otel]``).

One trace per run: a ``llmbatch run`` span, a ``llmbatch job`` span per job under
it, and a ``chat MODEL`` span per attempt under its job, with the GenAI semantic
conventions' attributes (``gen_ai.*``, ``error.type``) and ``llmbatch.cost_usd``.
Prompts and answers are never put in spans.

Every span's times and attributes come from the events, so spans are built as the
SDK's finished ``ReadableSpan`` records and handed straight to its
``BatchSpanProcessor`` — the tracer's live-span machinery (context, sampler,
attribute checks, locks) would only add CPU. The processor exports from its own
thread, over the official OTLP/HTTP exporter, so a slow or absent collector never
holds the run up; at the end of the run what is queued is flushed, for a bounded
time. Attributes are kept to what a GenAI dashboard reads: encoding each one costs.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event as SpanEvent
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

from ._events import (
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
from ._jsonlog import REDACTED

TRACES_PATH = "/v1/traces"


def traces_url(endpoint: str) -> str:
    """A collector's base URL gets the OTLP traces path; a full traces URL is kept."""
    if urlsplit(endpoint).path.rstrip("/").endswith(TRACES_PATH):
        return endpoint
    return endpoint.rstrip("/") + TRACES_PATH


def _ns(ts: float) -> int:
    return int(ts * 1e9)


def _warn_stderr(message: str) -> None:
    sys.stderr.write(f"llmbatch: warning: {message}\n")


class _CountingExporter(SpanExporter):
    """Passes batches on, counting failures so the run can say so once at the end."""

    def __init__(self, inner: SpanExporter) -> None:
        self.inner = inner
        self.batches = 0
        self.failed = 0
        self.spans = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.batches += 1
        try:
            result = self.inner.export(spans)
        except Exception:  # the SDK logs it too; a lost batch must not end the exporter
            result = SpanExportResult.FAILURE
        if result is SpanExportResult.SUCCESS:
            self.spans += len(spans)
        else:
            self.failed += 1
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_UNSET = Status(StatusCode.UNSET)


class _Resource(Resource):
    """A Resource whose hash is computed once: the encoder hashes it for every span."""

    def __init__(self, base: Resource) -> None:
        super().__init__(dict(base.attributes), base.schema_url)
        self._hash = super().__hash__()

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return super().__eq__(other)


@dataclass(slots=True)
class _Open:
    """A span begun but not ended: what it will be built from."""

    context: SpanContext
    start_ns: int
    attributes: dict[str, Any]
    events: list[SpanEvent] = field(default_factory=list)


def _attempt_attributes(e: AttemptEnded) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.system": e.provider,
        "gen_ai.provider.name": e.provider,
        "gen_ai.request.model": e.model,
        "gen_ai.usage.input_tokens": e.input_tokens,
        "gen_ai.usage.output_tokens": e.output_tokens,
        "llmbatch.attempt": e.n,
    }
    if e.outcome == "ok":
        attrs["gen_ai.response.model"] = e.model
    else:
        attrs["error.type"] = e.outcome
        if e.http_status is not None:
            attrs["http.response.status_code"] = e.http_status
        if e.retry_after_s is not None:
            attrs["llmbatch.retry_after_s"] = e.retry_after_s
        if e.backoff_s is not None:
            attrs["llmbatch.backoff_s"] = e.backoff_s
    if e.finish_reason is not None:
        attrs["gen_ai.response.finish_reasons"] = (e.finish_reason,)
    if e.cost_usd is not None:
        attrs["llmbatch.cost_usd"] = e.cost_usd
    if e.ttft_ms is not None:
        attrs["llmbatch.ttft_ms"] = e.ttft_ms
    if e.request_id is not None:
        attrs["llmbatch.request_id"] = e.request_id
    if e.repair:
        attrs["llmbatch.repair"] = True
    return attrs


def _run_event(
    e: LimitChanged | BreakerChanged | BudgetStopped, redact: Callable[[str], str]
) -> SpanEvent:
    if isinstance(e, LimitChanged):
        attrs: dict[str, Any] = {"llmbatch.model": e.model, "llmbatch.reason": e.reason}
        if e.rpm_before is not None:
            attrs["llmbatch.rpm_before"] = e.rpm_before
        if e.rpm_after is not None:
            attrs["llmbatch.rpm_after"] = e.rpm_after
        return SpanEvent("limit_change", attrs, _ns(e.ts))
    if isinstance(e, BreakerChanged):
        attrs = {
            "llmbatch.model": e.model,
            "llmbatch.state": e.state,
            "llmbatch.consecutive_failures": e.consecutive_failures,
        }
        return SpanEvent("breaker", attrs, _ns(e.ts))
    attrs = {"llmbatch.reason": e.reason, "llmbatch.message": redact(e.message)}
    return SpanEvent("budget_stop", attrs, _ns(e.ts))


class OtelExporter:
    """An EventSink turning the run's events into spans, exported over OTLP/HTTP."""

    def __init__(
        self,
        endpoint: str,
        *,
        span_exporter: SpanExporter | None = None,
        secrets: Iterable[str] = (),
        close_timeout_s: float = 10.0,
        export_timeout_s: float = 5.0,
        warn: Callable[[str], None] = _warn_stderr,
    ) -> None:
        from . import __version__

        self.endpoint = traces_url(endpoint)
        self._secrets = [s for s in secrets if s and len(s) >= 8]
        self._close_timeout = close_timeout_s
        self._warn = warn
        if span_exporter is None:
            from ._otlp_encode import fast_otlp_exporter

            span_exporter = fast_otlp_exporter(self.endpoint, export_timeout_s)
        self._exporter = _CountingExporter(span_exporter)
        attributes: dict[str, Any] = {"service.version": __version__}
        if not os.environ.get("OTEL_SERVICE_NAME"):
            attributes["service.name"] = "llmbatch"
        self._resource = _Resource(Resource.create(attributes))
        self._scope = InstrumentationScope("llmbatch", __version__)
        self._ids = RandomIdGenerator()
        self._span_id = self._ids.generate_span_id
        # A large queue: a burst of fast answers must not drop spans; export is batched.
        self._processor = BatchSpanProcessor(
            self._exporter,
            max_queue_size=1 << 15,
            max_export_batch_size=1024,
            schedule_delay_millis=1000,
        )
        self._trace_id = self._ids.generate_trace_id()
        self._run: _Open | None = None
        self._jobs: dict[str, _Open] = {}
        self.closed = False

    # -- events -------------------------------------------------------------------

    def emit(self, event: Event) -> None:
        if self.closed:
            return
        if isinstance(event, AttemptEnded):
            self._attempt(event)
        elif isinstance(event, AttemptStarted):
            self._job(event.job_id, event.ts)
        elif isinstance(event, JobEnded):
            self._job_ended(event)
        elif isinstance(event, CacheHit):
            attrs = self._job(event.job_id, event.ts).attributes
            attrs["llmbatch.cache.hit"] = True
            if event.saved_usd is not None:
                attrs["llmbatch.cache.saved_usd"] = event.saved_usd
        elif isinstance(event, RunStarted):
            self._run = _Open(
                self._context(),
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

    def _context(self) -> SpanContext:
        return SpanContext(self._trace_id, self._span_id(), False, _SAMPLED)

    def _finish(
        self,
        name: str,
        span: _Open,
        end_ns: int,
        parent: _Open | None,
        status: Status | None = None,
    ) -> None:
        self._processor.on_end(
            ReadableSpan(
                name,
                span.context,
                None if parent is None else parent.context,
                self._resource,
                span.attributes,
                span.events,
                status=status or _UNSET,
                start_time=span.start_ns,
                end_time=end_ns,
                instrumentation_scope=self._scope,
            )
        )

    def _job(self, job_id: str, ts: float) -> _Open:
        job = self._jobs.get(job_id)
        if job is None:
            job = self._jobs[job_id] = _Open(self._context(), _ns(ts), {"llmbatch.job.id": job_id})
        return job

    def _attempt(self, e: AttemptEnded) -> None:
        """An attempt's span is whole when it ends: built at once (the hot path)."""
        job = self._job(e.job_id, e.started_ts)
        status = _UNSET
        if e.outcome != "ok":
            status = Status(StatusCode.ERROR, self._redact(e.message or e.outcome))
        self._processor.on_end(
            ReadableSpan(
                "chat " + e.model,
                SpanContext(self._trace_id, self._span_id(), False, _SAMPLED),
                job.context,
                self._resource,
                _attempt_attributes(e),
                kind=SpanKind.CLIENT,
                status=status,
                start_time=int(e.started_ts * 1e9),
                end_time=int(e.ts * 1e9),
                instrumentation_scope=self._scope,
            )
        )

    def _job_ended(self, e: JobEnded) -> None:
        r = e.result
        job = self._job(r.id, e.ts)  # a job that ended before any attempt gets one too
        del self._jobs[r.id]
        attrs = job.attributes
        attrs["llmbatch.job.status"] = r.status
        attrs["llmbatch.attempts"] = r.attempts
        if r.cost_usd is not None:
            attrs["llmbatch.cost_usd"] = r.cost_usd
        status = None
        if r.status != "ok":
            kind = str((r.error or {}).get("type") or "other")
            attrs["error.type"] = kind
            status = Status(StatusCode.ERROR, kind)
        self._finish("llmbatch job", job, _ns(e.ts), self._run, status)

    def _run_ended(self, e: RunEnded) -> None:
        end = _ns(e.ts)
        for job in self._jobs.values():  # stopped mid-job: resumable, never written
            job.attributes["llmbatch.job.status"] = "not_finished"
            self._finish("llmbatch job", job, end, self._run)
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
            status = None
            if e.exit_code != 0:
                status = Status(StatusCode.ERROR, f"exit code {e.exit_code}")
            self._finish("llmbatch run", self._run, end, None, status)
            self._run = None
        self.close()

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        return text

    # -- the end ------------------------------------------------------------------

    def close(self) -> None:
        """Export what is queued, for ``close_timeout_s`` at most; say once if spans were lost."""
        if self.closed:
            return
        self.closed = True
        # The SDK's shutdown can wait on a dead collector for long: bound it from outside.
        done = threading.Thread(target=self._processor.shutdown, name="llmbatch-otel-close")
        done.daemon = True
        done.start()
        done.join(self._close_timeout)
        if done.is_alive():
            self._warn(
                f"--otlp: the collector at {self.endpoint} did not take the last spans within "
                f"{self._close_timeout:g} s; they are lost"
            )
        elif self._exporter.failed:
            self._warn(
                f"--otlp: {self._exporter.failed} of {self._exporter.batches} span batches "
                f"could not be exported to {self.endpoint}"
            )
