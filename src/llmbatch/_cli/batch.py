"""``llmbatch batch submit|status|fetch|cancel|forget``: the provider Batch APIs from the shell.

Thin, as the rest of the CLI: parse options, build a RunConfig, call ``_batch*``,
render, exit. These commands (each one step on an output's batches, no engine run but
``fetch``'s repairs) call ``_batch`` directly: the one place the CLI does (pyproject's
import-linter contract "cli-over-api" names each import); ``run --mode batch|auto``
goes through ``llmbatch.run_file`` as every run does.

Exit codes: 0 done, 1 some failed, 2 usage/input (nothing sent), 3 budget left jobs
unsubmitted (or repairs unmade), 4 still in progress (run again later), 6 jobs back to
pending (submit them again).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from llmbatch._cli.batch_render import (
    PENDING_EXIT,
    pending_note,
    render_rows,
    say_fetched,
    say_submitted,
)
from llmbatch._cli.common import _flags
from llmbatch._cli.options import ApiOpt, ConfigOpt, JobsArg, JsonOpt
from llmbatch._core.loop import run_loop

if TYPE_CHECKING:
    from llmbatch._batch.context import BatchContext
    from llmbatch._batch.status import BatchRow
    from llmbatch._config.settings import RunConfig

batch_app = typer.Typer(
    name="batch",
    help="Provider Batch APIs: half the price, results within 24 hours.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

OutputArg = Annotated[str, typer.Argument(metavar="OUTPUT", help="The results JSONL file.")]


def output_config(output: str, config_path: Path | None, **flags: object) -> RunConfig:
    """A RunConfig for commands that take only OUTPUT (providers and prices from the config)."""
    from llmbatch._config.settings import build_run_config, load_config

    merged = {"output": output, **flags}
    return build_run_config(Path(os.devnull), merged, load_config(config_path))


@batch_app.command()
def submit(
    jobs: JobsArg,
    output: Annotated[
        str | None,
        typer.Option("-o", "--output", help="Results JSONL [default: JOBS.results.jsonl]."),
    ] = None,
    model: Annotated[str | None, typer.Option("-m", "--model", help="Default model.")] = None,
    provider: Annotated[str | None, typer.Option("--provider", help="Send every job here.")] = None,
    template: Annotated[str | None, typer.Option("--template", help="Prompt template.")] = None,
    template_file: Annotated[
        str | None, typer.Option("--template-file", help="Read the template from a file.")
    ] = None,
    system: Annotated[str | None, typer.Option("--system", help="Default system prompt.")] = None,
    max_tokens: Annotated[
        int | None, typer.Option("--max-tokens", help="Default max tokens.")
    ] = None,
    temperature: Annotated[
        float | None, typer.Option("--temperature", help="Default temperature.")
    ] = None,
    schema: Annotated[str | None, typer.Option("--schema", help="JSON Schema file.")] = None,
    max_cost: Annotated[
        float | None, typer.Option("--max-cost", help="Budget cap in USD, over all runs on OUTPUT.")
    ] = None,
    max_total_tokens: Annotated[
        int | None, typer.Option("--max-total-tokens", help="Token cap over all runs on OUTPUT.")
    ] = None,
    skip_invalid: Annotated[
        bool, typer.Option("--skip-invalid", help="Submit the valid lines despite invalid ones.")
    ] = False,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", min=1, help="Requests per batch at most.")
    ] = None,
    api: ApiOpt = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """Check the jobs as `run` does, then submit those not done to the Batch APIs."""
    flags = _flags(locals(), skip={"jobs", "batch_size", "as_json", "config"})

    def go() -> int:
        from llmbatch._batch.submit import submit as do_submit
        from llmbatch._cli.common import _configured

        with _configured(jobs, flags, config) as cfg:
            if _embeds(cfg):
                from llmbatch._batch.embed_cmds import submit_embed_file

                rep = run_loop(lambda: submit_embed_file(cfg, batch_size=batch_size))
            else:
                rep = run_loop(lambda: do_submit(cfg, batch_size=batch_size))
        say_submitted(rep, as_json)
        return rep.exit_code

    from llmbatch._cli.common import _guard

    raise typer.Exit(_guard(go))


@batch_app.command()
def status(output: OutputArg, as_json: JsonOpt = False, config: ConfigOpt = None) -> None:
    """One row per batch, and the jobs back to pending. Exit 0 when all is done,
    4 while any batch is in progress, 6 when jobs wait to be submitted again."""

    def go() -> int:
        from llmbatch._batch.context import batch_context
        from llmbatch._batch.status import batch_status
        from llmbatch._cli.common import _err

        cfg = output_config(output, config)

        async def main() -> tuple[list[BatchRow], int, list[str]]:
            async with batch_context(cfg, write=False) as ctx:
                if not ctx.state.exists:
                    _err(f"no batches recorded for {output}")
                return await batch_status(ctx), _pending(ctx), ctx.notes

        rows, pending, notes = run_loop(main)
        render_rows(rows, as_json, pending)
        for note in notes:
            _err(note)
        if pending:
            _err(pending_note(pending, output))
        if any(r.in_progress for r in rows):
            return 4
        return PENDING_EXIT if pending else 0

    from llmbatch._cli.common import _guard

    raise typer.Exit(_guard(go))


def _embeds(cfg: RunConfig) -> bool:
    """Whether a jobs file holds embedding lines (``input``, no prompt)."""
    from llmbatch._batch.embed_cmds import embedding_lines

    return cfg.embed or embedding_lines(cfg)


def _embed_output(cfg: RunConfig) -> bool:
    """Whether an output's batches are embedding batches."""
    from llmbatch._batch.embed_cmds import is_embed_state
    from llmbatch._io.batch_state import BatchState

    assert cfg.output is not None
    return is_embed_state(BatchState.load(cfg.output))


def _pending(ctx: BatchContext) -> int:
    from llmbatch._batch.embed_cmds import is_embed_state, pending_lines, read_done
    from llmbatch._batch.status import pending_jobs

    if ctx.config.output is not None and is_embed_state(ctx.state):
        return pending_lines(ctx.state, read_done(ctx.config.output))
    return pending_jobs(ctx)


@batch_app.command()
def fetch(
    output: OutputArg,
    wait: Annotated[bool, typer.Option("--wait", help="Poll until no batch is open.")] = False,
    poll: Annotated[
        float, typer.Option("--poll", min=0.0, help="Seconds between polls with --wait.")
    ] = 60.0,
    max_attempts: Annotated[
        int | None,
        typer.Option("--max-attempts", min=1, help="Batch rounds per job [default: 6]."),
    ] = None,
    max_cost: Annotated[
        float | None,
        typer.Option("--max-cost", help="Cap for the online repairs [default: submit's]."),
    ] = None,
    max_total_tokens: Annotated[
        int | None,
        typer.Option("--max-total-tokens", help="Token cap, likewise [default: submit's]."),
    ] = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """Append one result line per job of every ended batch; repair schema misses online.
    Exit 0 all ok, 1 some failed, 3 budget, 4 while any batch is open."""

    def go() -> int:
        from llmbatch._batch.fetch import fetch as do_fetch

        caps = {"max_cost": max_cost, "max_total_tokens": max_total_tokens}
        cfg = output_config(output, config, **caps)
        if _embed_output(cfg):
            from llmbatch._batch.embed_cmds import fetch_embed_output

            rep = run_loop(lambda: fetch_embed_output(cfg, wait=wait, poll=poll))
        else:
            rep = run_loop(lambda: do_fetch(cfg, wait=wait, poll=poll, max_attempts=max_attempts))
        if as_json:
            import orjson

            sys.stdout.write(
                orjson.dumps(rep.to_dict(), option=orjson.OPT_INDENT_2).decode() + "\n"
            )
        say_fetched(rep, output)
        return rep.exit_code

    from llmbatch._cli.common import _guard

    raise typer.Exit(_guard(go))


@batch_app.command()
def cancel(output: OutputArg, as_json: JsonOpt = False, config: ConfigOpt = None) -> None:
    """Cancel every open batch; a later fetch keeps what finished."""

    def go() -> int:
        from llmbatch._batch.context import batch_context
        from llmbatch._batch.status import batch_cancel

        cfg = output_config(output, config)

        async def main() -> tuple[list[BatchRow], list[str]]:
            async with batch_context(cfg) as ctx:
                return await batch_cancel(ctx), ctx.notes

        rows, notes = run_loop(main)
        render_rows(rows, as_json)
        from llmbatch._cli.common import _err

        asked = sum(
            1 for r in rows if r.state not in ("lost", "not found", "not canceled (unproven)")
        )
        sys.stderr.write(f"llmbatch: asked to cancel {asked} batches; fetch keeps what finished\n")
        for note in notes:
            _err(note)
        return 0

    from llmbatch._cli.common import _guard

    raise typer.Exit(_guard(go))


@batch_app.command()
def forget(
    output: OutputArg,
    batch_id: Annotated[
        str, typer.Argument(metavar="BATCH_ID", help="The batch's id, as `batch status` shows it.")
    ],
    force: Annotated[
        bool, typer.Option("--force", help="Forget it even if the provider still knows it.")
    ] = False,
    config: ConfigOpt = None,
) -> None:
    """Forget a batch the provider no longer knows (deleted, past retention, another
    base URL): its jobs go back to pending. Exit 0, or 2 (nothing changed)."""

    def go() -> int:
        from llmbatch._batch.context import batch_context
        from llmbatch._batch.forget import forget as do_forget
        from llmbatch._cli.common import _err

        cfg = output_config(output, config)

        async def main() -> list[str]:
            async with batch_context(cfg) as ctx:
                await do_forget(ctx, batch_id, force=force)
                return ctx.notes

        for note in run_loop(main):
            _err(note)
        return 0

    from llmbatch._cli.common import _guard

    raise typer.Exit(_guard(go))
