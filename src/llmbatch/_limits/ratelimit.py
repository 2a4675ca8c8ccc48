"""Client-side rate limits per model: given ones held smoothly, unknown ones learned.

Pacing is GCRA (a "virtual scheduling" leaky bucket): each acquisition takes the
next slot ``amount / rate`` after the previous one, so sends are spread evenly
and the burst is bounded by ``burst_s`` seconds' worth, never a minute's. We do
not use aiolimiter's AsyncLimiter here: its rate is fixed at construction, and
adaptive limits must change the rate of a live limiter and book token
corrections (debt) after a response; GCRA does both in a few lines. How the
request rate is learned from 429s is ``_learned.RateLearner``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import anyio

from llmbatch._config.settings import ModelLimits
from llmbatch._core.clock import SYSTEM_CLOCK, Clock
from llmbatch._core.events import LimitChanged
from llmbatch._core.headers import RateLimitHint
from llmbatch._limits.learned import RateLearner
from llmbatch._limits.learned_records import RateChange

PAUSE_CAP_S = 120.0  # the longest a model is paused on one response's word


class Pacer:
    """Spreads acquisitions evenly at ``rate`` per second (None: no limit)."""

    __slots__ = ("_clock", "_tat", "burst_s", "paused_until", "rate")

    def __init__(
        self, rate: float | None, burst_s: float = 0.0, *, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        self.rate = rate
        self.burst_s = burst_s
        self._clock = clock
        self._tat = 0.0  # theoretical arrival time of the next acquisition
        self.paused_until = 0.0

    def reserve(self, amount: float = 1.0) -> float:
        """Take a slot now; return how long to wait for it (seconds)."""
        now = self._clock.monotonic()
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
            self._tat = max(self._clock.monotonic() - self.burst_s, self._tat + delta / self.rate)

    def set_rate(self, rate: float | None) -> None:
        """Change the rate; a slot booked at a slower one moves up to the new step."""
        if rate and self.rate and rate > self.rate:
            start = max(self._clock.monotonic(), self.paused_until)
            self._tat = min(self._tat, start + 1.0 / rate)
        self.rate = rate

    def pause(self, seconds: float) -> None:
        self.paused_until = max(self.paused_until, self._clock.monotonic() + seconds)


@dataclass(slots=True)
class GateStats:
    rate_limited: int = 0
    backoff_s: float = 0.0
    sent: int = 0


def _quota_left(hint: RateLimitHint | None) -> bool | None:
    """Do the headers on a 429 say quota remains (True), is spent (False), or nothing (None)?"""
    if hint is None:
        return None
    pairs = (
        (hint.requests_remaining, hint.requests_limit),
        (hint.tokens_remaining, hint.tokens_limit),
    )
    said = [(left, limit) for left, limit in pairs if left is not None]
    if not said:
        return None
    # "Remaining 1 of 600" on a 429 is a race with the window's end, not spare quota.
    return all(left > max(1.0, 0.01 * (limit or 0.0)) for left, limit in said)


class ModelGate:
    """Every limit on one model: requests, tokens (total, input, output), and what 429s taught.

    With ``rpm`` given, sends are paced at 98% of it. Without it, the gate starts
    open (only concurrency bounds it) and ``RateLearner`` learns a pace from the
    429s our pace causes. Rate-limit headers cap it at the provider's stated limit
    and pause it when the quota runs out. A 429 whose headers say quota remains is
    not about our pace: its own request waits its ``retry-after``, nobody else.
    ``on_change`` hears every change of the learned rate.
    """

    MIN_RATE = RateLearner.MIN_RATE
    # Given limits are paced a little under: scheduling jitter between our clock and
    # the provider's window must not tip a request over the line.
    GIVEN_MARGIN = 0.98

    def __init__(
        self,
        limits: ModelLimits,
        *,
        clock: Clock = SYSTEM_CLOCK,
        name: str = "",
        on_change: Callable[[LimitChanged], None] | None = None,
    ) -> None:
        self.given_rpm = limits.rpm
        self.given_tpm = limits.tpm
        # No given request rate: the rate is learned (from 429s and headers). Fixed for
        # the gate's life, so a plain attribute (read twice an attempt).
        self.adaptive = limits.rpm is None
        self.name = name  # "provider:model", for events
        self._clock = clock
        self._on_change = on_change
        rpm = None if limits.rpm is None else limits.rpm / 60.0 * self.GIVEN_MARGIN
        self.requests = Pacer(rpm, clock=clock)
        self._send_lock = anyio.Lock()
        self.tokens = self._token_pacer(limits.tpm)
        self.input_tokens = self._token_pacer(limits.input_tpm)
        self.output_tokens = self._token_pacer(limits.output_tpm)
        self.stats = GateStats()
        self.learner = RateLearner()
        self.learned_tpm: float | None = None
        self._recent_429s: list[float] = []
        self._settled = 0  # attempts answered (or given up): sent minus this are in flight

    def _token_pacer(self, per_minute: float | None) -> Pacer:
        return Pacer(None if per_minute is None else per_minute / 60.0, 1.0, clock=self._clock)

    @property
    def learned_ceiling(self) -> float | None:
        """The request rate the headers stated (per second, with the margin)."""
        return self.learner.ceiling

    def acquire_now(self, input_tokens: int, output_tokens: int) -> bool:
        """Take a slot at once when no limit is set or paused; False: await :meth:`acquire`."""
        now = self._clock.monotonic()
        for pacer in (self.requests, self.tokens, self.input_tokens, self.output_tokens):
            if pacer.rate is not None or pacer.paused_until > now:
                return False
        self.stats.sent += 1
        if self.adaptive and (change := self.learner.sent(now)) is not None:
            self._learned(change)
        return True

    async def acquire(self, input_tokens: int, output_tokens: int) -> None:
        token_wait = max(
            self.tokens.reserve(input_tokens + output_tokens),
            self.input_tokens.reserve(input_tokens),
            self.output_tokens.reserve(output_tokens),
        )
        if token_wait > 0:
            await self._clock.sleep(token_wait)
        if self.requests.rate is None and self.requests.paused_until <= self._clock.monotonic():
            now = self._clock.monotonic()
        else:
            # One sender at a time, in arrival order: slots follow real send times.
            async with self._send_lock:
                wait = self.requests.reserve(1.0)
                if wait > 0:
                    await self._clock.sleep(wait)
                now = self._clock.monotonic()
                self.requests.sent_at(now)
        self.stats.sent += 1
        if self.adaptive:
            self._learned(self.learner.sent(now))

    def settle(self, reserved_in: int, reserved_out: int, real_in: int, real_out: int) -> None:
        """Correct token reservations with what the provider counted (once per attempt)."""
        self._settled += 1
        tokens, inputs, outputs = self.tokens, self.input_tokens, self.output_tokens
        if tokens.rate or inputs.rate or outputs.rate:  # only a token pace books tokens
            tokens.correct((real_in + real_out) - (reserved_in + reserved_out))
            inputs.correct(real_in - reserved_in)
            outputs.correct(real_out - reserved_out)

    def on_success(self, hint: RateLimitHint | None) -> None:
        if hint is not None:
            self._apply_hint(hint)
        if self.adaptive:
            now = self._clock.monotonic()
            if (change := self.learner.succeeded(now)) is not None:
                self._learned(change)
            if self.learner.holding:
                self._answered(now)

    def on_rate_limited(self, retry_after: float | None, hint: RateLimitHint | None) -> None:
        self.stats.rate_limited += 1
        now = self._clock.monotonic()
        if hint is not None:
            self._apply_hint(hint)
        left = _quota_left(hint)
        if left:
            # Not our pace: a shared key, a busy provider, a proxy. The caller waits
            # this request's retry-after; the model keeps its pace.
            if self.adaptive:
                self._learned(self.learner.noise_429(now))
            return
        self._recent_429s = [t for t in self._recent_429s if now - t < 5.0] + [now]
        if not self.adaptive:
            # A lone 429 under a given limit is scheduling jitter, and its own request
            # honours the retry-after; repeated ones mean the window is full: all wait.
            if retry_after and len(self._recent_429s) >= 2:
                self.requests.pause(min(retry_after, PAUSE_CAP_S))
            return
        in_flight = max(0, self.stats.sent - self._settled)
        change = self.learner.pace_429(now, exhausted=left is False, in_flight=in_flight)
        if change is not None and change.reason == "rate_limited":
            # Our pace overran the provider's window: everyone waits for it to drain, as
            # long as the retry-after says or, for a spent quota, until it has surely freed.
            until = max(now + (retry_after or 0.0), change.hold_until or now)
            if retry_after is not None and 0 < retry_after < 1.0:
                until = now + retry_after  # sub-second: precise, the quota frees then
            if until > now:
                self.requests.pause(min(until - now, PAUSE_CAP_S))
                self.learner.paused(now, self.requests.paused_until)
        self._learned(change)
        self._answered(self._clock.monotonic())

    def _answered(self, now: float) -> None:
        """A hold whose requests are all answered without enough successes measured
        nothing: it ends now."""
        in_flight = max(0, self.stats.sent - self._settled)
        change = self.learner.answered(now, in_flight)
        if change is not None:
            self.requests.paused_until = min(self.requests.paused_until, now)
        self._learned(change)

    def _learned(self, change: RateChange | None) -> None:
        if change is None:
            return
        self.requests.set_rate(change.after)
        if self._on_change is not None:
            self._on_change(
                LimitChanged(
                    self._clock.time(),
                    self.name,
                    None if change.before is None else change.before * 60.0,
                    None if change.after is None else change.after * 60.0,
                    change.reason,
                )
            )

    def _apply_hint(self, hint: RateLimitHint) -> None:
        if hint.requests_limit and self.adaptive:
            # Providers state limits per minute; stay a hair under.
            self._learned(self.learner.stated(hint.requests_limit / 60.0 * self.GIVEN_MARGIN))
        if hint.tokens_limit:
            self.learned_tpm = hint.tokens_limit
            if self.given_tpm is None:
                # Pace tokens at the stated limit too, before the quota runs dry.
                self.tokens.rate = hint.tokens_limit / 60.0 * self.GIVEN_MARGIN
                self.tokens.burst_s = 1.0
        if hint.requests_remaining is not None and hint.requests_remaining <= 0:
            if hint.requests_reset_s:
                self.requests.pause(min(hint.requests_reset_s, PAUSE_CAP_S))
        if hint.tokens_remaining is not None and hint.tokens_remaining <= 0:
            if hint.tokens_reset_s:
                self.requests.pause(min(hint.tokens_reset_s, PAUSE_CAP_S))

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

    def acquire_now(self, input_tokens: int, output_tokens: int) -> bool:
        """A slot without waiting, when there is one for sure; False: await ``acquire``."""
        ...

    async def acquire(self, input_tokens: int, output_tokens: int) -> None: ...

    def settle(self, reserved_in: int, reserved_out: int, real_in: int, real_out: int) -> None: ...

    def on_success(self, hint: RateLimitHint | None) -> None: ...

    def on_rate_limited(self, retry_after: float | None, hint: RateLimitHint | None) -> None: ...

    def describe(self) -> dict[str, object]: ...
