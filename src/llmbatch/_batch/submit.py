"""``batch submit``: the check pass of ``run``, then the jobs not yet done go to the
providers' Batch APIs, split by (provider, model) into chunks under their limits.

Each chunk holds its worst case against ``--max-cost`` / ``--max-total-tokens``
(persisted with the chunk, released when it is fetched) and is booked at it in the
rolling windows (where, persisted with the chunk: once it has ended, its real
cost replaces the booking, ``_batch/windows.py``); when only part of the work
fits, what fits is submitted and the report says ``stopped_by: budget``.
"""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from llmbatch._batch.context import BatchContext, ClientFactory, batch_context, recover
from llmbatch._batch.submitted import SubmitReport as SubmitReport
from llmbatch._batch.submitter import Submitter
from llmbatch._batch.warmup import warm_up
from llmbatch._batch.windows import settle_windows
from llmbatch._budget.ledger import BudgetLedger, RunBudget
from llmbatch._config.modes import Mode
from llmbatch._config.settings import RunConfig
from llmbatch._core.clock import SYSTEM_CLOCK, Clock
from llmbatch._core.models import ModelRef
from llmbatch._engine.plan import Plan, Planner
from llmbatch._io.resume import cut_torn_tail
from llmbatch._run.session import RunSession


async def submit(
    config: RunConfig,
    *,
    batch_size: int | None = None,
    clock: Clock = SYSTEM_CLOCK,
    client_factory: ClientFactory | None = None,
    leave_online: bool = False,
    session: RunSession | None = None,
) -> SubmitReport:
    """Check every job as ``run`` does (nothing sent on a problem), then submit the rest.

    ``session``: the run this submit is part of (``run --mode batch|auto``), which
    holds the output lock and has the cache and the rolling-window ledgers open;
    without one, submit opens them itself.
    """
    # Whatever --mode says, what is planned here goes by batch (its prefixes cached for 1 h).
    planner = Planner(replace(config, mode=Mode.BATCH))
    locked = session is not None
    async with batch_context(config, clock=clock, factory=client_factory, locked=locked) as ctx:
        plan = planner.plan()
        planner.check(plan)
        own = session is None
        if session is None:
            session = RunSession(config, handle_signals=False, clock=clock)
        if not session.services_open:
            await session.open_services()  # after the check: a refused submit opens nothing
        try:
            return await _submit(ctx, session, planner, plan, batch_size, leave_online)
        finally:
            if own:
                await session.close_services()


async def _submit(
    ctx: BatchContext,
    session: RunSession,
    planner: Planner,
    plan: Plan,
    batch_size: int | None,
    leave_online: bool,
) -> SubmitReport:
    config = ctx.config
    existing = planner.existing
    if existing is not None and existing.torn_at is not None:
        cut_torn_tail(existing)
    await recover(ctx)
    # Batches ended since their bookings were made: their real cost frees room first.
    await settle_windows(ctx.state, config.shared, ctx.notes)
    caps = {"max_cost": config.max_cost, "max_total_tokens": config.max_total_tokens}
    if (ctx.state.caps or {"max_cost": None, "max_total_tokens": None}) != caps:
        ctx.state.append({"ev": "caps", **caps})  # fetch's repairs keep to them
    sub = Submitter(ctx, planner, plan, batch_size, leave_online, session.is_cached)
    ctx.state.dir.mkdir(parents=True, exist_ok=True)
    windows = [x for x in session.budgets.ledgers if not isinstance(x, RunBudget)]
    with tempfile.TemporaryDirectory(dir=ctx.state.dir, prefix="spool-") as spool:
        spools = sub.collect(Path(spool))
        budget = _budget(ctx, sub, config)
        if sub.warmups and config.output is not None:
            warmed = await warm_up(session, sub.warmups, budget, windows, config.output)
            ctx.notes.append(
                f"prompt caching: {warmed} job(s) answered online first, one per shared "
                "prefix, so the batch reads the prefix from the provider's cache"
            )
        await _send(ctx, sub, spools, budget, windows)
    stuck = len(ctx.state.pending_job_ids(sub.line_fp))
    _note_leftovers(ctx, sub, stuck)
    return SubmitReport(
        stuck=stuck,
        batches=sub.batches,
        jobs=sub.jobs,
        skipped_done=plan.skipped_done,
        skipped_open=sub.skipped_open,
        left_online=sub.left_online,
        not_submitted=sub.not_submitted,
        stopped_by=sub.stopped_by,
        reserved_cost=ctx.state.reserved()[0],
        notes=ctx.notes,
        from_cache=sub.from_cache,
        window_message=sub.window_refusal.message if sub.window_refusal else None,
    )


def _note_leftovers(ctx: BatchContext, sub: Submitter, stuck: int) -> None:
    """Notes on the jobs not submitted: wire notes, cached, online-only, stuck."""
    ctx.notes.extend(sorted(sub.wire_notes))
    if sub.from_cache:
        ctx.notes.append(
            f"{sub.from_cache} job(s) have answers in the response cache; they were not "
            "submitted (`llmbatch run` writes them for $0)"
        )
    if sub.left_online:
        ctx.notes.append(
            f"{sub.left_online} job(s) have no model with a Batch API left; they run "
            "online (`llmbatch run`, or the online part of `run --mode`)"
        )
    if stuck and not sub.jobs and sub.stopped_by is None:
        ctx.notes.append(
            f"{stuck} job(s) came back from earlier batches and cannot go by batch now "
            "(answered by the response cache, no model of their chain with a Batch API, or "
            "no longer in the jobs file): run them online "
            f"(`llmbatch run JOBS -o {ctx.config.output}`)"
        )


def _budget(ctx: BatchContext, sub: Submitter, config: RunConfig) -> RunBudget:
    """The caps as they stand: this output's lines, the batches' bills, what they hold."""
    existing = sub.planner.existing
    budget = RunBudget(config.max_cost, config.max_total_tokens)
    if existing is not None:
        budget.count_spent(existing.cost_usd, existing.tokens)
    spent_cost, spent_tokens = ctx.state.spent(sub.line_fp)  # billed, in no result line
    budget.count_spent(spent_cost, spent_tokens)
    budget.hold_elsewhere(*ctx.state.reserved())
    return budget


async def _send(
    ctx: BatchContext,
    sub: Submitter,
    spools: dict[ModelRef, Path],
    budget: RunBudget,
    windows: list[BudgetLedger],
) -> None:
    """Create the chunks in order, each holding its worst case; stop where the budget ends."""
    for ref in sorted(spools, key=str):
        client = ctx.client(ref.provider)
        for chunk in sub.chunks(spools[ref], client):
            if sub.stopped_by is not None:
                sub.not_submitted += len(chunk)
                continue
            chunk = sub.fit(budget, chunk)
            booked: list[dict[str, Any]] = []
            if chunk and windows:
                chunk, booked = await sub.fit_windows(windows, chunk)
            if chunk:
                await sub.create(ref, client, chunk, booked)
