"""--otlp: spans decoded by a local OTLP/HTTP receiver, run → job → attempt, GenAI attributes."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import (
    encode_spans as official_encode_spans,
)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace.export import SpanExportResult

from llmbatch._config.settings import FileConfig, RunConfig, build_run_config
from llmbatch._core.events import AttemptEnded, EventBus
from llmbatch._observe.otel import OtelExporter, resource_attributes, traces_url
from llmbatch._observe.otlp_encode import SpanRecord
from llmbatch._observe.otlp_http import HttpSender, parse_headers
from llmbatch._observe.sinks import build_sinks, close_sinks
from tests.conftest import CANARY_ANTHROPIC
from tests.events_data import T0, attempt, sample_run
from tests.otlp_receiver import OTLPReceiver, ReceivedSpan
from tests.otlp_reference import Keep, Recording, readable_spans

SPAN_KIND_CLIENT = 3
STATUS_ERROR = 2


def ns(ts: float) -> int:
    return int(ts * 1e9)


def export_sample(url: str) -> list[ReceivedSpan]:
    exporter = OtelExporter(url, secrets=[CANARY_ANTHROPIC])
    bus = EventBus([exporter])
    for e in sample_run():
        bus.emit(e)
    assert bus.sinks == [exporter] and exporter.closed  # RunEnded flushed and shut it down
    return []


def by_name(spans: list[ReceivedSpan], prefix: str) -> list[ReceivedSpan]:
    return [s for s in spans if s.name.startswith(prefix)]


def job_of(span: ReceivedSpan, spans: list[ReceivedSpan]) -> str:
    """The job id of an attempt span: its parent's."""
    (parent,) = [s for s in spans if s.span_id == span.parent_span_id]
    job_id: str = parent.attributes["llmbatch.job.id"]
    return job_id


@pytest.fixture
def spans() -> list[ReceivedSpan]:
    with OTLPReceiver() as receiver:
        export_sample(receiver.url)
        assert receiver.received.paths and set(receiver.received.paths) == {"/v1/traces"}
        return list(receiver.received.spans)


def test_one_attempt_span_per_attempt_under_its_job_under_the_run(
    spans: list[ReceivedSpan],
) -> None:
    events = sample_run()
    attempts = [e for e in events if isinstance(e, AttemptEnded)]
    (run,) = by_name(spans, "llmbatch run")
    jobs = {s.attributes["llmbatch.job.id"]: s for s in by_name(spans, "llmbatch job")}
    chats = by_name(spans, "chat ")
    assert len(spans) == 1 + 3 + 3
    assert len(chats) == len(attempts)
    assert set(jobs) == {"a", "b", "c"}
    assert {s.trace_id for s in spans} == {run.trace_id}
    assert run.parent_span_id == b""
    assert all(j.parent_span_id == run.span_id for j in jobs.values())
    for chat in chats:
        assert chat.parent_span_id in {j.span_id for j in jobs.values()}
        assert chat.kind == SPAN_KIND_CLIENT
    # Times are the events' own.
    assert (run.start_ns, run.end_ns) == (ns(T0), ns(T0 + 3.0))
    assert (jobs["a"].start_ns, jobs["a"].end_ns) == (ns(T0 + 0.01), ns(T0 + 2.1))
    timed = sorted((s.start_ns, s.end_ns) for s in chats)
    assert timed == sorted((ns(a.started_ts), ns(a.ts)) for a in attempts)


def test_attempt_spans_carry_the_genai_attributes(spans: list[ReceivedSpan]) -> None:
    chats = {
        (job_of(s, spans), s.attributes["llmbatch.attempt"]): s for s in by_name(spans, "chat ")
    }
    ok = chats[("a", 2)].attributes
    assert ok["gen_ai.operation.name"] == "chat"
    assert ok["gen_ai.system"] == ok["gen_ai.provider.name"] == "anthropic"
    assert ok["gen_ai.request.model"] == ok["gen_ai.response.model"] == "claude-haiku-4-5"
    assert (ok["gen_ai.usage.input_tokens"], ok["gen_ai.usage.output_tokens"]) == (12, 40)
    assert ok["gen_ai.response.finish_reasons"] == ["end_turn"]
    assert ok["llmbatch.cost_usd"] == pytest.approx(0.000212)
    assert "http.response.status_code" not in ok  # only failures carry it
    assert "error.type" not in ok
    assert chats[("a", 2)].name == "chat claude-haiku-4-5"
    limited = chats[("a", 1)]
    assert limited.attributes["error.type"] == "rate_limited"
    assert limited.attributes["http.response.status_code"] == 429
    assert limited.attributes["llmbatch.retry_after_s"] == 1.0
    assert limited.status_code == STATUS_ERROR
    assert "llmbatch.cost_usd" not in chats[("b", 1)].attributes  # price unknown: no figure
    assert chats[("b", 1)].attributes["error.type"] == "bad_request"


def test_job_and_run_spans(spans: list[ReceivedSpan]) -> None:
    jobs = {s.attributes["llmbatch.job.id"]: s for s in by_name(spans, "llmbatch job")}
    assert jobs["a"].attributes["llmbatch.job.status"] == "ok"
    assert jobs["a"].attributes["llmbatch.attempts"] == 2
    assert jobs["b"].attributes["error.type"] == "bad_request"
    assert jobs["b"].status_code == STATUS_ERROR
    assert jobs["c"].attributes["llmbatch.cache.hit"] is True
    assert jobs["c"].attributes["llmbatch.cache.saved_usd"] == 0.5
    (run,) = by_name(spans, "llmbatch run")
    assert run.attributes["llmbatch.jobs.ok"] == 2 and run.attributes["llmbatch.exit_code"] == 1
    assert run.resource["service.name"] == "llmbatch"
    assert [name for name, _, _ in run.events] == ["limit_change", "breaker", "budget_stop"]
    assert run.events[0][1] == ns(T0 + 0.2)


def test_no_key_and_no_prompt_in_any_span() -> None:
    with OTLPReceiver() as receiver:
        export_sample(receiver.url)
        raw = b"".join(receiver.received.raw)
    assert raw
    assert CANARY_ANTHROPIC.encode() not in raw
    assert b"SECRET-PROMPT-TEXT" not in raw
    assert b"[redacted]" in raw  # the 429's message named the key: redacted in the status


def test_a_job_stopped_mid_way_is_closed_at_run_end() -> None:
    events = [e for e in sample_run() if not (getattr(e, "job_id", None) == "a" and e.ts > T0 + 1)]
    events = [e for e in events if getattr(getattr(e, "result", None), "id", None) != "a"]
    with OTLPReceiver() as receiver:
        exporter = OtelExporter(receiver.url)
        for e in events:
            exporter.emit(e)
        spans = receiver.received.spans
        (job_a,) = [
            s for s in by_name(spans, "llmbatch job") if s.attributes["llmbatch.job.id"] == "a"
        ]
    assert job_a.attributes["llmbatch.job.status"] == "not_finished"
    assert job_a.end_ns == ns(T0 + 3.0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_a_missing_collector_costs_one_warning_not_the_run() -> None:
    warnings: list[str] = []
    exporter = OtelExporter(
        f"http://127.0.0.1:{free_port()}",
        export_timeout_s=0.2,
        close_timeout_s=5,
        warn=warnings.append,
    )
    for e in sample_run():
        exporter.emit(e)
    assert exporter.closed
    assert len(warnings) == 1 and "--otlp" in warnings[0]


def test_traces_url() -> None:
    assert traces_url("http://h:4318") == "http://h:4318/v1/traces"
    assert traces_url("http://h:4318/") == "http://h:4318/v1/traces"
    assert traces_url("https://h/otlp") == "https://h/otlp/v1/traces"
    assert traces_url("http://h:4318/v1/traces") == "http://h:4318/v1/traces"


def test_build_sinks_makes_an_exporter(tmp_path: Path) -> None:
    with OTLPReceiver() as receiver:
        cfg = build_run_config(Path("jobs.jsonl"), {"otlp": receiver.url}, FileConfig())
        sinks = build_sinks(cfg)
        assert len(sinks) == 1 and isinstance(sinks[0], OtelExporter)
        sinks[0].emit(sample_run()[0])
        close_sinks(sinks)  # no RunEnded (a crash): the run span stays open, nothing hangs
        assert build_sinks(RunConfig(jobs=Path("jobs.jsonl"))) == []


def test_our_encoding_parses_to_what_the_official_encoder_writes() -> None:
    """Our bytes, parsed by the official protobufs, equal the official encoder's output
    for the same spans built as SDK ReadableSpans: every field, attribute and order."""
    kept = Keep()
    exporter = Recording("http://127.0.0.1:1", sender=kept, secrets=[CANARY_ANTHROPIC])
    odd_attempts = [
        attempt("x", 1, T0, T0 + 1, cost_usd=0, ttft_ms=None, repair=True, request_id="req_é"),
        attempt("x", 9, T0 + 1, T0 + 2, input_tokens=70_000, output_tokens=2**40),
        attempt("x", 3, T0 + 2, T0 + 3, finish_reason=None, cost_usd=None, ttft_ms=12),
        attempt("x", 4, T0 + 3, T0 + 4, outcome="server_error", http_status=529, message=None),
    ]
    events = sample_run()
    for e in [*events[:-1], *odd_attempts, events[-1]]:
        exporter.emit(e)
    odd = SpanRecord(
        "odd",
        2,  # SERVER
        b"\x01" * 8,
        b"",
        1,
        2,
        {
            "s": "x",
            "yes": True,
            "no": False,
            "neg": -5,
            "big": 2**62,
            "f": 0.25,
            "list": ("a", "b"),
            "ints": [1, 2],
            "b": b"\x00\x01",
            "empty": "",
        },
        [("ev", 5, {"k": "v"})],
        error="",
    )
    items = [*exporter.items, odd]
    assert len(kept.bodies) == 1 and len(items) == 7 + 4 + 1 + 1  # job x: not finished
    ours = ExportTraceServiceRequest.FromString(exporter.encode(items))
    assert ours == official_encode_spans(readable_spans(exporter, items))


def test_requests_match_the_official_exporters(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same spans through the official OTLP/HTTP exporter and through ours reach the
    collector as the same request: path, content type, env headers, gzip, decoded body."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "x-team=ab%20c,Other-Key=1")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip")
    with OTLPReceiver() as receiver:
        url = traces_url(receiver.url)
        exporter = Recording(url, secrets=[CANARY_ANTHROPIC])
        for e in sample_run():
            exporter.emit(e)
        official = OTLPSpanExporter(endpoint=url)
        assert official.export(readable_spans(exporter, exporter.items)) is SpanExportResult.SUCCESS
        official.shutdown()  # type: ignore[no-untyped-call]
        ours_raw, theirs_raw = receiver.received.raw
        ours_h, theirs_h = receiver.received.headers
    assert receiver.received.paths == ["/v1/traces", "/v1/traces"]
    for name in ("content-type", "content-encoding", "x-team", "other-key"):
        assert ours_h[name] == theirs_h[name], name
    assert ours_h["x-team"] == "ab c" and ours_h["content-encoding"] == "gzip"
    assert ExportTraceServiceRequest.FromString(ours_raw) == ExportTraceServiceRequest.FromString(
        theirs_raw
    )


def test_the_sender_retries_what_may_pass_and_gives_up_on_the_rest() -> None:
    with OTLPReceiver() as receiver:
        sender = HttpSender(traces_url(receiver.url), timeout_s=5, environ={})
        receiver.received.statuses = [503, 429]
        assert sender.send(b"") is True  # an empty request is a valid one
        assert len(receiver.received.paths) == 3
        receiver.received.statuses = [400]
        assert sender.send(b"") is False
        assert sender.last_error == "HTTP 400" and len(receiver.received.paths) == 4
        sender.close()


def test_headers_and_resource_from_the_environment() -> None:
    assert parse_headers("a=1, B=x%3Dy ,bad,=z") == {"a": "1", "b": "x=y"}
    env = {"OTEL_RESOURCE_ATTRIBUTES": "service.name=mine,deployment.environment=prod%201"}
    attrs = resource_attributes("9", env)
    assert attrs["service.name"] == "mine" and attrs["deployment.environment"] == "prod 1"
    env["OTEL_SERVICE_NAME"] = "svc"
    assert resource_attributes("9", env)["service.name"] == "svc"
    assert resource_attributes("9", {})["service.name"] == "llmbatch"


def test_a_proxy_from_the_environment_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    """HTTP_PROXY is honoured as the official exporter (requests) honours it."""
    with OTLPReceiver() as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        sender = HttpSender("http://collector.invalid:4318/v1/traces", timeout_s=5, environ={})
        assert sender.send(b"") is False  # the "proxy" knows no such path: 404
        sender.close()
    assert proxy.received.paths == ["http://collector.invalid:4318/v1/traces"]


def test_spans_beyond_the_queue_are_counted_and_reported() -> None:
    warnings: list[str] = []
    exporter = OtelExporter(
        "http://127.0.0.1:1", sender=Keep(), max_queued=3, interval_s=3600, warn=warnings.append
    )
    for e in sample_run():
        exporter.emit(e)
    assert exporter.closed and exporter.spans == 3 and exporter.dropped == 7 - 3
    assert len(warnings) == 1 and "4 spans (queue full)" in warnings[0]
