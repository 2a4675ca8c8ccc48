"""``llmbatch budget status|reset`` (rolling budgets) and ``llmbatch merge`` (shard outputs)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

budget_app = typer.Typer(
    name="budget",
    help="Rolling budgets shared by runs: what is spent and held per window.",
    no_args_is_help=True,
    rich_markup_mode=None,
)

LedgerOpt = Annotated[
    Path | None,
    typer.Option("--ledger", help="Ledger file [default: $XDG_STATE_HOME/llmbatch/ledger.sqlite]."),
]
SharedOpt = Annotated[
    str | None, typer.Option("--shared", help="Use the ledger in Redis: redis://HOST:PORT/DB.")
]


def _guarded(fn: Callable[[], int]) -> int:
    from llmbatch._cli.common import _guard

    return _guard(fn)


@budget_app.command("status")
def status(
    scope: Annotated[
        str | None, typer.Option("--scope", help="Only this scope [default: every scope].")
    ] = None,
    ledger: LedgerOpt = None,
    shared: SharedOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON to stdout.")] = False,
) -> None:
    """Show spend and held room per scope over the last hour and the last day."""

    def go() -> int:
        rows = _status_rows(scope, ledger, shared)
        if as_json:
            import orjson

            sys.stdout.write(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode() + "\n")
            return 0
        from rich.table import Table

        from llmbatch._cli.common import _console

        table = Table(title="rolling budgets", title_justify="left")
        for col in ("scope", "window", "spent", "spent tokens", "held", "held tokens", "runs"):
            table.add_column(col, justify="left" if col in ("scope", "window") else "right")
        for r in rows:
            table.add_row(
                str(r["scope"]),
                str(r["window"]),
                f"${r['spent_usd']:.6f}",
                str(r["spent_tokens"]),
                f"${r['held_usd']:.6f}",
                str(r["held_tokens"]),
                str(r["runs"]),
            )
        if not rows:
            sys.stderr.write("llmbatch: no spend recorded\n")
        else:
            from llmbatch._report.render import print_whole

            print_whole(_console(), table)
        return 0

    raise typer.Exit(_guarded(go))


def _status_rows(
    scope: str | None, ledger: Path | None, shared: str | None
) -> list[dict[str, object]]:
    if shared:
        from llmbatch._budget.redis import redis_status
        from llmbatch._core.loop import run_loop

        uses = run_loop(lambda: redis_status(shared, scope))
    else:
        from llmbatch._budget.sqlite_status import ledger_status
        from llmbatch._budget.windows import default_ledger_path

        uses = ledger_status(ledger or default_ledger_path(), scope, time.time())
    return [
        {
            "scope": u.scope,
            "window": "hour" if u.seconds == 3600 else "day",
            "spent_usd": round(u.spent_cost, 8),
            "spent_tokens": u.spent_tokens,
            "held_usd": round(u.held_cost, 8),
            "held_tokens": u.held_tokens,
            "runs": u.live_leases,
        }
        for u in uses
    ]


@budget_app.command("reset")
def reset(
    scope: Annotated[str, typer.Option("--scope", help="The scope to forget.")],
    ledger: LedgerOpt = None,
    shared: SharedOpt = None,
) -> None:
    """Forget everything spent and held in one scope (runs in progress keep their holds)."""

    def go() -> int:
        if shared:
            from llmbatch._budget.redis import redis_reset
            from llmbatch._core.loop import run_loop

            run_loop(lambda: redis_reset(shared, scope))
        else:
            from llmbatch._budget.sqlite_status import reset_scope
            from llmbatch._budget.windows import default_ledger_path

            reset_scope(ledger or default_ledger_path(), scope)
        sys.stderr.write(f"llmbatch: budget scope {scope!r} reset\n")
        return 0

    raise typer.Exit(_guarded(go))


def merge(
    out: Annotated[Path, typer.Argument(metavar="OUT", help="The merged results file.")],
    files: Annotated[
        list[Path], typer.Argument(metavar="SHARD_FILES...", help="Shard results files.")
    ],
    force: Annotated[
        bool,
        typer.Option("--force", help="Replace an existing OUT (kept as a timestamped .bak)."),
    ] = False,
) -> None:
    """Join shard outputs: one line per job id (its last ok line, else its last line)."""

    def go() -> int:
        from llmbatch._io.shard import merge_files

        result = merge_files(out, files, force=force)
        if result.conflicts:
            shown = ", ".join(result.conflicts[:5])
            more = " …" if len(result.conflicts) > 5 else ""
            sys.stderr.write(
                f"llmbatch: {len(result.conflicts)} job id(s) were run with different "
                f"requests in different files: {shown}{more}. Nothing was written.\n"
            )
            return 2
        skipped = ""
        if result.torn:
            skipped += f", {result.torn} torn line(s) skipped"
        if result.not_results:
            skipped += f", {result.not_results} line(s) that are not result lines skipped"
        backup = f" (the old one kept as {result.backup})" if result.backup else ""
        sys.stderr.write(
            f"llmbatch: {result.ids} jobs from {result.lines_read} lines in "
            f"{len(files)} file(s) written to {out}{backup}{skipped}\n"
        )
        return 0

    raise typer.Exit(_guarded(go))
