"""Public test doubles: ``MockProvider`` (a scripted provider, the way httpx ships
``MockTransport``) and a fake clock for anything that takes ``clock: Clock``.

``MockProvider`` answers from a script and records what it was sent::

    mock = MockProvider([429, "hello"])          # a 429, then an answer
    [r] = llmbatch.run(["hi"], provider=mock, max_attempts=3, backoff_cap=0.01)
    assert r.attempts == 2 and r.output == "hello" and len(mock.sent) == 2

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
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.lowlevel

from llmbatch._core.exceptions import ProviderError, RateLimited, error_for_status
from llmbatch._core.jobs import Request, text_of
from llmbatch._core.usage import Usage
from llmbatch.providers._base import Answer

# One scripted step: an answer's text, an Answer, an HTTP status to fail with (429 →
# RateLimited, 5xx → ServerError, 401 → AuthError, …), or an exception to raise.
Step = str | Answer | int | BaseException


@dataclass(frozen=True, slots=True)
class Sent:
    """One request the mock was sent: the model name and the request as the engine built it."""

    model: str
    request: Request

    @property
    def prompt(self) -> str:
        """The text of the last user message."""
        users = [m for m in self.request.messages if m.get("role") == "user"]
        return text_of(users[-1]["content"]) if users else ""


class MockProvider:
    """A ``Provider`` that answers from a script and records every send (``sent``).

    ``script``: steps taken in turn by the sends, whatever their prompt; ``by_prompt``:
    steps per prompt (the last user message), taken first; then ``default`` — a step,
    or a function of the ``Sent`` giving one (the default echoes the prompt). Pass it
    as ``provider=`` to ``llmbatch.run`` / ``llmbatch.Runner``.
    """

    def __init__(
        self,
        script: Iterable[Step] = (),
        *,
        by_prompt: Mapping[str, Iterable[Step]] | None = None,
        default: Step | Callable[[Sent], Step] | None = None,
        name: str = "mock",
        usage: Usage | None = None,
        delay: float = 0.0,
    ) -> None:
        self.name = name
        self.notes: set[str] = set()
        self.script: deque[Step] = deque(script)
        self.by_prompt = {k: deque(v) for k, v in (by_prompt or {}).items()}
        self.default = default
        self.usage = usage or Usage(10, 5)
        self.delay = delay
        self.sent: list[Sent] = []
        self.closed = False

    async def send(self, model: str, request: Request, time_limit: float) -> Answer:
        sent = Sent(model, request)
        self.sent.append(sent)
        if self.delay:
            await anyio.sleep(self.delay)
        else:
            await anyio.lowlevel.checkpoint()
        return self._answer(self._step(sent))

    def _step(self, sent: Sent) -> Step:
        own = self.by_prompt.get(sent.prompt)
        if own:
            return own.popleft()
        if self.script:
            return self.script.popleft()
        default = self.default
        if default is None:
            return f"echo: {sent.prompt}"
        if callable(default) and not isinstance(default, BaseException):
            return default(sent)
        return default

    def _answer(self, step: Step) -> Answer:
        if isinstance(step, Answer):
            return step
        if isinstance(step, str):
            return Answer(step, self.usage, "end_turn", latency_ms=1.0, ttft_ms=None)
        if isinstance(step, BaseException):
            raise step
        if isinstance(step, int) and not isinstance(step, bool):
            error: ProviderError = error_for_status(step, f"scripted HTTP {step}")
            if isinstance(error, RateLimited):
                error.retry_after = 0.0
            raise error
        raise TypeError(f"MockProvider: cannot use {step!r} as a step")

    async def aclose(self) -> None:
        self.closed = True


__all__ = ["FakeClock", "MockProvider", "Sent"]

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
