"""What the attempts of one run share: the stop switch and the budgets.

``Stopper`` ends waits (backoff, rate-limit slots, budget room) at a stop while
requests in flight go on. ``Budgets`` holds room in every ledger for one attempt,
waiting while attempts in flight may still free enough, and always settles.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import anyio

from llmbatch._budget.ledger import BudgetLedger, Hold, Refusal, RunBudget
from llmbatch._core.clock import Clock
from llmbatch._core.exceptions import SharedStoreError
from llmbatch._core.stops import StopReason


class Stopper:
    """The run's stop switch: no new requests, and every interruptible wait ends now."""

    def __init__(self) -> None:
        self.stopping = False
        self.stopped_by: StopReason | None = None
        self._waits: set[anyio.CancelScope] = set()

    def stop(self, reason: StopReason) -> None:
        if self.stopped_by is None:
            self.stopped_by = reason
        self.stopping = True
        for scope in list(self._waits):
            scope.cancel()

    @contextmanager
    def interruptible(self) -> Iterator[anyio.CancelScope]:
        """A wait that a stop ends early (check ``cancelled_caught``)."""
        with anyio.CancelScope() as scope:
            if self.stopping:
                scope.cancel()
            self._waits.add(scope)
            try:
                yield scope
            finally:
                self._waits.discard(scope)


_NOTHING_HELD: list[tuple[BudgetLedger, Hold]] = []  # never changed: shared by every Held


@dataclass(slots=True)
class Held:
    """Room held in every ledger for one attempt; ``spend`` books what it really cost."""

    holds: list[tuple[BudgetLedger, Hold]]
    cost: float  # the worst case held
    tokens: int
    spent: tuple[float, int] | None = None

    def spend(self, cost: float, tokens: int) -> None:
        self.spent = (cost, tokens)


@dataclass(slots=True)
class Budgets:
    """Every ledger an attempt must fit in: the run's cap, rolling windows, shared ones."""

    ledgers: list[BudgetLedger]
    clock: Clock
    stopper: Stopper
    wait_for_window: bool = False
    in_flight: int = 0
    told_waiting: bool = False
    store_error: str | None = None  # the shared store failed: the run's fatal message
    _settled: anyio.Event | None = None  # made on the event loop, when first awaited
    # Every ledger answers without awaiting (the run's own caps): the fast path holds.
    _sync: bool | None = None
    # The one ledger is the run's own, with no cap: nothing to hold, only spend to count.
    _counting: RunBudget | None = None

    def _all_sync(self) -> bool:
        if self._sync is None:
            self._sync = all(isinstance(ledger, RunBudget) for ledger in self.ledgers)
            only = self.ledgers[0] if len(self.ledgers) == 1 else None
            self._counting = only if isinstance(only, RunBudget) and not only.capped else None
        return self._sync

    def add(self, ledgers: list[BudgetLedger]) -> None:
        self.ledgers.extend(ledgers)
        self._sync = None
        self._counting = None

    def reserve_now(self, cost: float, tokens: int) -> Held | None:
        """Hold room without awaiting when every ledger is in-process and has room.

        None: call :meth:`reserve` (a shared ledger, or no room now: it waits or refuses).
        """
        if not self._all_sync():
            return None
        if self._counting is not None:  # no cap anywhere: nothing to hold
            self.in_flight += 1
            return Held(_NOTHING_HELD, cost, tokens)
        holds: list[tuple[BudgetLedger, Hold]] = []
        for ledger in self.ledgers:
            answer = ledger.reserve_now(cost, tokens)  # type: ignore[attr-defined]
            if isinstance(answer, Refusal):
                for other, hold in holds:
                    other.settle_now(hold, 0.0, 0)  # type: ignore[attr-defined]
                return None
            holds.append((ledger, answer))
        self.in_flight += 1
        return Held(holds, cost, tokens)

    def settle_now(self, held: Held) -> bool:
        """Settle without awaiting when every ledger is in-process; False: await :meth:`settle`."""
        if not self._all_sync():
            return False
        cost, tokens = held.spent if held.spent is not None else (held.cost, held.tokens)
        if held.holds is _NOTHING_HELD:
            self._count_spent(cost, tokens)
            self._settled_one()
            return True
        for ledger, hold in held.holds:
            ledger.settle_now(hold, cost, tokens)  # type: ignore[attr-defined]
        self._settled_one()
        return True

    def _count_spent(self, cost: float, tokens: int) -> None:
        """What an attempt that held nothing (no cap anywhere) spent, in the run's ledger."""
        run = self._counting or next(x for x in self.ledgers if isinstance(x, RunBudget))
        run.spent_cost += cost
        run.spent_tokens += tokens

    def _settled_one(self) -> None:
        self.in_flight -= 1
        if self._settled is not None:
            self._settled.set()
            self._settled = None

    async def reserve(self, cost: float, tokens: int) -> Held | Refusal | None:
        """Hold room, waiting while attempts in flight may free enough.

        Returns the hold, the refusal that ends the run, or None if a stop came first.
        """
        while True:
            try:
                answer = await self._try(cost, tokens)
            except SharedStoreError as exc:
                self._store_failed(exc)
                return None
            if isinstance(answer, Held):
                self.in_flight += 1
                return answer
            if answer.may_fit_later:
                # Holds in flight (ours, or other runs' on a shared ledger) may free room.
                if not await self._wait_for_room():
                    return None
                continue
            if answer.reason == "budget_window" and self.wait_for_window and answer.resets_at:
                if not self.told_waiting:
                    self.told_waiting = True
                    sys.stderr.write(f"llmbatch: {answer.message}; waiting (--wait-for-budget)\n")
                delay = max(0.05, answer.resets_at - self.clock.time())
                with self.stopper.interruptible() as wait:
                    await self.clock.sleep(min(delay, 60.0))
                if wait.cancelled_caught:
                    return None
                continue
            return answer

    async def _wait_for_room(self) -> bool:
        """Until one of our holds settles (or, for other runs' holds, a short while)."""
        if self._settled is None:
            self._settled = anyio.Event()
        settled = self._settled
        with self.stopper.interruptible() as wait:
            with anyio.move_on_after(0.2 if self.in_flight == 0 else 2.0):
                await settled.wait()
        return not wait.cancelled_caught

    def _store_failed(self, exc: SharedStoreError) -> None:
        if self.store_error is None:
            self.store_error = f"{exc}; budgets fail closed: no new requests"
        self.stopper.stop(StopReason.SHARED_STORE)

    async def _try(self, cost: float, tokens: int) -> Held | Refusal:
        held: list[tuple[BudgetLedger, Hold]] = []
        for ledger in self.ledgers:
            # The run's own cap never awaits: skip a coroutine per attempt on the hot path.
            if isinstance(ledger, RunBudget):
                answer = ledger.reserve_now(cost, tokens)
            else:
                answer = await ledger.reserve(cost, tokens)
            if isinstance(answer, Refusal):
                for other, hold in held:
                    await other.settle(hold, 0.0, 0)
                return answer
            held.append((ledger, answer))
        return Held(held, cost, tokens)

    async def settle(self, held: Held) -> None:
        # Unknown outcome (cancelled mid-request): count the worst case, never less.
        cost, tokens = held.spent if held.spent is not None else (held.cost, held.tokens)
        if held.holds is _NOTHING_HELD:
            self._count_spent(cost, tokens)
        with anyio.CancelScope(shield=True):
            for ledger, hold in held.holds:
                if isinstance(ledger, RunBudget):
                    ledger.settle_now(hold, cost, tokens)
                    continue
                try:
                    await ledger.settle(hold, cost, tokens)
                except SharedStoreError as exc:
                    self._store_failed(exc)
        self._settled_one()

    async def aclose(self) -> None:
        for ledger in self.ledgers:
            with anyio.CancelScope(shield=True):
                await ledger.aclose()
