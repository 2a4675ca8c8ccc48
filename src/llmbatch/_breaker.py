"""A circuit breaker per model: a model failing for everyone is skipped for a while."""

from __future__ import annotations

import time


class Breaker:
    """Opens after ``threshold`` transient failures in a row (across all jobs).

    While open, jobs that have a fallback skip this model. After ``cooldown``
    seconds one probe is let through: success closes the breaker, failure opens
    it again for twice as long (up to ``max_cooldown``).
    """

    __slots__ = (
        "_opened_at",
        "_probing",
        "consecutive",
        "cooldown",
        "max_cooldown",
        "threshold",
        "trips",
    )

    def __init__(
        self, threshold: int = 8, cooldown: float = 15.0, max_cooldown: float = 240.0
    ) -> None:
        self.threshold = threshold
        self.cooldown = cooldown
        self.max_cooldown = max_cooldown
        self.consecutive = 0
        self.trips = 0
        self._opened_at: float | None = None
        self._probing = False

    def allow(self) -> bool:
        """May a request go to this model now? (Jobs with no alternative go regardless.)"""
        if self._opened_at is None:
            return True
        if self._probing:
            return False
        if time.monotonic() - self._opened_at >= self.cooldown:
            self._probing = True  # this caller is the probe
            return True
        return False

    def record_success(self) -> None:
        self.consecutive = 0
        if self._opened_at is not None:
            self._opened_at = None
            self._probing = False
            self.cooldown = max(1.0, self.cooldown / 2)

    def record_failure(self) -> None:
        self.consecutive += 1
        if self._probing:
            self._probing = False
            self._opened_at = time.monotonic()
            self.cooldown = min(self.max_cooldown, self.cooldown * 2)
            return
        if self._opened_at is None and self.consecutive >= self.threshold:
            self._opened_at = time.monotonic()
            self.trips += 1

    @property
    def is_open(self) -> bool:
        return self._opened_at is not None
