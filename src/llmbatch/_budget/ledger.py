"""Spend caps, enforced before spending: every attempt reserves its worst case first.

A ``BudgetLedger`` is one place spend is counted against a limit:

- ``RunBudget``: ``--max-cost`` / ``--max-total-tokens``, cumulative over every run
  that wrote one output file (in-process; earlier runs come from the output).
- rolling windows (``--budget-per-hour`` …) in a SQLite ledger shared by the runs
  on one machine, or in Redis shared by many machines (``--shared``).

An attempt holds its worst case in every ledger before it is sent and settles
each hold to the real spend afterwards. ``reserve`` never waits: it answers a
``Hold`` or a ``Refusal``; the caller decides whether to wait for holds in
flight to settle (they may free room) or to stop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable


@dataclass(slots=True)  # one an attempt: not frozen, whose init costs 3× (never changed)
class Hold:
    """Room held in one ledger for one attempt (its worst case)."""

    cost: float
    tokens: int
    key: str = ""  # the ledger's own handle (a row id, a Redis member); "" in-process


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a reservation did not fit."""

    reason: str  # "budget" (a run cap, exit 3) | "budget_window" (a rolling window, exit 4)
    message: str  # what a user reads: which limit, how much is spent and held
    resets_at: float | None = None  # wall clock when enough frees up, for windows
    # True when holds still in flight could free enough room: wait and try again.
    may_fit_later: bool = False


@dataclass(frozen=True, slots=True)
class BudgetStatistics:
    limit_cost: float | None
    limit_tokens: int | None
    spent_cost: float
    spent_tokens: int
    held_cost: float
    held_tokens: int


class BudgetLedger(Protocol):
    """One limit on spend. Async because shared ledgers talk to a database."""

    async def reserve(self, cost: float, tokens: int) -> Hold | Refusal: ...

    async def settle(self, hold: Hold, cost: float, tokens: int) -> None:
        """Release ``hold`` and book what the attempt really spent."""

    def statistics(self) -> BudgetStatistics: ...

    async def aclose(self) -> None: ...


@runtime_checkable
class BookingLedger(Protocol):
    """A rolling-window ledger that books a provider batch's spend under an id.

    The booking is made at the batch's worst case when it is submitted; once the
    batch has ended, ``bookings.settle_booking`` (any process) replaces it with what
    the batch really cost, in the same place in the windows.
    """

    async def book(self, hold: Hold, cost: float, tokens: int, booking: str) -> dict[str, Any]:
        """Turn ``hold`` into spend of ``cost`` / ``tokens`` now, booked as ``booking``;
        returns where it is (JSON, no secrets), for the batch state to keep."""
        ...


class RunBudget:
    """Cost and token caps over every run on one output (``spent_*`` counts earlier runs).

    Single event loop, no awaits inside: reservations need no lock.
    """

    def __init__(
        self,
        max_cost: float | None = None,
        max_tokens: int | None = None,
        spent_cost: float = 0.0,
        spent_tokens: int = 0,
    ) -> None:
        self.max_cost = max_cost
        self.max_tokens = max_tokens
        self.spent_cost = spent_cost
        self.spent_tokens = spent_tokens
        self.reserved_cost = 0.0
        self.reserved_tokens = 0
        self.holds = 0  # attempts holding room now

    def count_spent(self, cost: float, tokens: int) -> None:
        """Spend from before this run (earlier runs on the output, batches' bills)."""
        self.spent_cost += cost
        self.spent_tokens += tokens

    def hold_elsewhere(self, cost: float, tokens: int) -> None:
        """Room held outside this process's attempts (open provider batches)."""
        self.reserved_cost += cost
        self.reserved_tokens += tokens

    @property
    def capped(self) -> bool:
        return self.max_cost is not None or self.max_tokens is not None

    async def reserve(self, cost: float, tokens: int) -> Hold | Refusal:
        return self.reserve_now(cost, tokens)

    def reserve_now(self, cost: float, tokens: int) -> Hold | Refusal:
        if self.max_cost is not None and (
            self.spent_cost + self.reserved_cost + cost > self.max_cost + 1e-12
        ):
            return Refusal(
                "budget",
                f"--max-cost {self.max_cost:g}: ${self.spent_cost:.4f} spent, "
                f"${self.reserved_cost:.4f} held, this attempt needs up to ${cost:.4f}",
                may_fit_later=self.holds > 0 and self.spent_cost + cost <= self.max_cost,
            )
        if self.max_tokens is not None and (
            self.spent_tokens + self.reserved_tokens + tokens > self.max_tokens
        ):
            return Refusal(
                "budget",
                f"--max-total-tokens {self.max_tokens}: {self.spent_tokens} spent, "
                f"{self.reserved_tokens} held, this attempt needs up to {tokens}",
                may_fit_later=self.holds > 0 and self.spent_tokens + tokens <= self.max_tokens,
            )
        self.reserved_cost += cost
        self.reserved_tokens += tokens
        self.holds += 1
        return Hold(cost, tokens)

    async def settle(self, hold: Hold, cost: float, tokens: int) -> None:
        self.settle_now(hold, cost, tokens)

    def settle_now(self, hold: Hold, cost: float, tokens: int) -> None:
        self.reserved_cost -= hold.cost
        self.reserved_tokens -= hold.tokens
        self.holds -= 1
        self.spent_cost += cost
        self.spent_tokens += tokens

    def statistics(self) -> BudgetStatistics:
        return BudgetStatistics(
            self.max_cost,
            self.max_tokens,
            self.spent_cost,
            self.spent_tokens,
            self.reserved_cost,
            self.reserved_tokens,
        )

    async def aclose(self) -> None:
        return None
