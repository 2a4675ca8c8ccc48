"""Rolling budget windows in one SQLite file, shared by every run on the machine.

Its tables are in ``sqlite_file``: ``spend`` (what attempts really cost, booked
with the wall time), ``bookings`` (provider batches' spend) and ``leases`` (room
a live process took). A window's use is the spend and bookings of the last
``seconds`` plus every lease; an expired lease (its process died) keeps
counting, as spent at its worst case, until it ages out of the window like any
spend: room it held may have been spent on requests we never heard back from.

Each process leases room in chunks (one ``BEGIN IMMEDIATE`` transaction) and
hands out holds from it locally, so runs do not queue on the file for every
request. A chunk is a 32nd of the room left (at most 16 attempts' worth,
at least the attempt asking), so chunks shrink as the window fills and a
process never sits on room another could use. Settled spend is booked, and
unused room given back, at most every ``flush_s`` seconds, at a refusal and at
close. A provider batch's booking (``book``) is written at once, under its id.
"""

from __future__ import annotations

import os
import sqlite3
import uuid
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from llmbatch._budget.bookings import insert_booking
from llmbatch._budget.ledger import BudgetStatistics, Hold, Refusal
from llmbatch._budget.ledgerfile import ledger_unusable
from llmbatch._budget.sqlite_file import connect, prune
from llmbatch._budget.sqlite_windows import Sums, ages_out, window_sums
from llmbatch._budget.windows import Window, window_refusal
from llmbatch._core.clock import Clock
from llmbatch._core.exceptions import SharedStoreError

CHUNK_SHARE = 32  # a chunk is at most this fraction of the room left …
CHUNK_ATTEMPTS = 16  # … and at most this many times the attempt asking


class SqliteLedger:
    """``BudgetLedger`` over rolling windows in a SQLite file (see the module doc)."""

    def __init__(
        self,
        path: Path,
        scope: str,
        windows: list[Window],
        clock: Clock,
        *,
        lease_s: float = 60.0,
        flush_s: float = 0.5,
    ) -> None:
        self.path = path
        self.scope = scope
        self.windows = windows
        self.clock = clock
        self.lease_s = lease_s
        self.flush_s = flush_s
        self._id = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self._db: sqlite3.Connection | None = None
        self._lock = anyio.Lock()
        self._limits = {k: any(w.kind == k for w in windows) for k in ("cost", "tokens")}
        # Local state; lease >= held + unflushed always (free = the rest).
        self._lease = {"cost": 0.0, "tokens": 0.0}
        self._held = {"cost": 0.0, "tokens": 0.0}
        self._unflushed = {"cost": 0.0, "tokens": 0.0}
        self._last_flush = 0.0
        self._seen: dict[Window, Sums] = {}
        self._syncing = False
        self._deferred: list[tuple[Hold, float, int]] = []
        self._booked: list[tuple[str, float, int]] = []  # batches' bookings, not yet written
        self.transactions = 0

    async def open(self) -> None:
        try:
            self._db = await anyio.to_thread.run_sync(connect, self.path)
            await anyio.to_thread.run_sync(prune, self._db, self.clock.time())
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError):  # locked, I/O: may pass
                raise SharedStoreError(f"budget ledger {self.path}: {exc}") from None
            if self._db is not None:
                self._db.close()
                self._db = None
            raise ledger_unusable(self.path, str(exc)) from None  # corrupt pages: exit 2
        except (sqlite3.Error, OSError) as exc:
            raise SharedStoreError(f"budget ledger {self.path}: {exc}") from None

    # -- the protocol ---------------------------------------------------------------

    def _free(self, kind: str) -> float:
        return self._lease[kind] - self._held[kind] - self._unflushed[kind]

    def _fits_locally(self, need: dict[str, float]) -> bool:
        return all(not self._limits[k] or self._free(k) >= need[k] for k in need)

    async def reserve(self, cost: float, tokens: int) -> Hold | Refusal:
        need = {"cost": cost, "tokens": float(tokens)}
        if self._syncing or not self._fits_locally(need):
            async with self._lock:
                if not self._fits_locally(need):
                    refusal = await self._run(need)
                    if refusal is not None:
                        return refusal
        self._held["cost"] += cost
        self._held["tokens"] += tokens
        return Hold(cost, tokens, self._id)

    async def settle(self, hold: Hold, cost: float, tokens: int) -> None:
        if self._syncing:
            self._deferred.append((hold, cost, tokens))  # the worker thread reads the state
            return
        self._settle_now(hold, cost, tokens)
        if self.clock.monotonic() - self._last_flush >= self.flush_s and not self._lock.locked():
            async with self._lock:
                await self._run(None)

    def _settle_now(self, hold: Hold, cost: float, tokens: int) -> None:
        self._held["cost"] -= hold.cost
        self._held["tokens"] -= hold.tokens
        self._unflushed["cost"] += cost
        self._unflushed["tokens"] += tokens

    async def book(self, hold: Hold, cost: float, tokens: int, booking: str) -> dict[str, Any]:
        """``hold`` becomes a provider batch's spend, written now under ``booking``."""
        async with self._lock:  # (every transaction runs under it: none is under way)
            self._held["cost"] -= hold.cost
            self._held["tokens"] -= hold.tokens
            self._booked.append((booking, cost, tokens))
            await self._run(None)
        path = str(self.path.resolve())
        return {"store": "sqlite", "path": path, "scope": self.scope, "id": booking}

    def statistics(self) -> BudgetStatistics:
        cost = next((w for w in self.windows if w.kind == "cost"), None)
        tok = next((w for w in self.windows if w.kind == "tokens"), None)
        cs = self._seen.get(cost) if cost else None
        ts = self._seen.get(tok) if tok else None
        return BudgetStatistics(
            cost.limit if cost else None,
            int(tok.limit) if tok else None,
            (cs.spent if cs else 0.0) + self._unflushed["cost"],
            int((ts.spent if ts else 0.0) + self._unflushed["tokens"]),
            (cs.held if cs else 0.0) + self._held["cost"],
            int((ts.held if ts else 0.0) + self._held["tokens"]),
        )

    async def aclose(self) -> None:
        if self._db is None:
            return
        with anyio.CancelScope(shield=True):
            async with self._lock:
                try:
                    await self._run(None, True)
                finally:
                    db, self._db = self._db, None
                    if db is not None:
                        db.close()

    # -- the database ---------------------------------------------------------------

    async def _run(self, need: dict[str, float] | None, closing: bool = False) -> Refusal | None:
        if self._db is None:
            raise SharedStoreError(f"budget ledger {self.path} is closed")
        # While the worker thread reads and rewrites the local state, holds wait for the
        # lock and settles are deferred: nothing may change under the transaction.
        self._syncing = True
        try:
            return await anyio.to_thread.run_sync(self._sync, need, closing)
        except sqlite3.Error as exc:
            raise SharedStoreError(f"budget ledger {self.path}: {exc}") from None
        finally:
            self._syncing = False
            deferred, self._deferred = self._deferred, []
            for args in deferred:
                self._settle_now(*args)

    def _sync(self, need: dict[str, float] | None, closing: bool = False) -> Refusal | None:
        """One transaction: book settled spend, then grow (``need``) or trim this lease."""
        db = self._db
        assert db is not None
        db.execute("BEGIN IMMEDIATE")
        try:
            now = self.clock.time()
            if any(self._unflushed.values()):
                db.execute(
                    "INSERT INTO spend VALUES (?, ?, ?, ?)",
                    (self.scope, now, self._unflushed["cost"], int(self._unflushed["tokens"])),
                )
            for booking, cost, tokens in self._booked:
                insert_booking(db, booking, self.scope, now, cost, tokens)
            self._booked.clear()
            free = self._room(db, now)
            refusal = None
            if need is not None and any(self._limits[k] and need[k] > free[k] for k in need):
                refusal = self._refusal(db, now, need)
                need = None
            local_free = {k: self._free(k) for k in ("cost", "tokens")}
            for k in ("cost", "tokens"):
                self._unflushed[k] = 0.0
                if not self._limits[k]:
                    continue
                if need is not None:
                    share = min(free[k] / CHUNK_SHARE, CHUNK_ATTEMPTS * need[k])
                    keep = min(free[k], max(need[k], share))
                elif closing or refusal is not None:
                    keep = 0.0  # a refusal gives room back, so waiters elsewhere can use it
                else:
                    keep = max(0.0, min(local_free[k], free[k] / CHUNK_SHARE))
                self._lease[k] = self._held[k] + keep
            self._write_lease(db, now, closing)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self.transactions += 1
        self._last_flush = self.clock.monotonic()
        return refusal

    def _write_lease(self, db: sqlite3.Connection, now: float, closing: bool) -> None:
        cost, tokens = self._lease["cost"], int(self._lease["tokens"])
        if closing and cost <= 0 and tokens <= 0:
            db.execute("DELETE FROM leases WHERE id = ?", (self._id,))
            return
        db.execute(
            "INSERT INTO leases VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
            "cost = excluded.cost, tokens = excluded.tokens, expires = excluded.expires",
            (self._id, self.scope, cost, tokens, now + self.lease_s, os.getpid()),
        )

    def _room(self, db: sqlite3.Connection, now: float) -> dict[str, float]:
        """Room left per kind beyond this process's holds, over its tightest window."""
        free = {"cost": float("inf"), "tokens": float("inf")}
        for w in self.windows:
            s = self._seen[w] = window_sums(db, self.scope, self._id, now, w)
            left = w.limit - s.spent - s.held - self._held[w.kind]
            free[w.kind] = min(free[w.kind], left)
        return free

    def _refusal(self, db: sqlite3.Connection, now: float, need: dict[str, float]) -> Refusal:
        failing = []
        resets: list[float] = []
        may_fit_later = True
        for w in self.windows:
            s = self._seen[w]
            held = s.held + self._held[w.kind]
            if s.spent + held + need[w.kind] <= w.limit:
                continue
            failing.append((w, s.spent, held))
            # Holds in flight may settle for less than their worst case: worth waiting.
            if held <= 0 or s.spent + need[w.kind] > w.limit:
                may_fit_later = False
            at = ages_out(db, self.scope, now, w, s.spent + held + need[w.kind] - w.limit)
            if at is not None:
                resets.append(at)
        resets_at = max(resets) if len(resets) == len(failing) else None
        return window_refusal(failing, need, self.scope, resets_at, may_fit_later)
