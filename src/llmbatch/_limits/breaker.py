"""A circuit breaker per model: a model failing for everyone is skipped for a while."""

from __future__ import annotations

from collections.abc import Callable

from llmbatch._core.clock import SYSTEM_CLOCK, Clock
from llmbatch._core.events import BreakerChanged
from llmbatch._core.states import BreakerState


class Breaker:
    """Opens after ``threshold`` transient failures in a row (across all jobs).

    While open, jobs that have a fallback skip this model. After ``cooldown``
    seconds one probe is let through: success closes the breaker, failure opens
    it again for twice as long (up to ``max_cooldown``). ``on_change`` hears of
    every opening and closing.
    """

    __slots__ = (
        "_clock",
        "_on_change",
        "_opened_at",
        "_probing",
        "consecutive",
        "cooldown",
        "max_cooldown",
        "name",
        "threshold",
        "trips",
    )

    def __init__(
        self,
        threshold: int = 8,
        cooldown: float = 15.0,
        max_cooldown: float = 240.0,
        *,
        clock: Clock = SYSTEM_CLOCK,
        name: str = "",
        on_change: Callable[[BreakerChanged], None] | None = None,
    ) -> None:
        self.threshold = threshold
        self.cooldown = cooldown
        self.max_cooldown = max_cooldown
        self.name = name  # "provider:model", for events
        self.consecutive = 0
        self.trips = 0
        self._clock = clock
        self._on_change = on_change
        self._opened_at: float | None = None
        self._probing = False

    def allow(self) -> bool:
        """May a request go to this model now? (Jobs with no alternative go regardless.)"""
        if self._opened_at is None:
            return True
        if self._probing:
            return False
        if self._clock.monotonic() - self._opened_at >= self.cooldown:
            self._probing = True  # this caller is the probe
            return True
        return False

    def record_success(self) -> None:
        self.consecutive = 0
        if self._opened_at is not None:
            self._opened_at = None
            self._probing = False
            self.cooldown = max(1.0, self.cooldown / 2)
            self._emit(BreakerState.CLOSED)

    def record_failure(self) -> None:
        self.consecutive += 1
        if self._probing:
            # The probe failed: stay open, for longer. Still open, so no event.
            self._probing = False
            self._opened_at = self._clock.monotonic()
            self.cooldown = min(self.max_cooldown, self.cooldown * 2)
            return
        if self._opened_at is None and self.consecutive >= self.threshold:
            self._opened_at = self._clock.monotonic()
            self.trips += 1
            self._emit(BreakerState.OPEN)

    @property
    def is_open(self) -> bool:
        return self._opened_at is not None

    def _emit(self, state: BreakerState) -> None:
        if self._on_change is not None:
            self._on_change(BreakerChanged(self._clock.time(), self.name, state, self.consecutive))
