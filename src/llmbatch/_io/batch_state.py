"""Batch state beside the output, in ``<output>.batches/``: what was sent, what came back.

``batches.jsonl`` is an append-only event log (fsynced, torn-line safe: a cut
last line is ignored, and cut away by the next writer). Each chunk's jobs sit
in ``<chunk>.jobs.jsonl``, written before the chunk's intent is recorded, and
the intent is recorded before the batch is created: a crash between "created"
and "recorded" leaves an intent that the next start resolves (find the batch
again, or say it may be orphaned) instead of paying for a second batch. Every
submission has its own nonce, in each custom_id and the batch key: a batch is
adopted only when it can be this intent's, and its result lines are checked
against the custom_ids the chunk sent.
A chunk booked in the rolling windows (``--budget-per-hour`` …) keeps where in
its intent (``bookings``); its ``closed`` event says what it really cost
(``spent``), and ``window_settled`` that the booking was replaced by it.
Writers hold the output lock.
"""

from __future__ import annotations

import os
import secrets
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from llmbatch._io.resume import fp_int

# A job's result line, looked up: its stored fingerprint (0: none), None when it has no line.
LineFingerprint = Callable[[str], int | None]

STATE_FILE = "batches.jsonl"
OPEN_STATES = ("intent", "open")
# A chunk's states: "intent" (create under way) → "open" → "closed" (fetched); or
# "abandoned" (never created, or not ours) or "lost" (the provider no longer knows it,
# or `batch forget`): the jobs of those go back to pending.
# Why a job came back unanswered; all but these count as a round against --max-attempts
# ("fallback": its model failed for good, the next model of its chain is a new start).
UNCOUNTED = ("canceled", "fallback")


@dataclass(slots=True)
class Chunk:
    """One provider batch of ours, from intent to closed."""

    local: str
    provider: str
    model: str
    count: int
    at: float  # when the intent was recorded (our clock)
    reserve_cost: float = 0.0
    reserve_tokens: int = 0
    price: dict[str, Any] | None = None
    note: str | None = None
    batch_id: str | None = None
    created_at: float | None = None
    expires_at: float | None = None
    state: str = "intent"  # "intent" | "open" | "closed" | "abandoned" | "lost"
    status: str | None = None  # the provider's last word
    counts: dict[str, int] = field(default_factory=dict)
    reason: str | None = None  # why abandoned or lost
    nonce: str = ""  # the submission's, in every custom_id ("" from an older llmbatch)
    verified: bool = True  # False: adopted after an interrupted create, not yet proven ours
    missing: int = 0  # polls in a row the provider said it does not know the batch
    # Its worst case booked in the rolling windows: where (``BookingLedger.book``).
    bookings: list[dict[str, Any]] = field(default_factory=list)
    spent: tuple[float, int] | None = None  # what it billed, once closed
    unsent: bool = False  # abandoned before the provider had it: it cost nothing
    window_settled: bool = False  # its bookings hold its real cost now

    @property
    def is_open(self) -> bool:
        return self.state in OPEN_STATES


class BatchState:
    """The event log, replayed into chunks and per-job round counts."""

    def __init__(self, output: Path) -> None:
        self.output = output
        self.dir = output.with_name(output.name + ".batches")
        self.path = self.dir / STATE_FILE
        self.uid = ""
        self.chunks: dict[str, Chunk] = {}
        self.rounds: Counter[str] = Counter()  # job id → unanswered rounds on its model
        self.total_rounds: Counter[str] = Counter()  # … on all its models
        self.positions: dict[str, int] = {}  # job id → where in its model chain it goes on
        self.position_fps: dict[str, str | None] = {}  # … for the job with this fingerprint
        self.repairs: dict[str, dict[str, Any]] = {}  # job id → a paid answer to repair online
        self.billed_cost = 0.0  # billed by requests that came back without an answer
        self.billed_tokens = 0
        self.billed_online = 0.0  # … and what the same requests would have cost online
        self.caps: dict[str, Any] | None = None  # the last submit's --max-cost / --max-total-tokens
        self.handed_back: set[str] = set()  # jobs a closed batch returned unanswered

    @classmethod
    def load(cls, output: Path, *, writable: bool = False) -> BatchState:
        """Replay the log. ``writable`` (under the output lock): cut a torn tail, start a log."""
        state = cls(output)
        if state.path.exists():
            good = 0
            with state.path.open("rb") as f:
                for raw in f:
                    if not raw.endswith(b"\n"):
                        break
                    try:
                        event = orjson.loads(raw)
                    except orjson.JSONDecodeError:
                        break
                    state._apply(event)
                    good += len(raw)
            if writable and good < state.path.stat().st_size:
                with state.path.open("r+b") as f:
                    f.truncate(good)
        if writable and not state.uid:
            state.dir.mkdir(parents=True, exist_ok=True)
            state.append({"ev": "init", "uid": secrets.token_hex(6)})
        return state

    @property
    def exists(self) -> bool:
        return self.path.exists()

    def append(self, event: dict[str, Any]) -> None:
        """Record one event durably, then apply it."""
        self.append_many([event])

    def append_many(self, events: list[dict[str, Any]]) -> None:
        """Record events durably with one write and one fsync, then apply them."""
        if not events:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        data = b"".join(orjson.dumps(e, option=orjson.OPT_APPEND_NEWLINE) for e in events)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        for event in events:
            self._apply(event)

    def _apply(self, e: dict[str, Any]) -> None:
        ev = e.get("ev")
        if ev == "init":
            self.uid = self.uid or str(e.get("uid"))
            return
        if ev == "repair":
            self.repairs[str(e["id"])] = e
            return
        if ev == "repaired":
            self.repairs.pop(str(e.get("id")), None)
            return
        if ev == "caps":
            self.caps = {k: e.get(k) for k in ("max_cost", "max_total_tokens")}
            return
        if ev == "intent":
            self.chunks[e["local"]] = Chunk(
                local=e["local"],
                provider=e["provider"],
                model=e["model"],
                count=int(e["count"]),
                at=float(e["at"]),
                reserve_cost=float(e.get("reserve_cost") or 0.0),
                reserve_tokens=int(e.get("reserve_tokens") or 0),
                price=e.get("price"),
                note=e.get("note"),
                nonce=str(e.get("nonce") or ""),
                bookings=list(e.get("bookings") or []),
            )
            return
        chunk = self.chunks.get(str(e.get("local")))
        if chunk is None:
            return
        if ev == "created":
            chunk.batch_id = e["batch_id"]
            chunk.created_at = e.get("created_at")
            chunk.expires_at = e.get("expires_at")
            chunk.state = "open"
            chunk.verified = bool(e.get("verified", not e.get("adopted")))
        elif ev == "verified":
            chunk.verified = True
        elif ev == "missing":
            chunk.missing += 1
        elif ev == "seen":
            chunk.missing = 0
        elif ev == "lost":
            chunk.state = "lost"
            chunk.reason = e.get("reason")
        elif ev == "closed":
            self._apply_closed(chunk, e)
        elif ev == "abandoned":
            chunk.state = "abandoned"
            chunk.reason = e.get("reason")
            chunk.unsent = bool(e.get("unsent"))
        elif ev == "window_settled":
            chunk.window_settled = True

    def _apply_closed(self, chunk: Chunk, e: dict[str, Any]) -> None:
        """A ``closed`` event: the chunk's end, its jobs handed back or moved on, its bill."""
        chunk.state = "closed"
        chunk.status = e.get("status")
        chunk.counts = dict(e.get("counts") or {})
        if e.get("spent") is not None:
            chunk.spent = (float(e["spent"][0]), int(e["spent"][1]))
        self.handed_back.update(e.get("returned") or ())
        for job_id, why in (e.get("returned") or {}).items():
            if why not in UNCOUNTED:
                self.rounds[job_id] += 1
            if why != "canceled":  # the user's choice, not a try
                self.total_rounds[job_id] += 1
        for job_id, (position, fp) in (e.get("advanced") or {}).items():
            self.positions[job_id] = int(position)
            self.position_fps[job_id] = fp
            self.rounds[job_id] = 0  # a new model: its own rounds
        for cost, tokens, *online in (e.get("billed") or {}).values():
            self.billed_cost += float(cost or 0.0)
            self.billed_tokens += int(tokens or 0)
            self.billed_online += float(online[0] if online else cost or 0.0)

    # -- chunks and their jobs --------------------------------------------------------

    def key(self, chunk: Chunk) -> str:
        """Our name for a chunk at the provider (OpenAI metadata): unique per output,
        and per submission (its nonce; none in a state from an older llmbatch)."""
        base = f"{self.uid}-{chunk.local}"
        return f"{base}-{chunk.nonce}" if chunk.nonce else base

    def new_local(self) -> str:
        return f"c{len(self.chunks) + 1:05d}"

    def open_chunks(self) -> list[Chunk]:
        return [c for c in self.chunks.values() if c.is_open]

    def jobs_path(self, local: str) -> Path:
        return self.dir / f"{local}.jobs.jsonl"

    def write_jobs(self, local: str, rows: list[dict[str, Any]]) -> None:
        """A chunk's jobs (custom id, job id, fingerprint, metadata, schema), written whole."""
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.jobs_path(local).with_suffix(".tmp")
        with tmp.open("wb") as f:
            f.write(b"".join(orjson.dumps(r, option=orjson.OPT_APPEND_NEWLINE) for r in rows))
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(self.jobs_path(local))

    def read_jobs(self, local: str) -> list[dict[str, Any]]:
        path = self.jobs_path(local)
        if not path.exists():
            return []
        return [orjson.loads(line) for line in path.read_bytes().splitlines() if line]

    def open_job_ids(self) -> set[str]:
        """Jobs sitting in a batch not yet closed: never sent again meanwhile."""
        return {r["id"] for c in self.open_chunks() for r in self.read_jobs(c.local)}

    def pending_job_ids(self, line_fp: LineFingerprint) -> set[str]:
        """Jobs a batch of this output handed back unanswered (expired, canceled, failed
        whole, lost, never created, or on to their next model): sent once, now in no open
        batch, with no result line and no answer awaiting repair. Submit them again."""
        held = self.open_job_ids() | set(self.repairs)
        ids = set(self.handed_back)  # a closed chunk's own record; the others' whole lists
        for c in self.chunks.values():
            if c.state in ("abandoned", "lost"):
                ids.update(r["id"] for r in self.read_jobs(c.local))
        return {i for i in ids - held if line_fp(i) is None}

    def reserved(self) -> tuple[float, int]:
        """What open chunks hold against the budget (their worst case)."""
        chunks = self.open_chunks()
        return sum(c.reserve_cost for c in chunks), sum(c.reserve_tokens for c in chunks)

    def to_settle(self) -> list[tuple[Chunk, float, int]]:
        """Ended chunks whose window bookings still hold their worst case, with what they
        really cost: a closed batch its bill, a chunk the provider never had nothing.
        A lost batch (or one adopted, then found not ours) keeps its worst case: whether
        it ran, and what it cost, cannot be known here."""
        out = []
        for c in self.chunks.values():
            if not c.bookings or c.window_settled:
                continue
            if c.state == "closed" and c.spent is not None:
                out.append((c, *c.spent))
            elif c.state == "abandoned" and c.unsent:
                out.append((c, 0.0, 0))
        return out

    # -- what is paid but in no result line ---------------------------------------------

    def pending_repairs(self, line_fp: LineFingerprint) -> dict[str, dict[str, Any]]:
        """Paid batch answers that missed the schema, whose job has no result line yet."""
        return {k: v for k, v in self.repairs.items() if line_fp(k) is None}

    def spent(self, line_fp: LineFingerprint) -> tuple[float, int]:
        """Cost and tokens billed but in no result line: the budget counts them too.

        An answer kept for repair counts until its job's line holds it: marked
        repaired, or a line of the same job (fingerprint) there. A job changed
        since leaves its paid answer counted (never low).
        """
        cost, tokens = self.billed_cost, self.billed_tokens
        for job_id, e in self.repairs.items():
            fp = line_fp(job_id)
            if fp is not None and fp == fp_int(e.get("fp")):
                continue
            cost += float(e.get("cost") or 0.0)
            u = e.get("usage") or {}
            tokens += int(u.get("input_tokens") or 0) + int(u.get("output_tokens") or 0)
        return cost, tokens

    def held_job_ids(self, line_fp: LineFingerprint) -> set[str]:
        """Jobs never to be submitted again meanwhile: in an open batch, or awaiting repair."""
        return self.open_job_ids() | set(self.pending_repairs(line_fp))
