"""Resume state: what an existing output already holds, read once at start.

The output file is the source of truth; a torn last line (a crash mid-write) is
cut away before the run appends, and ``--fresh`` moves the old file aside.
"""

from __future__ import annotations

import time
from array import array
from bisect import bisect_left
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from llmbatch._core.exceptions import UsageError
from llmbatch._core.results import num_or_none, str_or_none, usage_of

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
    from llmbatch._io.paths import file_kind

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
        cost = num_or_none(obj.get("cost_usd"))
        if cost is not None:
            state.cost_usd += cost
        state.tokens += usage_of(obj.get("usage")).total
        job_id = str(obj["id"])
        error = obj.get("error")
        if obj["status"] == "ok":
            failed_ids.pop(job_id, None)
            budget_cut.discard(job_id)
            state.done.add(job_id, str_or_none(obj.get("fingerprint")))
            state.ok += 1
        elif isinstance(error, dict) and error.get("type") == "budget":
            # Cut off by a budget cap mid-job: it runs again, whatever --retry-failed says.
            failed_ids.pop(job_id, None)
            budget_cut.add(job_id)
        else:
            budget_cut.discard(job_id)
            failed_ids[job_id] = str_or_none(obj.get("fingerprint"))
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
    from llmbatch._io.history import history_path

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
