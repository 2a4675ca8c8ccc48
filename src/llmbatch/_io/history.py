"""Run history: one small JSON line per run, in a sidecar beside the output file."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import orjson


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
