"""Typer option types of the commands, as ``Annotated`` aliases.

Only typer at module level: cli.py imports this for every command, ``--help`` included.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

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
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON to stdout.")]
MaxTokensOpt = Annotated[
    int | None, typer.Option("--max-tokens", help="Default max output tokens [default: 1024].")
]

# `run` only.
OutputOpt = Annotated[
    str | None,
    typer.Option(
        "-o", "--output", help="Results JSONL (- = stdout) [default: JOBS.results.jsonl]."
    ),
]
FallbackOpt = Annotated[
    list[str] | None,
    typer.Option("--fallback", help="Model to try when one keeps failing (repeatable)."),
]
ConcurrencyOpt = Annotated[
    int | None, typer.Option("-c", "--concurrency", help="Requests in flight [default: 16].")
]
RpmOpt = Annotated[float | None, typer.Option("--rpm", help="Requests per minute per model.")]
TpmOpt = Annotated[float | None, typer.Option("--tpm", help="Tokens per minute per model.")]
MaxAttemptsOpt = Annotated[
    int | None, typer.Option("--max-attempts", help="Attempts per job and model [default: 6].")
]
TimeoutOpt = Annotated[
    float | None, typer.Option("--timeout", help="Seconds per attempt [default: 300].")
]
MaxCostOpt = Annotated[
    float | None, typer.Option("--max-cost", help="Budget cap in USD, over all runs on OUTPUT.")
]
MaxTotalTokensOpt = Annotated[
    int | None, typer.Option("--max-total-tokens", help="Token cap, over all runs on OUTPUT.")
]
SchemaOpt = Annotated[
    str | None, typer.Option("--schema", help="JSON Schema the output must satisfy.")
]
RepairAttemptsOpt = Annotated[
    int | None,
    typer.Option("--repair-attempts", help="Re-asks when output fails the schema [default: 2]."),
]
SystemOpt = Annotated[
    str | None, typer.Option("--system", help="System prompt for jobs that give none.")
]
TemperatureOpt = Annotated[
    float | None, typer.Option("--temperature", help="Default temperature (OpenAI only).")
]
ReportOpt = Annotated[
    str | None, typer.Option("--report", help="Write the run report as JSON here.")
]
FreshOpt = Annotated[
    bool | None, typer.Option("--fresh", help="Back up an existing output and start over.")
]
RetryFailedOpt = Annotated[
    bool | None, typer.Option("--retry-failed", help="On resume, run failed jobs again.")
]
SkipInvalidOpt = Annotated[
    bool | None,
    typer.Option("--skip-invalid", help="Run the valid lines despite invalid ones."),
]
QuietOpt = Annotated[bool | None, typer.Option("--quiet", help="No progress, no report table.")]
ModeOpt = Annotated[
    str | None,
    typer.Option(
        "--mode",
        help="online | batch (Batch APIs, then the rest online) | auto [default: online].",
    ),
]
BatchDeadlineOpt = Annotated[
    str | None,
    typer.Option("--batch-deadline", help="auto: cancel open batches after this (e.g. 2h)."),
]
ApiOpt = Annotated[
    str | None,
    typer.Option("--api", help="OpenAI/Azure endpoint: chat | responses [default: chat]."),
]
ServiceTierOpt = Annotated[
    str | None,
    typer.Option(
        "--service-tier",
        help="OpenAI/Azure service_tier: flex (cheaper, slower) | auto | default | priority.",
    ),
]
LimitOpt = Annotated[
    int | None,
    typer.Option("--limit", help="Run only the first N jobs not yet done (try a few first)."),
]
IncludeInputOpt = Annotated[
    bool | None,
    typer.Option("--include-input", help="Result lines carry the job's prompt or record."),
]
DryRunOpt = Annotated[
    bool,
    typer.Option(
        "--dry-run",
        help="Print the request bodies that would be sent (keys redacted); send nothing.",
    ),
]
CacheOpt = Annotated[
    str | None,
    typer.Option(
        "--cache", help="Response cache file [default: $XDG_CACHE_HOME/llmbatch/cache.sqlite]."
    ),
]
NoCacheOpt = Annotated[
    bool | None, typer.Option("--no-cache", help="Neither read nor fill the response cache.")
]
PromptCacheOpt = Annotated[
    str | None,
    typer.Option(
        "--prompt-cache",
        help="auto: mark and route shared prompt prefixes for the provider's cache; off: don't.",
        show_default="auto",
    ),
]
LogJsonOpt = Annotated[
    str | None, typer.Option("--log-json", help="Write events as JSON lines (- = stderr).")
]
LogPromptsOpt = Annotated[
    bool | None, typer.Option("--log-prompts", help="Put the messages sent in --log-json.")
]
OtlpOpt = Annotated[
    str | None, typer.Option("--otlp", help="Send OpenTelemetry spans to this OTLP/HTTP URL.")
]

# Rolling budgets and sharing (SPEC §10).
BudgetPerHour = Annotated[
    float | None, typer.Option("--budget-per-hour", help="USD per rolling hour, shared by runs.")
]
BudgetPerDay = Annotated[
    float | None, typer.Option("--budget-per-day", help="USD per rolling day, shared by runs.")
]
TokensPerHour = Annotated[
    int | None, typer.Option("--tokens-per-hour", help="Tokens per rolling hour, shared.")
]
TokensPerDay = Annotated[
    int | None, typer.Option("--tokens-per-day", help="Tokens per rolling day, shared.")
]
BudgetScope = Annotated[
    str | None, typer.Option("--budget-scope", help="Runs sharing a budget [default: default].")
]
Ledger = Annotated[
    str | None,
    typer.Option(
        "--ledger", help="Budget ledger [default: ~/.local/state/llmbatch/ledger.sqlite]."
    ),
]
WaitForBudget = Annotated[
    bool | None, typer.Option("--wait-for-budget", help="Wait for a full window to free.")
]
Shared = Annotated[
    str | None, typer.Option("--shared", help="Share limits and budgets: redis://HOST:PORT/DB.")
]
Shard = Annotated[
    str | None, typer.Option("--shard", help="Run shard I/N of the jobs (I from 0), or auto.")
]
IdColumnOpt = Annotated[
    str | None,
    typer.Option("--id-column", help="Parquet/CSV/hf:// jobs: the column holding each job's id."),
]
PromptColumnOpt = Annotated[
    str | None,
    typer.Option(
        "--prompt-column",
        "--input-column",
        help="Parquet/CSV/hf:// jobs: the column holding the prompt (embed: the text); "
        "--input-column is the same option.",
    ),
]
IncludeColumnsOpt = Annotated[
    str | None,
    typer.Option(
        "--include-columns",
        help="Parquet/CSV/hf:// jobs: columns (comma-separated) carried to the output's metadata.",
    ),
]
DimensionsOpt = Annotated[
    int | None,
    typer.Option("--dimensions", min=1, help="Embeddings: the vector size to ask for."),
]
EmbedOutputOpt = Annotated[
    str | None,
    typer.Option(
        "-o",
        "--output",
        help="Vectors: .parquet (streamed row groups) or JSONL [default: JOBS.vectors.parquet].",
    ),
]
NpyOpt = Annotated[
    str | None,
    typer.Option(
        "--npy",
        metavar="PATH",
        help="Embeddings: also PATH (.npy), a float32 matrix whose row i is the vector of "
        "the output's row i (its id, index, status: the output's line or row i; failed: NaN).",
    ),
]
InputsPerRequestOpt = Annotated[
    int | None,
    typer.Option(
        "--inputs-per-request",
        min=1,
        help="Embeddings: at most this many inputs a request [default: the provider's cap].",
    ),
]
RayOpt = Annotated[
    str | None,
    typer.Option(
        "--ray",
        metavar="[ADDRESS]",
        help="Run on Ray: no ADDRESS starts a local Ray; auto joins the running cluster; "
        "or ray://HOST:10001. Needs llmbatch[ray].",
    ),
]
RayWorkersOpt = Annotated[
    int | None,
    typer.Option("--ray-workers", min=1, help="Ray actors, one engine each (default: a CPU each)."),
]
