"""An open-ended source: jobs added while the engine runs (``run --ray``'s actors).

One engine run lasts as long as the feed: each block an actor is given adds its jobs,
so the next block's jobs start as soon as slots free up, instead of waiting for the
last retry of the block before it. The engine's workers pull as from any source; when
the feed holds no job yet, they get ``WAIT`` and await ``wait_for_jobs`` (a stop ends
that wait); once the feed is closed and empty, the run ends.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable
from typing import Any

from llmbatch._engine.plan import PreparedJob


class _Wait:
    """What an open-ended source gives while it has no job yet (never a job)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "WAIT"


WAIT: Any = _Wait()  # typed Any: it travels where PreparedJob does, and is checked for


class JobFeed:
    """Jobs in the order added; iterating gives the next one, ``WAIT``, or the end."""

    def __init__(self) -> None:
        self._jobs: deque[PreparedJob] = deque()
        self._closed = False
        self._more: asyncio.Event | None = None  # made on the loop, when first awaited

    def add(self, jobs: Iterable[PreparedJob]) -> None:
        self._jobs.extend(jobs)
        if self._more is not None:
            self._more.set()

    def close(self) -> None:
        """No more jobs: the engine ends once it has started those left."""
        self._closed = True
        if self._more is not None:
            self._more.set()

    def __iter__(self) -> JobFeed:
        return self

    def __next__(self) -> PreparedJob:
        if self._jobs:
            return self._jobs.popleft()
        if self._closed:
            raise StopIteration
        if self._more is not None:
            self._more.clear()
        return WAIT  # type: ignore[no-any-return]

    async def wait_for_jobs(self) -> None:
        if self._more is None:
            self._more = asyncio.Event()
        if not self._jobs and not self._closed:
            await self._more.wait()
