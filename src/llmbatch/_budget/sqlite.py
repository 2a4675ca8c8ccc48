"""Rolling budget windows in one SQLite file, shared by every run on the machine.

Two tables per scope: ``spend`` (what attempts really cost, booked with the wall
time) and ``leases`` (room a live process took). A window's use is the spend of
the last ``seconds`` plus every lease; an expired lease (its process died) keeps
counting, as spent at its worst case, until it ages out of the window like any
spend: room it held may have been spent on requests we never heard back from.

Each process leases room in chunks (one ``BEGIN IMMEDIATE`` transaction) and
hands out holds from it locally, so runs do not queue on the file for every
request. A chunk is a 32nd of the room left (at most 16 attempts' worth,
at least the attempt asking), so chunks shrink as the window fills and a
process never sits on room another could use. Settled spend is booked, and
unused room given back, at most every ``flush_s`` seconds, at a refusal and at
close.
"""

from __future__ import annotations

import os
import sqlite3
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.to_thread

from llmbatch._budget.ledger import BudgetStatistics, Hold, Refusal
from llmbatch._budget.ledgerfile import check_ledger_file, ledger_unusable
from llmbatch._budget.windows import Window, window_refusal
from llmbatch._core.clock import Clock
from llmbatch._core.exceptions import LLMBatchError, SharedStoreError

SCHEMA = """
CREATE TABLE IF NOT EXISTS spend (
    scope TEXT NOT NULL, at REAL NOT NULL, cost REAL NOT NULL, tokens INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS spend_scope_at ON spend (scope, at);
CREATE TABLE IF NOT EXISTS leases (
    id TEXT PRIMARY KEY, scope TEXT NOT NULL, cost REAL NOT NULL, tokens INTEGER NOT NULL,
    expires REAL NOT NULL, pid INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS leases_scope ON leases (scope);
"""
CHUNK_SHARE = 32  # a chunk is at most this fraction of the room left …
CHUNK_ATTEMPTS = 16  # … and at most this many times the attempt asking
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


@dataclass(slots=True)
class _Sums:
    """One window's use seen in a transaction (this process's own lease apart)."""

    spent: float = 0.0  # booked spend plus expired leases
    held: float = 0.0  # other processes' live leases


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
        self._seen: dict[Window, _Sums] = {}
        self._syncing = False
        self._deferred: list[tuple[Hold, float, int]] = []
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

    def _sums(self, db: sqlite3.Connection, now: float, w: Window) -> _Sums:
        col = w.kind
        since = now - w.seconds
        (spent,) = db.execute(
            f"SELECT COALESCE(SUM({col}), 0) FROM spend WHERE scope = ? AND at > ?",
            (self.scope, since),
        ).fetchone()
        (dead,) = db.execute(
            f"SELECT COALESCE(SUM({col}), 0) FROM leases "
            "WHERE scope = ? AND id != ? AND expires <= ? AND expires > ?",
            (self.scope, self._id, now, since),
        ).fetchone()
        (live,) = db.execute(
            f"SELECT COALESCE(SUM({col}), 0) FROM leases WHERE scope = ? AND id != ? "
            "AND expires > ?",
            (self.scope, self._id, now),
        ).fetchone()
        return _Sums(float(spent) + float(dead), float(live))

    def _room(self, db: sqlite3.Connection, now: float) -> dict[str, float]:
        """Room left per kind beyond this process's holds, over its tightest window."""
        free = {"cost": float("inf"), "tokens": float("inf")}
        for w in self.windows:
            s = self._seen[w] = self._sums(db, now, w)
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
            at = self._ages_out(db, now, w, s.spent + held + need[w.kind] - w.limit)
            if at is not None:
                resets.append(at)
        resets_at = max(resets) if len(resets) == len(failing) else None
        return window_refusal(failing, need, self.scope, resets_at, may_fit_later)

    def _ages_out(
        self, db: sqlite3.Connection, now: float, w: Window, excess: float
    ) -> float | None:
        """When enough of the window's spend ages out to free ``excess`` (None: never)."""
        since = now - w.seconds
        rows = db.execute(
            f"SELECT at, {w.kind} FROM spend WHERE scope = ? AND at > ? UNION ALL "
            f"SELECT expires, {w.kind} FROM leases WHERE scope = ? AND expires <= ? "
            "AND expires > ? ORDER BY 1",
            (self.scope, since, self.scope, now, since),
        )
        freed = 0.0
        for at, amount in rows:
            freed += float(amount)
            if freed >= excess:
                return float(at) + w.seconds
        return None


def prune(db: sqlite3.Connection, now: float) -> None:
    """Drop spend and dead leases that no window can see any more."""
    cutoff = now - KEEP_DAYS * 86400.0
    db.execute("BEGIN IMMEDIATE")
    db.execute("DELETE FROM spend WHERE at < ?", (cutoff,))
    db.execute("DELETE FROM leases WHERE expires < ?", (cutoff,))
    db.execute("COMMIT")


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
            rows = db.execute("SELECT scope FROM spend UNION SELECT scope FROM leases ORDER BY 1")
            scopes = [str(r[0]) for r in rows]
        else:
            scopes = [scope]
        out = []
        for s in scopes:
            for seconds in (3600.0, 86400.0):
                since = now - seconds
                sc, st = db.execute(
                    "SELECT COALESCE(SUM(cost), 0), COALESCE(SUM(tokens), 0) FROM spend "
                    "WHERE scope = ? AND at > ?",
                    (s, since),
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
    """Forget every spend and lease of ``scope``; returns how many rows went."""
    if not path.exists():
        return 0
    with _reading(path) as db:
        db.execute("BEGIN IMMEDIATE")
        n = db.execute("DELETE FROM spend WHERE scope = ?", (scope,)).rowcount
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
