"""Run history: one small JSON line per run, in a sidecar beside the output file."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from llmbatch._observe.stats import RunStats
    from llmbatch._observe.timeline import Series
    from llmbatch._report.report import RunReport


def history_path(output: Path) -> Path:
    """``<output>.runs.jsonl`` beside the real file, whatever alias the output was named by."""
    resolved = Path(os.path.realpath(output))
    return resolved.with_name(resolved.name + ".runs.jsonl")


def append_history(output: Path, record: dict[str, Any]) -> str | None:
    """Append one run's line; a failure (a full disk) is returned as a message, not raised.

    The results are what matter: a run that wrote them must not end in an error
    because its history line did not fit.
    """
    path = history_path(output)
    try:
        with path.open("ab") as f:
            f.write(orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE))
    except OSError as exc:
        message = f"could not record this run in {path}: {exc.strerror or exc}"
        sys.stderr.write(f"llmbatch: {message}\n")
        return message
    return None


def read_history(output: Path) -> list[dict[str, Any]]:
    path = history_path(output)
    try:
        data = path.read_bytes()
    except OSError:
        return []  # none, or unreadable: the history is a courtesy, not the record
    runs: list[dict[str, Any]] = []
    for raw in data.splitlines():
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue  # a run killed mid-write leaves at most one torn line
        if isinstance(obj, dict):
            runs.append(obj)
    return runs


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
