"""What the batch commands print: the table of batches (or its JSON), and the submit and
fetch summaries on stderr."""

from __future__ import annotations

import datetime
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from llmbatch._batch.fetch import FetchReport
    from llmbatch._batch.status import BatchRow
    from llmbatch._batch.submit import SubmitReport


def _stamp(ts: float | None) -> str:
    if ts is None:
        return ""
    return datetime.datetime.fromtimestamp(ts).strftime("%m-%d %H:%M")


PENDING_EXIT = 6  # jobs handed back by their batches: `batch submit` them again


def render_rows(rows: list[BatchRow], as_json: bool, pending: int | None = None) -> None:
    """The rows as a table (or JSON: a list; with ``pending``, {"batches", "pending_jobs"})."""
    from llmbatch._cli.common import _console
    from llmbatch._report.render import print_whole

    if as_json:
        import orjson

        data: object = [r.to_dict() for r in rows]
        if pending is not None:
            data = {"batches": data, "pending_jobs": pending}
        sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")
        return
    from rich import box
    from rich.table import Table

    table = Table(title="batches", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("provider", "model", "id", "state", "ok", "failed", "total", "created", "expires"):
        right = col in ("ok", "failed", "total")
        table.add_column(col, justify="right" if right else "left", no_wrap=True)
    for r in rows:
        state = "fetched" if r.fetched else r.state  # the provider's word until then
        table.add_row(
            r.provider,
            r.model,
            r.id,
            state,
            str(r.succeeded),
            str(r.failed),
            str(r.total),
            _stamp(r.created_at),
            _stamp(r.expires_at),
        )
    print_whole(_console(), table)


def say_submitted(rep: SubmitReport, as_json: bool) -> None:
    """The submit report as JSON (with --json), and one line per batch and in sum on stderr."""
    from llmbatch._cli.common import _err

    if as_json:
        import orjson

        sys.stdout.write(orjson.dumps(rep.to_dict(), option=orjson.OPT_INDENT_2).decode() + "\n")
    for b in rep.batches:
        sys.stderr.write(f"llmbatch: {b.provider}:{b.model}: batch {b.id}, {b.jobs} jobs\n")
    sys.stderr.write(
        f"llmbatch: submitted {rep.jobs} jobs in {len(rep.batches)} batches "
        f"(worst case held ${rep.reserved_cost:.4f}); {rep.skipped_done} already done, "
        f"{rep.skipped_open} already in open batches\n"
    )
    for note in rep.notes:
        _err(note)
    if rep.stopped_by == "budget":
        _err(
            f"the budget cap left {rep.not_submitted} jobs unsubmitted; "
            "fetch, then submit again with a higher cap"
        )
    if rep.stopped_by == "budget_window":
        _err(
            f"{rep.window_message}; {rep.not_submitted} jobs left unsubmitted: submit again "
            "once the window frees (exit 4)"
        )


def pending_note(pending: int, output: str) -> str:
    return (
        f"{pending} job(s) are pending (their batch came back without their answer, was "
        "lost, or was never created): submit them again "
        f"(`llmbatch batch submit JOBS -o {output}`, or "
        f"`llmbatch run JOBS -o {output} --mode batch`)"
    )


def say_fetched(rep: FetchReport, output: str) -> None:
    """What fetch did, on stderr: batches, repairs, savings, notes."""
    from llmbatch._cli.common import _err

    sys.stderr.write(
        f"llmbatch: fetched {rep.closed} batches: {rep.ok} ok, {rep.failed} failed, "
        f"{rep.returned} back to pending; {rep.still_open} still in progress\n"
    )
    if rep.repaired:
        sys.stderr.write(
            f"llmbatch: repaired {rep.repaired} schema misses online "
            f"(${rep.repair_cost_usd:.6f}; counted in ok/failed above)\n"
        )
    if rep.repair_pending:
        sys.stderr.write(
            f"llmbatch: {rep.repair_pending} answers await their schema repair online\n"
        )
    if rep.batch_jobs:
        saved = rep.online_cost_usd - rep.cost_usd
        sys.stderr.write(
            f"llmbatch: batch cost ${rep.cost_usd:.6f} for {rep.batch_jobs} jobs "
            f"(online: ${rep.online_cost_usd:.6f}; saved ${saved:.6f})\n"
        )
    if rep.refused:
        sys.stderr.write(
            f"llmbatch: refused {rep.refused} result lines this output did not send "
            "(not written; see above)\n"
        )
    for note in rep.notes:
        _err(note)
    if rep.pending and not rep.still_open:
        _err(pending_note(rep.pending, output))
