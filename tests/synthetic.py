"""A synthetic run as the engine's event stream: for the timeline and HTML report tests."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field

from llmbatch._core.events import (
    AttemptEnded,
    AttemptStarted,
    Event,
    JobEnded,
    RunEnded,
    RunStarted,
)
from llmbatch._core.results import JobResult, ResultError
from llmbatch._core.states import Status
from llmbatch._core.usage import Usage
from llmbatch._observe.stats import RunStats
from llmbatch._observe.timeline import Timeline, TimelineRecorder
from llmbatch._report.report import RunReport, build_report

T0 = 1_700_000_000.0
MODELS = (("anthropic", "claude-haiku-4-5"), ("openai", "gpt-4o-mini"))
HOSTILE_FAILED_ID = '<script>alert("id")</script>'
HOSTILE_SLOW_ID = '"><img src=x onerror=alert(1)>'
HOSTILE_MESSAGE = "bad request: <img src=x onerror=alert(2)> & </td></table>"


def _ms(value: float) -> float:
    return round(value, 1)  # as a result line stores it


def _job_id(i: int) -> str:
    return {7: HOSTILE_FAILED_ID, 11: HOSTILE_SLOW_ID}.get(i, f"job-{i}")


def synthetic_events(n: int, *, seed: int = 1, rate: float = 40.0) -> Iterator[Event]:
    """A run of ``n`` jobs at about ``rate`` jobs/s: some 429s, server errors, failures.

    Job 7 (a hostile id) fails for good; job 11 (another hostile id) is the slowest.
    """
    rng = random.Random(seed)
    stats = RunStats()
    yield RunStarted(T0, n, 0, tuple(f"{p}:{m}" for p, m in MODELS), 16, "out.jsonl", "in.jsonl")
    t = T0
    for i in range(n):
        provider, model = MODELS[i % 3 == 0]
        job_id = _job_id(i)
        t += rng.expovariate(rate)
        n_attempt, result = 0, None
        errors: dict[str, int] = {}
        while result is None:
            n_attempt += 1
            yield AttemptStarted(t, job_id, provider, model, n_attempt)
            roll = rng.random()
            latency = _ms(rng.lognormvariate(6.6, 0.45)) if i != 11 else 30_000.0
            if roll < 0.05 and n_attempt < 4 and i != 7:
                kind = "rate_limited" if roll < 0.035 else "server_error"
                errors[kind] = errors.get(kind, 0) + 1
                yield AttemptEnded(
                    t + 0.1, t, job_id, provider, model, n_attempt, kind,
                    429 if kind == "rate_limited" else 500, None, None, 0, 0, None, 1.0, 0.5,
                    message="slow down",
                )  # fmt: skip
                t += 0.6
                continue
            end = t + latency / 1000
            if i == 7 or (roll < 0.08 and i != 11):
                error = ResultError("bad_request", HOSTILE_MESSAGE, 400)
                errors["bad_request"] = errors.get("bad_request", 0) + 1
                yield AttemptEnded(
                    end, t, job_id, provider, model, n_attempt, "bad_request", 400, None, None,
                    0, 0, None, None, None, message=HOSTILE_MESSAGE,
                )  # fmt: skip
                result = JobResult(
                    job_id, Status.FAILED, None, None, provider, model, Usage(), None, None, None,
                    n_attempt, error, None, attempt_errors=errors,
                )  # fmt: skip
                break
            usage = Usage(rng.randint(50, 400), rng.randint(20, 300))
            cost = round(usage.input_tokens * 1e-6 + usage.output_tokens * 5e-6, 8)
            ttft = _ms(latency * 0.3)
            yield AttemptEnded(
                end, t, job_id, provider, model, n_attempt, "ok", 200, latency, ttft,
                usage.input_tokens, usage.output_tokens, cost, None, None,
            )  # fmt: skip
            result = JobResult(
                job_id, Status.OK, "an answer", None, provider, model, usage, cost, latency, ttft,
                n_attempt, None, None, attempt_errors=errors,
            )  # fmt: skip
        stats.add(result)
        yield JobEnded(t + 0.001, result)
    report = build_report(stats, wall_s=t - T0 + 2, output="out.jsonl")
    yield RunEnded(t + 2, report, report.exit_code)


@dataclass
class Recorded:
    """What a synthetic run left: its report, the recorded timeline, and (optionally) results."""

    report: RunReport
    timeline: Timeline
    results: list[JobResult] = field(default_factory=list)
    attempts: list[AttemptEnded] = field(default_factory=list)


def record(n: int, *, seed: int = 1, rate: float = 40.0, keep: bool = True) -> Recorded:
    """Feed a synthetic run to a TimelineRecorder (``keep``: also keep results and attempts)."""
    recorder = TimelineRecorder()
    report: RunReport | None = None
    results: list[JobResult] = []
    attempts: list[AttemptEnded] = []
    for event in synthetic_events(n, seed=seed, rate=rate):
        recorder.emit(event)
        if isinstance(event, RunEnded):
            assert isinstance(event.report, RunReport)
            report = event.report
        elif keep and isinstance(event, JobEnded):
            results.append(event.result)
        elif keep and isinstance(event, AttemptEnded):
            attempts.append(event)
    assert report is not None
    return Recorded(report, recorder.timeline(), results, attempts)
