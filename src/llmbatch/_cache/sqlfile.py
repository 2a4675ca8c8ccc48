"""The response cache's file: where it lives, how it is opened, how keys are stored in
it, old files brought up to date, and clearing it (``store.ResponseCache`` uses it)."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llmbatch._cache.fileid import APPLICATION_ID, CacheFile, identify
from llmbatch._cache.key import KEY_TYPES

SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    key TEXT PRIMARY KEY,
    created REAL NOT NULL,
    used REAL NOT NULL,
    hits INTEGER NOT NULL DEFAULT 0,
    cost_usd REAL,
    value BLOB NOT NULL,
    shared INTEGER
);
"""
# Files made before 2026-12 kept an index on ``used`` for ``cache prune``: every store
# paid for it (about a fifth of a store), and a prune is rare; it scans the table now.
DROP_OLD_INDEX = "DROP INDEX IF EXISTS answers_used"


PAGE_SIZE = 16384  # of a new cache file


def default_cache_path() -> Path:
    """``$XDG_CACHE_HOME/llmbatch/cache.sqlite``, else ``~/.cache/llmbatch/cache.sqlite``."""
    base = os.environ.get("XDG_CACHE_HOME") or ""
    root = Path(base) if base.strip() else Path.home() / ".cache"
    return root / "llmbatch" / "cache.sqlite"


def bind_plainly() -> None:
    """sqlite3 binds only int, float, str and bytearray straight: any other value (bytes,
    a bool, a key) is first offered to adapters, and with none registered it goes
    through two failed attribute lookups (one builds an exception) before it is bound
    as it is: a tenth of a cache store. An adapter registered here gives the same value
    back (a key as its bytes, a bool as 0 or 1, None as NULL) in one dict lookup; one
    the process registered already is left alone. (The store's own rows avoid even
    that: their blobs are bytearrays, which sqlite3 binds straight.)"""
    plainly: list[tuple[type, Callable[[Any], Any]]] = [(bytes, bytes), (bool, int)]
    plainly += [(type(None), _none), *((k, bytes) for k in KEY_TYPES)]
    for kind, plain in plainly:
        if (kind, sqlite3.PrepareProtocol) not in sqlite3.adapters:
            sqlite3.register_adapter(kind, plain)


def _none(value: None) -> None:
    return None


def connect(path: Path, busy_timeout_s: float) -> sqlite3.Connection:
    """Open (or make) the cache file: WAL, its pages and pragmas, the table, old files
    brought up to date. Raises sqlite3.DatabaseError for a file that is not a cache."""
    bind_plainly()
    found, why = identify(path)
    if found in (CacheFile.FOREIGN, CacheFile.BROKEN, CacheFile.TEXT):
        # Never write into a file that is not ours (a ledger, a jobs file).
        raise sqlite3.DatabaseError(f"{path} is not an llmbatch cache: {why}")
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    db = sqlite3.connect(
        path,
        timeout=busy_timeout_s,
        isolation_level=None,  # autocommit: each store is its own short transaction
        check_same_thread=False,
    )
    try:
        db.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
        if db.execute("PRAGMA application_id").fetchone()[0] != APPLICATION_ID:
            # Marked before WAL, so a new file carries the mark in its header at once;
            # a new file gets 16 KiB pages (an answer is ~1 KB: 4 KiB pages spill and
            # split twice as often; stores cost about half). An old file keeps its own.
            db.execute(f"PRAGMA page_size = {PAGE_SIZE}")
            db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")  # WAL: durable enough for a cache
        # Checkpoint every ~40 MB of WAL, not every 4 MB: random-key inserts touch the
        # same pages again and again, and each checkpoint copies them once.
        page = db.execute("PRAGMA page_size").fetchone()[0]
        db.execute(f"PRAGMA wal_autocheckpoint = {40 * 1024 * 1024 // page}")
        # Keys are random: a big cache touches pages all over; keep more of them at hand.
        db.execute("PRAGMA cache_size = -16384")  # KiB
        db.executescript(SCHEMA)
        if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'answers_used'").fetchone():
            db.execute(DROP_OLD_INDEX)
        _add_shared_column(db)
        _convert_text_keys(db)
    except BaseException:
        db.close()
        raise
    return db


def stored_key(key: str | bytes) -> bytes:
    """A key as the file stores it: 16 bytes of the sha256 (a smaller index than the
    64-character hex: stores cost about a third less). Bytes (a ``CacheKey``) are that
    already; a 64-character hex string becomes its first 16 bytes; any other string,
    its UTF-8."""
    if isinstance(key, bytes):
        return key
    if len(key) == 64:
        try:
            return bytes.fromhex(key[:32])
        except ValueError:
            pass
    return key.encode()


def _convert_text_keys(db: sqlite3.Connection) -> None:
    """Files written before keys were stored as bytes hold them as text: convert those,
    once, in place (an index range: text sorts before any blob, so a file with none
    costs one lookup)."""
    if db.execute("SELECT 1 FROM answers WHERE key < x'' LIMIT 1").fetchone() is None:
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        rows = db.execute("SELECT key FROM answers WHERE key < x''").fetchall()
        db.executemany(
            "UPDATE OR REPLACE answers SET key = ? WHERE key = ?",
            [(stored_key(str(key)), key) for (key,) in rows],
        )
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


def _add_shared_column(db: sqlite3.Connection) -> None:
    """A cache made before answers recorded ``shared`` gets the column (NULL: unknown)."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(answers)")}
    if "shared" in columns:
        return
    try:
        db.execute("ALTER TABLE answers ADD COLUMN shared INTEGER")
    except sqlite3.OperationalError as exc:
        if "duplicate column" not in str(exc):  # another run added it just now
            raise


def sidecar(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)


def clear_cache(path: Path) -> int:
    """Remove the cache file (and its WAL files), even a corrupt one; return bytes freed."""
    freed = 0
    for p in (path, sidecar(path, "-wal"), sidecar(path, "-shm")):
        try:
            freed += p.stat().st_size
            p.unlink()
        except FileNotFoundError:
            pass
    return freed
