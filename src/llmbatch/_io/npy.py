"""``--npy PATH``: the vectors of an embedding output as one float32 ``.npy`` matrix.

Row ``i`` of the matrix is row ``i`` of the output: the ``i``-th row of a Parquet
output (its ``id``, ``index``, ``status`` columns say whose vector it is), or the
``i``-th line of a JSONL output (its ``id``, ``index``, ``status`` fields). The ids
live in the output, not twice. A failed row (no vector) is a row of NaN.

The matrix is (re)built from the output when the run closes, after a Parquet
output's parts are merged. The file is a real ``.npy`` (``numpy.lib.format``):
created at its final size with ``open_memmap`` under ``PATH.writing``, filled in
place window by window (a few MiB of rows mapped at a time, flushed, unmapped: the
process never holds more than one window of the matrix), then renamed over
``PATH``. A Parquet output's vectors are numpy views of the Arrow buffers; a JSONL
output is streamed line by line, each line's vector parsed with orjson straight
into its row (one line's floats at a time, never the file's). So a kill leaves
either the old matrix or the new one, never a torn one; and since every close
rebuilds it when it and the output disagree (shape, or an output newer than the
matrix), a rerun after ``kill -9`` makes them consistent again — resume needs no
state of its own.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson

from llmbatch._core.embed import VECTOR_COLUMN
from llmbatch._core.exceptions import OutputError
from llmbatch._core.results import output_error

WINDOW_BYTES = 16 << 20  # matrix rows mapped (and Parquet vector data read) at a time

Shape = tuple[int, int]
Fill = Callable[[Path, int, int], int]


def npy_path(path: Path) -> Path:
    """The matrix beside an output, under its name: ``vectors.parquet`` → ``vectors.npy``
    (what ``batch fetch OUT``, which takes no ``--npy``, keeps up to date if it is there)."""
    return path.with_suffix(".npy")


def is_parquet_output(path: Path) -> bool:
    return path.suffix.lower() in (".parquet", ".pq")


def _shape_of(npy: Path) -> tuple[int, ...] | None:
    import numpy as np

    try:
        with npy.open("rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, _, dtype = np.lib.format.read_array_header_2_0(f)
    except (OSError, ValueError):
        return None
    return tuple(shape) if dtype == np.float32 else None


def _parquet_shape(path: Path) -> Shape:
    import pyarrow.parquet as pq

    meta = pq.read_metadata(path)
    sch = pq.read_schema(path)
    dim = int(sch.field(VECTOR_COLUMN).type.list_size) if VECTOR_COLUMN in sch.names else 0
    return int(meta.num_rows), dim


def _jsonl_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            if raw.strip():
                yield lineno, raw


def _vector_of(path: Path, lineno: int, raw: bytes) -> list[float] | None:
    """The ``embedding`` of one JSONL output line (None: a failed row)."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise OutputError(f"{path}:{lineno}: not a JSON line; --npy reads the output") from None
    if not isinstance(obj, dict) or VECTOR_COLUMN not in obj:
        raise OutputError(
            f"{path}:{lineno}: no {VECTOR_COLUMN!r} field: --npy is for embedding outputs"
        )
    vec = obj[VECTOR_COLUMN]
    if vec is not None and not isinstance(vec, list):
        raise OutputError(f"{path}:{lineno}: {VECTOR_COLUMN!r} is not a list of numbers")
    return vec


def _jsonl_shape(path: Path) -> Shape:
    """(lines, the first vector's length): one pass that parses lines only until a
    vector is found, then counts the rest."""
    rows = dim = 0
    for lineno, raw in _jsonl_lines(path):
        rows += 1
        if dim == 0:
            vec = _vector_of(path, lineno, raw)
            dim = len(vec) if vec else 0
    return rows, dim


def output_shape(path: Path) -> Shape:
    """(rows, dimensions) of an embedding output, 0 dimensions when it has no vector."""
    return _parquet_shape(path) if is_parquet_output(path) else _jsonl_shape(path)


def is_current(path: Path, npy: Path) -> bool:
    """Whether ``npy`` already holds the vectors of the output ``path``."""
    if not npy.exists():
        return False
    try:
        fresh = npy.stat().st_mtime_ns >= path.stat().st_mtime_ns
    except OSError:
        return False
    if not fresh:
        return False
    shape = _shape_of(npy)
    if shape is None:
        return False
    rows, dim = output_shape(path)
    return shape == (rows, dim or shape[1])  # only failed rows: any placeholder width


def write_npy(path: Path, npy: Path, *, force: bool = False) -> Path | None:
    """The vectors of the embedding output ``path`` (Parquet or JSONL) into ``npy``.

    Returns the path written, or None when there is no output (no rows ever).
    """
    if not path.exists():
        return None
    if not force and is_current(path, npy):
        return npy
    rows, dim = output_shape(path)
    if is_parquet_output(path):
        if dim == 0:
            raise OutputError(f"{path} has no vector column: --npy is for embedding outputs")
        fill: Fill = _parquet_filler(path)
    else:
        dim = dim or 1  # only failed rows: a placeholder width, as a Parquet output has
        fill = _jsonl_filler(path)
    tmp = npy.with_name(npy.name + ".writing")
    try:
        npy.parent.mkdir(parents=True, exist_ok=True)
        at = fill(tmp, rows, dim)
        if at != rows:
            raise OutputError(f"{path} changed while {npy} was built ({at:,} rows, not {rows:,})")
        os.replace(tmp, npy)
    except OSError as exc:
        raise output_error(exc, npy) from None
    finally:
        tmp.unlink(missing_ok=True)
    return npy


def _windows(tmp: Path, rows: int, dim: int) -> Iterator[tuple[int, int, Any]]:
    """The file at full size with its header (``open_memmap``), then (first row, row
    count, a mapped window of that many rows) in turn, each flushed and unmapped when
    the caller asks for the next: RSS stays one window, whatever the matrix size."""
    import numpy as np

    if rows == 0:  # nothing to map: the header alone
        np.save(tmp, np.empty((0, dim), dtype=np.float32), allow_pickle=False)
        return
    whole: Any = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(rows, dim))
    start = int(whole.offset)
    del whole
    step = max(1024, WINDOW_BYTES // (4 * max(1, dim)))
    for at in range(0, rows, step):
        n = min(step, rows - at)
        window: Any = np.memmap(
            tmp, dtype=np.float32, mode="r+", offset=start + at * dim * 4, shape=(n, dim)
        )
        yield at, n, window
        window.flush()
        del window


def _parquet_filler(path: Path) -> Fill:
    def fill(tmp: Path, rows: int, dim: int) -> int:
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path, pre_buffer=False)
        step = max(1024, WINDOW_BYTES // (4 * max(1, dim)))
        batches = pf.iter_batches(batch_size=step, columns=[VECTOR_COLUMN], use_threads=False)
        done = 0
        pending: Any = None  # a batch's rows not yet copied (batches and windows may differ)
        for _, n, window in _windows(tmp, rows, dim):
            got = 0
            while got < n:
                if pending is None or len(pending) == 0:
                    batch = next(batches, None)
                    if batch is None:
                        return done + got
                    pending = batch.column(0)
                take = min(n - got, len(pending))
                _rows_into(window[got : got + take], pending.slice(0, take), dim)
                pending = pending.slice(take)
                got += take
            done += n
        return done

    return fill


def _rows_into(out: Any, col: Any, dim: int) -> None:
    """One slice of the fixed-size-list column into ``out`` (n × dim), NaN for nulls.

    Straight from the Arrow buffers: ``Array.to_numpy`` would import pandas."""
    import numpy as np

    from llmbatch._io.arrow_arrays import float32_rows, validity

    rows = float32_rows(col, dim)
    if rows is None:
        out[:] = np.nan
        return
    out[:] = rows
    valid = validity(col)
    if valid is not None:
        out[~valid] = np.nan


def _jsonl_filler(path: Path) -> Fill:
    def fill(tmp: Path, rows: int, dim: int) -> int:
        import numpy as np

        lines = _jsonl_lines(path)
        done = 0
        for _, n, window in _windows(tmp, rows, dim):
            for k in range(n):
                item = next(lines, None)
                if item is None:
                    return done + k
                vec = _vector_of(path, *item)
                if vec is None:
                    window[k] = np.nan
                elif len(vec) != dim:
                    raise OutputError(
                        f"{path}:{item[0]}: a vector of {len(vec)} dimensions among vectors "
                        f"of {dim}; one matrix holds one dimension"
                    )
                else:
                    window[k] = vec
            done += n
        return done

    return fill
