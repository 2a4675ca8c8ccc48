"""Is this file an llmbatch response cache? Asked before the cache writes or deletes it.

A cache is a SQLite file whose header carries :data:`APPLICATION_ID` (``PRAGMA
application_id``, bytes 68-71 of the file, readable even when later pages are
corrupt). Caches made before the id existed hold exactly one table, ``answers``,
with the cache's columns; they are recognised by that and get the id on their
next open. Anything else — a jobs or results file, a budget ledger, another
program's database, a directory — is never written into or deleted.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path

from llmbatch._core.exceptions import UsageError
from llmbatch._io.sqlitefile import Found, probe

APPLICATION_ID = 0x6C6C6263  # "llbc"
_ANSWERS_COLUMNS = frozenset({"key", "created", "used", "hits", "cost_usd", "value"})


class CacheFile(Enum):
    """What a ``--cache`` path holds."""

    ABSENT = "absent"  # nothing there yet: the cache creates it
    EMPTY = "empty"  # a 0-byte file or a SQLite file with no tables: nothing to lose
    CACHE = "cache"  # an llmbatch cache (maybe with corrupt pages past the header)
    BROKEN = "broken"  # not readable as SQLite and not marked as ours: a cache that broke, or not
    TEXT = "text"  # a text file (jobs, results): someone's, unless at the default path
    FOREIGN = "foreign"  # certainly something else: a directory, a device, another database


def identify(path: Path) -> tuple[CacheFile, str]:
    """What ``path`` is, and in words why (for the message that refuses it)."""
    found = probe(path, tables=False)
    if found.found is Found.SQLITE and found.application_id == APPLICATION_ID:
        return CacheFile.CACHE, "an llmbatch cache"  # the header says so, whatever comes after
    if found.found is Found.SQLITE:
        found = probe(path)
    why = found.describe()
    match found.found:
        case Found.MISSING:
            return CacheFile.ABSENT, why
        case Found.EMPTY:
            return CacheFile.EMPTY, why
        case Found.TEXT:
            return CacheFile.TEXT, why
        case Found.NOT_SQLITE | Found.BROKEN_SQLITE:
            return CacheFile.BROKEN, why  # binary: a cache that broke, or not; never written
        case Found.SQLITE:
            old = found.tables.keys() == {"answers"} and _ANSWERS_COLUMNS <= found.tables["answers"]
            if found.application_id == APPLICATION_ID or old:
                return CacheFile.CACHE, "an llmbatch cache"
            if not found.tables and found.application_id == 0:
                return CacheFile.EMPTY, "an empty SQLite file"
    return CacheFile.FOREIGN, why


def check_cache_file(
    path: Path, *, purpose: str, deleting: bool = False, default: bool = False
) -> CacheFile:
    """Refuse (UsageError) a path the cache must not touch; return what it is otherwise.

    A binary file that is not SQLite may be a cache that broke: a run goes on without
    the cache (one warning; the file is never written), ``stats`` says it is unusable.
    ``deleting`` it (``cache clear``) is allowed only at llmbatch's own ``default`` path.
    """
    found, why = identify(path)
    if found is CacheFile.TEXT and default:
        found = CacheFile.BROKEN  # nobody keeps their own text at llmbatch's cache path
    if found in (CacheFile.FOREIGN, CacheFile.TEXT) or (
        found is CacheFile.BROKEN and deleting and not default
    ):
        broken = found is CacheFile.BROKEN
        raise UsageError(
            f"{purpose}: {path} is not an llmbatch response cache ({why}); "
            "it was left untouched. Give --cache a path of its own (a new file is fine)"
            + (", or delete it yourself if it is a cache that broke" if broken else "")
        )
    return found
