"""Warm, then fan out: one request per prefix group goes first, alone.

A provider caches a prefix once a request carrying it has been answered; until
then every parallel request with the same prefix pays for it again (at ``-c 64``
the first wave would be 64 cache writes). ``PrefixWarmup`` holds the rest of a
group back until its first request has answered; if that one failed, the next
waiting request of the group goes alone instead. Jobs without a key pass
straight through. A group whose last request is older than the cache's life
(``idle_s``) is warmed again.

The gate knows nothing of the engine: ``before_send`` / ``after_send`` around a
send, or ``send`` around a call that returns its outcome.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio

from llmbatch._core.clock import Clock, SystemClock
from llmbatch._core.prefix import PrefixInfo

T = TypeVar("T")

DEFAULT_IDLE_S = 300.0  # Anthropic's default cache life; OpenAI's lasts 5-10 min


class PrefixWarmup:
    """Per prefix key: cold, warming (one request in flight, the others waiting), or warm."""

    def __init__(self, clock: Clock | None = None, idle_s: float = DEFAULT_IDLE_S) -> None:
        self.clock = clock or SystemClock()
        self.idle_s = idle_s
        self._warm: dict[str, float] = {}  # key → when a request of it last answered
        self._warming: dict[str, anyio.Event] = {}
        self.warmups = 0  # requests sent alone to warm a group (for the report)
        self.waits = 0  # requests that waited for a warm-up

    async def before_send(self, key: str | None) -> bool:
        """Wait until the request may go; True: it is the group's warm-up (call after_send)."""
        if key is None:
            return False
        waited = False
        while True:
            last = self._warm.get(key)
            if last is not None and self.clock.monotonic() - last < self.idle_s:
                return False
            event = self._warming.get(key)
            if event is None:
                self._warming[key] = anyio.Event()
                self.warmups += 1
                return True
            if not waited:
                waited = True
                self.waits += 1
            await event.wait()

    def after_send(self, key: str | None, ok: bool, lead: bool = True) -> None:
        """The request has answered (``ok``) or failed; wake the group."""
        if key is None:
            return
        if ok:
            self._warm[key] = self.clock.monotonic()
        if not lead:
            return
        event = self._warming.pop(key, None)
        if event is not None:
            event.set()  # on a failure the first to wake warms again

    async def send(
        self,
        key: str | None,
        call: Callable[[], Awaitable[T]],
        ok: Callable[[T], bool] = lambda outcome: not isinstance(outcome, BaseException),
    ) -> T:
        """``call()`` through the gate; ``ok`` says whether its outcome warmed the cache.

        A cancelled or raising call counts as failed: the group never stays blocked.
        """
        lead = await self.before_send(key)
        done = False
        try:
            outcome = await call()
            done = ok(outcome)
        finally:
            self.after_send(key, done, lead)
        return outcome


def warmup_key(prefix: PrefixInfo | None, provider: str, model: str) -> str | None:
    """The gate key of a job's attempt on ``provider:model``: its marked prefix group, if any.

    OpenAI groups spread over several ``prompt_cache_key`` values warm each one.
    """
    if prefix is None or not prefix.mark:
        return None
    return f"{provider}:{model}:{prefix.cache_key or prefix.key}"
