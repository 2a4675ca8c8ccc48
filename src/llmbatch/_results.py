"""Result lines: the record of one job, the single writer, and resume state.

The output file is the source of truth. Lines are appended, never rewritten in
place; a torn last line (a crash mid-write) is cut away on the next run. With
``--retry-failed`` a retried job's new line follows its failed one, and readers
take the last line for an id.
"""

from __future__ import annotations

import errno
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

from ._exceptions import OutputError, UsageError
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
    input: Any = None  # with --include-input: the job's prompt/messages or record
    cache: dict[str, Any] | None = None  # answered from the response cache: {"hit", "saved_usd"}
    batch: dict[str, str] | None = None  # answered by a provider batch: {"id", "custom_id"}

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
        if self.input is not None:
            line["input"] = self.input
        if self.cache:
            line["cache"] = self.cache
        if self.batch:
            line["batch"] = self.batch
        return orjson.dumps(line, option=orjson.OPT_APPEND_NEWLINE | orjson.OPT_NON_STR_KEYS)

    @classmethod
    def from_line(cls, d: dict[str, Any]) -> JobResult:
        """A result line read back; fields of the wrong type (hand-edited) count as absent."""
        error = d.get("error")
        if error is not None and not isinstance(error, dict):
            error = {"type": "other", "message": str(error), "status": None}
        attempt_errors = d.get("attempt_errors")
        return cls(
            id=str(d.get("id")),
            status=str(d.get("status")),
            output=_str_or_none(d.get("output")),
            parsed=d.get("parsed"),
            provider=_str_or_none(d.get("provider")),
            model=_str_or_none(d.get("model")),
            usage=usage_of(d.get("usage")),
            cost_usd=_num_or_none(d.get("cost_usd")),
            latency_ms=_num_or_none(d.get("latency_ms")),
            ttft_ms=_num_or_none(d.get("ttft_ms")),
            attempts=_count(d.get("attempts")),
            error=error,
            metadata=d.get("metadata"),
            stop_reason=_str_or_none(d.get("stop_reason")),
            fingerprint=_str_or_none(d.get("fingerprint")),
            attempt_errors={
                str(k): _count(v)
                for k, v in (attempt_errors.items() if isinstance(attempt_errors, dict) else ())
            },
            repairs=_count(d.get("repairs")),
            fallbacks=_count(d.get("fallbacks")),
            input=d.get("input"),
            cache=d.get("cache") if isinstance(d.get("cache"), dict) else None,
            batch=d.get("batch") if isinstance(d.get("batch"), dict) else None,
        )


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _num_or_none(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value if value >= 0 else None


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        return 0
    return int(value)


def usage_of(value: Any) -> Usage:
    """Usage from a result line's ``usage``, counting non-numbers as 0."""
    if not isinstance(value, dict):
        return Usage()
    return Usage(
        _count(value.get("input_tokens")),
        _count(value.get("output_tokens")),
        _count(value.get("cache_read_tokens")),
        _count(value.get("cache_write_tokens")),
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


def fp_int(fingerprint: Any) -> int:
    if not fingerprint or not isinstance(fingerprint, str):
        return 0  # none, or not one we wrote (a hand-edited line): no conflict check
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


def open_results(path: Path) -> BinaryIO:
    """A results file opened to read back, or UsageError saying why it cannot be."""
    from ._paths import file_kind

    kind = file_kind(path)
    if kind == "directory":
        raise UsageError(f"{path} is a directory, not a results file")
    if kind == "special":
        # A device or pipe is no results file; reading /dev/zero or /dev/full never ends.
        raise UsageError(f"{path} is not a regular file (a device, pipe or socket)")
    try:
        return path.open("rb")
    except FileNotFoundError:
        raise UsageError(f"results file not found: {path}") from None
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None


def iter_result_lines(path: Path) -> Iterator[tuple[int, int, dict[str, Any] | None, int]]:
    """Yield (line number, byte offset, parsed line or None if torn/bad, length)."""
    with open_results(path) as f:
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
        cost = _num_or_none(obj.get("cost_usd"))
        if cost is not None:
            state.cost_usd += cost
        state.tokens += usage_of(obj.get("usage")).total
        job_id = str(obj["id"])
        error = obj.get("error")
        if obj["status"] == "ok":
            failed_ids.pop(job_id, None)
            budget_cut.discard(job_id)
            state.done.add(job_id, _str_or_none(obj.get("fingerprint")))
            state.ok += 1
        elif isinstance(error, dict) and error.get("type") == "budget":
            # Cut off by a budget cap mid-job: it runs again, whatever --retry-failed says.
            failed_ids.pop(job_id, None)
            budget_cut.add(job_id)
        else:
            budget_cut.discard(job_id)
            failed_ids[job_id] = _str_or_none(obj.get("fingerprint"))
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
    """Move an existing output aside (``--fresh``), its run history with it; return where."""
    from ._history import history_path

    history = history_path(path)
    if not path.exists():
        if history.exists():  # a history without results: start the new one clean
            history.rename(_free_name(history, ".bak"))
        return None
    target = _free_name(path, ".bak")
    path.rename(target)
    if history.exists():
        history.rename(history_path(target))
    return target


def _free_name(path: Path, suffix: str) -> Path:
    """``<path>.<time><suffix>``, numbered when taken."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = path.with_name(f"{path.name}.{stamp}{suffix}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.{stamp}-{n}{suffix}")
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
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                self._stream = path.open("ab")
            except OSError as exc:  # before the first request: a usage error, exit 2
                raise UsageError(
                    f"cannot write {path}: {exc.strerror or exc}. Nothing was sent."
                ) from None
            self._fd = self._stream.fileno()
        self.lines = 0

    def write(self, lines: list[bytes]) -> None:
        """Append whole lines. Raises BrokenPipeError (stdout closed) or OutputError."""
        data = b"".join(lines)
        view = memoryview(data)
        try:
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
            if self.path is not None:
                now = time.monotonic()
                if now - self._last_sync >= self._fsync_interval:
                    os.fsync(self._fd)
                    self._last_sync = now
        except BrokenPipeError:
            raise
        except OSError as exc:
            # A line cut short by a full disk is a torn last line: the next run cuts it.
            raise output_error(exc, self.path) from None
        self.lines += len(lines)

    def close(self) -> None:
        if self._stream is not None:
            try:
                os.fsync(self._fd)
            except OSError as exc:
                raise output_error(exc, self.path) from None
            finally:
                self._stream.close()
                self._stream = None


def output_error(exc: OSError, path: Path | None) -> OutputError:
    """Our own error for a failed write, saying which file and why, in words."""
    where = str(path) if path is not None else "standard output"
    if exc.errno == errno.ENOSPC:
        what = f"no space left on {where}"
    elif exc.errno == errno.EDQUOT:
        what = f"disk quota exceeded on {where}"
    elif exc.errno == errno.EFBIG:
        what = f"{where} has reached the largest file size allowed (ulimit -f)"
    else:
        what = f"cannot write {where}: {exc.strerror or exc}"
    return OutputError(
        f"{what}; stopped. What was written is kept: fix that and run the same "
        "command again to resume"
    )
