"""Batch results files spooled to disk: downloaded in chunks, then read a line at a time.

A results file can hold hundreds of MB (50,000 embeddings of 1,536 dimensions are
about 400 MB of base64). It goes to a file on disk as it arrives, is checked for a
cut-off last line, and is then parsed one line at a time: memory holds one line
and the one ``ItemResult`` made from it, never the whole body. The spool files sit
in the output's batch state directory, named after the batch (a killed fetch's
file is overwritten and deleted by the next fetch of that batch), or in the
system's temp directory when there is no output; closing the stream deletes them.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

import orjson

from llmbatch._core.batch_types import ItemResult
from llmbatch._core.exceptions import ConnectionFailed

CHUNK_BYTES = 1 << 20  # what one read of the download takes
BIG_LINE = 64 * 1024  # a line longer than this is parsed by ``json`` (see ``parse_line``)
SUFFIX = ".download"
_CUT = "a results file ended mid-line (download cut off)"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def parse_line(line: bytes | str) -> Any:
    """One line's JSON. orjson holds about 13 times a document's size while it parses
    it (a 17 MB line of 2,048 embeddings: some 220 MB); the standard library about
    twice, at much the same speed for long strings: it takes the long lines."""
    if len(line) > BIG_LINE:
        return json.loads(line)
    return orjson.loads(line)


def spool_path(folder: Path | None, batch_id: str, n: int) -> Path:
    """Where the ``n``-th results file of a batch goes while it is read."""
    name = f"{_UNSAFE.sub('_', batch_id)}-{n}"
    if folder is None:
        fd, path = tempfile.mkstemp(prefix=f"llmbatch-{name}-", suffix=SUFFIX)
        os.close(fd)
        return Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{name}{SUFFIX}"


def check_complete(path: Path) -> None:
    """A file whose last line is cut off (no newline, not JSON) was cut off in transit."""
    with path.open("rb") as f:
        end = f.seek(0, os.SEEK_END)
        if end == 0:
            return
        f.seek(end - 1)
        if f.read(1) == b"\n":
            return
        start = _last_line_start(f, end)
        f.seek(start)
        tail = f.read(end - start)
    if not tail.strip():
        return
    try:
        parse_line(tail)
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise ConnectionFailed(_CUT) from exc


def _last_line_start(f: BinaryIO, end: int) -> int:
    pos = end
    while pos > 0:
        step = min(CHUNK_BYTES, pos)
        f.seek(pos - step)
        block = f.read(step)
        nl = block.rfind(b"\n")
        if nl >= 0:
            return pos - step + nl + 1
        pos -= step
    return 0


def _text(raw: bytes) -> str:
    """A line as text (``json`` would copy bytes to text itself, with the bytes held)."""
    try:
        return raw.decode()
    except UnicodeDecodeError as exc:
        raise ConnectionFailed(_CUT) from exc


def _parsed(line: bytes | str) -> Any:
    try:
        return parse_line(line)
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise ConnectionFailed(_CUT) from exc


class ResultStream:
    """A batch's results, made one at a time from spooled files (or a list already read).

    Iterate it once; ``close`` (or leaving ``with``) deletes the spool files.
    """

    def __init__(
        self,
        paths: Iterable[Path] = (),
        item: Callable[[dict[str, Any]], ItemResult] | None = None,
        *,
        items: Iterable[ItemResult] = (),
    ) -> None:
        self.paths = list(paths)
        self.item = item
        self.items = items

    def __iter__(self) -> Iterator[ItemResult]:
        yield from self.items
        item = self.item
        if item is None:
            return
        for path in self.paths:
            with path.open("rb") as f:
                while raw := f.readline():
                    if raw.isspace():
                        continue
                    text = _text(raw)
                    del raw  # the line, its JSON and its result: one at a time
                    obj = _parsed(text)
                    del text
                    if not isinstance(obj, dict):
                        continue
                    result = item(obj)
                    del obj
                    yield result
                    del result  # not held while the next line is read

    def close(self) -> None:
        for path in self.paths:
            path.unlink(missing_ok=True)

    def __enter__(self) -> ResultStream:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
