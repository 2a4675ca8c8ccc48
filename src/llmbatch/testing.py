"""Public test doubles: a fake clock for anything that takes ``clock: Clock``.

``FakeClock`` keeps virtual time. It moves in two ways:

* ``advance(seconds)``: by hand; sleepers whose deadline has come wake up.
* ``async with clock.autojump():`` a driver task jumps time to the earliest
  sleeper's deadline whenever no task is ready to run (every task is waiting on
  the clock, a lock, an event or I/O). On asyncio "ready" is read exactly from
  the event loop's ready queue; elsewhere it is approximated by a run of quiet
  scheduler turns. Waiting on real I/O counts as waiting, so autojump is for
  code whose every wait goes through the clock (simulations, units), not for
  loopback servers.

Sleepers with equal deadlines wake in the order they went to sleep, so a
simulation on a seeded random generator replays the same way every time.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.lowlevel

__all__ = ["FakeClock"]

_QUIET_TURNS = 50  # scheduler turns without clock activity that count as "idle" (non-asyncio)


class _Sleeper:
    __slots__ = ("deadline", "event", "woken")

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.event = anyio.Event()
        self.woken = False


class FakeClock:
    """Virtual monotonic and wall time, with a deterministic ``sleep``."""

    def __init__(self, start: float = 1000.0, wall_start: float = 1_800_000_000.0) -> None:
        self._now = start
        self._wall_offset = wall_start - start
        self._heap: list[tuple[float, int, _Sleeper]] = []
        self._seq = itertools.count()
        self._activity = 0  # bumped whenever someone starts or stops sleeping
        self._registered: anyio.Event | None = None
        self.jumps = 0  # how many times autojump moved time (for tests)

    # -- the Clock protocol ---------------------------------------------------------

    def monotonic(self) -> float:
        return self._now

    def time(self) -> float:
        return self._now + self._wall_offset

    async def sleep(self, seconds: float) -> None:
        """Wait until virtual time has moved ``seconds`` on; ``<= 0`` only yields."""
        if seconds <= 0:
            await anyio.lowlevel.checkpoint()
            return
        sleeper = _Sleeper(self._now + seconds)
        heapq.heappush(self._heap, (sleeper.deadline, next(self._seq), sleeper))
        self._activity += 1
        if self._registered is not None:
            self._registered.set()
        try:
            await sleeper.event.wait()
        finally:
            self._activity += 1
            if not sleeper.woken:  # cancelled: forget the deadline
                sleeper.woken = True
                self._heap = [entry for entry in self._heap if entry[2] is not sleeper]
                heapq.heapify(self._heap)

    # -- moving time -------------------------------------------------------------------

    def advance(self, seconds: float) -> None:
        """Move time on by ``seconds`` and wake every sleeper that is due."""
        if seconds < 0:
            raise ValueError("time does not go backwards")
        self._now += seconds
        while self._heap and self._heap[0][0] <= self._now:
            _, _, sleeper = heapq.heappop(self._heap)
            sleeper.woken = True
            sleeper.event.set()

    @property
    def next_deadline(self) -> float | None:
        """When the earliest sleeper wakes (None: nobody sleeps)."""
        return self._heap[0][0] if self._heap else None

    @asynccontextmanager
    async def autojump(self) -> AsyncIterator[FakeClock]:
        """Within this block, time jumps to the next deadline whenever all tasks wait."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._drive)
            try:
                yield self
            finally:
                tg.cancel_scope.cancel()

    async def _drive(self) -> None:
        while True:
            await self._until_idle()
            deadline = self.next_deadline
            if deadline is None:
                self._registered = anyio.Event()
                await self._registered.wait()
                self._registered = None
                continue
            self.jumps += 1
            self.advance(max(0.0, deadline - self._now))

    async def _until_idle(self) -> None:
        ready = _ready_queue()
        if ready is not None:
            await anyio.lowlevel.checkpoint()
            while len(ready):
                await anyio.lowlevel.checkpoint()
            return
        quiet = 0
        seen = self._activity
        while quiet < _QUIET_TURNS:
            await anyio.lowlevel.checkpoint()
            quiet = quiet + 1 if self._activity == seen else 0
            seen = self._activity


def _ready_queue() -> Any:
    """asyncio's queue of callbacks ready to run, when running on asyncio (else None)."""
    try:
        import asyncio

        loop = asyncio.get_running_loop()
    except RuntimeError:
        return None
    # A private attribute, read only: the one exact signal that no task can run.
    return getattr(loop, "_ready", None)
