"""The command line: parse options, build a config, call the library, map errors to exit codes.

Only typer is imported at module level, so ``llmbatch --help`` stays fast.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from typer.core import TyperGroup

from llmbatch._cli import budget as b
from llmbatch._cli import options as o
from llmbatch._cli.cache import cache_app
from llmbatch._cli.common import _configured, _console, _err, _flags, _guard

__all__ = ["_configured", "_console", "_err", "_guard", "app", "main"]


class _Group(TyperGroup):
    """``--ray`` takes an optional ADDRESS: bare, it means ``local`` (click has no such option)."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        return super().parse_args(ctx, _ray_address(args))


def _ray_address(args: list[str]) -> list[str]:
    out = []
    for i, arg in enumerate(args):
        out.append(arg)
        if arg == "--ray":
            nxt = args[i + 1] if i + 1 < len(args) else None
            if nxt is None or not re.fullmatch(r"auto|local|[a-z]+://\S+|[\w.\-]+:\d+", nxt):
                out.append("local")
        if arg == "--":
            out.extend(args[i + 1 :])
            break
    return out


app = typer.Typer(
    cls=_Group,
    name="llmbatch",
    help="Run JSONL files of LLM requests fast, safely and cheaply.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _print_version(value: bool) -> None:
    if value:
        from llmbatch import __version__

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


@app.command()
def run(
    jobs: o.JobsArg,
    output: o.OutputOpt = None,
    model: o.ModelOpt = None,
    fallback: o.FallbackOpt = None,
    concurrency: o.ConcurrencyOpt = None,
    rpm: o.RpmOpt = None,
    tpm: o.TpmOpt = None,
    max_attempts: o.MaxAttemptsOpt = None,
    timeout: o.TimeoutOpt = None,
    max_cost: o.MaxCostOpt = None,
    max_total_tokens: o.MaxTotalTokensOpt = None,
    schema: o.SchemaOpt = None,
    repair_attempts: o.RepairAttemptsOpt = None,
    template: o.TemplateOpt = None,
    template_file: o.TemplateFileOpt = None,
    system: o.SystemOpt = None,
    max_tokens: o.MaxTokensOpt = None,
    temperature: o.TemperatureOpt = None,
    report: o.ReportOpt = None,
    html: o.HtmlOpt = None,
    fresh: o.FreshOpt = None,
    retry_failed: o.RetryFailedOpt = None,
    skip_invalid: o.SkipInvalidOpt = None,
    quiet: o.QuietOpt = None,
    provider: o.ProviderOpt = None,
    mode: o.ModeOpt = None,
    batch_deadline: o.BatchDeadlineOpt = None,
    api: o.ApiOpt = None,
    service_tier: o.ServiceTierOpt = None,
    limit: o.LimitOpt = None,
    include_input: o.IncludeInputOpt = None,
    id_column: o.IdColumnOpt = None,
    prompt_column: o.PromptColumnOpt = None,
    include_columns: o.IncludeColumnsOpt = None,
    npy: o.NpyOpt = None,
    dry_run: o.DryRunOpt = False,
    budget_per_hour: o.BudgetPerHour = None,
    budget_per_day: o.BudgetPerDay = None,
    tokens_per_hour: o.TokensPerHour = None,
    tokens_per_day: o.TokensPerDay = None,
    budget_scope: o.BudgetScope = None,
    ledger: o.Ledger = None,
    wait_for_budget: o.WaitForBudget = None,
    shared: o.Shared = None,
    shard: o.Shard = None,
    cache: o.CacheOpt = None,
    no_cache: o.NoCacheOpt = None,
    prompt_cache: o.PromptCacheOpt = None,
    log_json: o.LogJsonOpt = None,
    log_prompts: o.LogPromptsOpt = None,
    otlp: o.OtlpOpt = None,
    ray: o.RayOpt = None,
    ray_workers: o.RayWorkersOpt = None,
    config: o.ConfigOpt = None,
) -> None:
    """Run a JSONL file of LLM requests; write one result line per job."""
    flags = _flags(locals(), skip={"jobs", "config", "ray", "ray_workers"})

    def go() -> int:
        from llmbatch._cli.run import _run

        if ray_workers is not None and ray is None:
            from llmbatch._core.exceptions import UsageError

            raise UsageError("--ray-workers goes with --ray")
        return _run(jobs, flags, config, ray=ray, ray_workers=ray_workers)

    raise typer.Exit(_guard(go))


@app.command()
def embed(
    jobs: o.JobsArg,
    output: o.EmbedOutputOpt = None,
    model: o.ModelOpt = None,
    dimensions: o.DimensionsOpt = None,
    inputs_per_request: o.InputsPerRequestOpt = None,
    npy: o.NpyOpt = None,
    mode: o.ModeOpt = None,
    batch_deadline: o.BatchDeadlineOpt = None,
    concurrency: o.ConcurrencyOpt = None,
    rpm: o.RpmOpt = None,
    tpm: o.TpmOpt = None,
    max_attempts: o.MaxAttemptsOpt = None,
    timeout: o.TimeoutOpt = None,
    max_cost: o.MaxCostOpt = None,
    max_total_tokens: o.MaxTotalTokensOpt = None,
    report: o.ReportOpt = None,
    fresh: o.FreshOpt = None,
    retry_failed: o.RetryFailedOpt = None,
    skip_invalid: o.SkipInvalidOpt = None,
    quiet: o.QuietOpt = None,
    provider: o.ProviderOpt = None,
    id_column: o.IdColumnOpt = None,
    prompt_column: o.PromptColumnOpt = None,
    include_columns: o.IncludeColumnsOpt = None,
    cache: o.CacheOpt = None,
    no_cache: o.NoCacheOpt = None,
    log_json: o.LogJsonOpt = None,
    dry_run: o.DryRunOpt = False,
    config: o.ConfigOpt = None,
) -> None:
    """Embed the texts of a JSONL/Parquet/CSV/hf:// file: one vector per input."""
    flags = _flags(locals(), skip={"jobs", "config"})
    flags["embed"] = True

    def go() -> int:
        from llmbatch._cli.run import _run

        return _run(jobs, flags, config)

    raise typer.Exit(_guard(go))


@app.command()
def validate(
    jobs: o.JobsArg,
    model: o.ModelOpt = None,
    template: o.TemplateOpt = None,
    template_file: o.TemplateFileOpt = None,
    provider: o.ProviderOpt = None,
    config: o.ConfigOpt = None,
) -> None:
    """Check every line, print problems as PATH:LINE: message. Sends nothing."""

    def go() -> int:
        from llmbatch._api.checks import plan_file

        flags = {
            "model": model,
            "template": template,
            "template_file": template_file,
            "provider": provider,
            "output": "-",  # validate reads no output
        }
        plan = plan_file(jobs, flags, config)
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
    jobs: o.JobsArg,
    model: o.ModelOpt = None,
    output: Annotated[
        str | None, typer.Option("-o", "--output", help="Results file to count as already done.")
    ] = None,
    template: o.TemplateOpt = None,
    template_file: o.TemplateFileOpt = None,
    max_tokens: o.MaxTokensOpt = None,
    provider: o.ProviderOpt = None,
    inputs_per_request: o.InputsPerRequestOpt = None,
    as_json: o.JsonOpt = False,
    config: o.ConfigOpt = None,
) -> None:
    """Count jobs (or embedding inputs and requests), estimate tokens and cost. Sends nothing."""

    def go() -> int:
        from llmbatch._api.checks import estimate_file, render_estimate

        flags = {
            "model": model,
            "template": template,
            "template_file": template_file,
            "max_tokens": max_tokens,
            "provider": provider,
            "inputs_per_request": inputs_per_request,
            # Jobs from a pipe have no results file beside them to count as done.
            "output": output if output is not None else ("-" if _is_pipe(jobs) else None),
        }
        est = estimate_file(jobs, flags, config)
        if not as_json:
            from llmbatch._api.checks import render_problems

            render_problems(est, sys.stderr)
        if as_json:
            import orjson

            sys.stdout.write(orjson.dumps(est, option=orjson.OPT_INDENT_2).decode() + "\n")
        else:
            render_estimate(est, _console())
        return 0

    raise typer.Exit(_guard(go))


def _is_pipe(jobs: str) -> bool:
    from llmbatch._io.paths import file_kind

    return jobs == "-" or file_kind(Path(jobs)) == "special"


@app.command("report")
def report_cmd(
    results: Annotated[str, typer.Argument(metavar="RESULTS", help="A results JSONL file.")],
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the JSON report to stdout.")
    ] = False,
    html: o.HtmlOpt = None,
) -> None:
    """Re-render the cost/latency report from a results file."""

    def go() -> int:
        from llmbatch._cli.show import _render_history, _write_results_html
        from llmbatch._report.report import report_from_results

        rep = report_from_results(Path(results))
        if html is not None:
            _write_results_html(Path(results), Path(html), rep)
        if as_json:
            sys.stdout.buffer.write(rep.to_json())
            sys.stdout.flush()
        else:
            from llmbatch._report.render import render_report

            render_report(rep, _console())
            from llmbatch._io.history import read_history

            history = read_history(Path(results))
            if history:
                _render_history(history)
        for problem in rep.line_problems:
            sys.stderr.write(problem + "\n")
        if rep.line_problems:
            n = len(rep.malformed_lines or ())
            _err(f"{n} line(s) could not be counted in full; the totals above are partial")
            return 2
        return 0

    raise typer.Exit(_guard(go))


@app.command()
def models(
    provider: Annotated[
        str | None, typer.Option("--provider", help="Only this genai-prices provider id.")
    ] = None,
    as_json: o.JsonOpt = False,
    config: o.ConfigOpt = None,
) -> None:
    """List known models with their prices (USD per million tokens)."""

    def go() -> int:
        from llmbatch._cli.show import model_rows, print_models_json, print_models_table

        rows = model_rows(provider, config)
        if as_json:
            print_models_json(rows)
        else:
            print_models_table(rows)
        return 0

    raise typer.Exit(_guard(go))


from llmbatch._cli.batch import batch_app  # noqa: E402  (the batch commands register after app exists)

app.add_typer(batch_app, name="batch")
app.add_typer(b.budget_app, name="budget")
app.command("merge")(b.merge)
app.add_typer(cache_app)


def main() -> NoReturn:
    app()
    raise SystemExit(0)  # pragma: no cover  (typer exits itself)


if __name__ == "__main__":  # pragma: no cover
    main()
