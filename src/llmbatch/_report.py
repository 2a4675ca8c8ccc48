"""The run report: a frozen record of a run, and its two renderings (rich table, JSON)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from ._exceptions import UsageError
from ._results import JobResult, iter_result_lines
from ._stats import Bin, RunStats

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table


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
    # Jobs answered by provider batches (SPEC §9): {"jobs", "cost_usd", "online_cost_usd"}.
    batch: dict[str, Any] | None = None

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
            **({"batch": self.batch} if self.batch is not None else {}),
        }

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_dict(), option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE)

    def render(self, console: Console) -> None:
        render_report(self, console)


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
        latency_ms={
            "p50": round(lat.percentile(50), 1),
            "p90": round(lat.percentile(90), 1),
            "p95": round(lat.percentile(95), 1),
            "p99": round(lat.percentile(99), 1),
            "max": round(lat.max, 1),
            "mean": round(lat.mean, 1),
        },
        ttft_ms={"p50": round(ttft.percentile(50), 1), "p95": round(ttft.percentile(95), 1)},
        attempts=stats.attempts,
        retries=max(0, stats.attempts - done - stats.repairs),
        errors=dict(sorted(stats.errors.items(), key=lambda kv: -kv[1])),
        failures=dict(sorted(stats.failures.items(), key=lambda kv: -kv[1])),
        by_model={
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
        },
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
    )


def report_from_results(path: Path) -> RunReport:
    """Rebuild the report from a results file alone (the last line of an id wins)."""
    if not path.exists():
        raise UsageError(f"results file not found: {path}")
    stats = RunStats()
    failed_lines: dict[str, JobResult] = {}
    batched = False
    torn = 0
    for lineno, _offset, obj, length in iter_result_lines(path):
        if obj is None:
            if length > 1:
                torn += 1
            continue
        r = JobResult.from_line(obj)
        batched = batched or r.batch is not None
        previous = failed_lines.pop(r.id, None)
        if previous is not None:
            stats.remove(previous)
        stats.add(r)
        if r.status != "ok":
            failed_lines[r.id] = r
        del lineno
    notes = [f"{torn} unreadable line(s) skipped"] if torn else []
    from ._history import read_history

    history = read_history(path)
    walls = [h.get("wall_s") for h in history]
    wall = sum(w for w in walls if isinstance(w, int | float) and w >= 0) or None
    report = build_report(stats, wall_s=wall, output=str(path), notes=notes)
    if batched:
        from ._batch_run import batch_part_from_results

        report = replace(report, batch=batch_part_from_results(path).to_dict())
    return report


# -- rendering ------------------------------------------------------------------------


def _usd(value: float | None) -> str:
    if value is None:
        return "unpriced"
    if value == 0:
        return "$0"
    if value < 0.01:
        return f"${value:.6f}"
    return f"${value:,.4f}"


def _ms(value: float) -> str:
    return f"{value:,.0f} ms" if value >= 10 else f"{value:.1f} ms"


def render_report(report: RunReport, console: Console) -> None:
    from rich.markup import escape
    from rich.table import Table

    title = "llmbatch report"
    if report.stopped_by:
        title += f" — stopped by {report.stopped_by}"

    summary = Table(title=title, show_header=False, title_justify="left", box=None, pad_edge=False)
    summary.add_column(style="bold")
    summary.add_column()
    jobs = (
        f"{report.jobs_total} total · [green]{report.ok} ok[/] · "
        + (f"[red]{report.failed} failed[/]" if report.failed else "0 failed")
        + f" · {report.skipped_done} already done · {report.not_run} not run"
    )
    if report.failed_earlier:
        jobs += f" · [red]{report.failed_earlier} failed earlier[/] (--retry-failed reruns them)"
    summary.add_row("jobs", jobs)
    summary.add_row(
        "tokens",
        f"{report.input_tokens:,} in · {report.output_tokens:,} out · "
        f"{report.cache_read_tokens:,} cache read · {report.cache_write_tokens:,} cache write",
    )
    cost = _usd(report.cost_usd) + " this run"
    if abs(report.cost_usd_cumulative - report.cost_usd) > 1e-12:
        cost += f" · {_usd(report.cost_usd_cumulative)} over all runs on this output"
    if report.unpriced_models:
        cost += f" · [yellow]unpriced: {', '.join(report.unpriced_models)}[/]"
    summary.add_row("cost", cost)
    if report.cache_hits:
        summary.add_row(
            "cache",
            f"{report.cache_hits} answered from the cache · {_usd(report.cache_saved_usd)} saved",
        )
    lat = report.latency_ms
    summary.add_row(
        "latency",
        f"p50 {_ms(lat['p50'])} · p90 {_ms(lat['p90'])} · p95 {_ms(lat['p95'])} · "
        f"p99 {_ms(lat['p99'])} · max {_ms(lat['max'])} · mean {_ms(lat['mean'])}",
    )
    summary.add_row(
        "time to first token",
        f"p50 {_ms(report.ttft_ms['p50'])} · p95 {_ms(report.ttft_ms['p95'])}",
    )
    attempts = f"{report.attempts} sent · {report.retries} retries"
    if report.repairs.get("repairs_sent"):
        attempts += f" · {report.repairs['repairs_sent']} schema repairs"
    if report.fallbacks:
        attempts += f" · {report.fallbacks} fallbacks taken"
    summary.add_row("attempts", attempts)
    if report.errors:
        summary.add_row("errors", " · ".join(f"{k} {v}" for k, v in report.errors.items()))
    if report.failures:
        summary.add_row("failed jobs", " · ".join(f"{k} {v}" for k, v in report.failures.items()))
    if report.repairs.get("jobs_repaired") or report.repairs.get("never_valid"):
        summary.add_row(
            "validation",
            f"{report.repairs['jobs_repaired']} jobs repaired · "
            f"{report.repairs['repairs_sent']} repairs sent · "
            f"{report.repairs['never_valid']} never valid",
        )
    if report.wall_s is not None:
        rate = f" · {report.jobs_per_s:,.1f} jobs/s" if report.jobs_per_s else ""
        summary.add_row("wall time", f"{report.wall_s:,.1f} s{rate}")
    if report.invalid_lines:
        shown = ", ".join(str(n) for n in report.invalid_lines[:20])
        more = (
            f" (+{len(report.invalid_lines) - 20} more)" if len(report.invalid_lines) > 20 else ""
        )
        summary.add_row("skipped invalid lines", shown + more)
    # Paths and notes are text, not markup: "[prices.x]" or "a[1].jsonl" must show as written.
    if report.output:
        summary.add_row("results", escape(report.output))
    for note in report.notes:
        summary.add_row("note", escape(note))
    console.print(summary)
    if report.latency_bins:
        console.print(latency_histogram(report.latency_bins))

    if report.by_model:
        table = Table(title="by model", title_justify="left")
        # Long model names wrap (at - : / boundaries) instead of losing their tails.
        table.add_column("model", overflow="fold", min_width=12)
        table.add_column("jobs", justify="right")
        table.add_column("ok", justify="right")
        table.add_column("failed", justify="right")
        table.add_column("attempts", justify="right")
        table.add_column("input tok", justify="right")
        table.add_column("output tok", justify="right")
        table.add_column("cost", justify="right")
        for key, m in report.by_model.items():
            table.add_row(
                key,
                str(m["jobs"]),
                str(m["ok"]),
                str(m["failed"]),
                str(m["attempts"]),
                f"{m['input_tokens']:,}",
                f"{m['output_tokens']:,}",
                _usd(m["cost_usd"]),
            )
        console.print(table)

    # Only models where a limit was given, learned, or hit: the rest is noise here.
    limited = {
        key: lim
        for key, lim in report.limits.items()
        if lim.get("source") != "none needed" or lim.get("rate_limited") or lim.get("tpm")
    }
    if limited:
        table = Table(title="rate limits in force", title_justify="left")
        table.add_column("model", overflow="fold", min_width=12)
        table.add_column("requests/min", justify="right")
        table.add_column("tokens/min", justify="right")
        table.add_column("source")
        table.add_column("429s", justify="right")
        table.add_column("backoff", justify="right")
        for key, lim in limited.items():
            table.add_row(
                key,
                _num(lim.get("rpm")),
                _num(lim.get("tpm")),
                str(lim.get("source", "")),
                str(lim.get("rate_limited", 0)),
                f"{lim.get('backoff_s', 0):.1f} s",
            )
        console.print(table)


_EIGHTHS = " ▏▎▍▌▋▊▉"


def _bar(fraction: float, width: int) -> str:
    """A bar of unicode blocks, in eighths of a cell."""
    eighths = round(max(0.0, min(1.0, fraction)) * width * 8)
    full, part = divmod(eighths, 8)
    return "█" * full + (_EIGHTHS[part] if part else "")


def latency_histogram(bins: tuple[Bin, ...], width: int = 36) -> Table:
    """A few rows of bars: how successful jobs' latencies spread."""
    from rich.table import Table

    table = Table(
        title="latency of successful jobs", title_justify="left", show_header=False, box=None
    )
    table.add_column(justify="right", style="dim")
    table.add_column()
    table.add_column(justify="right")
    top = max(b.count for b in bins) or 1
    seconds = bins[-1].hi >= 10_000
    div, unit = (1000.0, "s") if seconds else (1.0, "ms")
    for b in bins:
        lo, hi = f"{b.lo / div:,.4g}", f"{b.hi / div:,.4g}"
        label = f"≥ {lo} {unit}" if b.open_ended else f"{lo}–{hi} {unit}"
        table.add_row(label, f"[cyan]{_bar(b.count / top, width)}[/]", f"{b.count:,}")
    return table


def _num(value: Any) -> str:
    if value is None:
        return "—"
    return f"{value:,.0f}"
