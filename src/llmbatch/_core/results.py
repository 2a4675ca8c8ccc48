"""Result lines: the record of one job and the single writer (resume state: ``_resume``).

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from llmbatch._core.exceptions import OutputError, ProviderError, UsageError
from llmbatch._core.states import Status
from llmbatch._core.usage import Usage


@dataclass(frozen=True, slots=True)
class ResultError:
    """A failed result's ``error`` (SPEC §3): its type, what went wrong, the HTTP status.

    Built here and only here: from a provider's error (``of``), for an answer that
    still misses its schema, for a budget stop, or read back from a line.
    """

    type: str
    message: str
    status: int | None = None
    extra: tuple[tuple[str, Any], ...] = ()  # keys a line held beyond these (kept as read)

    @classmethod
    def of(cls, err: ProviderError) -> ResultError:
        return cls(err.error_type, err.message, err.status)

    @classmethod
    def schema_invalid(cls, problem: str) -> ResultError:
        return cls("schema_invalid", f"the answer does not match the schema: {problem}")

    @classmethod
    def budget(cls) -> ResultError:
        return cls("budget", "the budget cap was reached before this job finished")

    @classmethod
    def from_dict(cls, d: Any) -> ResultError | None:
        """A line's ``error`` read back (anything but an object: an ``other`` error)."""
        if d is None:
            return None
        if not isinstance(d, dict):
            return cls("other", str(d))
        status = d.get("status")
        extra = tuple((k, v) for k, v in d.items() if k not in ("type", "message", "status"))
        return cls(
            str(d.get("type", "other")),
            str(d.get("message", "")),
            status if isinstance(status, int) else None,
            extra,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "message": self.message,
            "status": self.status,
            **dict(self.extra),
        }


@dataclass(slots=True)
class JobResult:
    """One finished job, as written to the output (SPEC §3, plus a few extra fields)."""

    id: str
    status: Status
    output: str | None
    parsed: Any
    provider: str | None
    model: str | None
    usage: Usage
    cost_usd: float | None
    latency_ms: float | None
    ttft_ms: float | None
    attempts: int
    error: ResultError | None
    metadata: Any
    stop_reason: str | None = None
    fingerprint: str | None = None
    attempt_errors: dict[str, int] = field(default_factory=dict)
    repairs: int = 0
    fallbacks: int = 0
    input: Any = None  # with --include-input: the job's prompt/messages or record
    cache: dict[str, Any] | None = None  # answered from the response cache: {"hit", "saved_usd"}
    batch: dict[str, str] | None = None  # answered by a provider batch: {"id", "custom_id"}
    prefix_group: str | None = None  # the shared prompt prefix it belongs to (prompt caching)

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
            "latency_ms": None if self.latency_ms is None else round(self.latency_ms, 1),
            "ttft_ms": None if self.ttft_ms is None else round(self.ttft_ms, 1),
            "attempts": self.attempts,
            "error": None if self.error is None else self.error.to_dict(),
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
        if self.prefix_group:
            line["prefix_group"] = self.prefix_group
        try:  # str keys: orjson's fast path (a third of the encoding)
            return orjson.dumps(line, option=orjson.OPT_APPEND_NEWLINE)
        except TypeError:  # a key that is not exactly str (an enum, a number in metadata)
            return orjson.dumps(line, option=orjson.OPT_APPEND_NEWLINE | orjson.OPT_NON_STR_KEYS)

    @classmethod
    def from_written(cls, d: dict[str, Any]) -> JobResult:
        """A line ``to_json`` of this version wrote just now (``run --ray``'s workers): every
        field there and of its type, so read without ``from_line``'s checks (3× faster).

        :raises KeyError, TypeError: not such a line (then use ``from_line``).
        """
        get = d.get
        return cls(
            d["id"], d["status"], d["output"], d["parsed"], d["provider"], d["model"],
            Usage(**d["usage"]), d["cost_usd"], d["latency_ms"], d["ttft_ms"], d["attempts"],
            ResultError.from_dict(d["error"]), d["metadata"], d["stop_reason"], d["fingerprint"],
            get("attempt_errors") or {}, get("repairs", 0), get("fallbacks", 0), get("input"),
            get("cache"), get("batch"), get("prefix_group"),
        )  # fmt: skip

    @classmethod
    def from_line(cls, d: dict[str, Any]) -> JobResult:
        """A result line read back; fields of the wrong type (hand-edited) count as absent."""
        error = ResultError.from_dict(d.get("error"))
        attempt_errors = d.get("attempt_errors")
        return cls(
            id=str(d.get("id")),
            status=Status.OK if d.get("status") == "ok" else Status.FAILED,
            output=str_or_none(d.get("output")),
            parsed=d.get("parsed"),
            provider=str_or_none(d.get("provider")),
            model=str_or_none(d.get("model")),
            usage=usage_of(d.get("usage")),
            cost_usd=num_or_none(d.get("cost_usd")),
            latency_ms=num_or_none(d.get("latency_ms")),
            ttft_ms=num_or_none(d.get("ttft_ms")),
            attempts=_count(d.get("attempts")),
            error=error,
            metadata=d.get("metadata"),
            stop_reason=str_or_none(d.get("stop_reason")),
            fingerprint=str_or_none(d.get("fingerprint")),
            attempt_errors={
                str(k): _count(v)
                for k, v in (attempt_errors.items() if isinstance(attempt_errors, dict) else ())
            },
            repairs=_count(d.get("repairs")),
            fallbacks=_count(d.get("fallbacks")),
            input=d.get("input"),
            cache=d.get("cache") if isinstance(d.get("cache"), dict) else None,
            batch=d.get("batch") if isinstance(d.get("batch"), dict) else None,
            prefix_group=str_or_none(d.get("prefix_group")),
        )


_TOKENS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens")


def line_problems(d: dict[str, Any]) -> list[str]:
    """What in a result line read back cannot be counted as written (hand-edited, say).

    ``from_line`` counts such fields as absent; a report over them would be partial.
    """
    problems = []
    if d.get("status") not in ("ok", "failed"):
        problems.append(f'status is {_shown(d.get("status"))}, not "ok" or "failed"')
    for name in ("cost_usd", "latency_ms", "ttft_ms"):
        value = d.get(name)
        if value is not None and num_or_none(value) is None:
            problems.append(f"{name} is {_shown(value)}, not a number (>= 0) or null")
    usage = d.get("usage")
    if usage is not None and not isinstance(usage, dict):
        problems.append(f"usage is {_shown(usage)}, not an object")
    tokens: dict[str, Any] = usage if isinstance(usage, dict) else {}
    for name in _TOKENS:
        value = tokens.get(name)
        if value is not None and not _whole(value):
            problems.append(f"usage.{name} is {_shown(value)}, not a whole number (>= 0)")
    if d.get("attempts") is not None and not _whole(d.get("attempts")):
        problems.append(f"attempts is {_shown(d.get('attempts'))}, not a whole number (>= 0)")
    return problems


def _whole(value: Any) -> bool:
    ok_type = isinstance(value, int | float) and not isinstance(value, bool)
    return ok_type and value >= 0 and float(value).is_integer()


def _shown(value: Any) -> str:
    kind = {str: "a string", bool: "a boolean", list: "a list", dict: "an object"}
    text = repr(value) if not isinstance(value, dict | list) else type(value).__name__
    text = text if len(text) <= 40 else text[:39] + "…"
    return f"{text} ({kind[type(value)]})" if type(value) in kind else text


def str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def num_or_none(value: Any) -> float | None:
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
        _count(value.get("cache_write_1h_tokens")),
        _count(value.get("reasoning_tokens")),
    )


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
