"""Is this file an llmbatch response cache? Asked before the cache writes or deletes it.

A cache is a SQLite file whose header carries :data:`APPLICATION_ID` (``PRAGMA
application_id``, bytes 68-71 of the file, readable even when later pages are
corrupt). Caches made before the id existed hold exactly one table, ``answers``,
with the cache's columns; they are recognised by that and get the id on their
next open. Anything else — a jobs or results file, a budget ledger, another
program's database, a directory — is never written into or deleted.
"""

from __future__ import annotations

import sqlite3
from enum import Enum
from pathlib import Path

from llmbatch._core.exceptions import UsageError
from llmbatch._io.paths import file_kind

APPLICATION_ID = 0x6C6C6263  # "llbc"
_HEADER = b"SQLite format 3\x00"
_ANSWERS_COLUMNS = frozenset({"key", "created", "used", "hits", "cost_usd", "value"})


class CacheFile(Enum):
    """What a ``--cache`` path holds."""

    ABSENT = "absent"  # nothing there yet: the cache creates it
    EMPTY = "empty"  # a 0-byte file or a SQLite file with no tables: nothing to lose
    CACHE = "cache"  # an llmbatch cache (maybe with corrupt pages past the header)
    BROKEN = "broken"  # not readable as SQLite and not marked as ours: a cache that broke, or not
    FOREIGN = "foreign"  # certainly something else: a directory, a device, another database


def identify(path: Path) -> tuple[CacheFile, str]:
    """What ``path`` is, and in words why (for the message that refuses it)."""
    kind = file_kind(path)
    if kind == "missing":
        return CacheFile.ABSENT, "absent"
    if kind == "directory":
        return CacheFile.FOREIGN, "a directory"
    if kind == "special":
        return CacheFile.FOREIGN, "not a regular file (a device, pipe or socket)"
    try:
        with path.open("rb") as f:
            header = f.read(100)
    except OSError as exc:
        return CacheFile.FOREIGN, f"unreadable ({exc.strerror})"
    if not header:
        return CacheFile.EMPTY, "empty"
    if not header.startswith(_HEADER):
        return CacheFile.BROKEN, "not a SQLite file"
    if len(header) >= 72 and int.from_bytes(header[68:72], "big") == APPLICATION_ID:
        return CacheFile.CACHE, "an llmbatch cache"
    return _by_schema(path)


def _by_schema(path: Path) -> tuple[CacheFile, str]:
    """A SQLite file without our id in its header: an older cache, or someone else's."""
    try:
        # immutable: read the main file only, creating no -wal/-shm beside someone's file.
        uri = f"{path.resolve().as_uri()}?mode=ro&immutable=1"
        db = sqlite3.connect(uri, uri=True, timeout=2.0)
        try:
            (app_id,) = db.execute("PRAGMA application_id").fetchone()
            tables = {
                name: sql
                for name, sql in db.execute(
                    "SELECT name, sql FROM sqlite_master WHERE type = 'table'"
                    " AND name NOT LIKE 'sqlite_%'"
                )
            }
            columns = (
                {row[1] for row in db.execute("PRAGMA table_info(answers)")}
                if "answers" in tables
                else set()
            )
        finally:
            db.close()
    except sqlite3.Error as exc:
        return CacheFile.BROKEN, f"a SQLite file that cannot be read ({exc})"
    if app_id == APPLICATION_ID or (set(tables) == {"answers"} and columns == _ANSWERS_COLUMNS):
        return CacheFile.CACHE, "an llmbatch cache"
    if not tables and app_id == 0:
        return CacheFile.EMPTY, "an empty SQLite file"
    shown = ", ".join(sorted(tables)[:5]) or "none"
    return CacheFile.FOREIGN, f"a SQLite database of something else (tables: {shown})"


def check_cache_file(path: Path, *, default: bool, purpose: str) -> CacheFile:
    """Refuse (UsageError) a path the cache must not touch; return what it is otherwise.

    ``default``: the path is llmbatch's own default location, where a file that is
    not SQLite can only be a cache that broke (it degrades, or ``clear`` mends it).
    """
    found, why = identify(path)
    if found is CacheFile.FOREIGN or (found is CacheFile.BROKEN and not default):
        raise UsageError(
            f"{purpose}: {path} is not an llmbatch response cache ({why}); "
            "it was left untouched. Give --cache a path of its own (a new file is fine)"
            + (", or delete it yourself if it is a cache that broke" if found is CacheFile.BROKEN else "")
        )
    return found
