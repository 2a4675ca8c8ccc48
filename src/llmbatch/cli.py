"""The command line: parse options, build a config, call the library, map errors to exit codes.

Only typer is imported at module level, so ``llmbatch --help`` stays fast.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer

from . import _cli_budget as o
from ._cli_cache import cache_app

if TYPE_CHECKING:
    from rich.console import Console

    from ._config import RunConfig
    from ._engine import Engine
    from ._report import RunReport

app = typer.Typer(
    name="llmbatch",
    help="Run JSONL files of LLM requests fast, safely and cheaply.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _print_version(value: bool) -> None:
    if value:
        from . import __version__

        sys.stdout.write(f"llmbatch {__version__}\n")
        raise typer.Exit(0)


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", help="Print the version and exit.", callback=_print_version, is_eager=True
        ),
    ] = False,
) -> None:
    """Run JSONL files of LLM requests fast, safely and cheaply."""
    _tolerant_streams()


def _tolerant_streams() -> None:
    """Print what the terminal's encoding cannot show as ``?`` instead of crashing.

    ``PYTHONIOENCODING=ascii`` or a C locale cannot encode "·" or "≥"; a message
    with a replaced character beats an internal error. Result lines are bytes
    and unaffected.
    """
    import io

    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper) and stream.errors == "strict":
            stream.reconfigure(errors="replace")


T = TypeVar("T")

JobsArg = Annotated[str, typer.Argument(metavar="JOBS", help="JSONL job file, or - for stdin.")]
ConfigOpt = Annotated[
    Path | None, typer.Option("--config", help="Config file [default: ./llmbatch.toml if present].")
]
ModelOpt = Annotated[
    str | None,
    typer.Option(
        "-m", "--model", help="Default model: PROVIDER:MODEL or a bare claude-*/gpt-* name."
    ),
]
TemplateOpt = Annotated[
    str | None, typer.Option("--template", help="Build prompts from records: {field}, {a.b}.")
]
TemplateFileOpt = Annotated[
    str | None, typer.Option("--template-file", help="Read the --template text from a file.")
]
HtmlOpt = Annotated[
    str | None,
    typer.Option("--html", help="Write the report as a self-contained HTML page with charts."),
]
ProviderOpt = Annotated[
    str | None,
    typer.Option(
        "--provider", help="Send every job to this provider (e.g. sim), whatever its model."
    ),
]


def _console(stderr: bool = False) -> Console:
    """A rich console; off a terminal (cron, CI, pipes) wide enough for the tables."""
    from rich.console import Console

    console = Console(stderr=stderr)
    if not console.is_terminal:
        console.width = max(console.width, 120)
    return console


def _err(message: str) -> None:
    sys.stderr.write(f"llmbatch: {message}\n")
    sys.stderr.flush()


def _guard(fn: Callable[[], T]) -> T:
    """The error boundary: expected errors become one message and an exit code."""
    from ._exceptions import (
        InputError,
        LLMBatchError,
        OutputLocked,
        ResumeConflict,
        SharedStoreError,
        UsageError,
    )

    try:
        return fn()
    except InputError as exc:
        for problem in exc.problems:
            sys.stderr.write(f"{problem}\n")
        _err(str(exc))
        raise typer.Exit(2) from None
    except (UsageError, ResumeConflict, OutputLocked) as exc:
        _err(str(exc))
        raise typer.Exit(2) from None
    except SharedStoreError as exc:
        _err(f"{exc} (budgets fail closed; nothing more was sent, resumable)")
        raise typer.Exit(5) from None
    except LLMBatchError as exc:
        _err(str(exc))
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    except (typer.Exit, SystemExit):
        raise
    except Exception as exc:
        if os.environ.get("LLMBATCH_DEBUG") == "1":
            raise
        _err(
            f"internal error: {type(exc).__name__}: {exc} "
            "(set LLMBATCH_DEBUG=1 for the traceback, and please report it)"
        )
        raise typer.Exit(70) from None


@contextmanager
def _configured(jobs: str, flags: dict[str, Any], config_path: Path | None) -> Iterator[RunConfig]:
    """Flags over llmbatch.toml, for JOBS (``-`` is spooled to a temporary file, removed after)."""
    from ._config import build_run_config, load_config
    from ._jobs import spool_stdin, spooled_jobs_source

    file_config = load_config(config_path)
    # A pipe (`-`, `<(cmd)`, /dev/stdin) can be read once: it is spooled, and read twice.
    source = spooled_jobs_source(jobs)
    stdin = source is not None
    if source is not None:
        path, display = spool_stdin(source), "<stdin>" if jobs == "-" else jobs
    else:
        path, display = Path(jobs), jobs
    try:
        yield build_run_config(path, flags, file_config, jobs_display=display, stdin=stdin)
    finally:
        if stdin:
            path.unlink(missing_ok=True)


@app.command()
def run(
    jobs: JobsArg,
    output: Annotated[
        str | None,
        typer.Option(
            "-o", "--output", help="Results JSONL (- = stdout) [default: JOBS.results.jsonl]."
        ),
    ] = None,
    model: ModelOpt = None,
    fallback: Annotated[
        list[str] | None,
        typer.Option("--fallback", help="Model to try when one keeps failing (repeatable)."),
    ] = None,
    concurrency: Annotated[
        int | None, typer.Option("-c", "--concurrency", help="Requests in flight [default: 16].")
    ] = None,
    rpm: Annotated[
        float | None, typer.Option("--rpm", help="Requests per minute per model.")
    ] = None,
    tpm: Annotated[float | None, typer.Option("--tpm", help="Tokens per minute per model.")] = None,
    max_attempts: Annotated[
        int | None, typer.Option("--max-attempts", help="Attempts per job and model [default: 6].")
    ] = None,
    timeout: Annotated[
        float | None, typer.Option("--timeout", help="Seconds per attempt [default: 300].")
    ] = None,
    max_cost: Annotated[
        float | None, typer.Option("--max-cost", help="Budget cap in USD, over all runs on OUTPUT.")
    ] = None,
    max_total_tokens: Annotated[
        int | None, typer.Option("--max-total-tokens", help="Token cap, over all runs on OUTPUT.")
    ] = None,
    schema: Annotated[
        str | None, typer.Option("--schema", help="JSON Schema the output must satisfy.")
    ] = None,
    repair_attempts: Annotated[
        int | None,
        typer.Option(
            "--repair-attempts", help="Re-asks when output fails the schema [default: 2]."
        ),
    ] = None,
    template: TemplateOpt = None,
    template_file: TemplateFileOpt = None,
    system: Annotated[
        str | None, typer.Option("--system", help="System prompt for jobs that give none.")
    ] = None,
    max_tokens: Annotated[
        int | None, typer.Option("--max-tokens", help="Default max output tokens [default: 1024].")
    ] = None,
    temperature: Annotated[
        float | None, typer.Option("--temperature", help="Default temperature (OpenAI only).")
    ] = None,
    report: Annotated[
        str | None, typer.Option("--report", help="Write the run report as JSON here.")
    ] = None,
    html: HtmlOpt = None,
    fresh: Annotated[
        bool | None, typer.Option("--fresh", help="Back up an existing output and start over.")
    ] = None,
    retry_failed: Annotated[
        bool | None, typer.Option("--retry-failed", help="On resume, run failed jobs again.")
    ] = None,
    skip_invalid: Annotated[
        bool | None,
        typer.Option("--skip-invalid", help="Run the valid lines despite invalid ones."),
    ] = None,
    quiet: Annotated[
        bool | None, typer.Option("--quiet", help="No progress, no report table.")
    ] = None,
    provider: ProviderOpt = None,
    mode: Annotated[
        str,
        typer.Option("--mode", help="online | batch (Batch APIs, then the rest online) | auto."),
    ] = "online",
    batch_deadline: Annotated[
        str | None,
        typer.Option("--batch-deadline", help="auto: cancel open batches after this (e.g. 2h)."),
    ] = None,
    limit: Annotated[
        int | None,
        typer.Option("--limit", help="Run only the first N jobs not yet done (try a few first)."),
    ] = None,
    include_input: Annotated[
        bool | None,
        typer.Option("--include-input", help="Result lines carry the job's prompt or record."),
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Print the request bodies that would be sent (keys redacted); send nothing.",
        ),
    ] = False,
    budget_per_hour: o.BudgetPerHour = None,
    budget_per_day: o.BudgetPerDay = None,
    tokens_per_hour: o.TokensPerHour = None,
    tokens_per_day: o.TokensPerDay = None,
    budget_scope: o.BudgetScope = None,
    ledger: o.Ledger = None,
    wait_for_budget: o.WaitForBudget = None,
    shared: o.Shared = None,
    shard: o.Shard = None,
    cache: Annotated[
        str | None,
        typer.Option(
            "--cache", help="Response cache file [default: $XDG_CACHE_HOME/llmbatch/cache.sqlite]."
        ),
    ] = None,
    no_cache: Annotated[
        bool | None, typer.Option("--no-cache", help="Neither read nor fill the response cache.")
    ] = None,
    log_json: Annotated[
        str | None, typer.Option("--log-json", help="Write events as JSON lines (- = stderr).")
    ] = None,
    log_prompts: Annotated[
        bool | None, typer.Option("--log-prompts", help="Put the messages sent in --log-json.")
    ] = None,
    otlp: Annotated[
        str | None, typer.Option("--otlp", help="Send OpenTelemetry spans to this OTLP/HTTP URL.")
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Run a JSONL file of LLM requests; write one result line per job."""
    flags: dict[str, Any] = {
        "output": output,
        "model": model,
        "fallback": fallback,
        "concurrency": concurrency,
        "rpm": rpm,
        "tpm": tpm,
        "max_attempts": max_attempts,
        "timeout": timeout,
        "max_cost": max_cost,
        "max_total_tokens": max_total_tokens,
        "schema": schema,
        "repair_attempts": repair_attempts,
        "template": template,
        "template_file": template_file,
        "system": system,
        "max_tokens": max_tokens,
        "temperature": temperature,
        "report": report,
        "html": html,
        "fresh": fresh or None,
        "retry_failed": retry_failed or None,
        "skip_invalid": skip_invalid or None,
        "quiet": quiet or None,
        "provider": provider,
        "limit": limit,
        "include_input": include_input or None,
        "dry_run": dry_run or None,
        "budget_per_hour": budget_per_hour,
        "budget_per_day": budget_per_day,
        "tokens_per_hour": tokens_per_hour,
        "tokens_per_day": tokens_per_day,
        "budget_scope": budget_scope,
        "ledger": ledger,
        "wait_for_budget": wait_for_budget or None,
        "shared": shared,
        "shard": shard,
        "cache": cache,
        "no_cache": no_cache or None,
        "log_json": log_json,
        "log_prompts": log_prompts or None,
        "otlp": otlp,
    }
    code = _guard(lambda: _run(jobs, flags, config, mode, batch_deadline))
    raise typer.Exit(code)


def _run(
    jobs: str,
    flags: dict[str, Any],
    config_path: Path | None,
    mode: str = "online",
    batch_deadline: str | None = None,
) -> int:
    import anyio

    from ._engine import Engine, exit_code_for
    from ._progress import make_progress

    with _configured(jobs, flags, config_path) as cfg:
        if cfg.dry_run:
            from ._dryrun import print_dry_run

            return print_dry_run(cfg, sys.stdout.buffer, sys.stderr)
        if mode != "online" or batch_deadline is not None:
            from ._cli_batch import run_mode

            return run_mode(cfg, mode, batch_deadline)
        from ._batch_run import refuse_if_batches_open

        refuse_if_batches_open(cfg.output)
        engine = Engine(cfg, progress=make_progress(cfg.quiet))
        report = anyio.run(engine.run)
    if cfg.report is not None:
        try:
            cfg.report.parent.mkdir(parents=True, exist_ok=True)
            cfg.report.write_bytes(report.to_json())
        except OSError as exc:
            _err(f"could not write the report to {cfg.report}: {exc.strerror or exc}")
    if engine.fatal and cfg.quiet:
        _err(engine.fatal)  # otherwise the report shows it
    if not cfg.quiet:
        console = _console(stderr=True)
        console.print()
        report.render(console)
    elif not engine.fatal and (report.failed or report.failed_earlier):
        where = report.output or "the output"
        if report.failed:
            _err(f"{report.failed} job(s) failed; see error fields in {where}")
        if report.failed_earlier:
            _err(
                f"{report.failed_earlier} job(s) failed in an earlier run on {where} and were "
                "not retried (exit 1); --retry-failed runs them again"
            )
    last_plan = engine.planner.last_plan
    if last_plan is not None and last_plan.held_back:
        _err(f"--limit {cfg.limit}: {last_plan.held_back} job(s) left for a later run")
    if report.stopped_by == "output_closed":
        _err("the output pipe was closed; stopped (jobs left unsent)")
    if report.stopped_by == "budget":
        _err("stopped by the budget cap; jobs left unsent. Rerun with a higher cap to continue.")
    if cfg.html is not None:
        _write_run_html(cfg, cfg.html, report, engine)
    if report.stopped_by == "budget_window":
        _err(f"a rolling budget window is full; run again after {report.resets_at or 'it frees'}")
    return exit_code_for(report, engine.stop_signal)


def _write_run_html(cfg: RunConfig, path: Path, report: RunReport, engine: Engine) -> None:
    """The run's HTML report, from its event stream."""
    from ._html import write_html_report

    write_html_report(path, report, engine.timeline.timeline())
    if not cfg.quiet:
        sys.stderr.write(f"llmbatch: HTML report written to {path}\n")


@app.command()
def validate(
    jobs: JobsArg,
    model: ModelOpt = None,
    template: TemplateOpt = None,
    template_file: TemplateFileOpt = None,
    provider: ProviderOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Check every line, print problems as PATH:LINE: message. Sends nothing."""

    def go() -> int:
        from ._plan import Planner

        flags = {
            "model": model,
            "template": template,
            "template_file": template_file,
            "provider": provider,
            "output": "-",  # validate reads no output
        }
        with _configured(jobs, flags, config) as cfg:
            plan = Planner(cfg).plan()
        for problem in plan.problems:
            sys.stdout.write(f"{problem}\n")
        lines = plan.total_valid + len(plan.invalid_lines)
        if plan.problems:
            _err(f"{len(plan.invalid_lines)} of {lines} lines invalid")
            return 2
        sys.stderr.write(f"llmbatch: {plan.total_valid} jobs, all valid\n")
        return 0

    raise typer.Exit(_guard(go))


@app.command()
def estimate(
    jobs: JobsArg,
    model: ModelOpt = None,
    output: Annotated[
        str | None, typer.Option("-o", "--output", help="Results file to count as already done.")
    ] = None,
    template: TemplateOpt = None,
    template_file: TemplateFileOpt = None,
    max_tokens: Annotated[
        int | None, typer.Option("--max-tokens", help="Default max output tokens [default: 1024].")
    ] = None,
    provider: ProviderOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON to stdout.")] = False,
    config: ConfigOpt = None,
) -> None:
    """Count jobs, estimate tokens and worst-case cost. Sends nothing."""

    def go() -> int:
        from ._estimate import estimate_jobs, render_estimate

        flags = {
            "model": model,
            "template": template,
            "template_file": template_file,
            "max_tokens": max_tokens,
            "provider": provider,
            # Jobs from a pipe have no results file beside them to count as done.
            "output": output if output is not None else ("-" if _is_pipe(jobs) else None),
        }
        with _configured(jobs, flags, config) as cfg:
            est = estimate_jobs(cfg)
        if not as_json:
            from ._estimate import render_problems

            render_problems(est, sys.stderr)
        if as_json:
            import orjson

            sys.stdout.write(orjson.dumps(est, option=orjson.OPT_INDENT_2).decode() + "\n")
        else:
            render_estimate(est, _console())
        return 0

    raise typer.Exit(_guard(go))


def _is_pipe(jobs: str) -> bool:
    from ._paths import file_kind

    return jobs == "-" or file_kind(Path(jobs)) == "special"


@app.command("report")
def report_cmd(
    results: Annotated[str, typer.Argument(metavar="RESULTS", help="A results JSONL file.")],
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the JSON report to stdout.")
    ] = False,
    html: HtmlOpt = None,
) -> None:
    """Re-render the cost/latency report from a results file."""

    def go() -> int:
        from ._report import report_from_results

        rep = report_from_results(Path(results))
        if html is not None:
            _write_results_html(Path(results), Path(html), rep)
        if as_json:
            sys.stdout.buffer.write(rep.to_json())
            sys.stdout.flush()
        else:
            rep.render(_console())
            from ._history import read_history

            history = read_history(Path(results))
            if history:
                _render_history(history)
        return 0

    raise typer.Exit(_guard(go))


def _write_results_html(results: Path, path: Path, rep: RunReport) -> None:
    from ._exceptions import UsageError
    from ._html import write_html_report
    from ._timeline import timeline_from_results

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
    _console().print(table)


@app.command()
def models(
    provider: Annotated[
        str | None, typer.Option("--provider", help="Only this genai-prices provider id.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON to stdout.")] = False,
    config: ConfigOpt = None,
) -> None:
    """List known models with their prices (USD per million tokens)."""

    def go() -> int:
        from ._config import load_config
        from ._pricing import known_models

        file_config = load_config(config)
        every = known_models()
        rows = [(p, m, price) for p, m, price in every if provider is None or p == provider]
        for spec, price in file_config.prices.items():
            p, _, m = spec.partition(":")
            if provider is None or p == provider:
                rows.append((p, m, price))
        if provider is not None and not rows:
            from ._exceptions import UsageError

            known = sorted(
                {p for p, _, _ in every} | {s.partition(":")[0] for s in file_config.prices}
            )
            raise UsageError(
                f"--provider {provider!r}: no such provider (known: {', '.join(known)})"
            )
        if as_json:
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
            return 0
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
        _console().print(table)
        return 0

    raise typer.Exit(_guard(go))


from ._cli_batch import batch_app  # noqa: E402  (the batch commands register after app exists)

app.add_typer(batch_app, name="batch")
app.add_typer(o.budget_app, name="budget")
app.command("merge")(o.merge)
app.add_typer(cache_app)


def main() -> NoReturn:
    app()
    raise SystemExit(0)  # pragma: no cover  (typer exits itself)


if __name__ == "__main__":  # pragma: no cover
    main()
