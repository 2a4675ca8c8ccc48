"""One run's line in its run history (``<output>.runs.jsonl``), from its report."""

from __future__ import annotations

from llmbatch._observe.stats import RunStats
from llmbatch._observe.timeline import Series
from llmbatch._report.report import RunReport


def history_record(
    report: RunReport,
    stats: RunStats,
    started_wall: float,
    ended: float,
    stopped_by: str | None,
    code: int,
    series: Series | None,
) -> dict[str, object]:
    """One run's history line: what ran, what it cost, how it ended, and its timeline."""
    return {
        "started": started_wall,
        "ended": ended,
        "wall_s": report.wall_s,
        "jobs_done": stats.done,
        "ok": stats.ok,
        "failed": stats.failed,
        "not_run": report.not_run,
        "attempts": stats.attempts,
        "errors": dict(stats.errors),
        "cost_usd": round(stats.cost_usd, 8),
        "stopped_by": stopped_by,
        "exit_code": code,
        "timeline": series.to_dict() if series is not None else None,
    }
