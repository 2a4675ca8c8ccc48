"""Vectors to Parquet: row groups streamed to part files, merged into one file at the end.

A Parquet file is readable only once its footer is written, at close: a run
killed mid-write would leave nothing readable. So rows go to *part files* in
``OUT.parts/`` — each a complete Parquet file once closed, a new one every
``PART_ROWS`` rows or ``PART_SECONDS`` seconds — and at the end every part (and
the earlier output, on resume) is merged into ``OUT`` by row group, and the parts
removed. A part left unreadable by a kill is the torn tail: cut away on the next
run, its rows run again; the output's metadata names the parts merged into it, so
a kill between the merge and the removal of the parts never counts a row twice.

Schema: ``id`` (string), ``index`` (its place in the line's input), ``status``,
``error``, ``model``, ``dimensions``, ``metadata`` (JSON), ``cost_usd`` and
``embedding`` — a fixed-size list of float32, built from the numpy matrix without a
Python float per dimension. ``--npy PATH`` is built from ``OUT`` after the merge
(``_io.npy``, by the embedding sink).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from llmbatch._core.embed import VECTOR_COLUMN
from llmbatch._core.exceptions import OutputError, UsageError
from llmbatch._core.results import output_error
from llmbatch._io.resume import ExistingOutput

if TYPE_CHECKING:
    import pyarrow as pa

PART_ROWS = 65_536
PART_SECONDS = 10.0
ROW_GROUP_BYTES = 4 << 20  # a merged row group holds about this much vector data
_MERGED_KEY = b"llmbatch.merged_parts"
# No dictionary or statistics for the vectors (hashing every float costs more than
# writing it), no compression either: float32 noise does not compress.
_WRITE_OPTIONS: dict[str, Any] = {
    "compression": {VECTOR_COLUMN: "NONE", "id": "snappy", "metadata": "snappy"},
    "use_dictionary": ["status", "error", "model", "dimensions"],
    "write_statistics": ["id", "index", "status", "dimensions"],
}


def release_big_blocks() -> None:
    """Ask glibc to give blocks of 1 MiB and more back to the system when freed.

    Vectors come and go in blocks of a few MiB (a pack's matrix); glibc's moving
    mmap threshold would serve them from the heap after the first free, and the
    heap only grows. Nothing happens on other C libraries.
    """
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        # The process's own symbols (no ctypes.util.find_library: it spawns ldconfig).
        libc = ctypes.CDLL(None)
        libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return


def require_pyarrow() -> Any:
    try:
        import pyarrow
    except ImportError:
        raise UsageError(
            "Parquet needs pyarrow: pip install 'llmbatch[parquet]'. Nothing was sent."
        ) from None
    return pyarrow


def is_parquet(path: Path | None) -> bool:
    return path is not None and path.suffix.lower() in (".parquet", ".pq")


def parts_dir(path: Path) -> Path:
    return path.with_name(path.name + ".parts")


def schema(dim: int) -> pa.Schema:
    import pyarrow as pa

    return pa.schema(
        [
            ("id", pa.string()),
            ("index", pa.int32()),
            ("status", pa.string()),
            ("error", pa.string()),
            ("model", pa.string()),
            ("dimensions", pa.int32()),
            ("metadata", pa.string()),
            ("cost_usd", pa.float64()),
            (VECTOR_COLUMN, pa.list_(pa.float32(), dim)),
        ]
    )


class VectorWriter:
    """Appends rows to ``OUT.parts/`` while the run goes; ``close`` merges into ``OUT``."""

    def __init__(self, path: Path, *, part_rows: int | None = None) -> None:
        require_pyarrow()
        release_big_blocks()
        self.path = path
        self.parts = parts_dir(path)
        # LLMBATCH_PARQUET_PART_ROWS: smaller parts (tests of a kill mid-run).
        self.part_rows = part_rows or int(os.environ.get("LLMBATCH_PARQUET_PART_ROWS") or PART_ROWS)
        self.dim: int | None = None
        self._writer: Any = None
        self._part_rows = 0
        self._opened_at = 0.0
        self._held: list[dict[str, Any]] = []  # failed rows before the dimension is known
        self.rows = 0
        try:
            self.parts.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(
                f"cannot write {self.parts}: {exc.strerror}. Nothing was sent."
            ) from None
        self._next = next_part_number(path)

    def write(
        self,
        ids: Sequence[str],
        index: Sequence[int],
        model: str,
        metadata: Sequence[Any],
        cost: float | None,
        vectors: Any = None,
        error: str | None = None,
    ) -> None:
        """Rows of one pack: ``vectors`` (n × dim float32), or failed rows with ``error``."""
        n = len(ids)
        if vectors is not None:
            dim = int(vectors.shape[1])
            if self.dim is None:
                self.dim = dim
            elif dim != self.dim:
                raise OutputError(
                    f"{self.path} holds vectors of {self.dim} dimensions; {model} answered "
                    f"with {dim}. One output holds one dimension: use another --output"
                )
        cols = {
            "id": list(ids),
            "index": list(index),
            "status": "ok" if error is None else "failed",
            "error": error,
            "model": model,
            "metadata": [None if m is None else orjson.dumps(m).decode() for m in metadata],
            "cost_usd": None if cost is None else cost / max(1, n),
            "vectors": vectors,
        }
        if self.dim is None:
            self._held.append(cols)
            return
        for held in self._held:
            self._write_cols(held)
        self._held = []
        self._write_cols(cols)

    def _write_cols(self, cols: dict[str, Any]) -> None:
        import pyarrow as pa

        from llmbatch._io import arrow_arrays as aa

        assert self.dim is not None
        n = len(cols["id"])
        vectors = cols["vectors"]
        if vectors is None:
            vec = pa.nulls(n, pa.list_(pa.float32(), self.dim))
        else:
            vec = aa.float32_lists(vectors, self.dim)
        table = pa.Table.from_arrays(
            [
                aa.strings(cols["id"]),
                aa.int32s(cols["index"]),
                aa.constant_string(cols["status"], n),
                aa.constant_string(cols["error"], n),
                aa.constant_string(cols["model"], n),
                aa.constant_int32(self.dim, n),
                aa.strings(cols["metadata"]),
                aa.constant_float64(cols["cost_usd"], n),
                vec,
            ],
            schema=schema(self.dim),
        )
        try:
            self._part().write_table(table)
        except OSError as exc:
            raise output_error(exc, self.path) from None
        self._part_rows += n
        self.rows += n
        if self._part_rows >= self.part_rows or time.monotonic() - self._opened_at > PART_SECONDS:
            self._close_part()

    def _part(self) -> Any:
        if self._writer is None:
            import pyarrow.parquet as pq

            assert self.dim is not None
            name = self.parts / f"{self._next:06d}.parquet"
            self._next += 1
            self._writer = pq.ParquetWriter(name, schema(self.dim), **_WRITE_OPTIONS)
            self._opened_at = time.monotonic()
            self._part_rows = 0
        return self._writer

    def _close_part(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def flush(self) -> None:
        """Close the part being written: its rows survive a kill from here on (failed
        rows held until a vector shows the dimension stay held)."""
        self._close_part()

    def close(self) -> None:
        """Close the last part and merge every part into the output."""
        if self._held and self.dim is None:
            self.dim = 1  # only failed rows and no vector ever seen: a placeholder width
        for held in self._held:
            self._write_cols(held)
        self._held = []
        self._close_part()
        merge_parts(self.path)


def _part_no(path: Path) -> int:
    try:
        return int(path.stem)
    except ValueError:
        return 0


def next_part_number(path: Path) -> int:
    """The number of the next part: past every part there is and every one merged before
    (a merged part's name must never come back: it would count as merged)."""
    taken = [_part_no(p) for p in parts_dir(path).glob("*.parquet")]
    taken += [_part_no(Path(name)) for name in merged_parts(path)]
    return 1 + max(taken, default=0)


def readable_parts(path: Path) -> tuple[list[Path], list[Path]]:
    """(complete part files not merged yet, torn ones) of the output ``path``."""
    import pyarrow.parquet as pq

    folder = parts_dir(path)
    if not folder.is_dir():
        return [], []
    merged = merged_parts(path)
    good, torn = [], []
    for part in sorted(folder.glob("*.parquet"), key=_part_no):
        if part.name in merged:
            part.unlink(missing_ok=True)  # merged before a kill: its rows are in the output
            continue
        try:
            pq.read_metadata(part)
        except Exception:
            torn.append(part)
            continue
        good.append(part)
    return good, torn


def merged_parts(path: Path) -> set[str]:
    import pyarrow.parquet as pq

    if not path.exists():
        return set()
    meta = pq.read_metadata(path).metadata or {}
    raw = meta.get(_MERGED_KEY)
    return set(raw.decode().split(",")) if raw else set()


def merge_parts(path: Path) -> None:
    """``path`` and its complete parts into one file (by row group), then the parts removed."""
    import pyarrow.parquet as pq

    parts, torn = readable_parts(path)
    for part in torn:
        part.unlink(missing_ok=True)
    if not parts:
        _remove_dir(parts_dir(path))
        return
    sources = ([path] if path.exists() else []) + parts
    last = pq.read_schema(sources[-1]).remove_metadata()
    vectors = VECTOR_COLUMN in last.names
    dim = _dim_of_schema(last) if vectors else 0
    names = ",".join(p.name for p in parts).encode()
    tmp = path.with_name(path.name + ".merging")
    rows_per_group = max(1024, ROW_GROUP_BYTES // (4 * max(1, dim))) if vectors else 65_536
    sch = last.with_metadata({_MERGED_KEY: names})
    options = _WRITE_OPTIONS if vectors else {"compression": "snappy"}
    try:
        with pq.ParquetWriter(tmp, sch, **options) as out:
            for source in sources:
                pf = pq.ParquetFile(source, pre_buffer=False)
                for batch in pf.iter_batches(batch_size=rows_per_group, use_threads=False):
                    if vectors and _dim_of_schema(batch.schema) != dim:
                        raise OutputError(
                            f"{source} holds vectors of another dimension than {dim}; "
                            "one output holds one dimension"
                        )
                    if batch.schema != last:
                        batch = batch.cast(last)
                    out.write_batch(batch)
        os.replace(tmp, path)
    except OSError as exc:
        raise output_error(exc, path) from None
    for part in parts:
        part.unlink(missing_ok=True)
    _remove_dir(parts_dir(path))


def _dim_of_schema(sch: Any) -> int:
    return int(sch.field(VECTOR_COLUMN).type.list_size)


def _remove_dir(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass


# -- resume --------------------------------------------------------------------------


def iter_done_rows(path: Path) -> Iterator[tuple[list[str], list[str], list[float | None]]]:
    """(ids, statuses, costs) batch by batch, from the output and its complete parts."""
    import pyarrow.parquet as pq

    parts, _ = readable_parts(path)
    sources = ([path] if path.exists() else []) + parts
    for source in sources:
        try:
            pf = pq.ParquetFile(source)
        except Exception:
            raise UsageError(
                f"{source} is not a Parquet file llmbatch can read; move it away or pass "
                "--fresh to start over with a backup"
            ) from None
        for batch in pf.iter_batches(columns=["id", "status", "cost_usd"], batch_size=65_536):
            cols = batch.to_pydict()
            yield cols["id"], cols["status"], cols["cost_usd"]


def read_existing_vectors(path: Path, *, retry_failed: bool) -> ExistingOutput:
    """What a Parquet output (and parts a killed run left) already holds, for resume."""
    require_pyarrow()
    state = ExistingOutput(path)
    _, torn = readable_parts(path)
    if torn:
        state.torn_at = 0
        state.torn_bytes = sum(p.stat().st_size for p in torn)
    failed: set[str] = set()
    for ids, statuses, costs in iter_done_rows(path):
        for job_id, status, cost in zip(ids, statuses, costs, strict=True):
            state.lines += 1
            if cost:
                state.cost_usd += cost
            if status == "ok":
                failed.discard(job_id)
                state.done.add(job_id, None)
                state.ok += 1
            else:
                failed.add(job_id)
    state.failed = len(failed)
    if retry_failed:
        state.retry_ids = len(failed)
    else:
        for job_id in failed:
            state.done.add(job_id, None)
    state.done.freeze()
    return state


def cut_torn_parts(path: Path) -> int:
    """Remove the part files a kill left unreadable; return how many."""
    _, torn = readable_parts(path)
    for part in torn:
        part.unlink(missing_ok=True)
    return len(torn)
