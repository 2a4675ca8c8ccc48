"""A provider batch's spend in the rolling windows: booked at submit, settled once it ends.

A batch's cost is known only when it has ended, and no window may be overrun
by then, so ``batch submit`` books each chunk's worst case (``BookingLedger.book``)
under an id its batch state keeps. Once the batch has ended, any process that
can reach the ledger replaces the booking with what the batch really cost
(``settle_booking``), where the booking was: as far as a window is concerned,
the batch spent it when it was submitted, so the real cost ages out when the
worst case would have. Settling again changes nothing (a fetch killed after
settling, then run again): the SQLite row is settled once, and the Redis booking
is gone once settled.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import anyio.to_thread

from llmbatch._budget.sqlite_file import connect
from llmbatch._budget.windows import safe_url
from llmbatch._core.exceptions import LLMBatchError, SharedStoreError


def insert_booking(
    db: sqlite3.Connection, booking: str, scope: str, at: float, cost: float, tokens: int
) -> None:
    """A batch's booking at its worst case (inside the caller's transaction)."""
    db.execute(
        "INSERT OR IGNORE INTO bookings (id, scope, at, cost, tokens) VALUES (?, ?, ?, ?, ?)",
        (booking, scope, at, cost, int(tokens)),
    )


def settle_row(db: sqlite3.Connection, booking: str, cost: float, tokens: int) -> bool:
    """Set a booking to its batch's real cost, once; False: settled before, or no such row."""
    cursor = db.execute(
        "UPDATE bookings SET cost = ?, tokens = ?, settled = 1 WHERE id = ? AND settled = 0",
        (cost, int(tokens), booking),
    )
    return cursor.rowcount > 0


def _settle_file(path: Path, booking: str, cost: float, tokens: int) -> None:
    if not path.exists():
        return  # the ledger is gone, and its booking with it
    try:
        db = connect(path)
    except (LLMBatchError, sqlite3.Error) as exc:
        raise SharedStoreError(f"budget ledger {path}: {exc}") from None
    try:
        settle_row(db, booking, cost, tokens)
    except sqlite3.Error as exc:
        raise SharedStoreError(f"budget ledger {path}: {exc}") from None
    finally:
        db.close()


async def settle_booking(
    record: dict[str, Any], cost: float, tokens: int, shared: str | None
) -> bool:
    """Replace the booking ``record`` (from ``book``) by what the batch really cost.

    True: done (now, or before); False: this process cannot reach its store (Redis
    without the same ``--shared``): keep the record and try again later.

    :raises SharedStoreError: the store did not answer (try again later).
    """
    booking = str(record.get("id"))
    if record.get("store") == "sqlite":
        path = Path(str(record.get("path")))
        await anyio.to_thread.run_sync(_settle_file, path, booking, cost, tokens)
        return True
    if record.get("store") == "redis":
        if shared is None or safe_url(shared) != record.get("where"):
            return False
        from llmbatch._budget.redis import settle_redis_booking  # the [redis] extra

        await settle_redis_booking(shared, str(record.get("scope")), booking, cost, tokens)
        return True
    return False  # a store this llmbatch does not know: leave it to one that does
