"""The HTML report's charts: each a <figure data-chart=NAME> holding one inline SVG."""

from __future__ import annotations

from typing import Any

from llmbatch._observe.stats import Bin
from llmbatch._observe.timeline import Series, Timeline
from llmbatch._report.report import RunReport
from llmbatch._report.svg import HRow, Marker, Slot, area_chart, bar_chart, esc, hbar_chart, num

BLUE, GREEN, AMBER, RED, TEAL, PURPLE = (
    "#2563eb",
    "#16a34a",
    "#f59e0b",
    "#dc2626",
    "#0d9488",
    "#7c3aed",
)


def usd(value: float | None) -> str:
    if value is None:
        return "unpriced"
    if value == 0:
        return "$0"
    return f"${value:.6f}" if value < 0.01 else f"${value:,.4f}"


def ms(value: float) -> str:
    return f"{value / 1000:,.2f} s" if value >= 10_000 else f"{value:,.0f} ms"


def _figure(name: str, title: str, sub: str, svg: str, legend: str = "") -> str:
    return (
        f'<figure class="chart" data-chart="{esc(name)}"><figcaption><h2>{esc(title)}</h2>'
        f"<p>{esc(sub)}{legend}</p></figcaption>{svg}</figure>"
    )


def _legend(*items: tuple[str, str]) -> str:
    return "".join(
        f'<svg class="sw" viewBox="0 0 10 10"><rect width="10" height="10" fill="{c}"/></svg>'
        f"{esc(label)}"
        for c, label in items
    )


def _histogram(
    name: str, title: str, bins: tuple[Bin, ...], pct: dict[str, float], empty: str
) -> str:
    seconds = bool(bins) and bins[-1].hi > 10_000
    unit, div = ("s", 1000.0) if seconds else ("ms", 1.0)
    total = sum(b.count for b in bins) or 1
    slots = []
    for b in bins:
        span = (
            f"≥ {b.lo / div:,.4g} {unit}"
            if b.open_ended
            else f"{b.lo / div:,.4g}–{b.hi / div:,.4g} {unit}"
        )
        tip = f"{span}: {b.count:,} jobs ({100 * b.count / total:.1f}%)"
        slots.append(Slot(b.lo / div, b.hi / div, (b.count,), tip, b.open_ended))
    markers = [Marker(pct[k] / div, k) for k in ("p50", "p95") if pct.get(k)]
    svg = bar_chart(
        name,
        slots,
        [BLUE],
        x_title=f"{title.lower()} ({unit})",
        y_title="jobs",
        markers=markers,
        empty=empty,
    )
    sub = "successful jobs; dashed lines: p50 and p95"
    if bins and bins[-1].open_ended:
        sub += "; the last, lighter bar holds the slowest 1%"
    return _figure(name, title, sub, svg)


def _untimed(report: RunReport, what: str) -> str:
    """Why a histogram is empty: no job succeeded, or none was timed (cache, batches)."""
    if not report.ok:
        return "no successful jobs"
    if report.cache_hits >= report.ok:
        return f"no {what}: every ok job was answered from the cache"
    return f"no {what} measured (answers from the cache or a provider batch have none)"


def histogram_figures(report: RunReport, t: Timeline) -> list[str]:
    return [
        _histogram("latency", "Latency", t.latency, report.latency_ms, _untimed(report, "latency")),
        _histogram(
            "ttft",
            "Time to first token",
            t.ttft,
            report.ttft_ms,
            _untimed(report, "time to first token"),
        ),
    ]


def _time_unit(s: Series) -> tuple[float, str]:
    if s.duration_s > 2 * 3600:
        return 3600.0, "hours"
    if s.duration_s > 300:
        return 60.0, "minutes"
    return 1.0, "seconds"


def time_figures(t: Timeline) -> list[str]:
    s = t.series
    if s is None or not len(s):
        return [
            '<figure class="nochart"><figcaption><h2>Over time</h2><p>Not recorded: result lines '
            "carry no timestamps, and the run history beside them holds no timeline. Runs "
            "record throughput, 429s and cost over time there, and this page then shows "
            "them.</p></figcaption></figure>"
        ]
    div, unit = _time_unit(s)
    w = s.bucket_s
    note = f" · {t.series_note}" if t.series_note else ""
    x_title = f"time since start ({unit})"

    def span(i: int) -> str:
        return f"{i * w / div:,.4g}–{(i + 1) * w / div:,.4g} {unit[0]}"

    done = [
        Slot(
            i * w / div, (i + 1) * w / div, (n / w,), f"{span(i)}: {n:,} jobs done ({n / w:,.1f}/s)"
        )
        for i, n in enumerate(s.jobs_done)
    ]
    outcome = [
        Slot(
            i * w / div,
            (i + 1) * w / div,
            (s.ok[i] / w, s.rate_limited[i] / w, s.other_errors[i] / w),
            f"{span(i)}: {s.ok[i]:,} ok · {s.rate_limited[i]:,} rate-limited (429) · "
            f"{s.other_errors[i]:,} other errors",
        )
        for i in range(len(s))
    ]
    return [
        _figure(
            "throughput",
            "Throughput",
            f"jobs finished per second, in {w:g} s buckets{note}",
            bar_chart("throughput", done, [BLUE], x_title=x_title, y_title="jobs / s"),
        ),
        _figure(
            "requests",
            "Requests and 429s",
            "requests answered per second, by outcome",
            bar_chart(
                "requests", outcome, [GREEN, AMBER, RED], x_title=x_title, y_title="requests / s"
            ),
            _legend((GREEN, "ok"), (AMBER, "rate-limited (429)"), (RED, "other errors")),
        ),
        _cumulative(s, div, unit, x_title),
    ]


def _cumulative(s: Series, div: float, unit: str, x_title: str) -> str:
    priced = any(s.cost_usd)
    points: list[tuple[float, float, str]] = [(0.0, 0.0, "start")]
    cost = tokens = 0.0
    for i in range(len(s)):
        cost += s.cost_usd[i]
        tokens += s.input_tokens[i] + s.output_tokens[i]
        end = (i + 1) * s.bucket_s / div
        tip = f"by {end:,.4g} {unit[0]}: {usd(cost)} · {tokens:,.0f} tokens"
        points.append((end, cost if priced else tokens, tip))
    title, y = ("Cost over time", "USD") if priced else ("Tokens over time", "tokens")
    svg = area_chart("cumulative", points, PURPLE, x_title=x_title, y_title=y)
    return _figure("cumulative", title, "running total, every attempt that was paid for", svg)


def model_figures(d: dict[str, Any]) -> list[str]:
    models = d["by_model"]
    cost_rows = [
        HRow(k, (m["cost_usd"] or 0.0,), usd(m["cost_usd"]), f"{k}: {usd(m['cost_usd'])}")
        for k, m in models.items()
    ]
    token_rows = [
        HRow(
            k,
            (m["input_tokens"], m["output_tokens"]),
            f"{num(m['input_tokens'])} / {num(m['output_tokens'])}",
            f"{k}: {m['input_tokens']:,} input · {m['output_tokens']:,} output tokens",
        )
        for k, m in models.items()
    ]
    return [
        _figure(
            "cost_by_model",
            "Cost by model",
            "USD this run",
            hbar_chart("cost_by_model", cost_rows, [BLUE], empty="no cost recorded"),
        ),
        _figure(
            "tokens_by_model",
            "Tokens by model",
            "input / output tokens",
            hbar_chart("tokens_by_model", token_rows, [TEAL, PURPLE], empty="no tokens recorded"),
            _legend((TEAL, "input"), (PURPLE, "output")),
        ),
    ]


def errors_figure(d: dict[str, Any]) -> str:
    errors: dict[str, int] = d["errors"]
    failures: dict[str, int] = d["failures"]
    rows = []
    for kind in dict.fromkeys([*errors, *failures]):
        n, f = errors.get(kind, 0), failures.get(kind, 0)
        seg = (float(n or f), 0.0) if kind == "rate_limited" else (0.0, float(n or f))
        value = _count(n, "attempt") + (f" · {_count(f, 'job')} failed" if f else "")
        rows.append(HRow(kind, seg, value, f"{kind}: {value}"))
    svg = hbar_chart("errors", rows, [AMBER, RED], empty="no errors")
    return _figure(
        "errors", "Errors by type", "failed attempts (retried or not), and jobs that failed", svg
    )


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}" + ("" if n == 1 else "s")
