"""What ``llmbatch report`` and ``llmbatch models`` print: run history, model price tables."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmbatch._cli.common import _console

if TYPE_CHECKING:
    from llmbatch._core.pricing import Price
    from llmbatch._report.report import RunReport


def _write_results_html(results: Path, path: Path, rep: RunReport) -> None:
    from llmbatch._core.exceptions import UsageError
    from llmbatch._observe.timeline import timeline_from_results
    from llmbatch._report.html import write_html_report

    if path.resolve() == results.resolve():
        raise UsageError(f"--html {path} is the results file itself; write the page elsewhere")
    write_html_report(path, rep, timeline_from_results(results))
    sys.stderr.write(f"llmbatch: HTML report written to {path}\n")


def _render_history(history: list[dict[str, Any]]) -> None:
    import datetime

    from rich.table import Table

    table = Table(title="runs on this output", title_justify="left")
    for col in ("started", "wall", "done", "ok", "failed", "not run", "cost", "stopped by", "exit"):
        table.add_column(col)

    def num(value: Any) -> float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return float(value) if ok and 0 <= value < 1e12 else 0.0

    for h in history:
        started = datetime.datetime.fromtimestamp(num(h.get("started"))).strftime(
            "%Y-%m-%d %H:%M:%S"
        )
        table.add_row(
            started,
            f"{num(h.get('wall_s')):.1f} s",
            str(h.get("jobs_done", "")),
            str(h.get("ok", "")),
            str(h.get("failed", "")),
            str(h.get("not_run", "")),
            f"${num(h.get('cost_usd')):.6f}",
            str(h.get("stopped_by") or ""),
            str(h.get("exit_code", "")),
        )
    from llmbatch._report.render import print_whole

    print_whole(_console(), table)


def model_rows(provider: str | None, config: Path | None) -> list[tuple[str, str, Price]]:
    """Known models and the config's [prices], of one provider or all; unknown provider: error."""
    from llmbatch._config.settings import load_config
    from llmbatch._core.pricing import known_models

    file_config = load_config(config)
    if provider == "google":  # genai-prices' id of what llmbatch calls gemini
        provider = "gemini"
    every = known_models()
    rows = [(p, m, price) for p, m, price in every if provider is None or p == provider]
    for spec, price in file_config.prices.items():
        p, _, m = spec.partition(":")
        if provider is None or p == provider:
            rows.append((p, m, price))
    if provider is not None and not rows:
        from llmbatch._core.exceptions import UsageError

        known = sorted({p for p, _, _ in every} | {s.partition(":")[0] for s in file_config.prices})
        raise UsageError(f"--provider {provider!r}: no such provider (known: {', '.join(known)})")
    return rows


def print_models_json(rows: list[tuple[str, str, Price]]) -> None:
    import orjson

    data = [
        {
            "provider": p,
            "model": m,
            "input": price.input.base,
            "output": price.output.base,
            "cache_read": price.cache_read.base,
            "cache_write": price.cache_write.base,
            "source": price.source,
        }
        for p, m, price in rows
    ]
    sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")


def print_models_table(rows: list[tuple[str, str, Price]]) -> None:
    from rich.table import Table

    table = Table(title="Known models (USD per million tokens)", title_justify="left")
    for col in ("provider", "model", "input", "output", "cache read", "cache write"):
        table.add_column(col, justify="right" if col not in ("provider", "model") else "left")
    for p, m, price in rows:
        tiered = "*" if price.input.tiers else ""
        table.add_row(
            p,
            m,
            f"{price.input.base:g}{tiered}",
            f"{price.output.base:g}{tiered}",
            f"{price.cache_read.base:g}",
            f"{price.cache_write.base:g}",
        )
    from llmbatch._report.render import print_whole

    print_whole(_console(), table)
