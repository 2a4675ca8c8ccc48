"""Spend caps, enforced before spending: every attempt reserves its worst case first."""

from __future__ import annotations


class Budget:
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
        self.exhausted = False

    @property
    def capped(self) -> bool:
        return self.max_cost is not None or self.max_tokens is not None

    def reserve(self, cost: float, tokens: int) -> bool:
        """Hold ``cost`` and ``tokens`` for one attempt; False (and exhausted) if over a cap."""
        if self.exhausted:
            return False
        if self.max_cost is not None and (
            self.spent_cost + self.reserved_cost + cost > self.max_cost + 1e-12
        ):
            self.exhausted = True
            return False
        if self.max_tokens is not None and (
            self.spent_tokens + self.reserved_tokens + tokens > self.max_tokens
        ):
            self.exhausted = True
            return False
        self.reserved_cost += cost
        self.reserved_tokens += tokens
        return True

    def settle(self, reserved_cost: float, reserved_tokens: int, cost: float, tokens: int) -> None:
        """Release a reservation and book what the attempt really spent."""
        self.reserved_cost -= reserved_cost
        self.reserved_tokens -= reserved_tokens
        self.spent_cost += cost
        self.spent_tokens += tokens
