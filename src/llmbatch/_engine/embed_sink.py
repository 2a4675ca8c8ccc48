"""The embedding run's ``ResultSink``: a pack's one result expands to one row per input.

An answered pack becomes its rows' vectors (numpy: the slot matrix indexed by each
row's slot, no Python float a dimension) and goes to a ``VectorWriter``
(Parquet), or to JSON lines when the output is not Parquet; a failed pack writes
its rows as failed, with the pack's error. At close, ``--npy PATH`` is built from
the output (``_io.npy``). Either way its texts leave the source's index of texts in flight
(``EmbedState.written``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from llmbatch._core.embed import EmbedPack
from llmbatch._core.results import JobResult, ResultWriter
from llmbatch._engine.embed import EmbedState
from llmbatch._io.vectors import VectorWriter


class EmbedSink:
    """Expands pack results into rows: Parquet when ``path`` ends in .parquet, else JSONL."""

    def __init__(
        self, path: Path | None, state: EmbedState, *, parquet: bool, npy: Path | None = None
    ) -> None:
        self.state = state
        self.path = path
        self.npy = npy
        self.vectors = VectorWriter(path) if parquet and path is not None else None
        self.lines = None if self.vectors is not None else ResultWriter(path)

    def write(self, results: Sequence[JobResult]) -> None:
        for result in results:
            pack = result.metadata
            if isinstance(pack, EmbedPack):
                self._pack(result, pack)

    def _pack(self, result: JobResult, pack: EmbedPack) -> None:
        import numpy as np

        counts = self.state.counts
        model = f"{pack.model}"
        matrix = None
        error = None
        if result.status == "ok":
            matrix = pack.matrix()
            slots = np.asarray(pack.slot, dtype=np.intp)
            if len(slots) == len(matrix) and (slots == np.arange(len(slots))).all():
                rows = matrix  # every text once, in order: no copy
            else:
                rows = matrix[slots]
            counts.vectors += len(pack.ids)
            counts.dimensions.add(int(rows.shape[1]))
        else:
            rows = None
            err = result.error
            error = "error: " if err is None else f"{err.type}: {err.message}"
            counts.failed += len(pack.ids)
        counts.cost_usd += result.cost_usd or 0.0
        if self.vectors is not None:
            self.vectors.write(
                pack.ids, pack.index, model, pack.metadata, result.cost_usd, rows, error
            )
        else:
            self._lines(pack, model, rows, error, result.cost_usd)
        self.state.written(pack, matrix)
        pack.vectors = None  # the rows are out: let the memory go

    def _lines(
        self, pack: EmbedPack, model: str, rows: Any, error: str | None, cost: float | None
    ) -> None:
        assert self.lines is not None
        n = max(1, len(pack.ids))
        out = []
        for i, job_id in enumerate(pack.ids):
            line: dict[str, Any] = {
                "id": job_id,
                "index": pack.index[i],
                "status": "ok" if error is None else "failed",
                "model": model,
                "embedding": None if rows is None else rows[i],
                "error": None if error is None else {"type": "embed", "message": error},
                "metadata": pack.metadata[i],
                "cost_usd": None if cost is None else round(cost / n, 10),
            }
            out.append(
                orjson.dumps(line, option=orjson.OPT_APPEND_NEWLINE | orjson.OPT_SERIALIZE_NUMPY)
            )
        self.lines.write(out)

    def flush(self) -> None:
        """What was written so far survives a kill (a batch is marked fetched after this)."""
        if self.vectors is not None:
            self.vectors.flush()

    def close(self) -> None:
        if self.vectors is not None:
            self.vectors.close()
        if self.lines is not None:
            self.lines.close()
        if self.npy is not None and self.path is not None:
            from llmbatch._io.npy import write_npy

            write_npy(self.path, self.npy)
