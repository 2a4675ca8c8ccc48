"""The response cache: never pay twice for an answer already bought (SPEC §11).

One SQLite file (WAL, a busy timeout) shared by every run on the machine. The key
is a hash of what the provider sees — provider, base URL, model and the canonical
request — so any change of model, messages, system, max_tokens, temperature or
schema misses. Requests sent at temperature 0 share answers across job ids;
sampled ones (temperature unset or above 0, or a provider that takes no
temperature) are keyed per job id, so five ids asking the same question still get
five samples, while a rerun of a job does not pay again. Each answer records which
it is (``shared``: 1, 0, or NULL when stored by an llmbatch that did not record it).

A cache is a convenience, never a reason for a run to fail: any SQLite error
(a corrupt file, a lock held past the timeout, a full disk) turns it off for the
rest of the run with one warning, and the run goes on without it.
"""

from __future__ import annotations

import itertools
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

from llmbatch._cache.fileid import check_cache_file
from llmbatch._cache.key import OwnKey
from llmbatch._cache.records import CacheContents, CachedAnswer, CacheStatistics
from llmbatch._cache.sqlfile import connect, default_cache_path, sidecar, stored_key

if TYPE_CHECKING:
    from llmbatch._config.settings import RunConfig

# Answers a transaction (or 8 MB of them, or a second's worth, whichever comes first).
# Keys are random, so each commit rewrites most of the key index's pages: 8,192 costs
# a third less a store than 2,048. Vectors are ~30 KB each: the bytes bound holds them.
_STORE_BATCH = 8192
_STORE_BYTES = 8 * 2**20
_PREFETCH_CHUNK = 500  # keys a query (SQLite allows 32,766 parameters; stay well under)
_UNASKED = (b"", 0.0)  # lookup(): a key prefetch() did not look up


def _warn_stderr(message: str) -> None:
    sys.stderr.write(f"llmbatch: warning: {message}\n")


class ResponseCache:
    """Answers by key in one SQLite file. Every method is safe to call once it is broken."""

    def __init__(
        self,
        path: Path,
        *,
        busy_timeout_s: float = 2.0,
        warn: Callable[[str], None] = _warn_stderr,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self.warning: str | None = None  # the one warning, once the cache is off
        self._warn = warn
        self._now = clock
        self._busy_timeout_s = busy_timeout_s
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._hits = 0
        self._saved = 0.0
        self._stores = 0
        # Keys are kept as the file stores them (``stored_key``: a CacheKey is that already).
        self._used: dict[bytes, float] = {}  # keys hit since the last write → when
        # Answers not yet written, as their rows: one transaction per batch, not per answer.
        # Blobs go in as bytearrays: sqlite3 binds those as they are, while bytes (a key,
        # an answer) first go through its adapter registry, a tenth of a store.
        self._pending: dict[bytes, tuple[bytearray, float, float | None, bytearray, int | None]]
        self._pending = {}
        self._pending_bytes = 0
        # What prefetch() looked up, popped by lookup(): the row, or None if it is absent.
        self._prefetched: dict[bytes, tuple[bytes, float] | None] = {}
        self._last_write = clock()
        # Whether the file held no answer when this run opened it, no other run has
        # written since (SQLite's data_version counts their commits) and this cache has
        # kept nothing for an earlier set of jobs (``new_jobs``): then a job's own key
        # (``OwnKey``) cannot be in it, and is not asked for.
        self._new = False
        self._version = 0
        with self._guard("open"):
            self._db = db = connect(self.path, self._busy_timeout_s)
            self._new = db.execute("SELECT 1 FROM answers LIMIT 1").fetchone() is None
            self._version = db.execute("PRAGMA data_version").fetchone()[0]

    @property
    def usable(self) -> bool:
        return self._db is not None

    @contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        """Any SQLite failure turns the cache off, with one warning; the run goes on."""
        try:
            with self._lock:
                yield
        except (sqlite3.Error, OSError, orjson.JSONDecodeError, KeyError, TypeError) as exc:
            self._disable(f"{what}: {type(exc).__name__}: {exc}")

    def _disable(self, why: str) -> None:
        db, self._db = self._db, None
        if db is not None:
            try:
                db.close()
            except sqlite3.Error:
                pass
        if self.warning is None:
            self.warning = (
                f"the response cache {self.path} is unusable ({why}); running without it "
                "(`llmbatch cache clear` starts a new one)"
            )
            self._warn(self.warning)

    # -- the run's side ---------------------------------------------------------

    def prefetch(self, keys: Iterable[str | bytes]) -> None:
        """Look many keys up in one query; :meth:`lookup` then answers them from memory.

        The engine prefetches the keys of the next few hundred jobs: one SELECT for
        them all instead of one per job.
        """
        db = self._db
        if db is None:
            return
        pending = self._pending
        wanted = [k for k in map(stored_key, keys) if k not in pending]
        if self._still_new(db):
            # Jobs' own keys are known absent without asking: only their jobs ask for
            # them, before they are kept, and nobody else has written to the file.
            own = [k for k in wanted if type(k) is OwnKey]
            if own:
                self._prefetched.update(zip(own, itertools.repeat(None)))
                wanted = [k for k in wanted if type(k) is not OwnKey]
        if not wanted:
            return
        with self._guard("lookup"):
            for i in range(0, len(wanted), _PREFETCH_CHUNK):
                part = wanted[i : i + _PREFETCH_CHUNK]
                marks = ",".join("?" * len(part))
                rows = db.execute(
                    f"SELECT key, value, created FROM answers WHERE key IN ({marks})",
                    list(map(bytearray, part)),  # bound as they are (see ``_pending``)
                ).fetchall()
                prefetched = self._prefetched
                prefetched.update(zip(part, itertools.repeat(None)))
                for key, value, created in rows:
                    prefetched[key] = (value, created)

    def new_jobs(self) -> None:
        """A new set of jobs begins (an engine run). Within one set a job asks for its
        own key once, before it keeps an answer under it; an answer this cache kept for
        an earlier set may be asked for again now, so the file is asked for every key."""
        if self._stores:
            self._new = False

    def _still_new(self, db: sqlite3.Connection) -> bool:
        """Whether the file still holds only this run's answers (see ``_new``)."""
        if self._new:
            with self._guard("lookup"):
                if db.execute("PRAGMA data_version").fetchone()[0] != self._version:
                    self._new = False  # another run wrote: ask the file from now on
        return self._new

    def contains(self, key: str | bytes) -> bool:
        """Whether an answer is stored under ``key`` (not counted as a hit)."""
        db = self._db
        if db is None:
            return False
        k = stored_key(key)
        if k in self._pending:
            return True
        found = False
        with self._guard("lookup"):
            row = db.execute("SELECT 1 FROM answers WHERE key = ?", (k,)).fetchone()
            found = row is not None
        return found

    def lookup(self, key: str | bytes) -> CachedAnswer | None:
        """The answer stored under ``key``, or None (a miss, or the cache is off)."""
        db = self._db
        if db is None:
            return None
        k = key if isinstance(key, bytes) else stored_key(key)  # a CacheKey: as it is
        pending = self._pending.get(k)
        if pending is not None:
            row: tuple[bytes | bytearray, float] | None = (pending[3], pending[1])
        else:
            row = self._prefetched.pop(k, _UNASKED)
            if row is None:
                return None  # prefetched: not in the file
            if row is _UNASKED:
                with self._guard("lookup"):
                    row = db.execute(
                        "SELECT value, created FROM answers WHERE key = ?", (k,)
                    ).fetchone()
        if row is None:
            return None
        found: CachedAnswer | None = None
        due = False
        with self._guard("lookup"):
            found = CachedAnswer.from_json(row[0], row[1])
            self._hits += 1
            self._saved += found.cost_usd or 0.0
            now = self._used[k] = self._now()
            due = self._due(now)  # a run of hits keeps no more in memory than one of stores
        if due:
            self.flush()
        return found

    def store(self, key: str | bytes, answer: CachedAnswer) -> None:
        """Keep a complete, valid answer (the caller has validated it)."""
        self.store_encoded(key, answer.to_json(), answer.cost_usd)

    def store_encoded(
        self, key: str | bytes, value: bytes | bytearray, cost_usd: float | None
    ) -> None:
        """Keep an answer already encoded (``encode_answer``); :meth:`store` for the rest.

        Written in batches (8,192 answers, 8 MB, or a second): a crash loses at most those
        (one commit each: a commit costs milliseconds, an answer microseconds).
        """
        if self._db is None:
            return
        k = key if isinstance(key, bytes) else stored_key(key)
        now = self._now()
        pending = self._pending
        shared = getattr(key, "shared", None)
        pending[k] = (
            bytearray(k), now, cost_usd,
            value if type(value) is bytearray else bytearray(value),
            None if shared is None else int(shared),
        )  # fmt: skip
        self._stores += 1
        self._pending_bytes += len(value)
        if self._due(now):
            self.flush()

    def _due(self, now: float) -> bool:
        """Whether what is kept goes to the file now: a batch of answers or of hits,
        8 MB of answers, or a second since the last write."""
        return (
            len(self._pending) >= _STORE_BATCH
            or len(self._used) >= _STORE_BATCH
            or self._pending_bytes >= _STORE_BYTES
            or now - self._last_write >= 1.0
        )

    def flush(self) -> None:
        """Write the answers kept and the hits counted since the last write (when, for
        ``cache stats`` and ``prune``), in one transaction."""
        with self._guard("store"):
            self._last_write = self._now()
            db = self._db
            if db is None or not (self._pending or self._used):
                return
            rows = list(self._pending.values())
            self._pending.clear()
            self._pending_bytes = 0
            used = [(when, bytearray(key)) for key, when in self._used.items()]
            self._used.clear()
            db.execute("BEGIN IMMEDIATE")
            if rows:
                db.executemany(
                    "INSERT OR REPLACE INTO answers (key, created, used, hits, cost_usd, "
                    "value, shared) VALUES (?1, ?2, ?2, 0, ?3, ?4, ?5)",
                    rows,
                )
            if used:
                db.executemany("UPDATE answers SET used = ?, hits = hits + 1 WHERE key = ?", used)
            db.execute("COMMIT")

    def statistics(self) -> CacheStatistics:
        return CacheStatistics(self._hits, self._saved, self._stores, self.warning)

    def close(self) -> None:
        """Write what is kept (answers, hits), then let go of the file."""
        self.flush()
        db, self._db = self._db, None
        if db is not None:
            db.close()

    # -- the `llmbatch cache` commands ------------------------------------------

    def contents(self) -> CacheContents | None:
        """What the file holds; None when it cannot be read."""
        result: CacheContents | None = None
        self.flush()
        with self._guard("stats"):
            if self._db is None:
                return None
            n, hits, saved, oldest, newest, shared, per_job = self._db.execute(
                "SELECT count(*), coalesce(sum(hits), 0), "
                "coalesce(sum(hits * coalesce(cost_usd, 0)), 0), min(created), max(created), "
                "coalesce(sum(shared = 1), 0), coalesce(sum(shared = 0), 0) "
                "FROM answers"
            ).fetchone()
            size = sum(
                p.stat().st_size
                for p in (self.path, sidecar(self.path, "-wal"), sidecar(self.path, "-shm"))
                if p.exists()
            )
            result = CacheContents(
                str(self.path), n, size, hits, saved, oldest, newest,
                shared, per_job, n - shared - per_job,
            )  # fmt: skip
        return result

    def prune(self, older_than_s: float) -> int:
        """Drop entries neither stored nor hit in the last ``older_than_s`` seconds."""
        removed = 0
        self.flush()
        with self._guard("prune"):
            if self._db is None:
                return 0
            cutoff = self._now() - older_than_s
            removed = self._db.execute("DELETE FROM answers WHERE used < ?", (cutoff,)).rowcount
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return removed


def open_cache(config: RunConfig) -> ResponseCache | None:
    """The run's cache, or None with ``--no-cache``."""
    if config.no_cache:
        return None
    default = default_cache_path()
    path = config.cache_path or default
    # A file that is not a cache (a ledger, a jobs file, a directory) stops the run: exit 2.
    check_cache_file(path, purpose="--cache", default=path == default)
    return ResponseCache(path)
