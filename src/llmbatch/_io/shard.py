"""Shards: one jobs file split over N processes (a Slurm array, a Kubernetes Indexed Job).

A job belongs to shard ``blake2b(id) mod N`` — stable across processes and Python
runs, unlike ``hash()``. Each shard writes ``<stem>.shard-I-of-N.results.jsonl``;
on resume a job counts as done if any results file beside it (any N, or the
unsharded one) has it, so changing N between runs loses and repeats nothing.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from llmbatch._core.exceptions import UsageError
from llmbatch._io.resume import ExistingOutput, iter_result_lines

_SPEC = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")
_SHARD_PART = re.compile(r"\.shard-\d+-of-\d+$")


def parse_shard(spec: str, env: Mapping[str, str]) -> tuple[int, int]:
    """``I/N`` (I from 0) or ``auto`` (Kubernetes Indexed Job, then Slurm array) → (I, N)."""
    if spec.strip() == "auto":
        return _from_env(env)
    m = _SPEC.match(spec)
    if not m:
        raise UsageError(f"--shard takes I/N (I from 0 to N-1) or auto, got {spec!r}")
    index, count = int(m.group(1)), int(m.group(2))
    if count < 1 or index >= count:
        raise UsageError(f"--shard {spec}: I must be from 0 to N-1 and N at least 1")
    return index, count


def _from_env(env: Mapping[str, str]) -> tuple[int, int]:
    def number(name: str) -> int:
        try:
            return int(env[name])
        except ValueError:
            raise UsageError(f"--shard auto: {name}={env[name]!r} is not a number") from None

    if "JOB_COMPLETION_INDEX" in env and "JOB_COMPLETIONS" in env:
        spec = f"{number('JOB_COMPLETION_INDEX')}/{number('JOB_COMPLETIONS')}"
    elif "SLURM_ARRAY_TASK_ID" in env and "SLURM_ARRAY_TASK_COUNT" in env:
        low = number("SLURM_ARRAY_TASK_MIN") if "SLURM_ARRAY_TASK_MIN" in env else 0
        spec = f"{number('SLURM_ARRAY_TASK_ID') - low}/{number('SLURM_ARRAY_TASK_COUNT')}"
    else:
        raise UsageError(
            "--shard auto needs JOB_COMPLETION_INDEX and JOB_COMPLETIONS (Kubernetes) or "
            "SLURM_ARRAY_TASK_ID and SLURM_ARRAY_TASK_COUNT (Slurm); give --shard I/N instead"
        )
    return parse_shard(spec, {})


def shard_of(job_id: str, count: int) -> int:
    """The shard a job id belongs to: the same in every process, on every machine."""
    digest = hashlib.blake2b(job_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % count


def _split(path: Path) -> tuple[str, str]:
    """``x.results.jsonl`` → (``x``, ``.results.jsonl``); ``x.jsonl`` → (``x``, ``.jsonl``)."""
    name = path.name
    for suffix in (".results.jsonl", path.suffix):
        if suffix and name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)], suffix
    return name, ""


def shard_output(path: Path, shard: tuple[int, int]) -> Path:
    """Where shard I of N writes: ``<stem>.shard-I-of-N.results.jsonl``."""
    stem, suffix = _split(path)
    return path.with_name(f"{stem}.shard-{shard[0]}-of-{shard[1]}{suffix}")


def sibling_outputs(output: Path) -> list[Path]:
    """Every other results file of the same jobs beside ``output`` (any N, or unsharded)."""
    stem, suffix = _split(output)
    base = _SHARD_PART.sub("", stem)
    pattern = re.compile(re.escape(base) + r"(\.shard-\d+-of-\d+)?" + re.escape(suffix) + "$")
    if not output.parent.is_dir():
        return []
    return sorted(
        p
        for p in output.parent.iterdir()
        if p.name != output.name and pattern.match(p.name) and p.is_file()
    )


def add_sibling_done(existing: ExistingOutput, output: Path, *, retry_failed: bool) -> int:
    """Count as done every job a sibling shard file answered; returns how many lines it read.

    Jobs that ended failed count too unless ``retry_failed``; those cut by a budget
    never do (they run again, as in one's own output). Torn lines are ignored.
    """
    read = 0
    for path in sibling_outputs(output):
        for _, _, obj, _ in iter_result_lines(path):
            if obj is None:
                continue
            read += 1
            error_type = (obj.get("error") or {}).get("type")
            if obj["status"] == "ok" or (not retry_failed and error_type != "budget"):
                existing.done.add(str(obj["id"]), obj.get("fingerprint"))
    existing.done.freeze()
    return read


@dataclass(slots=True)
class MergeResult:
    """What ``llmbatch merge`` wrote, or the conflicts that stopped it."""

    ids: int = 0
    lines_read: int = 0
    torn: int = 0
    not_results: int = 0  # whole JSON lines that are no result line (a job line, say)
    conflicts: list[str] = field(default_factory=list)
    backup: Path | None = None


def check_merge_target(out: Path, inputs: list[Path], *, force: bool) -> None:
    """Refuse (UsageError) an OUT that would destroy a file: an input, a shard, an old merge."""
    from llmbatch._io.paths import check_paths

    if _SHARD_PART.search(_split(out)[0]):
        raise UsageError(
            f"merge: OUT {out} is named like a shard's results file (was OUT forgotten?); "
            "give the merged file its own name, e.g. "
            f"{out.with_name(_SHARD_PART.sub('', _split(out)[0]) + _split(out)[1])}. "
            "Nothing was written."
        )
    check_paths({f"input {p}": p for p in inputs}, {"merge OUT": out})
    if out.is_dir():
        raise UsageError(f"merge: OUT {out} is a directory. Nothing was written.")
    if out.exists() and not force:
        raise UsageError(
            f"merge: OUT {out} exists; pass --force to replace it (it is kept as a "
            "timestamped .bak beside it), or choose another name. Nothing was written."
        )


def merge_files(out: Path, inputs: list[Path], *, force: bool = False) -> MergeResult:
    """Write ``out`` with one line per id over ``inputs`` (in order), first-seen order.

    The line kept per id is the last ``ok`` one, or the last line when none is ``ok``:
    an answer paid for is never dropped for a later failure. Memory holds one
    (file, offset, length) per id, never the lines. Nothing is written when two lines
    for one id carry different request fingerprints, when an input holds lines but no
    result line (a jobs file, say), or when no result line is found at all.
    """
    check_merge_target(out, inputs, force=force)
    result = MergeResult()
    where: dict[str, tuple[int, int, int, bool]] = {}
    fps: dict[str, str] = {}
    for n, path in enumerate(inputs):
        read_before, other_before = result.lines_read, result.not_results
        try:
            for _, offset, obj, length in iter_result_lines(path):
                if obj is None:
                    if length > 1:
                        _count_bad_line(result, path, offset, length)
                    continue
                result.lines_read += 1
                job_id = str(obj["id"])
                fp = obj.get("fingerprint")
                if fp:
                    seen = fps.setdefault(job_id, fp)
                    if seen != fp and len(result.conflicts) < 1000:
                        result.conflicts.append(job_id)
                ok = obj["status"] == "ok"
                kept = where.get(job_id)
                if ok or kept is None or not kept[3]:
                    where[job_id] = (n, offset, length, ok)
        except OSError as exc:
            raise UsageError(f"merge: cannot read {path}: {exc.strerror}") from None
        if result.lines_read == read_before and result.not_results > other_before:
            raise UsageError(
                f"merge: {path} holds no result lines ({result.not_results - other_before} "
                "JSON line(s) that are not result lines: is it a jobs file?). "
                "Nothing was written."
            )
    result.ids = len(where)
    if result.conflicts:
        return result
    if not where:
        raise UsageError(
            f"merge: no result lines in {', '.join(map(str, inputs))}; nothing to merge, "
            "nothing was written"
        )
    _write_merge(out, inputs, [w[:3] for w in where.values()], result)
    return result


def _count_bad_line(result: MergeResult, path: Path, offset: int, length: int) -> None:
    """A line that is not a result: torn (cut short, not JSON) or a whole other JSON line."""
    import orjson

    with path.open("rb") as f:
        f.seek(offset)
        raw = f.read(length)
    try:
        orjson.loads(raw)
    except orjson.JSONDecodeError:
        result.torn += 1
        return
    result.not_results += 1 if raw.endswith(b"\n") else 0
    result.torn += 0 if raw.endswith(b"\n") else 1


def _write_merge(
    out: Path, inputs: list[Path], spans: list[tuple[int, int, int]], result: MergeResult
) -> None:
    from llmbatch._io.resume import backup_output

    tmp = out.with_name(out.name + f".merge-{os.getpid()}.tmp")
    handles = [p.open("rb") for p in inputs]
    try:
        with tmp.open("wb") as f:
            for n, offset, length in spans:
                handles[n].seek(offset)
                f.write(handles[n].read(length))
            f.flush()
            os.fsync(f.fileno())
        if out.exists():
            result.backup = backup_output(out)
        os.replace(tmp, out)
    finally:
        for h in handles:
            h.close()
        tmp.unlink(missing_ok=True)
