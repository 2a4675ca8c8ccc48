"""The run report: a frozen record of a run, and its two renderings (rich table, JSON)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from llmbatch._core.exceptions import UsageError
from llmbatch._core.pricing import PriceBook
from llmbatch._core.results import JobResult, line_problems
from llmbatch._io.resume import iter_result_lines
from llmbatch._observe.stats import Bin, RunStats
from llmbatch._report.batch import BatchPart, batch_part_from_results
from llmbatch._report.embed import EmbedReport

if TYPE_CHECKING:
    pass


@dataclass(frozen=True, slots=True)
class RunReport:
    """What a run did (SPEC §6). ``to_dict`` is the JSON report; ``render`` the table."""

    jobs_total: int
    ok: int
    failed: int
    skipped_done: int
    not_run: int
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    cost_usd: float
    cost_usd_cumulative: float
    latency_ms: dict[str, float]
    ttft_ms: dict[str, float]
    attempts: int
    retries: int
    errors: dict[str, int]
    failures: dict[str, int]
    by_model: dict[str, dict[str, Any]]
    wall_s: float | None
    jobs_per_s: float | None
    stopped_by: str | None
    unpriced_models: list[str] = field(default_factory=list)
    invalid_lines: list[int] = field(default_factory=list)
    repairs: dict[str, int] = field(default_factory=dict)
    fallbacks: int = 0
    limits: dict[str, dict[str, Any]] = field(default_factory=dict)
    output: str | None = None
    notes: list[str] = field(default_factory=list)
    # Jobs an earlier run recorded as failed and this one did not retry.
    failed_earlier: int = 0
    # A coarse latency histogram for the terminal (not part of the JSON report).
    latency_bins: tuple[Bin, ...] = ()
    # stopped_by "budget_window": when enough of the rolling window frees (RFC 3339).
    resets_at: str | None = None
    cache_hits: int = 0  # jobs answered from the response cache (SPEC §11)
    cache_saved_usd: float = 0.0
    # Jobs answered by provider batches (SPEC §9): their cost, and the saving.
    batch: BatchPart | None = None
    # Prompt caching (the provider's): savings, and per shared prefix group.
    prompt_cache: dict[str, Any] = field(default_factory=dict)
    # ``llmbatch report`` only: lines of the results file not counted in full (the
    # totals are partial then), and why, as ``PATH:LINE: message``.
    malformed_lines: list[int] | None = None
    line_problems: list[str] = field(default_factory=list)
    embedding: EmbedReport | None = None  # an embedding run's inputs, requests and vectors

    @property
    def exit_code(self) -> int:
        if self.stopped_by == "budget":
            return 3
        if self.stopped_by == "budget_window":
            return 4
        if self.stopped_by == "shared_store":
            return 5
        stopped_badly = self.stopped_by in ("auth", "output_error")
        return 1 if (self.failed or self.failed_earlier or stopped_badly) else 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "jobs": {
                "total": self.jobs_total,
                "ok": self.ok,
                "failed": self.failed,
                "skipped_done": self.skipped_done,
                "not_run": self.not_run,
                "failed_earlier": self.failed_earlier,
            },
            "tokens": {
                "input": self.input_tokens,
                "output": self.output_tokens,
                "cache_read": self.cache_read_tokens,
                "cache_write": self.cache_write_tokens,
            },
            "cost_usd": round(self.cost_usd, 6),
            "cost_usd_cumulative": round(self.cost_usd_cumulative, 6),
            "latency_ms": self.latency_ms,
            "ttft_ms": self.ttft_ms,
            "attempts": {"total": self.attempts, "retries": self.retries},
            "errors": self.errors,
            "failures": self.failures,
            "by_model": self.by_model,
            "wall_s": self.wall_s,
            "jobs_per_s": self.jobs_per_s,
            "stopped_by": self.stopped_by,
            "resets_at": self.resets_at,
            "unpriced_models": self.unpriced_models,
            "invalid_lines": self.invalid_lines,
            "repairs": self.repairs,
            "fallbacks": self.fallbacks,
            "limits": self.limits,
            "output": self.output,
            "notes": self.notes,
            "cache": {"hits": self.cache_hits, "saved_usd": round(self.cache_saved_usd, 6)},
            **({"batch": self.batch.to_dict()} if self.batch is not None else {}),
            **({"prompt_cache": self.prompt_cache} if self.prompt_cache else {}),
            **({"embedding": self.embedding.to_dict()} if self.embedding is not None else {}),
            **(
                {"malformed_lines": self.malformed_lines}
                if self.malformed_lines is not None
                else {}
            ),
        }

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_dict(), option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE)


def build_report(
    stats: RunStats,
    *,
    skipped_done: int = 0,
    not_run: int = 0,
    cost_before: float = 0.0,
    wall_s: float | None = None,
    stopped_by: str | None = None,
    invalid_lines: list[int] | None = None,
    limits: dict[str, dict[str, Any]] | None = None,
    output: str | None = None,
    notes: list[str] | None = None,
    failed_earlier: int = 0,
) -> RunReport:
    lat, ttft = stats.latency, stats.ttft
    done = stats.done
    jobs_per_s = round(done / wall_s, 2) if wall_s else None
    return RunReport(
        jobs_total=done + skipped_done + not_run,
        ok=stats.ok,
        failed=stats.failed,
        skipped_done=skipped_done,
        not_run=not_run,
        input_tokens=stats.input_tokens,
        output_tokens=stats.output_tokens,
        cache_read_tokens=stats.cache_read_tokens,
        cache_write_tokens=stats.cache_write_tokens,
        cost_usd=stats.cost_usd,
        cost_usd_cumulative=cost_before + stats.cost_usd,
        latency_ms=_latency_ms(stats),
        ttft_ms={"p50": round(ttft.percentile(50), 1), "p95": round(ttft.percentile(95), 1)},
        attempts=stats.attempts,
        retries=max(0, stats.attempts - done - stats.repairs),
        errors=dict(sorted(stats.errors.items(), key=lambda kv: -kv[1])),
        failures=dict(sorted(stats.failures.items(), key=lambda kv: -kv[1])),
        by_model=_by_model(stats),
        wall_s=None if wall_s is None else round(wall_s, 2),
        jobs_per_s=jobs_per_s,
        stopped_by=stopped_by,
        unpriced_models=sorted(stats.unpriced_models),
        invalid_lines=list(invalid_lines or []),
        repairs={
            "jobs_repaired": stats.repaired_jobs,
            "repairs_sent": stats.repairs,
            "never_valid": stats.failures.get("schema_invalid", 0),
        },
        fallbacks=stats.fallbacks,
        limits=dict(limits or {}),
        output=output,
        notes=list(notes or []),
        failed_earlier=failed_earlier,
        latency_bins=lat.linear_bins(8),
        cache_hits=stats.cache_hits,
        cache_saved_usd=stats.cache_saved_usd,
        prompt_cache=_prompt_cache(stats),
    )


def _prompt_cache(stats: RunStats) -> dict[str, Any]:
    """The provider's prompt cache: what it saved, per shared prefix (largest groups first)."""
    if not (stats.prefix_groups or stats.cache_read_tokens or stats.cache_write_tokens):
        return {}
    groups = sorted(stats.prefix_groups.items(), key=lambda kv: (-kv[1].jobs, kv[0]))
    return {
        "saved_usd": round(stats.prompt_cache_saved_usd, 6),
        "write_premium_usd": round(stats.prompt_cache_premium_usd, 6),
        "cache_read_tokens": stats.cache_read_tokens,
        "cache_write_tokens": stats.cache_write_tokens,
        "groups": [g.to_dict(key) for key, g in groups],
    }


def _latency_ms(stats: RunStats) -> dict[str, float]:
    lat = stats.latency
    return {
        "p50": round(lat.percentile(50), 1),
        "p90": round(lat.percentile(90), 1),
        "p95": round(lat.percentile(95), 1),
        "p99": round(lat.percentile(99), 1),
        "max": round(lat.max, 1),
        "mean": round(lat.mean, 1),
    }


def _by_model(stats: RunStats) -> dict[str, dict[str, Any]]:
    return {
        key: {
            "jobs": m.jobs,
            "ok": m.ok,
            "failed": m.failed,
            "cost_usd": round(m.cost_usd, 6) if m.priced else None,
            "input_tokens": m.input_tokens,
            "output_tokens": m.output_tokens,
            "attempts": m.attempts,
        }
        for key, m in sorted(stats.by_model.items())
    }


def report_from_results(path: Path) -> RunReport:
    """Rebuild the report from a results file alone (the last line of an id wins).

    Lines that cannot be counted in full (not a result line, a cost or token count
    that is no number) are named as ``PATH:LINE: message`` in ``line_problems`` and
    the notes say the totals are partial. A torn last line (a crash mid-write) is
    only noted.
    """
    if not path.exists():
        raise UsageError(f"results file not found: {path}")
    stats = RunStats(prices=PriceBook())
    failed_lines: dict[str, JobResult] = {}
    batched = False
    bad: list[tuple[int, str]] = []
    last_bad: int | None = None
    for lineno, _offset, obj, length in iter_result_lines(path):
        last_bad = None
        if obj is None:
            if length > 1:
                bad.append((lineno, "not a result line (skipped)"))
                last_bad = lineno
            continue
        bad.extend((lineno, p) for p in line_problems(obj))
        r = JobResult.from_line(obj)
        batched = batched or r.batch is not None
        previous = failed_lines.pop(r.id, None)
        if previous is not None:
            stats.remove(previous)
        stats.add(r)
        if r.status != "ok":
            failed_lines[r.id] = r
    notes = []
    if last_bad is not None and not _ends_with_newline(path):
        bad.pop()
        notes.append(f"a torn last line ({path}:{last_bad}, a crash mid-write?) skipped")
    lines = sorted({n for n, _ in bad})
    if lines:
        notes.append(
            f"totals are partial: {len(lines)} line(s) could not be counted in full "
            f"(malformed_lines: {', '.join(map(str, lines[:10]))}{' …' if len(lines) > 10 else ''})"
        )
    from llmbatch._io.history import read_history

    history = read_history(path)
    walls = [h.get("wall_s") for h in history]
    wall = sum(w for w in walls if isinstance(w, int | float) and w >= 0) or None
    report = build_report(stats, wall_s=wall, output=str(path), notes=notes)
    report = replace(
        report, malformed_lines=lines, line_problems=[f"{path}:{n}: {p}" for n, p in bad]
    )
    if batched:
        report = replace(report, batch=batch_part_from_results(path))
    return report


def _ends_with_newline(path: Path) -> bool:
    with path.open("rb") as f:
        f.seek(0, 2)
        if f.tell() == 0:
            return True
        f.seek(-1, 2)
        return f.read(1) == b"\n"
