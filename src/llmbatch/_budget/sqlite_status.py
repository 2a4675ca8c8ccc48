"""``budget status`` and ``budget reset`` over the SQLite ledger: each scope's use, or none."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from llmbatch._budget.ledgerfile import ledger_unusable
from llmbatch._budget.sqlite_file import connect
from llmbatch._core.exceptions import LLMBatchError


@dataclass(frozen=True, slots=True)
class WindowUse:
    """Spend and held room of one scope over one rolling window (``budget status``)."""

    scope: str
    seconds: float
    spent_cost: float
    spent_tokens: int
    held_cost: float
    held_tokens: int
    live_leases: int


def ledger_status(path: Path, scope: str | None, now: float) -> list[WindowUse]:
    """Use per scope (every scope when ``scope`` is None) over the last hour and day."""
    if not path.exists():
        return []
    with _reading(path) as db:
        if scope is None:
            rows = db.execute(
                "SELECT scope FROM spend UNION SELECT scope FROM bookings "
                "UNION SELECT scope FROM leases ORDER BY 1"
            )
            scopes = [str(r[0]) for r in rows]
        else:
            scopes = [scope]
        out = []
        for s in scopes:
            for seconds in (3600.0, 86400.0):
                since = now - seconds
                sc, st = db.execute(
                    "SELECT COALESCE(SUM(cost), 0), COALESCE(SUM(tokens), 0) FROM "
                    "(SELECT cost, tokens FROM spend WHERE scope = ? AND at > ? UNION ALL "
                    "SELECT cost, tokens FROM bookings WHERE scope = ? AND at > ?)",
                    (s, since, s, since),
                ).fetchone()
                dc, dt = db.execute(
                    "SELECT COALESCE(SUM(cost), 0), COALESCE(SUM(tokens), 0) FROM leases "
                    "WHERE scope = ? AND expires <= ? AND expires > ?",
                    (s, now, since),
                ).fetchone()
                hc, ht, n = db.execute(
                    "SELECT COALESCE(SUM(cost), 0), COALESCE(SUM(tokens), 0), COUNT(*) "
                    "FROM leases WHERE scope = ? AND expires > ?",
                    (s, now),
                ).fetchone()
                out.append(WindowUse(s, seconds, sc + dc, int(st + dt), hc, int(ht), int(n)))
        return out


def reset_scope(path: Path, scope: str) -> int:
    """Forget every spend, batch booking and lease of ``scope``; returns how many rows went."""
    if not path.exists():
        return 0
    with _reading(path) as db:
        db.execute("BEGIN IMMEDIATE")
        n = db.execute("DELETE FROM spend WHERE scope = ?", (scope,)).rowcount
        n += db.execute("DELETE FROM bookings WHERE scope = ?", (scope,)).rowcount
        n += db.execute("DELETE FROM leases WHERE scope = ?", (scope,)).rowcount
        db.execute("COMMIT")
        return int(n)


@contextmanager
def _reading(path: Path) -> Iterator[sqlite3.Connection]:
    """The ledger for ``budget status|reset``; its failures as errors the CLI can word."""
    db = connect(path)
    try:
        yield db
    except sqlite3.OperationalError as exc:
        raise LLMBatchError(f"budget ledger {path}: {exc}; try again") from None
    except sqlite3.DatabaseError as exc:
        raise ledger_unusable(path, str(exc)) from None
    finally:
        db.close()
