"""A simulated provider and client loop on a fake clock, for testing learned limits.

``SimServer`` enforces a request limit the way providers do (fixed windows, or a
token bucket like llmock's), adds random faults from a seeded generator, and
answers with rate-limit headers and ``retry-after`` like the real APIs. ``simulate``
runs jobs through a ``RateLimiter`` the way the engine's attempt loop does:
acquire, send, feed the outcome back, back off, retry. Everything happens in
virtual time, so a ten-minute run takes a fraction of a second and replays exactly.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio

from llmbatch._core.headers import RateLimitHint
from llmbatch._core.retry import Backoff
from llmbatch._limits.ratelimit import RateLimiter
from llmbatch.testing import FakeClock

OK, LIMITED, NOISE_429, SERVER_ERROR = "ok", "429", "noise_429", "500"


@dataclass
class SimServer:
    """A provider: ``limit`` requests per ``window_s`` (None: no limit), plus random faults."""

    clock: FakeClock
    limit: int | None = None
    window_s: float = 60.0
    bucket: bool = False  # a token bucket refilled continuously (llmock) instead of fixed windows
    sliding: bool = False  # a sliding window (tests/fakeapi.py) instead of fixed windows
    limit_retry_after: float | None = None  # on limit 429s; None: the real wait (as llmock)
    no_retry_after: bool = False  # limit 429s carry no retry-after at all
    whole_seconds: bool = False  # the real wait rounded up to whole seconds (as providers)
    noise_429: float = 0.0  # share of random 429s that have nothing to do with pace
    noise_5xx: float = 0.0
    headers: bool = True  # send rate-limit headers
    noise_retry_after: float | None = 1.0
    stated_rpm: float | None = None  # what the headers state without a limit
    burst_429s: int = 0  # the first N requests draw a 429 each
    seed: int = 7
    log: list[tuple[float, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._window_start = self.clock.monotonic()
        self._used = 0
        self._tokens = float(self.limit or 0)
        self._last = self.clock.monotonic()
        self._recent: list[float] = []

    def handle(self) -> tuple[str, RateLimitHint | None, float | None]:
        """Decide one request's fate on arrival: outcome, headers, retry-after."""
        now = self.clock.monotonic()
        outcome, retry_after = self._decide(now)
        self.log.append((now, outcome))
        return outcome, self._hint(now), retry_after

    def _decide(self, now: float) -> tuple[str, float | None]:
        if len(self.log) < self.burst_429s:
            return NOISE_429, self.noise_retry_after
        if self.limit is not None:
            wait = self._take(now)
            if wait is not None:
                if self.no_retry_after:
                    return LIMITED, None
                if self.limit_retry_after is not None:
                    return LIMITED, self.limit_retry_after
                return LIMITED, max(1, math.ceil(wait)) if self.whole_seconds else wait
        roll = self._rng.random()
        if roll < self.noise_429:
            return NOISE_429, self.noise_retry_after
        if roll < self.noise_429 + self.noise_5xx:
            return SERVER_ERROR, None
        return OK, None

    def _take(self, now: float) -> float | None:
        """Spend one request of quota; if there is none, how long until there is."""
        assert self.limit is not None
        if self.sliding:
            self._recent = [t for t in self._recent if now - t < self.window_s]
            if len(self._recent) >= self.limit:
                return self._recent[0] + self.window_s - now
            self._recent.append(now)
            return None
        if self.bucket:
            per_s = self.limit / self.window_s
            self._tokens = min(float(self.limit), self._tokens + (now - self._last) * per_s)
            self._last = now
            if self._tokens < 1.0:
                return (1.0 - self._tokens) / per_s
            self._tokens -= 1.0
            return None
        if now >= self._window_start + self.window_s:
            periods = math.floor((now - self._window_start) / self.window_s)
            self._window_start += periods * self.window_s
            self._used = 0
        if self._used >= self.limit:
            return self._window_start + self.window_s - now
        self._used += 1
        return None

    def _hint(self, now: float) -> RateLimitHint | None:
        if not self.headers:
            return None
        if self.limit is None:
            stated = self.stated_rpm or 1_000_000.0
            return RateLimitHint(stated, stated - 1, 60.0, 2e6, 2e6 - 1000, 60.0)
        per_minute = self.limit * 60.0 / self.window_s
        if self.bucket:
            left, reset = math.floor(self._tokens), (1.0 - self._tokens % 1.0) * 60.0 / per_minute
        else:
            left, reset = self.limit - self._used, self._window_start + self.window_s - now
        return RateLimitHint(per_minute, float(left), reset, 2e6, 2e6 - 1000, 60.0)


@dataclass
class SimResult:
    """What a simulated run did, in virtual seconds."""

    jobs: int
    done: int
    elapsed: float
    requests: int
    outcomes: dict[str, int]
    sends: list[float]  # send times, from the start

    @property
    def rejected_share(self) -> float:
        return self.outcomes.get(LIMITED, 0) / max(1, self.requests)

    def pace(self, skip: float = 0.0, until: float | None = None) -> float:
        """Successful requests per second sent between ``skip`` and ``until`` seconds in."""
        end = self.elapsed if until is None else until
        ok = sum(1 for t, o in zip(self.sends, self._order, strict=True) if skip <= t < end and o)
        return ok / (end - skip) if end > skip else 0.0

    _order: list[bool] = field(default_factory=list)


async def simulate(
    gate: RateLimiter,
    server: SimServer,
    *,
    jobs: int,
    concurrency: int,
    latency: float = 0.2,
    error_latency: float = 0.05,
    jitter: float = 0.0,
    backoff: Callable[[int, float | None], float] | None = None,
    max_attempts: int = 20,
    until: float = 3600.0,
) -> SimResult:
    """Run ``jobs`` through ``gate`` against ``server`` with ``concurrency`` workers.

    ``jitter``: up to this many seconds more on every answer and every send, drawn
    from a seeded generator, so that answers and 429s interleave as on a real loop.
    """
    clock = server.clock
    rng = random.Random(13)
    start = clock.monotonic()
    delay = backoff or Backoff(cap=60.0, base=0.5, rng=random.Random(11)).delay
    todo = iter(range(jobs))
    done = 0
    sends: list[float] = []
    order: list[bool] = []
    outcomes: dict[str, int] = {}

    async def one_job() -> bool:
        for tries in range(1, max_attempts + 1):
            await gate.acquire(10, 10)
            if jitter:
                await clock.sleep(rng.uniform(0, jitter))
            sends.append(clock.monotonic() - start)
            outcome, hint, retry_after = server.handle()
            order.append(outcome == OK)
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            lag = latency if outcome == OK else error_latency
            await clock.sleep(lag + (rng.uniform(0, jitter) if jitter else 0.0))
            if outcome == OK:
                gate.settle(10, 10, 10, 10)  # first, as the engine does
                gate.on_success(hint)
                return True
            gate.settle(10, 10, 0, 0)
            if outcome in (LIMITED, NOISE_429):
                gate.on_rate_limited(retry_after, hint)
            await clock.sleep(delay(tries, retry_after))
        return False

    async def worker() -> None:
        nonlocal done
        for _ in todo:
            if clock.monotonic() - start > until:
                return
            ok = await one_job()
            done += ok

    async with clock.autojump(), anyio.create_task_group() as tg:
        for _ in range(concurrency):
            tg.start_soon(worker)
    return SimResult(
        jobs, done, clock.monotonic() - start, len(sends), outcomes, sends, _order=order
    )
