"""``--otlp URL``: the run as OpenTelemetry spans over OTLP/HTTP (extra ``llmbatch[otel]``).

One trace per run: a ``llmbatch run`` span, a ``llmbatch job`` span per job under
it, and a ``chat MODEL`` span per attempt under its job, with the GenAI semantic
conventions' attributes (``gen_ai.*``, ``error.type``) and ``llmbatch.cost_usd``.
Span times come from the events, not from when a sink sees them. The SDK's batch
processor exports from its own thread, so a slow or absent collector never holds
the run up; at the end of the run what is queued is flushed, for a bounded time.
Prompts and answers are never put in spans.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any
from urllib.parse import urlsplit

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

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


def _attempt_attributes(e: AttemptEnded) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.system": e.provider,
        "gen_ai.provider.name": e.provider,
        "gen_ai.request.model": e.model,
        "gen_ai.usage.input_tokens": e.input_tokens,
        "gen_ai.usage.output_tokens": e.output_tokens,
        "llmbatch.job.id": e.job_id,
        "llmbatch.attempt": e.n,
        "llmbatch.outcome": e.outcome,
    }
    if e.outcome == "ok":
        attrs["gen_ai.response.model"] = e.model
    else:
        attrs["error.type"] = e.outcome
    if e.finish_reason is not None:
        attrs["gen_ai.response.finish_reasons"] = [e.finish_reason]
    optional = {
        "http.response.status_code": e.http_status,
        "llmbatch.cost_usd": e.cost_usd,
        "llmbatch.latency_ms": e.latency_ms,
        "llmbatch.ttft_ms": e.ttft_ms,
        "llmbatch.retry_after_s": e.retry_after_s,
        "llmbatch.backoff_s": e.backoff_s,
        "llmbatch.request_id": e.request_id,
    }
    attrs.update((k, v) for k, v in optional.items() if v is not None)
    if e.repair:
        attrs["llmbatch.repair"] = True
    return attrs


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
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            span_exporter = OTLPSpanExporter(endpoint=self.endpoint, timeout=export_timeout_s)
        self._exporter = _CountingExporter(span_exporter)
        attributes: dict[str, Any] = {"service.version": __version__}
        if not os.environ.get("OTEL_SERVICE_NAME"):
            attributes["service.name"] = "llmbatch"
        self._provider = TracerProvider(
            resource=Resource.create(attributes), shutdown_on_exit=False
        )
        # A large queue: a burst of fast answers must not drop spans; export is batched.
        self._provider.add_span_processor(
            BatchSpanProcessor(
                self._exporter,
                max_queue_size=1 << 15,
                max_export_batch_size=1024,
                schedule_delay_millis=1000,
            )
        )
        self._tracer = self._provider.get_tracer("llmbatch", __version__)
        self._run: Span | None = None
        self._run_ctx: Any = None
        self._jobs: dict[str, Span] = {}
        self.closed = False

    # -- events -------------------------------------------------------------------

    def emit(self, event: Event) -> None:
        if self.closed:
            return
        if isinstance(event, AttemptEnded):
            self._attempt(event)
        elif isinstance(event, AttemptStarted):
            self._job_span(event.job_id, event.ts)
        elif isinstance(event, JobEnded):
            self._job_ended(event)
        elif isinstance(event, CacheHit):
            span = self._job_span(event.job_id, event.ts)
            span.set_attribute("llmbatch.cache.hit", True)
            if event.saved_usd is not None:
                span.set_attribute("llmbatch.cache.saved_usd", event.saved_usd)
        elif isinstance(event, RunStarted):
            self._run_started(event)
        elif isinstance(event, LimitChanged | BreakerChanged | BudgetStopped):
            self._run_event(event)
        elif isinstance(event, RunEnded):
            self._run_ended(event)

    def _run_started(self, e: RunStarted) -> None:
        self._run = self._tracer.start_span(
            "llmbatch run",
            start_time=_ns(e.ts),
            attributes={
                "llmbatch.jobs.total": e.total,
                "llmbatch.jobs.skipped_done": e.skipped_done,
                "llmbatch.models": list(e.models),
                "llmbatch.concurrency": e.concurrency,
            },
        )
        self._run_ctx = trace.set_span_in_context(self._run)

    def _job_span(self, job_id: str, ts: float) -> Span:
        span = self._jobs.get(job_id)
        if span is None:
            span = self._jobs[job_id] = self._tracer.start_span(
                "llmbatch job",
                context=self._run_ctx,
                start_time=_ns(ts),
                attributes={"llmbatch.job.id": job_id},
            )
        return span

    def _attempt(self, e: AttemptEnded) -> None:
        job = self._job_span(e.job_id, e.started_ts)
        span = self._tracer.start_span(
            f"chat {e.model}",
            context=trace.set_span_in_context(job),
            kind=SpanKind.CLIENT,
            start_time=_ns(e.started_ts),
            attributes=_attempt_attributes(e),
        )
        if e.outcome != "ok":
            span.set_status(Status(StatusCode.ERROR, self._redact(e.message or e.outcome)))
        span.end(end_time=_ns(e.ts))

    def _job_ended(self, e: JobEnded) -> None:
        r = e.result
        span = self._job_span(r.id, e.ts)  # a job that ended before any attempt gets one too
        del self._jobs[r.id]
        attrs: dict[str, Any] = {
            "gen_ai.operation.name": "chat",
            "llmbatch.job.status": r.status,
            "llmbatch.attempts": r.attempts,
            "gen_ai.usage.input_tokens": r.usage.input_tokens,
            "gen_ai.usage.output_tokens": r.usage.output_tokens,
        }
        if r.provider is not None:
            attrs["gen_ai.system"] = attrs["gen_ai.provider.name"] = r.provider
        if r.model is not None:
            attrs["gen_ai.request.model"] = r.model
            if r.status == "ok":
                attrs["gen_ai.response.model"] = r.model
        if r.cost_usd is not None:
            attrs["llmbatch.cost_usd"] = r.cost_usd
        if r.stop_reason is not None:
            attrs["gen_ai.response.finish_reasons"] = [r.stop_reason]
        if r.status != "ok":
            kind = str((r.error or {}).get("type") or "other")
            attrs["error.type"] = kind
            span.set_status(Status(StatusCode.ERROR, kind))
        span.set_attributes(attrs)
        span.end(end_time=_ns(e.ts))

    def _run_event(self, e: LimitChanged | BreakerChanged | BudgetStopped) -> None:
        if self._run is None:
            return
        if isinstance(e, LimitChanged):
            name = "limit_change"
            attrs: dict[str, Any] = {"llmbatch.model": e.model, "llmbatch.reason": e.reason}
            if e.rpm_before is not None:
                attrs["llmbatch.rpm_before"] = e.rpm_before
            if e.rpm_after is not None:
                attrs["llmbatch.rpm_after"] = e.rpm_after
        elif isinstance(e, BreakerChanged):
            name = "breaker"
            attrs = {
                "llmbatch.model": e.model,
                "llmbatch.state": e.state,
                "llmbatch.consecutive_failures": e.consecutive_failures,
            }
        else:
            name = "budget_stop"
            attrs = {"llmbatch.reason": e.reason, "llmbatch.message": self._redact(e.message)}
        self._run.add_event(name, attributes=attrs, timestamp=_ns(e.ts))

    def _run_ended(self, e: RunEnded) -> None:
        for span in self._jobs.values():  # stopped mid-job: resumable, never written
            span.set_attribute("llmbatch.job.status", "not_finished")
            span.end(end_time=_ns(e.ts))
        self._jobs.clear()
        if self._run is not None:
            rep = e.report
            self._run.set_attributes(
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
                self._run.set_attribute("llmbatch.stopped_by", rep.stopped_by)
            if e.exit_code != 0:
                self._run.set_status(Status(StatusCode.ERROR, f"exit code {e.exit_code}"))
            self._run.end(end_time=_ns(e.ts))
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
        done = threading.Thread(target=self._provider.shutdown, name="llmbatch-otel-close")
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
