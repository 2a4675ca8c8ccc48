"""Prompt caching before a batch: one request of each cached prefix group goes online first.

A batch's requests are worked through in any order, many at once: a group's shared
prefix would be written to the provider's cache by many of them together, each paying
the write premium. The group's first job is therefore answered online before the bulk
is submitted (its line is written like any run's); the rest of the group goes into the
batch with the same cache marks (a one-hour entry in batch mode), and reads the prefix
the warm-up wrote. The warm-ups hold room in the submit's own budget and windows, so
the caps count them before any chunk is fitted.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from llmbatch._budget.context import Budgets
from llmbatch._budget.ledger import BudgetLedger, RunBudget
from llmbatch._engine.engine import Engine
from llmbatch._engine.plan import PreparedJob
from llmbatch._engine.sinks import OutputSink
from llmbatch._run.session import RunSession


def warms_group(pj: PreparedJob) -> str | None:
    """The prompt-cache group a job would warm (None: no marked group)."""
    prefix = pj.prefix
    if prefix is None or not prefix.mark:
        return None
    return f"{pj.chain[0]}:{prefix.cache_key or prefix.key}"


async def warm_up(
    session: RunSession,
    jobs: list[PreparedJob],
    budget: RunBudget,
    windows: list[BudgetLedger],
    output: Path,
) -> int:
    """Answer ``jobs`` (one per group) online into ``output``; return the lines written."""
    ledgers: list[BudgetLedger] = [budget, *windows]
    budgets = Budgets(ledgers, session.clock, session.stopper, session.config.wait_for_budget)
    engine = Engine(session.settings, replace(session.services, budgets=budgets))
    sink = OutputSink(output)
    try:
        outcome = await engine.run(jobs, sink, size=len(jobs))
    finally:
        sink.close()
    return outcome.written
