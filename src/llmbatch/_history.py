"""Run history: one small JSON line per run, in a sidecar beside the output file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson


def history_path(output: Path) -> Path:
    return output.with_name(output.name + ".runs.jsonl")


def append_history(output: Path, record: dict[str, Any]) -> None:
    with history_path(output).open("ab") as f:
        f.write(orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE))


def read_history(output: Path) -> list[dict[str, Any]]:
    path = history_path(output)
    if not path.exists():
        return []
    runs: list[dict[str, Any]] = []
    for raw in path.read_bytes().splitlines():
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue  # a run killed mid-write leaves at most one torn line
        if isinstance(obj, dict):
            runs.append(obj)
    return runs
