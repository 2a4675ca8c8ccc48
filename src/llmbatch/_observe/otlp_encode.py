"""OTLP protobuf bytes for llmbatch's spans, written straight to the wire format.

The official path builds an SDK span object and then a protobuf object for every
span, attribute and value, and importing it (SDK, protobuf runtime, ``requests``)
costs more CPU than exporting a 4,000-job run. This writes the same
``ExportTraceServiceRequest`` bytes from plain records (field numbers from
opentelemetry-proto's ``trace.proto`` and ``common.proto``); an attempt's span,
one per request, is written from its event with the parts that repeat (name,
model, provider, keys) written once. A test checks that the official
``opentelemetry-proto`` classes parse these bytes into exactly what the official
encoder produces from the same spans as SDK ``ReadableSpan`` objects.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from llmbatch._core.events import AttemptEnded

KIND_INTERNAL = 1  # OTLP's Span.SpanKind numbers (0 is "unspecified")
KIND_CLIENT = 3
STATUS_ERROR = 2

_DOUBLE = struct.Struct("<d").pack
_TIMES = struct.Struct("<BQBQ").pack  # start (field 7) and end (field 8), both fixed64
_FLAGS = b"\x85\x01" + struct.pack("<I", 0x100)  # field 16: CONTEXT_HAS_IS_REMOTE, local
_NO_STATUS = b"\x7a\x00"  # field 15, empty: UNSET without a message (the SDK always writes it)
_SMALL = [bytes((i,)) for i in range(128)]


@dataclass(slots=True)
class SpanRecord:
    """A finished span as plain data (run and job spans; attempts are written from events)."""

    name: str
    kind: int
    span_id: bytes  # 8 bytes
    parent_id: bytes  # 8 bytes, or b"" for the root
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    events: list[tuple[str, int, dict[str, Any]]] = field(default_factory=list)
    error: str | None = None  # the status message of a failed span; None: status unset


@dataclass(slots=True)
class JobSpan:
    """A job's span: open from its first attempt (or cache hit), queued when it ends."""

    job_id: str
    span_id: bytes
    parent_id: bytes
    start_ns: int
    end_ns: int = 0
    status: str = "not_finished"  # the result's "ok" / "failed", or a run stopped mid-job
    attempts: int | None = None
    cost_usd: float | None = None
    error_type: str | None = None
    cache_hit: bool = False
    saved_usd: float | None = None


def varint(n: int) -> bytes:
    """A protobuf varint (``n`` >= 0)."""
    if n < 0x80:
        return _SMALL[n]
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(tag: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2); ``tag`` is the field number (< 16)."""
    n = len(payload)
    return _SMALL[tag << 3 | 2] + (_SMALL[n] if n < 0x80 else varint(n)) + payload


def _string(tag: int, text: str) -> bytes:
    return _field(tag, text.encode())


def _any(value: Any) -> bytes:
    """An AnyValue message."""
    if value is None:
        return b""
    if isinstance(value, str):
        return _string(1, value)
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, int):
        return b"\x18" + varint(value & 0xFFFFFFFFFFFFFFFF)
    if isinstance(value, float):
        return b"\x21" + _DOUBLE(value)
    if isinstance(value, bytes):
        return _field(7, value)
    if isinstance(value, Sequence):
        return _field(5, b"".join(_field(1, _any(v)) for v in value))
    return _string(1, str(value))


# Whole KeyValue fields of (key, value) pairs a run repeats: model, provider, status…
_PAIRS: dict[tuple[int, str, Any], bytes] = {}


def _kv(tag: int, key: str, value: Any) -> bytes:
    """One KeyValue under field ``tag``; pairs of a key and a short text or a flag are cached."""
    kind = type(value)
    if kind is not str and kind is not bool:
        return _field(tag, _string(1, key) + _field(2, _any(value)))
    encoded = _PAIRS.get((tag, key, value))
    if encoded is None:
        encoded = _field(tag, _string(1, key) + _field(2, _any(value)))
        if len(_PAIRS) < 4096 and len(encoded) < 128:
            _PAIRS[tag, key, value] = encoded
    return encoded


def attributes(tag: int, attrs: Mapping[str, Any]) -> bytes:
    """Repeated KeyValue under field ``tag``."""
    return b"".join([_kv(tag, key, value) for key, value in attrs.items()])


def _int_field(key: str) -> Callable[[int], bytes]:
    """A writer of the attribute ``key`` (field 9) with an int value; small values cached."""
    name = _string(1, key)
    cache: dict[int, bytes] = {}

    def write(value: int) -> bytes:
        out = cache.get(value)
        if out is None:
            out = _field(9, name + _field(2, b"\x18" + varint(value & 0xFFFFFFFFFFFFFFFF)))
            if 0 <= value < 1 << 16 and len(cache) < 1 << 14:
                cache[value] = out
        return out

    return write


def _double_prefix(key: str) -> bytes:
    """Everything of the attribute ``key`` (field 9) with a double value but the 8 bytes."""
    head = _string(1, key) + b"\x12\x09\x21"
    return _SMALL[9 << 3 | 2] + _SMALL[len(head) + 8] + head


def _text_field(key: str) -> Callable[[str], bytes]:
    """A writer of the attribute ``key`` (field 9) with a text value."""
    name = _string(1, key)
    fixed = len(name) + 4

    def write(text: str) -> bytes:
        raw = text.encode()
        n = len(raw)
        if n + fixed < 0x80:  # every length fits in one byte
            return bytes((0x4A, n + fixed)) + name + bytes((0x12, n + 2, 0x0A, n)) + raw
        return _field(9, name + _field(2, _field(1, raw)))

    return write


def encode_record(trace_id: bytes, r: SpanRecord, redact: Callable[[str], str]) -> bytes:
    """One Span message from a record."""
    events = [
        _field(11, b"\x09" + struct.pack("<Q", ts) + _string(2, name) + attributes(3, attrs))
        for name, ts, attrs in r.events
    ]
    status = _NO_STATUS
    if r.error is not None:
        message = redact(r.error)
        status = _field(15, (_string(2, message) if message else b"") + b"\x18\x02")
    return b"".join(
        (
            b"\x0a\x10" + trace_id,
            b"\x12\x08" + r.span_id,
            b"\x22\x08" + r.parent_id if r.parent_id else b"",
            _FLAGS,
            _string(5, r.name),
            b"\x30" + _SMALL[r.kind],
            _TIMES(0x39, r.start_ns, 0x41, r.end_ns),
            attributes(9, r.attributes),
            *events,
            status,
        )
    )


def attempt_attributes(e: AttemptEnded) -> dict[str, Any]:
    """An attempt span's attributes: the reference :func:`encode_attempt` must match."""
    attrs: dict[str, Any] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.system": e.provider,
        "gen_ai.provider.name": e.provider,
        "gen_ai.request.model": e.model,
    }
    if e.outcome == "ok":
        attrs["gen_ai.response.model"] = e.model
    else:
        attrs["error.type"] = e.outcome
    attrs["gen_ai.usage.input_tokens"] = e.input_tokens
    attrs["gen_ai.usage.output_tokens"] = e.output_tokens
    attrs["llmbatch.attempt"] = e.n
    if e.outcome != "ok":
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


def attempt_name(e: AttemptEnded) -> str:
    """An attempt span's name, as the GenAI conventions spell it: ``chat MODEL``."""
    return "chat " + e.model


# An attempt's constant part per (provider, model, outcome): name, kind, flags and the
# first four or five attributes — most of its bytes, written once a run.
_HEADS: dict[tuple[str, str, str], bytes] = {}
_INPUT = _int_field("gen_ai.usage.input_tokens")
_OUTPUT = _int_field("gen_ai.usage.output_tokens")
_ATTEMPT = _int_field("llmbatch.attempt")
_COST = _double_prefix("llmbatch.cost_usd")
_TTFT = _double_prefix("llmbatch.ttft_ms")
_REASONS: dict[str, bytes] = {}  # finish reason → its whole attribute field
_REQUEST_ID = _text_field("llmbatch.request_id")


def _head(e: AttemptEnded) -> bytes:
    first = dict(list(attempt_attributes(e).items())[:5])
    head = _FLAGS + _string(5, attempt_name(e)) + b"\x30\x03" + attributes(9, first)
    if len(_HEADS) < 1024:
        _HEADS[e.provider, e.model, e.outcome] = head
    return head


def encode_attempt(
    trace_field: bytes,
    e: AttemptEnded,
    span_id: bytes,
    parent_id: bytes,
    redact: Callable[[str], str],
) -> bytes:
    """One attempt's Span message, straight from its event (the hot path: one per request)."""
    if e.outcome != "ok":  # rare: the generic way
        return _attempt_slow(trace_field, e, span_id, parent_id, redact)
    head = _HEADS.get((e.provider, e.model, e.outcome)) or _head(e)
    parts = [
        trace_field,
        b"\x12\x08",
        span_id,
        b"\x22\x08",
        parent_id,
        head,
        _TIMES(0x39, int(e.started_ts * 1e9), 0x41, int(e.ts * 1e9)),
        _INPUT(e.input_tokens),
        _OUTPUT(e.output_tokens),
        _ATTEMPT(e.n),
    ]
    if e.finish_reason is not None:
        parts.append(_REASONS.get(e.finish_reason) or _reasons(e.finish_reason))
    if type(e.cost_usd) is float:
        parts += (_COST, _DOUBLE(e.cost_usd))
    elif e.cost_usd is not None:
        parts.append(_kv(9, "llmbatch.cost_usd", e.cost_usd))
    if type(e.ttft_ms) is float:
        parts += (_TTFT, _DOUBLE(e.ttft_ms))
    elif e.ttft_ms is not None:
        parts.append(_kv(9, "llmbatch.ttft_ms", e.ttft_ms))
    if e.request_id is not None:
        parts.append(_REQUEST_ID(e.request_id))
    if e.repair:
        parts.append(_kv(9, "llmbatch.repair", True))
    parts.append(_NO_STATUS)
    return b"".join(parts)


def _reasons(reason: str) -> bytes:
    out = _kv(9, "gen_ai.response.finish_reasons", (reason,))
    if len(_REASONS) < 256:
        _REASONS[reason] = out
    return out


def _attempt_slow(
    trace_field: bytes,
    e: AttemptEnded,
    span_id: bytes,
    parent_id: bytes,
    redact: Callable[[str], str],
) -> bytes:
    record = SpanRecord(
        attempt_name(e),
        KIND_CLIENT,
        span_id,
        parent_id,
        int(e.started_ts * 1e9),
        int(e.ts * 1e9),
        attempt_attributes(e),
        error=e.message or e.outcome,
    )
    return encode_record(trace_field[2:], record, redact)


def job_attributes(j: JobSpan) -> dict[str, Any]:
    """A job span's attributes: the reference :func:`encode_job` must match."""
    attrs: dict[str, Any] = {"llmbatch.job.id": j.job_id}
    if j.cache_hit:
        attrs["llmbatch.cache.hit"] = True
        if j.saved_usd is not None:
            attrs["llmbatch.cache.saved_usd"] = j.saved_usd
    attrs["llmbatch.job.status"] = j.status
    if j.attempts is not None:
        attrs["llmbatch.attempts"] = j.attempts
    if j.cost_usd is not None:
        attrs["llmbatch.cost_usd"] = j.cost_usd
    if j.error_type is not None:
        attrs["error.type"] = j.error_type
    return attrs


JOB_NAME = "llmbatch job"
_JOB_HEAD = _FLAGS + _string(5, JOB_NAME) + b"\x30\x01"
_JOB_ID = _text_field("llmbatch.job.id")
_JOB_ATTEMPTS = _int_field("llmbatch.attempts")


def encode_job(trace_field: bytes, j: JobSpan) -> bytes:
    """One job's Span message (one per job: kept cheap like an attempt's)."""
    parts = [
        trace_field,
        b"\x12\x08",
        j.span_id,
        b"\x22\x08" + j.parent_id if j.parent_id else b"",
        _JOB_HEAD,
        _TIMES(0x39, j.start_ns, 0x41, j.end_ns),
        _JOB_ID(j.job_id),
    ]
    if j.cache_hit:
        parts.append(_kv(9, "llmbatch.cache.hit", True))
        if j.saved_usd is not None:
            parts.append(_kv(9, "llmbatch.cache.saved_usd", j.saved_usd))
    parts.append(_kv(9, "llmbatch.job.status", j.status))
    if j.attempts is not None:
        parts.append(_JOB_ATTEMPTS(j.attempts))
    if type(j.cost_usd) is float:
        parts += (_COST, _DOUBLE(j.cost_usd))
    elif j.cost_usd is not None:
        parts.append(_kv(9, "llmbatch.cost_usd", j.cost_usd))
    if j.error_type is None:
        parts.append(_NO_STATUS)
    else:
        parts += (
            _kv(9, "error.type", j.error_type),
            _field(15, _string(2, j.error_type) + b"\x18\x02"),
        )
    return b"".join(parts)


def resource_and_scope(
    resource: Mapping[str, Any], scope: str, version: str
) -> tuple[bytes, bytes]:
    """A ResourceSpans' resource field and the start of its ScopeSpans' body."""
    return _field(1, attributes(1, resource)), _field(1, _string(1, scope) + _string(2, version))


def encode_request(resource: bytes, scope: bytes, spans: Iterable[bytes]) -> bytes:
    """An ExportTraceServiceRequest: one resource, one scope, these Span messages."""
    scope_spans = scope + b"".join([_field(2, s) for s in spans])
    return _field(1, resource + _field(2, scope_spans))
