"""Budgets and limits shared across machines in Redis (``--shared redis://HOST:PORT/DB``).

Every decision is one Lua script run on the server, on the server's clock
(``TIME``), so processes on machines with skewed clocks agree. Keys expire on
their own. ``RedisLedger`` keeps rolling windows as spend buckets (10 s for the
hour, 5 min for the day; a bucket counts while any of it is inside the window,
so a window errs on the safe side by one bucket) plus live holds with a
deadline: a hold whose process died counts as spent at its worst case once its
deadline passes, and ages out like spend. A provider batch's booking (``book``)
remembers its buckets under its id, so its real cost can replace it there later
(``settle_redis_booking``, once: the booking goes as it is settled).
``RedisLimiter`` is in ``_redis_limit``.

Redis unreachable: the ledger raises ``SharedStoreError`` (budgets fail closed).
"""

from __future__ import annotations

import itertools
import os
import uuid
from typing import Any

from llmbatch._budget.ledger import BudgetStatistics, Hold, Refusal
from llmbatch._core.clock import Clock
from llmbatch._core.exceptions import SharedStoreError, UsageError

try:
    import redis.asyncio as aioredis
    from redis.exceptions import RedisError
except ImportError:  # pragma: no cover  (the dev install has it)
    raise UsageError("--shared needs the Redis client: pip install 'llmbatch[redis]'") from None
from llmbatch._budget.sqlite_status import WindowUse
from llmbatch._budget.windows import DAY, HOUR, Window, safe_url, window_refusal

_COMMON = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local HW, DW = 10, 300
local function book(c, tk)
  local hi, di = math.floor(now / HW), math.floor(now / DW)
  if c ~= 0 then
    redis.call('HINCRBYFLOAT', KEYS[1], hi, c)
    redis.call('HINCRBYFLOAT', KEYS[3], di, c)
  end
  if tk ~= 0 then
    redis.call('HINCRBYFLOAT', KEYS[2], hi, tk)
    redis.call('HINCRBYFLOAT', KEYS[4], di, tk)
  end
  redis.call('EXPIRE', KEYS[1], 3700)
  redis.call('EXPIRE', KEYS[2], 3700)
  redis.call('EXPIRE', KEYS[3], 86700)
  redis.call('EXPIRE', KEYS[4], 86700)
end
local function unhold(id, spend_it)
  local v = redis.call('HGET', KEYS[6], id)
  if not v then return false end
  local sp = string.find(v, ' ')
  local c, tk = tonumber(string.sub(v, 1, sp - 1)), tonumber(string.sub(v, sp + 1))
  if spend_it then book(c, tk) end
  redis.call('HINCRBYFLOAT', KEYS[7], 'c', -c)
  redis.call('HINCRBYFLOAT', KEYS[7], 't', -tk)
  redis.call('HDEL', KEYS[6], id)
  redis.call('ZREM', KEYS[5], id)
  return true
end
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', now)) do
  if not unhold(id, true) then redis.call('ZREM', KEYS[5], id) end
end
"""

_RESERVE = (
    _COMMON
    + """
local need = {tonumber(ARGV[1]), tonumber(ARGV[2])}
local ttl, id = tonumber(ARGV[3]), ARGV[4]
local held = {tonumber(redis.call('HGET', KEYS[7], 'c') or '0'),
              tonumber(redis.call('HGET', KEYS[7], 't') or '0')}
local specs = {{KEYS[1], HW, 3600, 1}, {KEYS[3], DW, 86400, 1},
               {KEYS[2], HW, 3600, 2}, {KEYS[4], DW, 86400, 2}}
local out, ok = {}, 1
for w = 1, 4 do
  local limit = tonumber(ARGV[4 + w])
  if limit then
    local key, width, seconds, k = specs[w][1], specs[w][2], specs[w][3], specs[w][4]
    local first = math.floor((now - seconds) / width)
    local all, spent, rows = redis.call('HGETALL', key), 0, {}
    for i = 1, #all, 2 do
      local idx = tonumber(all[i])
      if idx < first then
        redis.call('HDEL', key, all[i])
      else
        spent = spent + tonumber(all[i + 1])
        rows[#rows + 1] = {idx, tonumber(all[i + 1])}
      end
    end
    local resets = ''
    local excess = spent + held[k] + need[k] - limit
    if excess > 1e-12 then
      ok = 0
      table.sort(rows, function(a, b) return a[1] < b[1] end)
      local freed = 0
      for _, r in ipairs(rows) do
        freed = freed + r[2]
        if freed >= excess then resets = tostring((r[1] + 1) * width + seconds) break end
      end
    end
    out[#out + 1] = tostring(w)
    out[#out + 1] = tostring(spent)
    out[#out + 1] = tostring(held[k])
    out[#out + 1] = resets
  end
end
if ok == 1 then
  redis.call('ZADD', KEYS[5], now + ttl, id)
  redis.call('HSET', KEYS[6], id, ARGV[1] .. ' ' .. ARGV[2])
  redis.call('HINCRBYFLOAT', KEYS[7], 'c', need[1])
  redis.call('HINCRBYFLOAT', KEYS[7], 't', need[2])
  for i = 5, 7 do redis.call('EXPIRE', KEYS[i], math.ceil(ttl) + 86400) end
end
return {ok, out}
"""
)

_SETTLE = (
    _COMMON
    + """
-- A hold already past its deadline was booked at its worst case: do not book twice.
if unhold(ARGV[1], false) then book(tonumber(ARGV[2]), tonumber(ARGV[3])) return 1 end
return 0
"""
)

_BOOK = (
    _COMMON
    + """
-- A batch's hold becomes spend at its worst case, kept with its buckets under the
-- booking's id (with the windows' keys' lifetime) for _SETTLE_BOOKING.
if not unhold(ARGV[1], false) then return 0 end
book(tonumber(ARGV[3]), tonumber(ARGV[4]))
local first = math.floor((now - 86400) / DW)
local all = redis.call('HGETALL', KEYS[8])
for i = 1, #all, 2 do
  local old = tonumber(string.match(all[i + 1], '(%S+)$'))
  if not old or old < first then redis.call('HDEL', KEYS[8], all[i]) end
end
redis.call('HSET', KEYS[8], ARGV[2], ARGV[3] .. ' ' .. ARGV[4] .. ' ' ..
  tostring(math.floor(now / HW)) .. ' ' .. tostring(math.floor(now / DW)))
redis.call('EXPIRE', KEYS[8], 86700)
return 1
"""
)

# The real cost replaces the worst case in the buckets it was booked in; a bucket gone
# (out of every window) needs nothing. The booking goes with it: settling twice is a no-op.
_SETTLE_BOOKING = """
local v = redis.call('HGET', KEYS[8], ARGV[1])
if not v then return 0 end
redis.call('HDEL', KEYS[8], ARGV[1])
local c, tk, hi, di = string.match(v, '^(%S+) (%S+) (%S+) (%S+)$')
local dc, dt = tonumber(ARGV[2]) - tonumber(c), tonumber(ARGV[3]) - tonumber(tk)
local function fix(key, idx, d)
  if d ~= 0 and redis.call('HEXISTS', key, idx) == 1 then
    redis.call('HINCRBYFLOAT', key, idx, d)
  end
end
fix(KEYS[1], hi, dc)
fix(KEYS[3], di, dc)
fix(KEYS[2], hi, dt)
fix(KEYS[4], di, dt)
return 1
"""

_STATUS = (
    _COMMON
    + """
local out = {}
local specs = {{KEYS[1], KEYS[2], HW, 3600}, {KEYS[3], KEYS[4], DW, 86400}}
for _, s in ipairs(specs) do
  local first = math.floor((now - s[4]) / s[3])
  for j = 1, 2 do
    local all, sum = redis.call('HGETALL', s[j]), 0
    for i = 1, #all, 2 do
      if tonumber(all[i]) >= first then sum = sum + tonumber(all[i + 1]) end
    end
    out[#out + 1] = tostring(sum)
  end
end
out[#out + 1] = redis.call('HGET', KEYS[7], 'c') or '0'
out[#out + 1] = redis.call('HGET', KEYS[7], 't') or '0'
out[#out + 1] = tostring(redis.call('ZCARD', KEYS[5]))
return out
"""
)

# The slot of each window in the scripts' ARGV: (kind, seconds) → 0..3.
_SLOTS = {("cost", HOUR): 0, ("cost", DAY): 1, ("tokens", HOUR): 2, ("tokens", DAY): 3}
PREFIX = "llmbatch:budget:"


def budget_keys(scope: str) -> list[str]:
    # One hash tag per scope: a Redis Cluster keeps a scope's keys on one node.
    p = f"{PREFIX}{{{scope}}}:"
    return [p + k for k in ("hc", "ht", "dc", "dt", "holds", "hv", "held", "bk")]


async def connect(url: str) -> aioredis.Redis:
    """A client for ``url``, checked with a PING. :raises SharedStoreError: unreachable."""
    try:
        client = aioredis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
        await client.ping()
    except (RedisError, OSError, ValueError) as exc:
        raise SharedStoreError(f"--shared {safe_url(url)}: {exc}") from None
    return client


class RedisLedger:
    """``BudgetLedger`` over rolling windows in Redis, shared by every run on one scope."""

    def __init__(
        self,
        client: aioredis.Redis,
        scope: str,
        windows: list[Window],
        clock: Clock,
        *,
        hold_s: float = 360.0,
        where: str = "",
    ) -> None:
        self.client = client
        self.where = where  # the --shared URL without its password, for batch bookings
        self.scope = scope
        self.windows = windows
        self.clock = clock
        self.hold_s = hold_s
        self._keys = budget_keys(scope)
        self._limits = [""] * 4
        for w in windows:
            self._limits[_SLOTS[(w.kind, w.seconds)]] = repr(w.limit)
        self._by_slot = {_SLOTS[(w.kind, w.seconds)]: w for w in windows}
        self._reserve = client.register_script(_RESERVE)
        self._settle = client.register_script(_SETTLE)
        self._book = client.register_script(_BOOK)
        self._ids = itertools.count()
        self._prefix = f"{os.getpid()}-{uuid.uuid4().hex[:8]}-"
        self._seen: dict[Window, tuple[float, float]] = {}
        self._held = {"cost": 0.0, "tokens": 0.0}
        self._broken: str | None = None

    async def _call(self, script: Any, args: list[Any]) -> Any:
        if self._broken is not None:
            raise SharedStoreError(self._broken)
        try:
            return await script(keys=self._keys, args=args)
        except (RedisError, OSError) as exc:
            self._broken = f"the shared budget store stopped answering: {exc}"
            raise SharedStoreError(self._broken) from None

    async def reserve(self, cost: float, tokens: int) -> Hold | Refusal:
        key = self._prefix + str(next(self._ids))
        ok, out = await self._call(
            self._reserve, [repr(cost), tokens, self.hold_s, key, *self._limits]
        )
        need = {"cost": cost, "tokens": float(tokens)}
        failing = []
        resets: list[float] = []
        may_fit_later = True
        for i in range(0, len(out), 4):
            w = self._by_slot[int(out[i]) - 1]
            spent, held = float(out[i + 1]), float(out[i + 2])
            self._seen[w] = (spent, held)
            if ok or spent + held + need[w.kind] <= w.limit + 1e-12:
                continue
            failing.append((w, spent, held))
            if held <= 0 or spent + need[w.kind] > w.limit:
                may_fit_later = False
            if out[i + 3]:
                resets.append(float(out[i + 3]))
        if ok:
            self._held["cost"] += cost
            self._held["tokens"] += tokens
            return Hold(cost, tokens, key)
        resets_at = max(resets) if len(resets) == len(failing) else None
        return window_refusal(failing, need, self.scope, resets_at, may_fit_later)

    async def settle(self, hold: Hold, cost: float, tokens: int) -> None:
        self._held["cost"] -= hold.cost
        self._held["tokens"] -= hold.tokens
        await self._call(self._settle, [hold.key, repr(cost), tokens])

    async def book(self, hold: Hold, cost: float, tokens: int, booking: str) -> dict[str, Any]:
        """``hold`` becomes a provider batch's spend, kept with its buckets under ``booking``."""
        self._held["cost"] -= hold.cost
        self._held["tokens"] -= hold.tokens
        await self._call(self._book, [hold.key, booking, repr(cost), tokens])
        return {"store": "redis", "where": self.where, "scope": self.scope, "id": booking}

    def statistics(self) -> BudgetStatistics:
        cost = next((w for w in self.windows if w.kind == "cost"), None)
        tok = next((w for w in self.windows if w.kind == "tokens"), None)
        cs = self._seen.get(cost, (0.0, 0.0)) if cost else (0.0, 0.0)
        ts = self._seen.get(tok, (0.0, 0.0)) if tok else (0.0, 0.0)
        return BudgetStatistics(
            cost.limit if cost else None,
            int(tok.limit) if tok else None,
            cs[0],
            int(ts[0]),
            cs[1],
            int(ts[1]),
        )

    async def aclose(self) -> None:
        try:
            await self.client.aclose()
        except (RedisError, OSError):
            pass


async def redis_status(url: str, scope: str | None) -> list[WindowUse]:
    """``budget status --shared``: every scope's (or one scope's) hour and day."""
    client = await connect(url)
    try:
        if scope is None:
            scopes = sorted(
                {
                    k.decode()[len(PREFIX) :].partition("}")[0].lstrip("{")
                    async for k in client.scan_iter(match=PREFIX + "*")
                }
            )
        else:
            scopes = [scope]
        status = client.register_script(_STATUS)
        out = []
        for s in scopes:
            hc, ht, dc, dt, c, tk, n = (float(x) for x in await status(keys=budget_keys(s)))
            for seconds, cost, tokens in ((HOUR, hc, ht), (DAY, dc, dt)):
                out.append(WindowUse(s, seconds, cost, int(tokens), c, int(tk), int(n)))
        return out
    except RedisError as exc:
        raise SharedStoreError(f"--shared {safe_url(url)}: {exc}") from None
    finally:
        await client.aclose()


async def settle_redis_booking(
    url: str, scope: str, booking: str, cost: float, tokens: int
) -> bool:
    """Replace a batch's booking by its real cost; False: settled before (or aged out)."""
    client = await connect(url)
    try:
        script = client.register_script(_SETTLE_BOOKING)
        return bool(await script(keys=budget_keys(scope), args=[booking, repr(cost), tokens]))
    except RedisError as exc:
        raise SharedStoreError(f"--shared {safe_url(url)}: {exc}") from None
    finally:
        await client.aclose()


async def redis_reset(url: str, scope: str) -> None:
    """``budget reset --shared``: forget one scope."""
    client = await connect(url)
    try:
        await client.delete(*budget_keys(scope))
    except RedisError as exc:
        raise SharedStoreError(f"--shared {safe_url(url)}: {exc}") from None
    finally:
        await client.aclose()
