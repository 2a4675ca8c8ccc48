"""The run report as rich tables: summary, latency histogram, per model, rate limits."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from llmbatch._observe.stats import Bin
    from llmbatch._report.report import RunReport

Rows = list[tuple[str, str]]


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


def print_whole(console: Console, table: Table) -> None:
    """Print ``table``; off a terminal (cron logs, pipes) never cut to the console's width.

    rich fits a table to the width by cutting cells to "…" (an id, a count); a log
    file has no width, so the console grows to the table's instead. A terminal keeps
    its width.
    """
    if not console.is_terminal:
        from rich.measure import Measurement

        wide = console.options.update_width(1 << 16)
        needed = Measurement.get(console, wide, table).maximum
        if needed > console.width:
            console.width = needed
    console.print(table)


def render_report(report: RunReport, console: Console) -> None:
    """Print the report: the summary, then the latency, per-model and rate-limit tables."""
    from rich.table import Table

    title = "llmbatch report"
    if report.stopped_by:
        title += f" — stopped by {report.stopped_by}"

    summary = Table(title=title, show_header=False, title_justify="left", box=None, pad_edge=False)
    summary.add_column(style="bold")
    summary.add_column()
    for label, text in [*_spend_rows(report), *_timing_rows(report), *_outcome_rows(report)]:
        summary.add_row(label, text)
    console.print(summary)
    if report.latency_bins:
        console.print(latency_histogram(report.latency_bins))
    if report.by_model:
        print_whole(console, _by_model_table(report))
    limits = _limits_table(report)
    if limits is not None:
        print_whole(console, limits)
    groups = _prefix_table(report)
    if groups is not None:
        print_whole(console, groups)


def _spend_rows(report: RunReport) -> Rows:
    """Jobs, tokens, cost and cache hits."""
    jobs = (
        f"{report.jobs_total} total · [green]{report.ok} ok[/] · "
        + (f"[red]{report.failed} failed[/]" if report.failed else "0 failed")
        + f" · {report.skipped_done} already done · {report.not_run} not run"
    )
    if report.failed_earlier:
        jobs += f" · [red]{report.failed_earlier} failed earlier[/] (--retry-failed reruns them)"
    rows = [("jobs", jobs)]
    rows.append(
        (
            "tokens",
            f"{report.input_tokens:,} in · {report.output_tokens:,} out · "
            f"{report.cache_read_tokens:,} cache read · {report.cache_write_tokens:,} cache write",
        )
    )
    cost = _usd(report.cost_usd) + " this run"
    if abs(report.cost_usd_cumulative - report.cost_usd) > 1e-12:
        cost += f" · {_usd(report.cost_usd_cumulative)} over all runs on this output"
    if report.unpriced_models:
        cost += f" · [yellow]unpriced: {', '.join(report.unpriced_models)}[/]"
    if report.malformed_lines:
        cost += f" · [yellow]partial: {len(report.malformed_lines)} line(s) not counted[/]"
    rows.append(("cost", cost))
    if report.cache_hits:
        rows.append(
            (
                "cache",
                f"{report.cache_hits} answered from the cache · "
                f"{_usd(report.cache_saved_usd)} saved",
            )
        )
    pc = report.prompt_cache
    if pc and (pc["cache_read_tokens"] or pc["cache_write_tokens"]):
        rows.append(
            (
                "prompt cache",
                f"{_usd(pc['saved_usd'])} saved against no caching · "
                f"{_usd(pc['write_premium_usd'])} write premium paid",
            )
        )
    return rows


def _prefix_table(report: RunReport) -> Table | None:
    """Per shared prompt prefix: hit rate, cache tokens, premium and saving (top 10)."""
    from rich.table import Table

    groups = (report.prompt_cache or {}).get("groups") or []
    if not groups:
        return None
    table = Table(title="shared prompt prefixes", title_justify="left")
    for name in ("group", "jobs", "hit rate", "cache read", "cache write", "premium", "saved"):
        table.add_column(name, justify="left" if name == "group" else "right")
    for g in groups[:10]:
        table.add_row(
            g["group"],
            f"{g['jobs']:,}",
            f"{g['hit_rate']:.1%}",
            f"{g['cache_read_tokens']:,}",
            f"{g['cache_write_tokens']:,}",
            _usd(g["write_premium_usd"]),
            _usd(g["saved_usd"]),
        )
    if len(groups) > 10:
        table.caption = f"{len(groups) - 10} more group(s) in the JSON report"
    return table


def _timing_rows(report: RunReport) -> Rows:
    """Latency, time to first token, attempts, errors and failures."""
    lat = report.latency_ms
    if report.latency_bins:
        rows = [
            (
                "latency",
                f"p50 {_ms(lat['p50'])} · p90 {_ms(lat['p90'])} · p95 {_ms(lat['p95'])} · "
                f"p99 {_ms(lat['p99'])} · max {_ms(lat['max'])} · mean {_ms(lat['mean'])}",
            ),
            (
                "time to first token",
                f"p50 {_ms(report.ttft_ms['p50'])} · p95 {_ms(report.ttft_ms['p95'])}",
            ),
        ]
    else:  # no answer was timed: none ok yet, or batch answers (they carry no latency)
        rows = [("latency", "— (no answer timed)")]
    attempts = f"{report.attempts} sent · {report.retries} retries"
    if report.repairs.get("repairs_sent"):
        attempts += f" · {report.repairs['repairs_sent']} schema repairs"
    if report.fallbacks:
        attempts += f" · {report.fallbacks} fallbacks taken"
    rows.append(("attempts", attempts))
    if report.errors:
        rows.append(("errors", " · ".join(f"{k} {v}" for k, v in report.errors.items())))
    if report.failures:
        rows.append(("failed jobs", " · ".join(f"{k} {v}" for k, v in report.failures.items())))
    return rows


def _outcome_rows(report: RunReport) -> Rows:
    """Validation, wall time, skipped lines, where the results are, and notes."""
    from rich.markup import escape

    rows: Rows = []
    if report.repairs.get("jobs_repaired") or report.repairs.get("never_valid"):
        rows.append(
            (
                "validation",
                f"{report.repairs['jobs_repaired']} jobs repaired · "
                f"{report.repairs['repairs_sent']} repairs sent · "
                f"{report.repairs['never_valid']} never valid",
            )
        )
    b = report.batch
    if b is not None and b.jobs:
        rows.append(
            (
                "batch",
                f"{b.jobs} jobs for {_usd(b.cost_usd)} (online "
                f"{_usd(b.online_cost_usd)}; saved {_usd(b.saved_usd)})",
            )
        )
    if report.embedding is not None:
        rows.append(("embeddings", report.embedding.line()))
    if report.wall_s is not None:
        rate = f" · {report.jobs_per_s:,.1f} jobs/s" if report.jobs_per_s else ""
        rows.append(("wall time", f"{report.wall_s:,.1f} s{rate}"))
    if report.invalid_lines:
        shown = ", ".join(str(n) for n in report.invalid_lines[:20])
        more = (
            f" (+{len(report.invalid_lines) - 20} more)" if len(report.invalid_lines) > 20 else ""
        )
        rows.append(("skipped invalid lines", shown + more))
    # Paths and notes are text, not markup: "[prices.x]" or "a[1].jsonl" must show as written.
    if report.output:
        rows.append(("results", escape(report.output)))
    rows.extend(("note", escape(note)) for note in report.notes)
    return rows


def _by_model_table(report: RunReport) -> Table:
    from rich.table import Table

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
    return table


def _limits_table(report: RunReport) -> Table | None:
    from rich.table import Table

    # Only models where a limit was given, learned, or hit: the rest is noise here.
    limited = {
        key: lim
        for key, lim in report.limits.items()
        if lim.get("source") != "none needed" or lim.get("rate_limited") or lim.get("tpm")
    }
    if not limited:
        return None
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
    return table


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
