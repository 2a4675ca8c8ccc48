"""What a path given as a SQLite store (``--cache``, ``--ledger``) holds, read without writing.

Both stores create their tables on open; pointed at the wrong file they would
write into it (a cache into a budget ledger) or delete it. They ask this first.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from llmbatch._io.paths import file_kind

_HEADER = b"SQLite format 3\x00"


class Found(Enum):
    MISSING = "missing"
    DIRECTORY = "a directory"
    SPECIAL = "not a regular file (a device, pipe or socket)"
    UNREADABLE = "unreadable"
    EMPTY = "empty"
    TEXT = "a text file (a jobs or results file?), not a SQLite file"
    NOT_SQLITE = "not a SQLite file"
    BROKEN_SQLITE = "a SQLite file that cannot be read"
    SQLITE = "a SQLite database"


@dataclass(frozen=True, slots=True)
class Probe:
    """A path's kind; for a readable SQLite file, its application id and tables' columns."""

    found: Found
    detail: str = ""  # why a file could not be read
    application_id: int = 0  # from the header (page 1), when there is one
    tables: dict[str, frozenset[str]] = field(default_factory=dict)

    def describe(self) -> str:
        if self.found is Found.SQLITE:
            shown = ", ".join(sorted(self.tables)[:5]) or "none"
            return f"a SQLite database (tables: {shown})"
        what: str = self.found.value
        return what + (f" ({self.detail})" if self.detail else "")


def probe(path: Path, *, tables: bool = True) -> Probe:
    """Look at ``path`` without creating or changing anything (no -wal/-shm beside it)."""
    kind = file_kind(path)
    if kind != "file":
        return Probe(
            {"missing": Found.MISSING, "directory": Found.DIRECTORY}.get(kind, Found.SPECIAL)
        )
    try:
        with path.open("rb") as f:
            header = f.read(4096)
    except OSError as exc:
        return Probe(Found.UNREADABLE, str(exc.strerror or exc))
    if not header:
        return Probe(Found.EMPTY)
    if not header.startswith(_HEADER):
        return Probe(Found.TEXT if _is_text(header) else Found.NOT_SQLITE)
    app_id = int.from_bytes(header[68:72], "big") if len(header) >= 72 else 0
    if not tables:
        return Probe(Found.SQLITE, application_id=app_id)
    try:
        # immutable: read the main file only; a concurrent writer's WAL is not seen.
        uri = f"{path.resolve().as_uri()}?mode=ro&immutable=1"
        db = sqlite3.connect(uri, uri=True, timeout=2.0)
        try:
            names = [
                str(r[0])
                for r in db.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table'"
                    " AND name NOT LIKE 'sqlite_%'"
                )
            ]
            found = {
                n: frozenset(str(c[1]) for c in db.execute(f'PRAGMA table_info("{n}")'))
                for n in names
                if '"' not in n
            }
        finally:
            db.close()
    except sqlite3.Error as exc:
        return Probe(Found.BROKEN_SQLITE, str(exc), app_id)
    return Probe(Found.SQLITE, application_id=app_id, tables=found)


def _is_text(head: bytes) -> bool:
    """UTF-8 without NUL bytes: someone's text (JSONL, CSV), not a database gone bad."""
    if b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.start >= len(head) - 3  # only a character cut at the end of the sample
    return True
