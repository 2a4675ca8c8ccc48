"""The HTML report's data: the TimelineRecorder, the results-file rebuild, the histograms."""

from __future__ import annotations

import io
import math
import re
from pathlib import Path

from rich.console import Console

from llmbatch._core.events import AttemptEnded, AttemptStarted, JobEnded, RunEnded, RunStarted
from llmbatch._core.results import JobResult, ResultError
from llmbatch._core.states import Status
from llmbatch._core.usage import Usage
from llmbatch._io.history import append_history
from llmbatch._observe.stats import Histogram, RunStats
from llmbatch._observe.timeline import (
    FAILED_N,
    MAX_BUCKETS,
    TOP_N,
    Series,
    TimelineRecorder,
    timeline_from_results,
)
from llmbatch._report.render import render_report
from llmbatch._report.report import build_report, report_from_results
from tests.synthetic import HOSTILE_FAILED_ID, HOSTILE_SLOW_ID, T0, record


def _write_results(path: Path, results: list[JobResult]) -> Path:
    with path.open("wb") as f:
        for r in results:
            f.write(r.to_json())
    return path


def test_series_totals_match_the_events() -> None:
    run = record(2000)
    s = run.timeline.series
    assert s is not None and 0 < len(s) <= MAX_BUCKETS
    outcomes = [a.outcome for a in run.attempts]
    assert sum(s.started) == len(run.attempts)  # every attempt started also ended
    assert sum(s.ended) == len(run.attempts)
    assert sum(s.ok) == outcomes.count("ok")
    assert sum(s.rate_limited) == outcomes.count("rate_limited") > 0
    assert sum(s.other_errors) == len(outcomes) - outcomes.count("ok") - outcomes.count(
        "rate_limited"
    )
    assert sum(s.jobs_done) == 2000
    assert sum(s.output_tokens) == sum(a.output_tokens for a in run.attempts)
    assert math.isclose(sum(s.cost_usd), sum(a.cost_usd or 0 for a in run.attempts))
    # The series covers the run to its end, idle tail included.
    assert s.duration_s >= run.report.wall_s - 2 - s.bucket_s  # type: ignore[operator]


def test_a_long_run_keeps_a_bounded_series_whose_width_doubles() -> None:
    rec = TimelineRecorder()
    rec.emit(RunStarted(T0, 5000, 0, ("sim:m",), 4, None, "in.jsonl"))
    for i in range(5000):  # one attempt every 10 s: nearly 14 hours
        ts = T0 + i * 10
        rec.emit(AttemptStarted(ts, f"j{i}", "sim", "m", 1))
        outcome = "rate_limited" if i % 100 == 0 else "ok"
        rec.emit(
            AttemptEnded(ts + 1, ts, f"j{i}", "sim", "m", 1, outcome, None, 500.0, None, 3, 4,
                         0.5, None, None)
        )  # fmt: skip
    rec.emit(RunEnded(T0 + 50_000, build_report(RunStats()), 0))
    s = rec.timeline().series
    assert s is not None
    assert len(s) <= MAX_BUCKETS
    assert s.bucket_s == 1024.0  # 0.125 s doubled until 50,000 s fit in 64 buckets
    assert sum(s.started) == sum(s.ended) == 5000
    assert sum(s.rate_limited) == 50
    assert sum(s.input_tokens) == 15_000
    # Merging pairs kept every attempt in the bucket its time falls in.
    k = 40_000 // 1024
    assert s.started[k] == sum(1 for i in range(5000) if k * 1024 <= i * 10 < (k + 1) * 1024)


def test_slowest_and_failed_jobs() -> None:
    run = record(3000)
    t = run.timeline
    ok = sorted((r for r in run.results if r.status == "ok"), key=lambda r: -(r.latency_ms or 0))
    assert [row.id for row in t.slowest] == [r.id for r in ok[:TOP_N]]
    assert t.slowest[0].id == HOSTILE_SLOW_ID and t.slowest[0].latency_ms == 30_000.0
    failed = [r for r in run.results if r.status != "ok"]
    assert t.failed_total == len(failed) > FAILED_N
    assert [row.id for row in t.failed] == [r.id for r in failed[:FAILED_N]]
    assert t.failed[0].id == HOSTILE_FAILED_ID and t.failed[0].error_type == "bad_request"
    assert sum(b.count for b in t.latency) == len(ok)


def test_a_results_file_gives_the_same_histograms_and_lists(tmp_path: Path) -> None:
    run = record(1500)
    path = _write_results(tmp_path / "out.jsonl", run.results)
    rebuilt = timeline_from_results(path)
    assert rebuilt.source == "results" and rebuilt.series is None
    assert rebuilt.latency == run.timeline.latency
    assert rebuilt.ttft == run.timeline.ttft
    assert rebuilt.slowest == run.timeline.slowest
    assert rebuilt.failed == run.timeline.failed
    assert rebuilt.failed_total == run.timeline.failed_total


def test_a_retried_failure_leaves_the_failed_list(tmp_path: Path) -> None:
    def line(job_id: str, status: str) -> JobResult:
        error = None if status == "ok" else ResultError("server_error", "boom")
        latency = 100.0 if status == "ok" else None
        return JobResult(job_id, Status(status), "x", None, "sim", "m", Usage(1, 1), 0.0, latency,
                         None, 1, error, None)  # fmt: skip

    path = _write_results(
        tmp_path / "out.jsonl", [line("a", "failed"), line("b", "failed"), line("a", "ok")]
    )
    t = timeline_from_results(path)
    assert [row.id for row in t.failed] == ["b"] and t.failed_total == 1
    assert report_from_results(path).failed == 1
    # Only the lines one run appended, from the byte offset where it began.
    first = len(line("a", "failed").to_json()) + len(line("b", "failed").to_json())
    t = timeline_from_results(path, start=first)
    assert t.failed_total == 0 and [row.id for row in t.slowest] == ["a"]


def test_series_round_trips_through_the_run_history(tmp_path: Path) -> None:
    run = record(300)
    series = run.timeline.series
    assert series is not None
    assert Series.from_dict(series.to_dict()) == series
    assert Series.from_dict({"bucket_s": 1.0, "started": [1]}) is None
    path = _write_results(tmp_path / "out.jsonl", run.results)
    append_history(path, {"started": T0, "wall_s": 9.0})  # an older run: no timeline
    append_history(path, {"started": T0 + 60, "wall_s": 9.0, "timeline": series.to_dict()})
    t = timeline_from_results(path)
    assert t.series == series and t.started_ts == T0 + 60
    assert t.series_note == "the last run of 2 on this output"


def test_recorder_ignores_unknown_and_late_events() -> None:
    fresh = TimelineRecorder()
    assert fresh.timeline().series is None and not fresh.saw_run
    rec = TimelineRecorder()
    r = JobResult("x", Status.OK, "y", None, "sim", "m", Usage(), 0.0, 12.0, 3.0, 1, None, None)
    rec.emit(JobEnded(T0, r))  # no RunStarted: the first event starts the clock
    t = rec.timeline()
    assert rec.saw_run and t.series is not None and t.series.jobs_done == (1,)


def test_linear_bins_have_round_edges_and_keep_every_value() -> None:
    h = Histogram()
    assert h.linear_bins() == ()
    for v in [*range(1, 1000), 50_000]:
        h.add(float(v))
    bins = h.linear_bins(10)
    assert sum(b.count for b in bins) == 1000
    assert bins[0].lo == 0 and all(b.hi - b.lo == 100 for b in bins)
    assert bins[-1].open_ended and bins[-1].count >= 1 and not bins[0].open_ended
    assert len(bins) <= 12


def test_terminal_report_shows_a_latency_histogram() -> None:
    stats = RunStats()
    for i in range(400):
        ms = 200.0 + (i % 40) * 25 if i != 399 else 9000.0
        stats.add(JobResult(f"j{i}", Status.OK, "y", None, "sim", "m", Usage(), 0.0, ms, None, 1,
                            None, None))  # fmt: skip
    console = Console(file=io.StringIO(), width=100, force_terminal=True, color_system=None)
    render_report(build_report(stats), console)
    text = console.file.getvalue()  # type: ignore[attr-defined]
    assert "latency of successful jobs" in text
    bar_row = re.compile(r"^\s*(≥ [\d,]+|[\d,]+–[\d,]+) ms\s+[█▏▎▍▌▋▊▉]*\s+[\d,]+\s*$")
    rows = [ln for ln in text.splitlines() if bar_row.match(ln)]
    assert 3 <= len(rows) <= 12
    assert any(ln.strip().startswith("≥") for ln in rows)  # the slow tail in one row
    counts = [int(ln.split()[-1].replace(",", "")) for ln in rows]
    assert sum(counts) == 400
    assert max(rows, key=lambda ln: ln.count("█")).split()[-1] == "90"  # the longest bar
    assert "latency_bins" not in build_report(stats).to_dict()  # not in the JSON report
