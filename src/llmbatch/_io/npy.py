"""``--npy``: the vectors of a Parquet output as one float32 matrix, ``OUT.npy`` beside it.

Design: the matrix is (re)built from the Parquet file when the run closes, after
the parts are merged — row ``i`` of ``OUT.npy`` is row ``i`` of ``OUT.parquet``
(its ``id``, ``index``, ``status`` columns say whose vector it is). A failed row
(no vector) is a row of NaN. The file is a real ``.npy`` (``numpy.lib.format``):
created at its final size with ``open_memmap`` under ``OUT.npy.writing``, filled
in place from the Parquet's vector column batch by batch (numpy views of the
Arrow buffers: no Python float a dimension, memory flat), flushed, then renamed
over ``OUT.npy``. So a kill leaves either the old matrix or the new one, never a
torn one; and since every close rebuilds it from the Parquet when they disagree
(shape, or a Parquet newer than the matrix), a rerun after ``kill -9`` makes them
consistent again — resume needs no state of its own.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from llmbatch._core.embed import VECTOR_COLUMN
from llmbatch._core.exceptions import OutputError
from llmbatch._core.results import output_error

BATCH_BYTES = 16 << 20  # vector data read from the Parquet at a time


def npy_path(path: Path) -> Path:
    """``vectors.parquet`` → ``vectors.npy``."""
    return path.with_suffix(".npy")


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


def _parquet_shape(path: Path) -> tuple[int, int]:
    import pyarrow.parquet as pq

    meta = pq.read_metadata(path)
    sch = pq.read_schema(path)
    dim = int(sch.field(VECTOR_COLUMN).type.list_size) if VECTOR_COLUMN in sch.names else 0
    return int(meta.num_rows), dim


def is_current(path: Path, npy: Path) -> bool:
    """Whether ``npy`` already holds the vectors of the Parquet ``path``."""
    if not npy.exists():
        return False
    try:
        fresh = npy.stat().st_mtime_ns >= path.stat().st_mtime_ns
    except OSError:
        return False
    return fresh and _shape_of(npy) == _parquet_shape(path)


def write_npy(path: Path, npy: Path | None = None, *, force: bool = False) -> Path | None:
    """The vectors of the Parquet output ``path`` into ``npy`` (default ``OUT.npy``).

    Returns the path written, or None when there is no Parquet output (no rows ever).
    """
    npy = npy or npy_path(path)
    if not path.exists():
        return None
    if not force and is_current(path, npy):
        return npy
    rows, dim = _parquet_shape(path)
    if dim == 0:
        raise OutputError(f"{path} has no vector column: --npy is for embedding outputs")
    tmp = npy.with_name(npy.name + ".writing")
    try:
        _fill(path, tmp, rows, dim)
        os.replace(tmp, npy)
    except OSError as exc:
        raise output_error(exc, npy) from None
    finally:
        tmp.unlink(missing_ok=True)
    return npy


def _fill(path: Path, tmp: Path, rows: int, dim: int) -> None:
    """The header and the file at full size first (``open_memmap``), then each batch
    through its own mapped window, flushed and unmapped: the process never holds
    more than one batch of the matrix's pages (RSS flat, whatever the matrix size)."""
    import numpy as np
    import pyarrow.parquet as pq

    whole: Any = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(rows, dim))
    start = int(whole.offset)
    del whole
    at = 0
    pf = pq.ParquetFile(path, pre_buffer=False)
    batch_rows = max(1024, BATCH_BYTES // (4 * max(1, dim)))
    for batch in pf.iter_batches(batch_size=batch_rows, columns=[VECTOR_COLUMN], use_threads=False):
        col = batch.column(0)
        n = len(col)
        if n == 0:
            continue
        if at + n > rows:
            break
        window: Any = np.memmap(
            tmp, dtype=np.float32, mode="r+", offset=start + at * dim * 4, shape=(n, dim)
        )
        _rows_into(window, col, dim)
        window.flush()
        del window
        at += n
    if at != rows:
        raise OutputError(f"{path} gave {at:,} rows where its footer says {rows:,}")


def _rows_into(out: Any, col: Any, dim: int) -> None:
    """One batch of the fixed-size-list column into ``out`` (n × dim), NaN for nulls."""
    import numpy as np

    n = len(col)
    # The child values of the slice: n*dim float32 (null rows hold placeholders).
    values = col.values.slice(col.offset * dim, n * dim)
    flat = values.to_numpy(zero_copy_only=values.null_count == 0)
    out[:] = flat.reshape(n, dim)
    if col.null_count:
        valid = col.is_valid().to_numpy(zero_copy_only=False)
        out[~valid] = np.nan
