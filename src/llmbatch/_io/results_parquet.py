"""Chat results to Parquet (``-o results.parquet``): the result line's fields as columns.

The same part files as vectors (``_io.vectors``): rows stream into ``OUT.parts/``,
each part a complete file once closed, merged into ``OUT`` at the end; a part a
kill left unreadable is the torn tail, cut on the next run. Columns: ``id``,
``status``, ``output``, ``provider``, ``model``, token counts, ``cost_usd``,
``latency_ms``, ``ttft_ms``, ``attempts``, ``stop_reason``, ``fingerprint``, and
``parsed``, ``error``, ``metadata``, ``input`` as JSON text.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from llmbatch._core.exceptions import UsageError
from llmbatch._core.results import JobResult, output_error
from llmbatch._io.resume import ExistingOutput
from llmbatch._io.vectors import (
    PART_ROWS,
    PART_SECONDS,
    merge_parts,
    next_part_number,
    parts_dir,
    readable_parts,
    require_pyarrow,
)

if TYPE_CHECKING:
    import pyarrow as pa

_JSON = ("parsed", "error", "metadata", "input")


def result_schema() -> pa.Schema:
    import pyarrow as pa

    return pa.schema(
        [
            ("id", pa.string()),
            ("status", pa.string()),
            ("output", pa.string()),
            ("provider", pa.string()),
            ("model", pa.string()),
            ("input_tokens", pa.int64()),
            ("output_tokens", pa.int64()),
            ("cost_usd", pa.float64()),
            ("latency_ms", pa.float64()),
            ("ttft_ms", pa.float64()),
            ("attempts", pa.int32()),
            ("stop_reason", pa.string()),
            ("fingerprint", pa.string()),
            *((name, pa.string()) for name in _JSON),
        ]
    )


def _json(value: Any) -> str | None:
    return None if value is None else orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


class ParquetResultSink:
    """The engine's ``ResultSink`` for a ``.parquet`` output of chat results."""

    def __init__(self, path: Path) -> None:
        require_pyarrow()
        self.path = path
        self.parts = parts_dir(path)
        self.part_rows = int(os.environ.get("LLMBATCH_PARQUET_PART_ROWS") or PART_ROWS)
        try:
            self.parts.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(
                f"cannot write {self.parts}: {exc.strerror}. Nothing was sent."
            ) from None
        self._next = next_part_number(path)
        self._writer: Any = None
        self._rows = 0
        self._opened = 0.0

    def write(self, results: Sequence[JobResult]) -> None:
        import pyarrow as pa

        r = results
        cols: dict[str, list[Any]] = {
            "id": [x.id for x in r],
            "status": [x.status for x in r],
            "output": [x.output for x in r],
            "provider": [x.provider for x in r],
            "model": [x.model for x in r],
            "input_tokens": [x.usage.input_tokens for x in r],
            "output_tokens": [x.usage.output_tokens for x in r],
            "cost_usd": [x.cost_usd for x in r],
            "latency_ms": [x.latency_ms for x in r],
            "ttft_ms": [x.ttft_ms for x in r],
            "attempts": [x.attempts for x in r],
            "stop_reason": [x.stop_reason for x in r],
            "fingerprint": [x.fingerprint for x in r],
            **{name: [_json(getattr(x, name)) for x in r] for name in _JSON},
        }
        table = pa.Table.from_pydict(cols, schema=result_schema())
        try:
            self._part().write_table(table)
        except OSError as exc:
            raise output_error(exc, self.path) from None
        self._rows += len(r)
        if self._rows >= self.part_rows or time.monotonic() - self._opened > PART_SECONDS:
            self._close_part()

    def _part(self) -> Any:
        if self._writer is None:
            import pyarrow.parquet as pq

            name = self.parts / f"{self._next:06d}.parquet"
            self._next += 1
            self._writer = pq.ParquetWriter(name, result_schema(), compression="snappy")
            self._opened = time.monotonic()
            self._rows = 0
        return self._writer

    def _close_part(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def close(self) -> None:
        self._close_part()
        merge_parts(self.path)


def read_existing_results(path: Path, *, retry_failed: bool) -> ExistingOutput:
    """What a Parquet output of chat results (and its parts) holds, for resume."""
    import pyarrow.parquet as pq

    require_pyarrow()
    state = ExistingOutput(path)
    parts, torn = readable_parts(path)
    if torn:
        state.torn_at, state.torn_bytes = 0, sum(p.stat().st_size for p in torn)
    failed: dict[str, str | None] = {}
    columns = ["id", "status", "fingerprint", "cost_usd", "input_tokens", "output_tokens"]
    for source in ([path] if path.exists() else []) + parts:
        for batch in pq.ParquetFile(source).iter_batches(columns=columns, batch_size=65_536):
            d = batch.to_pydict()
            for i, job_id in enumerate(d["id"]):
                state.lines += 1
                state.cost_usd += d["cost_usd"][i] or 0.0
                state.tokens += (d["input_tokens"][i] or 0) + (d["output_tokens"][i] or 0)
                if d["status"][i] == "ok":
                    failed.pop(job_id, None)
                    state.done.add(job_id, d["fingerprint"][i])
                    state.ok += 1
                else:
                    failed[job_id] = d["fingerprint"][i]
    state.failed = len(failed)
    if retry_failed:
        state.retry_ids = len(failed)
    else:
        for job_id, fp in failed.items():
            state.done.add(job_id, fp)
    state.done.freeze()
    return state
