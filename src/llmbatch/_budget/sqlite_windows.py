"""A rolling window's use in the SQLite ledger: what it holds now, and when room frees up.

A window's use is the spend and the batch bookings of its last ``seconds`` plus
every lease; an expired lease (its process died) keeps counting, as spent at its
worst case, until it ages out of the window like any spend.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from llmbatch._budget.windows import Window


@dataclass(slots=True)
class Sums:
    """One window's use seen in a transaction (one process's own lease apart)."""

    spent: float = 0.0  # booked spend and batches, plus expired leases
    held: float = 0.0  # other processes' live leases


def window_sums(db: sqlite3.Connection, scope: str, own: str, now: float, w: Window) -> Sums:
    """The use of ``w`` in ``scope`` now, leaving out the lease ``own``."""
    col = w.kind
    since = now - w.seconds
    (spent,) = db.execute(
        f"SELECT COALESCE(SUM({col}), 0) FROM spend WHERE scope = ? AND at > ?",
        (scope, since),
    ).fetchone()
    (batches,) = db.execute(
        f"SELECT COALESCE(SUM({col}), 0) FROM bookings WHERE scope = ? AND at > ?",
        (scope, since),
    ).fetchone()
    (dead,) = db.execute(
        f"SELECT COALESCE(SUM({col}), 0) FROM leases "
        "WHERE scope = ? AND id != ? AND expires <= ? AND expires > ?",
        (scope, own, now, since),
    ).fetchone()
    (live,) = db.execute(
        f"SELECT COALESCE(SUM({col}), 0) FROM leases WHERE scope = ? AND id != ? AND expires > ?",
        (scope, own, now),
    ).fetchone()
    return Sums(float(spent) + float(batches) + float(dead), float(live))


def ages_out(
    db: sqlite3.Connection, scope: str, now: float, w: Window, excess: float
) -> float | None:
    """When enough of the window's spend ages out to free ``excess`` (None: never)."""
    since = now - w.seconds
    rows = db.execute(
        f"SELECT at, {w.kind} FROM spend WHERE scope = ? AND at > ? UNION ALL "
        f"SELECT at, {w.kind} FROM bookings WHERE scope = ? AND at > ? UNION ALL "
        f"SELECT expires, {w.kind} FROM leases WHERE scope = ? AND expires <= ? "
        "AND expires > ? ORDER BY 1",
        (scope, since, scope, since, scope, now, since),
    )
    freed = 0.0
    for at, amount in rows:
        freed += float(amount)
        if freed >= excess:
            return float(at) + w.seconds
    return None
