"""Job files as files: streaming lines, opening and spooling, and the validation pass."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from llmbatch._core.exceptions import LineProblem, UsageError
from llmbatch._core.jobs import Job, JobParser, LineError

# -- reading ----------------------------------------------------------------


def iter_lines(stream: BinaryIO) -> Iterator[tuple[int, bytes]]:
    """Yield (1-based line number, line) for every non-blank line, streaming.

    A UTF-8 byte order mark before the first line (spreadsheet exports) is dropped.
    """
    for lineno, raw in enumerate(stream, 1):
        if lineno == 1:
            raw = raw.removeprefix(b"\xef\xbb\xbf")
        if raw and not raw.isspace():  # blank: what strip() would empty, without a copy
            yield lineno, raw


def job_records(path: Path, columns: Any = None) -> Iterator[tuple[int, bytes]]:
    """(line or row number, the job as JSON) from a JSONL file or a columnar source
    (Parquet, CSV, ``hf://datasets/…``: ``_io.columnar``, ``columns`` says which)."""
    from llmbatch._io.columnar import is_columnar, iter_rows

    if is_columnar(path):
        yield from iter_rows(path, columns)
        return
    with open_jobs(path) as stream:
        yield from iter_lines(stream)


@dataclass(slots=True)
class ValidationSummary:
    """What the validation pass found. ``valid`` counts runnable jobs."""

    path: str
    lines: int = 0
    last_line: int = 0
    valid: int = 0
    problems: list[LineProblem] = field(default_factory=list)

    @property
    def invalid_lines(self) -> set[int]:
        return {p.line for p in self.problems}


def validate_file(
    path: Path,
    parser: JobParser,
    display: str | None = None,
    on_job: Callable[[Job], str | None] | None = None,
    columns: Any = None,
) -> ValidationSummary:
    """Check every line; collect problems with line numbers. Memory: one small int per id.

    ``on_job`` sees each valid job once and may return a further problem with it.
    """
    display = display or str(path)
    summary = ValidationSummary(display)
    seen: set[int] = set()
    duplicate_ids: set[str] = set()
    parse, problems = parser.parse, summary.problems
    lines = valid = lineno = 0
    for lineno, raw in job_records(path, columns):
        lines += 1
        try:
            job = parse(raw, lineno)
        except LineError as exc:
            problems.append(LineProblem(display, lineno, str(exc)))
            continue
        key = hash(job.id)
        if key in seen:
            duplicate_ids.add(job.id)
            continue
        seen.add(key)
        problem = on_job(job) if on_job is not None else None
        if problem is not None:
            problems.append(LineProblem(display, lineno, problem))
        else:
            valid += 1
    summary.lines, summary.valid, summary.last_line = lines, valid, lineno
    if duplicate_ids:
        # Rare: a second, cheap pass finds where each repeated id first stood.
        _report_duplicates(path, parser, display, duplicate_ids, summary, columns)
        summary.problems.sort(key=lambda p: p.line)
    return summary


def _report_duplicates(
    path: Path,
    parser: JobParser,
    display: str,
    ids: set[str],
    summary: ValidationSummary,
    columns: Any = None,
) -> None:
    """The first line with an id is the job; each later one is a problem naming it."""
    first: dict[str, int] = {}
    for lineno, raw in job_records(path, columns):
        try:
            job = parser.parse(raw, lineno)
        except LineError:
            continue
        if job.id not in ids:
            continue
        if job.id in first:
            message = f"duplicate id {job.id!r} (first on line {first[job.id]})"
            summary.problems.append(LineProblem(display, lineno, message))
        else:
            first[job.id] = lineno


def open_jobs(path: Path) -> BinaryIO:
    """The jobs file's lines, decompressed when it is gzip, bzip2 or xz (told by its first
    bytes, whatever its name)."""
    try:
        stream = path.open("rb")
    except FileNotFoundError:
        raise UsageError(f"jobs file not found: {path}") from None
    except IsADirectoryError:
        raise UsageError(f"jobs path is a directory, not a JSONL file: {path}") from None
    except PermissionError:
        raise UsageError(f"cannot read jobs file (permission denied): {path}") from None
    head = stream.read(6)
    stream.seek(0)
    for magic, module in _COMPRESSED:
        if head.startswith(magic):
            import importlib

            stream.close()  # opened again by name: closing the reader closes the file
            opened: BinaryIO = importlib.import_module(module).open(path, "rb")
            return opened
    if head.startswith(_ZSTD):
        stream.close()
        raise UsageError(
            f"{path} is zstd-compressed, which this Python cannot read: decompress it first, "
            f"or pipe it in (zstd -dc {path} | llmbatch run - …)"
        )
    return stream


# What a compressed jobs file starts with, and the module that reads it (all standard).
_COMPRESSED = ((b"\x1f\x8b", "gzip"), (b"BZh", "bz2"), (b"\xfd7zXZ\x00", "lzma"))
_ZSTD = b"\x28\xb5\x2f\xfd"


def spooled_jobs_source(jobs: str) -> BinaryIO | None:
    """The stream to spool for JOBS when it can be read only once (``-``, a FIFO), else None.

    A device that is not our standard input (``/dev/zero``) is refused: it never ends.
    """
    import stat

    if jobs == "-":
        return sys.stdin.buffer
    try:
        mode = os.stat(jobs).st_mode
    except OSError:
        return None  # missing: open_jobs says so
    if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
        return open(jobs, "rb")
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        if os.path.samestat(os.stat(jobs), os.fstat(0)):
            return sys.stdin.buffer
        raise UsageError(f"jobs path {jobs} is a device, not a JSONL file")
    return None


def spool_stdin(source: BinaryIO | None = None) -> Path:
    """Copy standard input (or ``source``) to a temporary file: the check pass and the run
    each read it once."""
    stream = source if source is not None else sys.stdin.buffer
    fd, name = tempfile.mkstemp(prefix="llmbatch-stdin-", suffix=".jsonl")
    try:
        with os.fdopen(fd, "wb") as out:
            shutil.copyfileobj(stream, out, 1 << 20)
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()
    return Path(name)
