"""Time, injected: every time-dependent part (pacer, learned limits, breakers, budget
windows, batch polling) reads the clock it was given, so tests run on a fake one.

``llmbatch.testing.FakeClock`` is the test double.
"""

from __future__ import annotations

import time
from typing import Protocol

import anyio


class Clock(Protocol):
    """Monotonic seconds for intervals, wall seconds for timestamps, and a sleep."""

    def monotonic(self) -> float: ...

    def time(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The real clock. Its readings are the ``time`` functions themselves, not methods
    around them: read several times a request, a method would be a Python call each."""

    __slots__ = ()

    monotonic = staticmethod(time.monotonic)
    time = staticmethod(time.time)

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(seconds)


SYSTEM_CLOCK: Clock = SystemClock()
