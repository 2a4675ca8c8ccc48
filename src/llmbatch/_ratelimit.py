"""Client-side rate limits per model: given ones held smoothly, unknown ones learned.

Pacing is GCRA (a "virtual scheduling" leaky bucket): each acquisition takes the
next slot ``amount / rate`` after the previous one, so sends are spread evenly
and the burst is bounded by ``burst_s`` seconds' worth, never a minute's. We do
not use aiolimiter's AsyncLimiter here: its rate is fixed at construction, and
adaptive limits must change the rate of a live limiter and book token
corrections (debt) after a response; GCRA does both in a few lines.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

import anyio

from ._config import ModelLimits
from ._headers import RateLimitHint


class Pacer:
    """Spreads acquisitions evenly at ``rate`` per second (None: no limit)."""

    __slots__ = ("_tat", "burst_s", "paused_until", "rate")

    def __init__(self, rate: float | None, burst_s: float = 0.0) -> None:
        self.rate = rate
        self.burst_s = burst_s
        self._tat = 0.0  # theoretical arrival time of the next acquisition
        self.paused_until = 0.0

    def reserve(self, amount: float = 1.0) -> float:
        """Take a slot now; return how long to wait for it (seconds)."""
        now = time.monotonic()
        t = max(now, self.paused_until)
        if self.rate is None or self.rate <= 0:
            return t - now
        tat = max(self._tat, t)
        send_at = max(t, tat - self.burst_s)
        # A slot covers at most one second's worth: a single huge request must not
        # block the model for minutes past its own share.
        self._tat = tat + min(amount, self.rate * max(1.0, self.burst_s)) / self.rate
        return send_at - now

    def sent_at(self, when: float) -> None:
        """Book a send that happened at ``when``: the next slot is one step after it.

        Waking late must not squeeze the next send closer than one step, or a
        provider counting in short windows sees a burst.
        """
        if self.rate:
            self._tat = max(self._tat, when + 1.0 / self.rate)

    def correct(self, delta: float) -> None:
        """Book ``delta`` more (or, negative, fewer) units than were reserved."""
        if self.rate:
            self._tat = max(time.monotonic() - self.burst_s, self._tat + delta / self.rate)

    def pause(self, seconds: float) -> None:
        self.paused_until = max(self.paused_until, time.monotonic() + seconds)


@dataclass(slots=True)
class GateStats:
    rate_limited: int = 0
    backoff_s: float = 0.0
    sent: int = 0


class ModelGate:
    """Every limit on one model: requests, tokens (total, input, output), and what 429s taught.

    With ``rpm`` given, sends are paced at 98% of it. Without it, the gate starts
    open (only concurrency bounds it) and learns: a 429 sets the rate just below
    the pace that drew it (then ×0.7 for each further 429, at most once a second);
    each success raises it, by 1% while it is well under the rate that last drew a
    429 and by 0.1% once near it (fast recovery, slow probing); rate-limit headers
    cap it at the provider's stated limit and pause it when the quota runs out.
    """

    MIN_RATE = 0.05  # requests per second: never learn our way down to a halt
    # Given limits are paced a little under: scheduling jitter between our clock and
    # the provider's window must not tip a request over the line.
    GIVEN_MARGIN = 0.98

    def __init__(self, limits: ModelLimits) -> None:
        self.given_rpm = limits.rpm
        self.given_tpm = limits.tpm
        self.requests = Pacer(None if limits.rpm is None else limits.rpm / 60.0 * self.GIVEN_MARGIN)
        self._send_lock = anyio.Lock()
        self.tokens = Pacer(None if limits.tpm is None else limits.tpm / 60.0, burst_s=1.0)
        self.input_tokens = Pacer(
            None if limits.input_tpm is None else limits.input_tpm / 60.0, burst_s=1.0
        )
        self.output_tokens = Pacer(
            None if limits.output_tpm is None else limits.output_tpm / 60.0, burst_s=1.0
        )
        self.stats = GateStats()
        self.learned_ceiling: float | None = None  # from headers, requests per second
        self.learned_tpm: float | None = None
        self._last_decrease = 0.0
        self._last_max = 0.0  # the rate that last drew a 429
        self._recent: list[float] = []  # send times in the last few seconds
        self._recent_429s: list[float] = []

    @property
    def adaptive(self) -> bool:
        return self.given_rpm is None

    async def acquire(self, input_tokens: int, output_tokens: int) -> None:
        token_wait = max(
            self.tokens.reserve(input_tokens + output_tokens),
            self.input_tokens.reserve(input_tokens),
            self.output_tokens.reserve(output_tokens),
        )
        if token_wait > 0:
            await anyio.sleep(token_wait)
        if self.requests.rate is None and self.requests.paused_until <= time.monotonic():
            now = time.monotonic()
        else:
            # One sender at a time, in arrival order: slots follow real send times.
            async with self._send_lock:
                wait = self.requests.reserve(1.0)
                if wait > 0:
                    await anyio.sleep(wait)
                now = time.monotonic()
                self.requests.sent_at(now)
        self.stats.sent += 1
        if self.adaptive:
            self._recent.append(now)
            if len(self._recent) > 512:
                del self._recent[:256]

    def settle(self, reserved_in: int, reserved_out: int, real_in: int, real_out: int) -> None:
        """Correct token reservations with what the provider counted."""
        self.tokens.correct((real_in + real_out) - (reserved_in + reserved_out))
        self.input_tokens.correct(real_in - reserved_in)
        self.output_tokens.correct(real_out - reserved_out)

    def on_success(self, hint: RateLimitHint | None) -> None:
        if hint is not None:
            self._apply_hint(hint)
        if self.adaptive and self.requests.rate is not None:
            rate = self.requests.rate
            rate *= 1.01 if rate < 0.9 * self._last_max else 1.001
            if self.learned_ceiling is not None:
                rate = min(rate, self.learned_ceiling)
            self.requests.rate = rate

    def on_rate_limited(self, retry_after: float | None, hint: RateLimitHint | None) -> None:
        self.stats.rate_limited += 1
        if hint is not None:
            self._apply_hint(hint)
        now = time.monotonic()
        self._recent_429s = [t for t in self._recent_429s if now - t < 5.0] + [now]
        if retry_after is not None and retry_after > 0:
            # Everyone waits, not just the request that was told to: always when the
            # limit is being learned; with a given limit only when 429s repeat (a lone
            # one is scheduling jitter, and its own request honours the retry-after).
            if self.adaptive or len(self._recent_429s) >= 2:
                self.requests.pause(min(retry_after, 120.0))
        if not self.adaptive:
            return
        if now - self._last_decrease < 1.0:
            return
        self._last_decrease = now
        if self.requests.rate is None:
            self._last_max = self._observed_rate(now)
            self.requests.rate = max(self.MIN_RATE, self._last_max * 0.9)
        else:
            self._last_max = self.requests.rate
            self.requests.rate = max(self.MIN_RATE, self.requests.rate * 0.7)

    def _observed_rate(self, now: float) -> float:
        window = [t for t in self._recent if now - t <= 5.0]
        if len(window) < 2:
            return 1.0
        span = max(now - window[0], 1.0)
        return len(window) / span

    def _apply_hint(self, hint: RateLimitHint) -> None:
        if hint.requests_limit:
            # Providers state limits per minute; stay a hair under.
            self.learned_ceiling = hint.requests_limit / 60.0 * 0.98
            if self.adaptive and (
                self.requests.rate is None or self.requests.rate > self.learned_ceiling
            ):
                self.requests.rate = self.learned_ceiling
        if hint.tokens_limit:
            self.learned_tpm = hint.tokens_limit
            if self.given_tpm is None:
                # Pace tokens at the stated limit too, before the quota runs dry.
                self.tokens.rate = hint.tokens_limit / 60.0 * self.GIVEN_MARGIN
                self.tokens.burst_s = 1.0
        if hint.requests_remaining is not None and hint.requests_remaining <= 0:
            if hint.requests_reset_s:
                self.requests.pause(min(hint.requests_reset_s, 120.0))
        if hint.tokens_remaining is not None and hint.tokens_remaining <= 0:
            if hint.tokens_reset_s:
                self.requests.pause(min(hint.tokens_reset_s, 120.0))

    def describe(self) -> dict[str, object]:
        rpm = None if self.requests.rate is None else self.requests.rate * 60.0
        tpm = self.given_tpm if self.given_tpm is not None else self.learned_tpm
        source = "given" if not self.adaptive else ("learned" if rpm is not None else "none needed")
        return {
            "rpm": None if rpm is None else round(rpm, 1),
            "tpm": None if tpm is None else round(tpm, 1),
            "source": source,
            "rate_limited": self.stats.rate_limited,
            "backoff_s": round(self.stats.backoff_s, 2),
            "sent": self.stats.sent,
        }


class RateLimiter(Protocol):
    """Every limit on one (provider, model): ``ModelGate`` in-process, or shared in Redis.

    ``acquire`` waits for a send slot (requests and tokens); the rest never wait:
    ``settle`` books what the provider really counted, ``on_success`` and
    ``on_rate_limited`` feed what responses said back into the pace.
    """

    async def acquire(self, input_tokens: int, output_tokens: int) -> None: ...

    def settle(self, reserved_in: int, reserved_out: int, real_in: int, real_out: int) -> None: ...

    def on_success(self, hint: RateLimitHint | None) -> None: ...

    def on_rate_limited(self, retry_after: float | None, hint: RateLimitHint | None) -> None: ...

    def describe(self) -> dict[str, object]: ...
