"""Result lines: the record of one job, the single writer, and resume state.

The output file is the source of truth. Lines are appended, never rewritten in
place; a torn last line (a crash mid-write) is cut away on the next run. With
``--retry-failed`` a retried job's new line follows its failed one, and readers
take the last line for an id.
"""

from __future__ import annotations

import os
import sys
import time
from array import array
from bisect import bisect_left
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from ._exceptions import UsageError
from ._usage import Usage


@dataclass(slots=True)
class JobResult:
    """One finished job, as written to the output (SPEC §3, plus a few extra fields)."""

    id: str
    status: str  # "ok" | "failed"
    output: str | None
    parsed: Any
    provider: str | None
    model: str | None
    usage: Usage
    cost_usd: float | None
    latency_ms: float | None
    ttft_ms: float | None
    attempts: int
    error: dict[str, Any] | None
    metadata: Any
    stop_reason: str | None = None
    fingerprint: str | None = None
    attempt_errors: dict[str, int] = field(default_factory=dict)
    repairs: int = 0
    fallbacks: int = 0

    def to_json(self) -> bytes:
        line: dict[str, Any] = {
            "id": self.id,
            "status": self.status,
            "output": self.output,
            "parsed": self.parsed,
            "provider": self.provider,
            "model": self.model,
            "usage": self.usage.to_dict(),
            "cost_usd": None if self.cost_usd is None else round(self.cost_usd, 8),
            "latency_ms": _ms(self.latency_ms),
            "ttft_ms": _ms(self.ttft_ms),
            "attempts": self.attempts,
            "error": self.error,
            "metadata": self.metadata,
            "stop_reason": self.stop_reason,
            "fingerprint": self.fingerprint,
        }
        if self.attempt_errors:
            line["attempt_errors"] = self.attempt_errors
        if self.repairs:
            line["repairs"] = self.repairs
        if self.fallbacks:
            line["fallbacks"] = self.fallbacks
        return orjson.dumps(line, option=orjson.OPT_APPEND_NEWLINE | orjson.OPT_NON_STR_KEYS)

    @classmethod
    def from_line(cls, d: dict[str, Any]) -> JobResult:
        return cls(
            id=str(d.get("id")),
            status=str(d.get("status")),
            output=d.get("output"),
            parsed=d.get("parsed"),
            provider=d.get("provider"),
            model=d.get("model"),
            usage=Usage.from_dict(d.get("usage")),
            cost_usd=d.get("cost_usd"),
            latency_ms=d.get("latency_ms"),
            ttft_ms=d.get("ttft_ms"),
            attempts=int(d.get("attempts") or 0),
            error=d.get("error"),
            metadata=d.get("metadata"),
            stop_reason=d.get("stop_reason"),
            fingerprint=d.get("fingerprint"),
            attempt_errors=dict(d.get("attempt_errors") or {}),
            repairs=int(d.get("repairs") or 0),
            fallbacks=int(d.get("fallbacks") or 0),
        )


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


# -- the done-set ---------------------------------------------------------------


class DoneSet:
    """Ids already answered, with their request fingerprints, in two sorted int64 arrays.

    16 bytes a job (16 MB at a million) instead of ~100 for a dict of strings.
    Keys are ``hash(id)`` (this process only); a 64-bit collision is ~1e-8 at 1M ids.
    """

    __slots__ = ("_fps", "_keys", "_pending_fps", "_pending_keys")

    def __init__(self) -> None:
        self._pending_keys = array("q")
        self._pending_fps = array("q")
        self._keys = array("q")
        self._fps = array("q")

    def add(self, job_id: str, fingerprint: str | None) -> None:
        self._pending_keys.append(hash(job_id))
        self._pending_fps.append(fp_int(fingerprint))

    def freeze(self) -> None:
        # Merges with what an earlier freeze kept: sibling shard files add to one's own.
        keys = self._keys + self._pending_keys
        fps = self._fps + self._pending_fps
        order = sorted(range(len(keys)), key=keys.__getitem__)
        self._keys = array("q", (keys[i] for i in order))
        self._fps = array("q", (fps[i] for i in order))
        self._pending_keys = array("q")
        self._pending_fps = array("q")

    def fingerprint(self, job_id: str) -> int | None:
        """The stored fingerprint (0 when none was written), or None when not done."""
        key = hash(job_id)
        i = bisect_left(self._keys, key)
        if i < len(self._keys) and self._keys[i] == key:
            return self._fps[i]
        return None

    def __contains__(self, job_id: object) -> bool:
        return isinstance(job_id, str) and self.fingerprint(job_id) is not None

    def __len__(self) -> int:
        return len(self._keys)


def fp_int(fingerprint: str | None) -> int:
    if not fingerprint:
        return 0
    try:
        return int(fingerprint[:15], 16)  # 60 bits: fits int64
    except ValueError:
        return 0


# -- reading an existing output ------------------------------------------------------


@dataclass(slots=True)
class ExistingOutput:
    """What an existing results file holds, read once before the run."""

    path: Path
    done: DoneSet = field(default_factory=DoneSet)
    lines: int = 0
    ok: int = 0
    failed: int = 0
    retry_ids: int = 0
    cost_usd: float = 0.0
    tokens: int = 0
    torn_at: int | None = None  # byte offset where a torn last line starts
    torn_bytes: int = 0


def iter_result_lines(path: Path) -> Iterator[tuple[int, int, dict[str, Any] | None, int]]:
    """Yield (line number, byte offset, parsed line or None if torn/bad, length)."""
    with path.open("rb") as f:
        offset = 0
        for lineno, raw in enumerate(f, 1):
            parsed: dict[str, Any] | None = None
            if raw.endswith(b"\n"):
                try:
                    obj = orjson.loads(raw)
                    if isinstance(obj, dict) and "id" in obj and "status" in obj:
                        parsed = obj
                except orjson.JSONDecodeError:
                    parsed = None
            yield lineno, offset, parsed, len(raw)
            offset += len(raw)


def read_existing(path: Path, *, retry_failed: bool) -> ExistingOutput:
    """Read a results file for resume. Only a bad *last* line may be cut; others are an error."""
    state = ExistingOutput(path)
    if not path.exists():
        return state
    failed_ids: dict[str, str | None] = {}
    budget_cut: set[str] = set()
    bad: tuple[int, int, int] | None = None
    for lineno, offset, obj, length in iter_result_lines(path):
        if bad is not None:
            raise UsageError(
                f"{path}:{bad[0]}: not a result line (and it is not the last line); "
                "fix or remove it, or pass --fresh to start over with a backup"
            )
        if obj is None:
            if length == 1:  # a lone newline: harmless
                continue
            bad = (lineno, offset, length)
            continue
        state.lines += 1
        cost = obj.get("cost_usd")
        if isinstance(cost, int | float):
            state.cost_usd += cost
        state.tokens += Usage.from_dict(obj.get("usage")).total
        job_id = str(obj["id"])
        if obj["status"] == "ok":
            failed_ids.pop(job_id, None)
            budget_cut.discard(job_id)
            state.done.add(job_id, obj.get("fingerprint"))
            state.ok += 1
        elif (obj.get("error") or {}).get("type") == "budget":
            # Cut off by a budget cap mid-job: it runs again, whatever --retry-failed says.
            failed_ids.pop(job_id, None)
            budget_cut.add(job_id)
        else:
            budget_cut.discard(job_id)
            failed_ids[job_id] = obj.get("fingerprint")
    if bad is not None:
        state.torn_at, state.torn_bytes = bad[1], bad[2]
    state.failed = len(failed_ids)
    state.retry_ids = len(budget_cut)
    if retry_failed:
        state.retry_ids += len(failed_ids)
    else:
        for job_id, fp in failed_ids.items():
            state.done.add(job_id, fp)
    state.done.freeze()
    return state


def cut_torn_tail(state: ExistingOutput) -> None:
    if state.torn_at is None:
        return
    with state.path.open("r+b") as f:
        f.truncate(state.torn_at)


def backup_output(path: Path) -> Path | None:
    """Move an existing output aside (``--fresh``); return where it went."""
    if not path.exists():
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = path.with_name(f"{path.name}.{stamp}.bak")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.{stamp}-{n}.bak")
    path.rename(target)
    return target


# -- the writer -----------------------------------------------------------------------


class ResultWriter:
    """The one owner of the output file. Appends whole lines; each batch is one write().

    Durability: every batch reaches the OS at once (a crash of llmbatch loses
    nothing written); fsync runs at most every ``fsync_interval`` seconds and at
    close (a power cut loses at most that long).
    """

    def __init__(self, path: Path | None, fsync_interval: float = 1.0) -> None:
        self.path = path
        self._fsync_interval = fsync_interval
        self._last_sync = time.monotonic()
        self._stream: BinaryIO | None = None
        self._fd: int
        if path is None:
            self._fd = sys.stdout.fileno()
        else:
            if path.parent and not path.parent.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
            self._stream = path.open("ab")
            self._fd = self._stream.fileno()
        self.lines = 0

    def write(self, lines: list[bytes]) -> None:
        data = b"".join(lines)
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
        self.lines += len(lines)
        if self.path is not None:
            now = time.monotonic()
            if now - self._last_sync >= self._fsync_interval:
                os.fsync(self._fd)
                self._last_sync = now

    def close(self) -> None:
        if self._stream is not None:
            try:
                os.fsync(self._fd)
            finally:
                self._stream.close()
                self._stream = None
