"""The rolling-window ledgers a run opens: Redis with ``--shared``, else SQLite."""

from __future__ import annotations

from typing import TYPE_CHECKING

from llmbatch._budget.ledger import BudgetLedger
from llmbatch._budget.ledgerfile import check_ledger_file
from llmbatch._budget.sqlite import SqliteLedger
from llmbatch._budget.windows import (
    default_ledger_path,
    lease_seconds,
    safe_url,
    windows_from_config,
)
from llmbatch._core.clock import Clock

if TYPE_CHECKING:
    from llmbatch._config.settings import RunConfig


def check_ledger(config: RunConfig) -> None:
    """Refuse (UsageError, exit 2) before anything when the run's SQLite ledger is unusable."""
    if windows_from_config(config) and not config.shared:
        check_ledger_file(config.ledger or default_ledger_path())


async def open_ledgers(config: RunConfig, clock: Clock) -> list[BudgetLedger]:
    """The rolling-window ledgers of one run: Redis with ``--shared``, else SQLite; [] if none.

    :raises SharedStoreError: the ledger cannot be opened (budgets fail closed).
    """
    windows = windows_from_config(config)
    if not windows:
        return []
    if config.shared:
        from llmbatch._budget.redis import RedisLedger, connect  # the [redis] extra

        client = await connect(config.shared)
        # A hold past its deadline counts as spent at its worst case (safe, if wasteful
        # for a request slower than that), so a dead run blocks the others no longer.
        hold_s = lease_seconds()
        where = safe_url(config.shared)
        return [
            RedisLedger(client, config.budget_scope, windows, clock, hold_s=hold_s, where=where)
        ]
    ledger = SqliteLedger(
        config.ledger or default_ledger_path(),
        config.budget_scope,
        windows,
        clock,
        lease_s=lease_seconds(),
    )
    await ledger.open()
    return [ledger]
