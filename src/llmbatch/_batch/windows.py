"""Batches in the rolling windows: booked at their worst case, then settled to their cost.

``batch submit`` books each chunk's worst case in the windows (``--budget-per-hour``
…) before it is created (``fit_windows``: a batch's spend is known only when it
ends, and no window may be overrun by then) and keeps where in the chunk's
intent. Once the chunk has ended, its real cost replaces the booking, at the
time of the booking (as far as a window is concerned, the batch spent it when
it was submitted): a fetched batch, canceled or expired ones included, settles
to what it billed; a chunk the provider never had, to nothing. A lost batch
keeps its worst case: whether it ran, and what it cost, cannot be known.
``fetch`` (each poll), ``submit`` and ``cancel`` settle what has ended; the
ledgers make settling twice a no-op, so a command killed between the ledger and
the batch state settles once all the same.
"""

from __future__ import annotations

import secrets
from typing import Any

from llmbatch._budget.bookings import settle_booking
from llmbatch._budget.ledger import BookingLedger, BudgetLedger, Hold, Refusal
from llmbatch._core.exceptions import SharedStoreError
from llmbatch._io.batch_state import BatchState


async def fit_windows(
    windows: list[BudgetLedger], items: list[tuple[float, int]], prefix: str
) -> tuple[int, list[dict[str, Any]], Refusal | None]:
    """How many of ``items`` (their worst cost and tokens, in order) the windows have
    room for, booked there now (halving until they fit); where they are booked (ids
    start with ``prefix``); the last refusal, if any part did not fit."""
    n = len(items)
    refusal: Refusal | None = None
    while n > 0:
        cost, tokens = sum(c for c, _ in items[:n]), sum(t for _, t in items[:n])
        held: list[tuple[BudgetLedger, Hold]] = []
        refused: Refusal | None = None
        for ledger in windows:
            answer = await ledger.reserve(cost, tokens)
            if isinstance(answer, Refusal):
                refused = answer
                break
            held.append((ledger, answer))
        if refused is None:
            return n, await _book(held, cost, tokens, prefix), refusal
        for ledger, hold in held:  # released
            await ledger.settle(hold, 0.0, 0)
        refusal = refused
        n //= 2
    return 0, [], refusal


async def _book(
    held: list[tuple[BudgetLedger, Hold]], cost: float, tokens: int, prefix: str
) -> list[dict[str, Any]]:
    """Each hold becomes spend at the worst case, under an id of its own where the
    ledger keeps one (every rolling-window ledger does)."""
    booked = []
    for ledger, hold in held:
        if isinstance(ledger, BookingLedger):
            key = f"{prefix}-{secrets.token_hex(6)}"
            booked.append(await ledger.book(hold, cost, tokens, key))
        else:
            await ledger.settle(hold, cost, tokens)
    return booked


async def settle_windows(state: BatchState, shared: str | None, notes: list[str]) -> None:
    """Settle the window bookings of every ended chunk that still holds its worst case."""
    unreachable: set[str] = set()
    for chunk, cost, tokens in state.to_settle():
        name = chunk.batch_id or chunk.local
        try:
            done = [await settle_booking(b, cost, tokens, shared) for b in chunk.bookings]
        except SharedStoreError as exc:
            _note(
                notes,
                f"batch {name}: its rolling-window booking (${chunk.reserve_cost:.4f}, its worst "
                f"case) is not yet replaced by its real cost (${cost:.4f}): {exc}; the next "
                "batch command tries again",
            )
            return
        if all(done):
            state.append({"ev": "window_settled", "local": chunk.local})
        else:
            unreachable.update(str(b.get("where")) for b in chunk.bookings)
    if unreachable:
        where = ", ".join(sorted(unreachable))
        _note(
            notes,
            f"rolling-window bookings in {where} keep their batches' worst case until a "
            f"batch command with --shared {where} (or `[shared] url`) replaces them by "
            "the real cost",
        )


def _note(notes: list[str], note: str) -> None:
    if note not in notes:  # fetch --wait settles after every poll
        notes.append(note)
