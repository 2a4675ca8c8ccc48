"""Rate limits shared across processes in Redis: one pace per (provider key, base URL, model).

``RedisLimiter`` wraps the in-process ``ModelGate`` (which keeps learning from
responses and applies the limits of this process alone) and adds, before each
send, one Lua script on the server's clock: a GCRA slot for requests and for
tokens shared by every process, retry-after pauses published to all, the learned
rate published and read back, and a heartbeat counting the processes. If Redis
stops answering, pacing falls back to the local gate at its limits divided by
the number of processes last seen.
"""

from __future__ import annotations

import hashlib
import os
import time
import uuid

import anyio
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from llmbatch._config.settings import ModelLimits, ProviderSettings
from llmbatch._core.clock import SYSTEM_CLOCK, Clock
from llmbatch._core.headers import RateLimitHint
from llmbatch._limits.breaker import Breaker
from llmbatch._limits.ratelimit import GateStats, ModelGate

_PACE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local pause_s = tonumber(ARGV[5])
if pause_s > 0 then
  local cur = tonumber(redis.call('GET', KEYS[3]) or '0')
  if now + pause_s > cur then
    redis.call('SET', KEYS[3], tostring(now + pause_s), 'PX', math.ceil(pause_s * 1000) + 1000)
  end
end
local learned = tonumber(ARGV[6])
if learned > 0 then redis.call('SET', KEYS[4], tostring(learned), 'EX', 3600) end
redis.call('ZADD', KEYS[5], now, ARGV[7])
redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now - 30)
redis.call('EXPIRE', KEYS[5], 60)
local procs = redis.call('ZCARD', KEYS[5])
-- The breaker: a trip opens it for everyone (ARGV[9] > 0 seconds), a good probe closes it.
local trip = tonumber(ARGV[9])
if trip > 0 then
  redis.call('SET', KEYS[6], tostring(now + trip), 'PX', math.ceil(trip * 1000))
elseif trip < 0 then
  redis.call('DEL', KEYS[6])
end
local open_s = tostring(math.max(0, tonumber(redis.call('GET', KEYS[6]) or '0') - now))
local interval, rate = tonumber(ARGV[1]), 0
if interval <= 0 then
  rate = tonumber(redis.call('GET', KEYS[4]) or '0')
  if rate > 0 then interval = 1 / rate end
end
if ARGV[8] == '0' then return {'0', procs, tostring(rate), open_s} end  -- publish only
-- A slot is taken only when it is due: sends are booked at the server's "now", so a
-- process that wakes late sends later instead of crowding the next slot.
local send_at = math.max(now, tonumber(redis.call('GET', KEYS[3]) or '0'))
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if interval > 0 then send_at = math.max(send_at, tat) end
local tok_rate, ttat = tonumber(ARGV[2]), 0
if tok_rate > 0 then
  ttat = math.max(tonumber(redis.call('GET', KEYS[2]) or '0') + tonumber(ARGV[4]) / tok_rate,
                  now - 1.0)
  send_at = math.max(send_at, ttat - 1.0)
end
if send_at > now then return {tostring(send_at - now), procs, tostring(rate), open_s} end
if interval > 0 then
  -- A slot taken late keeps up to one step of credit (GCRA tolerance): wake-up lag
  -- does not lower the pace, and at most two sends come back to back.
  redis.call('SET', KEYS[1], tostring(math.max(tat, now - interval) + interval), 'PX',
             math.ceil(interval * 1000) + 60000)
end
if tok_rate > 0 then
  ttat = math.max(ttat, now) + math.min(tonumber(ARGV[3]), tok_rate) / tok_rate
  redis.call('SET', KEYS[2], tostring(ttat), 'PX', math.ceil((ttat - now) * 1000) + 60000)
end
return {'0', procs, tostring(rate), open_s}
"""


def namespace(settings: ProviderSettings) -> str:
    """A hash of (API key, base URL): processes using both share limits; the key is not kept."""
    env = settings.key_env()
    key = os.environ.get(env, "") if env else ""
    data = f"{key}\0{settings.resolved_base_url() or settings.name}".encode()
    return hashlib.blake2b(data, digest_size=12, person=b"llmbatch-ns").hexdigest()


class RedisLimiter:
    """``RateLimiter`` shared through Redis, composed over a local ``ModelGate``."""

    # Under a given limit, a little more than a lone gate: several processes' wake-up
    # jitter adds up at the provider.
    SHARED_MARGIN = 0.95

    def __init__(
        self,
        gate: ModelGate,
        limits: ModelLimits,
        client: aioredis.Redis,
        prefix: str,
        clock: Clock = SYSTEM_CLOCK,
        breaker: SharedBreaker | None = None,
    ) -> None:
        self.gate = gate
        self.client = client
        self.clock = clock
        names = ("req", "tok", "pause", "rate", "procs", "breaker")
        self._keys = [f"{prefix}:{k}" for k in names]
        self.breaker = breaker
        self._breaker_was_open = False
        self._script = client.register_script(_PACE)
        self._interval = 0.0 if not limits.rpm else 60.0 / (limits.rpm * self.SHARED_MARGIN)
        self._tok_rate = 0.0 if not limits.tpm else limits.tpm / 60.0
        self._me = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._debt = 0.0  # tokens booked after responses, sent with the next slot
        self._pause_until = 0.0  # monotonic: a pause this process learned, to publish
        self._publish_rate = 0.0
        self.processes = 1  # processes seen pacing this model in the last 30 s
        self.down: str | None = None
        self._lock = anyio.Lock()

    @property
    def stats(self) -> GateStats:
        return self.gate.stats

    def acquire_now(self, input_tokens: int, output_tokens: int) -> bool:
        return False  # the shared pace is asked of Redis, always

    async def acquire(self, input_tokens: int, output_tokens: int) -> None:
        # The local gate books the send (its learning needs it) and holds this process's
        # own limits; the shared slot comes last, right before the send.
        if self.down is None and (self._pause_until or self._publish_rate):
            await self._try_slot(0, take=False)  # others must hear of a pause at once
        await self.gate.acquire(input_tokens, output_tokens)
        async with self._lock:  # one poller per process: no herd at each slot
            while self.down is None:
                wait = await self._try_slot(input_tokens + output_tokens)
                if wait <= 0:
                    return
                await self.clock.sleep(wait)

    async def _try_slot(self, tokens: int, take: bool = True) -> float:
        """Take the shared slot if it is due (0.0), else how long until it is."""
        pause = max(0.0, self._pause_until - time.monotonic())
        args: list[str | int] = [
            repr(self._interval),
            repr(self._tok_rate),
            tokens,
            repr(self._debt),
            repr(pause),
            repr(self._publish_rate),
            self._me,
            "1" if take else "0",
            repr(self._breaker_news()),
        ]
        try:
            wait_s, procs, rate, open_s = await self._script(keys=self._keys, args=args)
        except (RedisError, OSError) as exc:
            self._fall_back(str(exc))
            return 0.0
        self._pause_until = 0.0
        self._publish_rate = 0.0
        self.processes = max(1, int(procs))
        if self.breaker is not None and float(open_s) > 0:
            self.breaker.open_for(float(open_s))  # another process saw the model failing
            self._breaker_was_open = True
        if float(rate) > 0 and self.gate.adaptive:
            self.gate.requests.rate = float(rate)  # what the others learned
        wait = float(wait_s)
        if wait <= 0 and take:
            self._debt = 0.0
        return wait

    def _fall_back(self, why: str) -> None:
        """Redis is gone: pace locally at our share of the limits (1/processes seen)."""
        self.down = why
        n = self.processes
        for pacer in (
            self.gate.requests,
            self.gate.tokens,
            self.gate.input_tokens,
            self.gate.output_tokens,
        ):
            if pacer.rate:
                pacer.rate /= n

    def settle(self, reserved_in: int, reserved_out: int, real_in: int, real_out: int) -> None:
        self.gate.settle(reserved_in, reserved_out, real_in, real_out)
        if self._tok_rate:
            self._debt += (real_in + real_out) - (reserved_in + reserved_out)

    def _learned(self, before_rate: float | None, before_pause: float) -> None:
        pacer = self.gate.requests
        if pacer.paused_until > before_pause:
            self._pause_until = max(self._pause_until, pacer.paused_until)
        if self.gate.adaptive and pacer.rate is not None and pacer.rate != before_rate:
            self._publish_rate = pacer.rate

    def on_success(self, hint: RateLimitHint | None) -> None:
        before = (self.gate.requests.rate, self.gate.requests.paused_until)
        self.gate.on_success(hint)
        self._learned(*before)

    def on_rate_limited(self, retry_after: float | None, hint: RateLimitHint | None) -> None:
        before = (self.gate.requests.rate, self.gate.requests.paused_until)
        self.gate.on_rate_limited(retry_after, hint)
        self._learned(*before)

    def _breaker_news(self) -> float:
        """What to tell the others of the breaker: seconds it opened for, -1 closed, 0 none."""
        b = self.breaker
        if b is None or b.is_open == self._breaker_was_open:
            return 0.0
        self._breaker_was_open = b.is_open
        return b.cooldown if b.is_open else -1.0

    def describe(self) -> dict[str, object]:
        out = self.gate.describe()
        out["shared"] = "redis" if self.down is None else f"local 1/{self.processes} (redis down)"
        out["processes"] = self.processes
        return out


class SharedBreaker(Breaker):
    """A ``Breaker`` that a ``RedisLimiter`` opens when another process's breaker trips."""

    __slots__ = ()

    def open_for(self, seconds: float) -> None:
        if not self.is_open:
            self._opened_at = time.monotonic() - max(0.0, self.cooldown - seconds)
            self.trips += 1


def limiter_prefix(settings: ProviderSettings, model: str) -> str:
    return f"llmbatch:limit:{{{namespace(settings)}}}:{model}"
