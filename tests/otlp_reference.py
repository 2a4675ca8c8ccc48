"""The official SDK's view of our spans: the reference our encoder and sender are held to."""

from __future__ import annotations

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

from llmbatch import __version__
from llmbatch._core.events import AttemptEnded
from llmbatch._observe.otel import OtelExporter, resource_attributes
from llmbatch._observe.otlp_encode import (
    JOB_NAME,
    KIND_CLIENT,
    KIND_INTERNAL,
    JobSpan,
    SpanRecord,
    attempt_attributes,
    attempt_name,
    job_attributes,
)

KINDS = {1: SpanKind.INTERNAL, 2: SpanKind.SERVER, 3: SpanKind.CLIENT}
Item = tuple[AttemptEnded, bytes, bytes] | JobSpan | SpanRecord


class Keep:
    """A sender that keeps the request bodies."""

    last_error: str | None = None

    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    def send(self, body: bytes) -> bool:
        self.bodies.append(body)
        return True

    def close(self) -> None:
        pass


class Recording(OtelExporter):
    """An exporter that also keeps the queued spans it encoded."""

    items: list[Item]

    def encode(self, items: list[Item]) -> bytes:
        self.__dict__.setdefault("items", []).extend(items)
        return super().encode(items)


def _record(item: Item) -> SpanRecord:
    """An attempt or a job as the record the reference semantics give it."""
    if isinstance(item, SpanRecord):
        return item
    if isinstance(item, JobSpan):
        attrs = job_attributes(item)
        ids = (item.span_id, item.parent_id, item.start_ns, item.end_ns)
        return SpanRecord(JOB_NAME, KIND_INTERNAL, *ids, attrs, [], item.error_type)
    e, span_id, parent_id = item
    start, end = int(e.started_ts * 1e9), int(e.ts * 1e9)
    error = None if e.outcome == "ok" else (e.message or e.outcome)
    attrs = attempt_attributes(e)
    return SpanRecord(
        attempt_name(e), KIND_CLIENT, span_id, parent_id, start, end, attrs, [], error
    )


def readable_spans(exporter: OtelExporter, items: list[Item]) -> list[ReadableSpan]:
    """The SDK's ReadableSpans for ``items``: what the official encoder takes."""
    trace_id = int.from_bytes(exporter.trace_id, "big")
    resource = Resource(resource_attributes(__version__))
    scope = InstrumentationScope("llmbatch", __version__)
    sampled = TraceFlags(TraceFlags.SAMPLED)
    spans = []
    for r in map(_record, items):
        parent = None
        if r.parent_id:
            parent = SpanContext(trace_id, int.from_bytes(r.parent_id, "big"), False, sampled)
        status = Status(StatusCode.UNSET)
        if r.error is not None:
            status = Status(StatusCode.ERROR, exporter._redact(r.error))
        spans.append(
            ReadableSpan(
                r.name,
                SpanContext(trace_id, int.from_bytes(r.span_id, "big"), False, sampled),
                parent,
                resource,
                r.attributes,
                [Event(name, attrs, ts) for name, ts, attrs in r.events],
                kind=KINDS[r.kind],
                status=status,
                start_time=r.start_ns,
                end_time=r.end_ns,
                instrumentation_scope=scope,
            )
        )
    return spans
