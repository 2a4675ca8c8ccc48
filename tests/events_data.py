"""A small run as the engine's events: two jobs, a 429 then an answer, a failure, a cache hit."""

from __future__ import annotations

from typing import Any

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
from llmbatch._core.results import JobResult, ResultError
from llmbatch._core.states import BreakerState
from llmbatch._core.usage import Usage
from llmbatch._observe.stats import RunStats
from llmbatch._report.report import build_report
from tests.conftest import CANARY_ANTHROPIC

T0 = 1_764_338_587.042  # 2025-11-28T14:03:07.042Z
PROMPT = [{"role": "user", "content": "SECRET-PROMPT-TEXT what is 2 + 2?"}]


def attempt(job: str, n: int, start: float, end: float, **kw: Any) -> AttemptEnded:
    base: dict[str, Any] = {
        "ts": end,
        "started_ts": start,
        "job_id": job,
        "provider": "anthropic",
        "model": "claude-haiku-4-5",
        "n": n,
        "outcome": "ok",
        "http_status": 200,
        "latency_ms": (end - start) * 1000,
        "ttft_ms": 120.0,
        "input_tokens": 12,
        "output_tokens": 40,
        "cost_usd": 0.000212,
        "retry_after_s": None,
        "backoff_s": None,
        "finish_reason": "end_turn",
        "request_id": f"req_{job}_{n}",
        "prompt": PROMPT,
    }
    base.update(kw)
    return AttemptEnded(**base)


def result(job: str, status: str = "ok", **kw: Any) -> JobResult:
    base: dict[str, Any] = {
        "id": job,
        "status": status,
        "output": "4" if status == "ok" else None,
        "parsed": None,
        "provider": "anthropic",
        "model": "claude-haiku-4-5",
        "usage": Usage(24, 40),
        "cost_usd": 0.000212,
        "latency_ms": 800.0,
        "ttft_ms": 120.0,
        "attempts": 2,
        "error": None,
        "metadata": None,
        "stop_reason": "end_turn" if status == "ok" else None,
    }
    base.update(kw)
    return JobResult(**base)


def sample_run() -> list[Event]:
    """Job a: 429 then ok. Job b: a 400 that fails it. Job c: a cache hit."""
    stats = RunStats()
    ra = result("a")
    rb = result(
        "b",
        "failed",
        attempts=1,
        error=ResultError("bad_request", "bad", 400),
        cost_usd=0.0,
        usage=Usage(),
    )
    rc = result("c", attempts=0, cost_usd=0.0, usage=Usage(), cache={"hit": True, "saved_usd": 0.5})
    for r in (ra, rb, rc):
        stats.add(r)
    report = build_report(stats, wall_s=3.0)
    return [
        RunStarted(T0, 3, 1, ("anthropic:claude-haiku-4-5",), 64, "out.jsonl", "jobs.jsonl"),
        AttemptStarted(T0 + 0.01, "a", "anthropic", "claude-haiku-4-5", 1),
        AttemptStarted(T0 + 0.02, "b", "anthropic", "claude-haiku-4-5", 1),
        attempt(
            "a",
            1,
            T0 + 0.01,
            T0 + 0.2,
            outcome="rate_limited",
            http_status=429,
            input_tokens=0,
            output_tokens=0,
            cost_usd=0.0,
            retry_after_s=1.0,
            backoff_s=1.1,
            finish_reason=None,
            message=f"rate limited (key {CANARY_ANTHROPIC})",
        ),
        LimitChanged(T0 + 0.2, "anthropic:claude-haiku-4-5", 60.0, 30.0, "rate_limited"),
        attempt(
            "b",
            1,
            T0 + 0.02,
            T0 + 0.3,
            outcome="bad_request",
            http_status=400,
            cost_usd=None,
            input_tokens=0,
            output_tokens=0,
            finish_reason=None,
            message="max_tokens too large",
        ),
        JobEnded(T0 + 0.3, rb),
        CacheHit(T0 + 0.4, "c", "anthropic", "claude-haiku-4-5", 0.5),
        JobEnded(T0 + 0.4, rc),
        BreakerChanged(T0 + 0.5, "anthropic:claude-haiku-4-5", BreakerState.OPEN, 5),
        AttemptStarted(T0 + 1.3, "a", "anthropic", "claude-haiku-4-5", 2),
        attempt("a", 2, T0 + 1.3, T0 + 2.1),
        JobEnded(T0 + 2.1, ra),
        BudgetStopped(T0 + 2.5, "budget", "the budget cap was reached"),
        RunEnded(T0 + 3.0, report, 1),
    ]
