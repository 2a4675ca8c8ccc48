"""--log-json: each line read back and checked field by field, as one would with jq."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import orjson
import pytest

from llmbatch._config.settings import FileConfig, RunConfig, build_run_config
from llmbatch._core.events import AttemptEnded, Event, EventBus
from llmbatch._core.exceptions import UsageError
from llmbatch._observe.jsonlog import JsonEventLog, rfc3339_ms
from llmbatch._observe.sinks import build_sinks, close_sinks, run_secrets
from tests.conftest import CANARY_ANTHROPIC, CANARY_OPENAI
from tests.events_data import T0, sample_run

RFC3339_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
NUM = (int, float)


def write_log(path: Path, events: list[Event], **kw: Any) -> list[dict[str, Any]]:
    log = JsonEventLog(path, secrets=[CANARY_ANTHROPIC], **kw)
    bus = EventBus([log])
    for e in events:
        bus.emit(e)
    assert bus.sinks == [log]  # it never raised
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def select(lines: list[dict[str, Any]], event: str) -> list[dict[str, Any]]:
    """``jq 'select(.event == EVENT)'``."""
    return [line for line in lines if line["event"] == event]


def test_rfc3339_with_milliseconds() -> None:
    assert rfc3339_ms(0) == "1970-01-01T00:00:00.000Z"
    assert rfc3339_ms(T0) == "2025-11-28T14:03:07.042Z"
    assert rfc3339_ms(59.9996) == "1970-01-01T00:01:00.000Z"  # rounding carries


def test_every_line_is_an_event_with_a_timestamp(tmp_path: Path) -> None:
    lines = write_log(tmp_path / "log.jsonl", sample_run())
    kinds = [line["event"] for line in lines]
    # AttemptStarted and JobEnded are not logged; everything else is, in order.
    assert kinds == [
        "run_start",
        "attempt",
        "limit_change",
        "attempt",
        "cache_hit",
        "breaker",
        "attempt",
        "budget_stop",
        "run_end",
    ]
    for line in lines:
        assert RFC3339_MS.match(line["ts"]), line
        assert isinstance(line["run"], str) and len(line["run"]) == 16
    assert len({line["run"] for line in lines}) == 1
    assert lines[0]["ts"] == "2025-11-28T14:03:07.042Z"


def test_attempt_lines_carry_the_spec_fields(tmp_path: Path) -> None:
    attempts = select(write_log(tmp_path / "log.jsonl", sample_run()), "attempt")
    assert [(a["job"], a["n"], a["outcome"], a["http_status"]) for a in attempts] == [
        ("a", 1, "rate_limited", 429),
        ("b", 1, "bad_request", 400),
        ("a", 2, "ok", 200),
    ]
    types: dict[str, type | tuple[type, ...]] = {
        "job": str,
        "provider": str,
        "model": str,
        "n": int,
        "outcome": str,
        "http_status": (int, type(None)),
        "latency_ms": (*NUM, type(None)),
        "ttft_ms": (*NUM, type(None)),
        "input_tokens": int,
        "output_tokens": int,
        "cost_usd": (*NUM, type(None)),
        "retry_after_s": (*NUM, type(None)),
        "backoff_s": (*NUM, type(None)),
        "started": str,
    }
    for a in attempts:
        for field, kind in types.items():
            assert isinstance(a[field], kind), (field, a[field])
    first, failed, ok = attempts
    assert (first["retry_after_s"], first["backoff_s"]) == (1.0, 1.1)
    assert failed["cost_usd"] is None and failed["message"] == "max_tokens too large"
    assert ok["latency_ms"] == 800.0 and ok["ttft_ms"] == 120.0
    assert (ok["input_tokens"], ok["output_tokens"], ok["cost_usd"]) == (12, 40, 0.000212)
    assert ok["started"] == rfc3339_ms(T0 + 1.3) and ok["finish_reason"] == "end_turn"


def test_other_events(tmp_path: Path) -> None:
    lines = write_log(tmp_path / "log.jsonl", sample_run())
    (start,) = select(lines, "run_start")
    assert start["total"] == 3 and start["concurrency"] == 64
    assert start["models"] == ["anthropic:claude-haiku-4-5"]
    (limit,) = select(lines, "limit_change")
    assert (limit["rpm_before"], limit["rpm_after"], limit["reason"]) == (
        60.0,
        30.0,
        "rate_limited",
    )
    (breaker,) = select(lines, "breaker")
    assert (breaker["state"], breaker["consecutive_failures"]) == ("open", 5)
    (hit,) = select(lines, "cache_hit")
    assert (hit["job"], hit["saved_usd"]) == ("c", 0.5)
    (stop,) = select(lines, "budget_stop")
    assert stop["reason"] == "budget" and stop["resets_at"] is None
    (end,) = select(lines, "run_end")
    assert end["exit_code"] == 1
    report = end["report"]
    assert report["jobs"]["ok"] == 2 and report["jobs"]["failed"] == 1
    assert report["cache"] == {"hits": 1, "saved_usd": 0.5}


def test_never_a_key_never_a_prompt_by_default(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    lines = write_log(path, sample_run())
    raw = path.read_text()
    assert CANARY_ANTHROPIC not in raw
    assert "SECRET-PROMPT-TEXT" not in raw
    assert "[redacted]" in select(lines, "attempt")[0]["message"]
    assert all("prompt" not in line for line in lines)


def test_prompts_only_with_log_prompts(tmp_path: Path) -> None:
    lines = write_log(tmp_path / "log.jsonl", sample_run(), log_prompts=True)
    attempts = select(lines, "attempt")
    assert attempts[0]["prompt"][0]["content"].startswith("SECRET-PROMPT-TEXT")
    assert CANARY_ANTHROPIC not in orjson.dumps(lines).decode()


def test_writes_are_buffered_and_flushed_at_run_end(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    events = sample_run()
    log = JsonEventLog(path, flush_interval_s=60)
    for e in events[:-1]:
        log.emit(e)
    assert path.read_bytes() == b""  # nothing written yet: all within a minute
    log.emit(events[-1])
    assert len(path.read_bytes().splitlines()) == 9
    assert log.closed
    log.emit(events[1])  # after the end: ignored
    assert len(path.read_bytes().splitlines()) == 9


def test_a_busy_run_flushes_as_it_goes(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    events = sample_run()
    attempt = next(e for e in events if isinstance(e, AttemptEnded))
    log = JsonEventLog(path, flush_interval_s=1.0)
    log.emit(events[0])
    log.emit(attempt)  # within the second: buffered
    assert path.read_bytes() == b""
    later = dataclasses.replace(attempt, ts=T0 + 5)
    log.emit(later)
    assert len(path.read_bytes().splitlines()) == 3
    log.close()


def test_runs_append_to_the_same_file(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    write_log(path, sample_run())
    lines = write_log(path, sample_run())
    assert len(lines) == 18
    assert len({line["run"] for line in lines}) == 2


def test_dash_writes_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    log = JsonEventLog("-")
    for e in sample_run():
        log.emit(e)
    err = capsys.readouterr().err
    assert [orjson.loads(line)["event"] for line in err.splitlines()][-1] == "run_end"


def test_build_sinks_from_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", CANARY_ANTHROPIC)
    monkeypatch.setenv("OPENAI_API_KEY", CANARY_OPENAI)
    log_path = tmp_path / "logs" / "events.jsonl"
    flags = {"log_json": str(log_path), "log_prompts": True}
    cfg = build_run_config(Path("jobs.jsonl"), flags, FileConfig())
    assert cfg.log_prompts and cfg.log_json == flags["log_json"]
    assert set(run_secrets(cfg)) == {CANARY_ANTHROPIC, CANARY_OPENAI}
    sinks = build_sinks(cfg)
    assert len(sinks) == 1 and isinstance(sinks[0], JsonEventLog)
    assert sinks[0].log_prompts
    sinks[0].emit(sample_run()[0])
    close_sinks(sinks)
    close_sinks(sinks)  # idempotent
    assert orjson.loads(log_path.read_bytes())["event"] == "run_start"
    assert build_sinks(RunConfig(jobs=Path("jobs.jsonl"))) == []


def test_log_json_cannot_be_the_output_or_unwritable(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="--log-json"):
        build_run_config(
            Path("jobs.jsonl"), {"output": "out.jsonl", "log_json": "out.jsonl"}, FileConfig()
        )
    (tmp_path / "file").write_text("x")
    cfg = RunConfig(jobs=Path("jobs.jsonl"), log_json=str(tmp_path / "file" / "log.jsonl"))
    with pytest.raises(UsageError, match="--log-json"):
        build_sinks(cfg)
