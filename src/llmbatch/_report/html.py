"""The HTML report: one self-contained page (inline CSS, SVG and a few lines of script).

Nothing is fetched when it is opened: a Content-Security-Policy allows no
network, and only the page's own script (by hash). Every string from a run
(job ids, models, error messages, paths) is escaped.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llmbatch._core.exceptions import LLMBatchError
from llmbatch._observe.timeline import JobRow, Timeline
from llmbatch._report.html_charts import (
    errors_figure,
    histogram_figures,
    model_figures,
    ms,
    time_figures,
    usd,
)
from llmbatch._report.report import RunReport
from llmbatch._report.svg import esc, num

_CSS = """
*{box-sizing:border-box}
body{margin:0;background:#f3f4f6;color:#1f2937;
font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
main{max-width:1200px;margin:0 auto;padding:20px 24px 40px}
header h1{font-size:22px;margin:0 0 2px}
header p{margin:0;color:#6b7280}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;background:#fee2e2;color:#991b1b;
font-size:12px;margin-left:8px;vertical-align:middle}
.tiles{display:grid;grid-template-columns:repeat(4,1fr);gap:10px;
margin:16px 0}
.tile{background:#fff;border:1px solid #e5e7eb;border-radius:8px;padding:10px 12px}
.tile b{display:block;font-size:20px;font-weight:600;margin-top:2px}
.tile span{color:#6b7280;font-size:12px}
.tile .k{color:#6b7280;font-size:12px;text-transform:uppercase;letter-spacing:.04em}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(480px,1fr));gap:14px}
figure,section{background:#fff;border:1px solid #e5e7eb;border-radius:8px;margin:0;
padding:12px 14px}
figcaption h2,section h2{font-size:15px;margin:0}
figcaption p,section p{margin:2px 0 6px;color:#6b7280;font-size:12px}
svg{display:block;width:100%;height:auto;font-family:inherit}
.mark:hover{opacity:.75}
.sw{display:inline-block;width:10px;height:10px;margin:0 4px 0 12px;vertical-align:-1px}
section{margin-top:14px}
table{border-collapse:collapse;width:100%;font-size:13px}
th,td{text-align:left;padding:4px 8px;border-bottom:1px solid #f0f0f0;vertical-align:top}
th{color:#6b7280;font-weight:600}
td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td.id{font-family:ui-monospace,Menlo,Consolas,monospace;overflow-wrap:anywhere;max-width:360px}
td.msg{color:#4b5563;overflow-wrap:anywhere}
ul.notes{margin:4px 0 0;padding-left:18px}
@media (max-width:760px){.tiles{grid-template-columns:repeat(2,1fr)}}
#tip{position:fixed;pointer-events:none;background:#111827;color:#fff;padding:4px 8px;
border-radius:4px;font-size:12px;max-width:420px;white-space:pre-line}
"""

# Tooltips, and a count of charts that were laid out (the browser test reads it).
_JS = """(()=>{const t=document.getElementById("tip");
document.addEventListener("mouseover",e=>{const m=e.target.closest("[data-tip]");
if(!m){t.hidden=true;return}t.textContent=m.getAttribute("data-tip");t.hidden=false});
document.addEventListener("mousemove",e=>{t.style.left=(e.clientX+14)+"px";
t.style.top=(e.clientY+14)+"px"});
let n=0;for(const s of document.querySelectorAll("[data-chart]>svg")){
const r=s.getBoundingClientRect();if(r.width>0&&r.height>0)n++}
document.body.setAttribute("data-charts-rendered",String(n))})();"""


def _hash(text: str) -> str:
    return base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()


_CSP = (
    "default-src 'none'; img-src data:; "
    f"style-src 'sha256-{_hash(_CSS)}'; script-src 'sha256-{_hash(_JS)}'"
)


def write_html_report(path: Path, report: RunReport, timeline: Timeline) -> None:
    """Write the page to ``path`` (via a temporary file, so a reader never sees half).

    :raises LLMBatchError: the file cannot be written.
    """
    page = render_html(report, timeline)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(page, encoding="utf-8")
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise LLMBatchError(f"cannot write the HTML report {path}: {exc.strerror}") from None


def render_html(report: RunReport, timeline: Timeline) -> str:
    """The whole page, as text."""
    d = report.to_dict()
    charts = histogram_figures(report, timeline) + time_figures(timeline) + model_figures(d)
    charts.append(errors_figure(d))
    body = (
        _header(d, timeline)
        + _tiles(d, timeline)
        + '<div class="grid">'
        + "".join(charts)
        + "</div>"
        + _model_table(d)
        + _prefix_table(d)
        + _slowest_table(timeline)
        + _failed_table(timeline)
        + _notes(d)
    )
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>llmbatch report — {esc(d.get('output') or 'run')}</title>"
        f"<style>{_CSS}</style></head><body><main>{body}</main>"
        f'<div id="tip" hidden></div><script>{_JS}</script></body></html>\n'
    )


# -- summary ------------------------------------------------------------------------


def _header(d: dict[str, Any], t: Timeline) -> str:
    when = ""
    if t.started_ts is not None:
        stamp = datetime.datetime.fromtimestamp(t.started_ts, datetime.UTC)
        when = f" · started {stamp:%Y-%m-%d %H:%M:%S} UTC"
    source = "rebuilt from the results file" if t.source == "results" else "recorded live"
    badge = (
        f'<span class="badge">stopped by {esc(d["stopped_by"])}</span>' if d["stopped_by"] else ""
    )
    return (
        f"<header><h1>llmbatch report{badge}</h1>"
        f"<p>{esc(d.get('output') or 'results on stdout')}{esc(when)} · {source}</p></header>"
    )


def _tile(key: str, big: str, small: str = "") -> str:
    return (
        f'<div class="tile"><span class="k">{esc(key)}</span><b>{esc(big)}</b>'
        f"<span>{esc(small)}</span></div>"
    )


def _timed(pct: dict[str, float], measured: bool) -> Callable[[str], str]:
    """A percentile as text; "—" when nothing was timed (cache hits, batch answers)."""
    return lambda key: ms(pct[key]) if measured else "—"


def _tiles(d: dict[str, Any], t: Timeline) -> str:
    jobs, tok, att = d["jobs"], d["tokens"], d["attempts"]
    lat, ttft = _timed(d["latency_ms"], bool(t.latency)), _timed(d["ttft_ms"], bool(t.ttft))
    cost_small = "this run"
    if abs(d["cost_usd_cumulative"] - d["cost_usd"]) > 1e-12:
        cost_small += f" · {usd(d['cost_usd_cumulative'])} all runs"
    if d["unpriced_models"]:
        cost_small += " · some unpriced"
    hits = d["cache"]["hits"]
    if hits:  # answered from the cache: nothing spent this run, and this much not spent again
        cost_small += f" · {usd(d['cache']['saved_usd'])} saved by the cache"
    jobs_small = f"{jobs['failed']:,} failed · {jobs['total']:,} total"
    if hits:
        jobs_small += f" · {hits:,} from the cache"
    if jobs["skipped_done"]:
        jobs_small += f" · {jobs['skipped_done']:,} done before"
    if jobs["not_run"]:
        jobs_small += f" · {jobs['not_run']:,} not run"
    limited = d["errors"].get("rate_limited", 0)
    others = sum(d["errors"].values()) - limited
    wall, rate = d["wall_s"], d["jobs_per_s"]
    tiles = [
        _tile("jobs", f"{jobs['ok']:,} ok", jobs_small),
        _tile("cost", usd(d["cost_usd"]), cost_small),
        _tile(
            "tokens",
            num(tok["input"] + tok["output"]),
            f"{num(tok['input'])} in · {num(tok['output'])} out",
        ),
        _tile("latency p50", lat("p50"), f"p95 {lat('p95')} · p99 {lat('p99')}"),
        _tile("first token p50", ttft("p50"), f"p95 {ttft('p95')}"),
        _tile("attempts", f"{att['total']:,}", f"{att['retries']:,} retries"),
        _tile("rate-limited (429)", f"{limited:,}", f"{others:,} other failed attempts"),
        _tile(
            "wall time",
            "—" if wall is None else f"{wall:,.1f} s",
            f"{rate:,.1f} jobs/s" if rate else "",
        ),
    ]
    return '<div class="tiles">' + "".join(tiles) + "</div>"


# -- charts -------------------------------------------------------------------------


# -- tables -------------------------------------------------------------------------


def _table(title: str, sub: str, head: list[str], rows: list[list[str]], name: str) -> str:
    th = "".join(f"<th>{esc(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(r) + "</tr>" for r in rows)
    return (
        f'<section data-table="{esc(name)}"><h2>{esc(title)}</h2><p>{esc(sub)}</p>'
        f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table></section>"
    )


CELL_CHARS = 80  # longer ids and names are cut in the middle; the full text is the title


def _td(value: object, cls: str = "") -> str:
    attr = f' class="{cls}"' if cls else ""
    return f"<td{attr}>{esc(value)}</td>"


def _td_name(value: str, cls: str = "") -> str:
    """A cell for an id or a model name: a 20,000-character id must not make a tall table."""
    if len(value) <= CELL_CHARS:
        return _td(value, cls)
    keep = CELL_CHARS - 1
    shown = value[: keep * 3 // 5] + "…" + value[-(keep - keep * 3 // 5) :]
    attr = f' class="{cls}"' if cls else ""
    return f'<td{attr} title="{esc(value)}">{esc(shown)}</td>'


def _opt(value: float | None, fmt: Callable[[float], str]) -> str:
    return "—" if value is None else fmt(value)


def _model_table(d: dict[str, Any]) -> str:
    rows = [
        [
            _td_name(k, "id"),
            _td(f"{m['jobs']:,}", "n"),
            _td(f"{m['ok']:,}", "n"),
            _td(f"{m['failed']:,}", "n"),
            _td(f"{m['attempts']:,}", "n"),
            _td(f"{m['input_tokens']:,}", "n"),
            _td(f"{m['output_tokens']:,}", "n"),
            _td(usd(m["cost_usd"]), "n"),
        ]
        for k, m in d["by_model"].items()
    ]
    head = ["model", "jobs", "ok", "failed", "attempts", "input tok", "output tok", "cost"]
    return _table("By model", "this run", head, rows, "by_model") if rows else ""


def _prefix_table(d: dict[str, Any]) -> str:
    """Prompt caching per shared prefix group (the provider's cache, not the response cache)."""
    pc = d.get("prompt_cache") or {}
    rows = [
        [
            _td(g["group"], "id"),
            _td(f"{g['jobs']:,}", "n"),
            _td(f"{g['hit_rate']:.1%}", "n"),
            _td(f"{g['cache_read_tokens']:,}", "n"),
            _td(f"{g['cache_write_tokens']:,}", "n"),
            _td(usd(g["write_premium_usd"]), "n"),
            _td(usd(g["saved_usd"]), "n"),
        ]
        for g in pc.get("groups") or ()
    ]
    if not rows:
        return ""
    head = ["prefix group", "jobs", "hit rate", "cache read", "cache write", "premium", "saved"]
    sub = (
        f"{usd(pc['saved_usd'])} saved against no caching · "
        f"{usd(pc['write_premium_usd'])} write premium paid"
    )
    return _table("Shared prompt prefixes", sub, head, rows, "prefix_groups")


def _slowest_table(t: Timeline) -> str:
    rows = [
        [
            _td_name(r.id, "id"),
            _td_name(r.model or "—"),
            _td(_opt(r.latency_ms, ms), "n"),
            _td(_opt(r.ttft_ms, ms), "n"),
            _td(r.attempts, "n"),
            _td(usd(r.cost_usd), "n"),
        ]
        for r in t.slowest
    ]
    head = ["job id", "model", "latency", "TTFT", "attempts", "cost"]
    sub = f"the {len(rows)} slowest successful jobs"
    return _table("Slowest jobs", sub, head, rows, "slowest") if rows else ""


def _failed_table(t: Timeline) -> str:
    if not t.failed_total:
        return ""
    rows = [_failed_row(r) for r in t.failed]
    shown = f"the first {len(rows)} of {t.failed_total:,}" if t.failed_total > len(rows) else "all"
    head = ["job id", "model", "error", "attempts", "message"]
    return _table("Failed jobs", f"{shown} failed jobs", head, rows, "failed")


def _failed_row(r: JobRow) -> list[str]:
    return [
        _td_name(r.id, "id"),
        _td_name(r.model or "—"),
        _td(r.error_type or "other"),
        _td(r.attempts, "n"),
        _td(r.message or "", "msg"),
    ]


def _notes(d: dict[str, Any]) -> str:
    notes = list(d["notes"])
    if d["unpriced_models"]:
        notes.append("no price known for: " + ", ".join(d["unpriced_models"]))
    if d["invalid_lines"]:
        notes.append(f"{len(d['invalid_lines'])} invalid input line(s) skipped")
    if not notes:
        return ""
    items = "".join(f"<li>{esc(n)}</li>" for n in notes)
    return f'<section data-table="notes"><h2>Notes</h2><ul class="notes">{items}</ul></section>'
