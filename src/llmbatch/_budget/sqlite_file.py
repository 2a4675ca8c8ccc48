"""The SQLite ledger file: its tables, opening it (WAL, a long busy timeout), pruning it.

Three tables, each row tagged with its scope: ``spend`` (what attempts really
cost, booked with the wall time), ``leases`` (room a live process took) and
``bookings`` (a provider batch's spend, booked at its worst case when it is
submitted under an id its batch state keeps, then set to what the batch really
cost once it has ended: ``bookings.py``). ``SqliteLedger`` (in ``sqlite``) reads
and writes them, ``sqlite_status`` answers ``budget status|reset``.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from llmbatch._budget.ledgerfile import check_ledger_file, ledger_unusable

SCHEMA = """
CREATE TABLE IF NOT EXISTS spend (
    scope TEXT NOT NULL, at REAL NOT NULL, cost REAL NOT NULL, tokens INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS spend_scope_at ON spend (scope, at);
CREATE TABLE IF NOT EXISTS leases (
    id TEXT PRIMARY KEY, scope TEXT NOT NULL, cost REAL NOT NULL, tokens INTEGER NOT NULL,
    expires REAL NOT NULL, pid INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS leases_scope ON leases (scope);
CREATE TABLE IF NOT EXISTS bookings (
    id TEXT PRIMARY KEY, scope TEXT NOT NULL, at REAL NOT NULL, cost REAL NOT NULL,
    tokens INTEGER NOT NULL, settled INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS bookings_scope_at ON bookings (scope, at);
"""
KEEP_DAYS = 2.0  # spend older than this serves no window


def connect(path: Path) -> sqlite3.Connection:
    """One connection in WAL mode with a long busy timeout; creates the file and tables.

    :raises UsageError: ``path`` is no ledger, or one SQLite cannot open (waiting will
        not mend it); a lock held too long stays a ``sqlite3.OperationalError``.
    """
    check_ledger_file(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return _connect(path)
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            raise
        raise ledger_unusable(path, str(exc)) from None
    except (sqlite3.DatabaseError, OSError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ledger_unusable(path, why) from None


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
    deadline = time.monotonic() + 30.0
    while True:
        try:
            db.execute("PRAGMA busy_timeout = 30000")
            if db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = NORMAL")
            db.executescript(SCHEMA)
            return db
        except sqlite3.OperationalError as exc:
            # Switching to WAL takes an exclusive lock that the busy handler does not wait for.
            if "locked" not in str(exc) or time.monotonic() > deadline:
                db.close()
                raise
            time.sleep(0.05)
        except BaseException:
            db.close()
            raise


def prune(db: sqlite3.Connection, now: float) -> None:
    """Drop spend, bookings and dead leases that no window can see any more."""
    cutoff = now - KEEP_DAYS * 86400.0
    db.execute("BEGIN IMMEDIATE")
    db.execute("DELETE FROM spend WHERE at < ?", (cutoff,))
    db.execute("DELETE FROM leases WHERE expires < ?", (cutoff,))
    db.execute("DELETE FROM bookings WHERE at < ?", (cutoff,))
    db.execute("COMMIT")
