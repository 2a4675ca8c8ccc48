"""The Redis ledger and limiter against a real redis-server (tests/redis_server.py)."""

from __future__ import annotations

import json
import time

import anyio
import pytest

from llmbatch._budget.ledger import Hold, Refusal
from llmbatch._budget.redis import RedisLedger, connect
from llmbatch._budget.windows import HOUR, Window
from llmbatch._config.settings import ModelLimits, ProviderSettings
from llmbatch._core.exceptions import SharedStoreError
from llmbatch._core.headers import RateLimitHint
from llmbatch._limits.ratelimit import ModelGate
from llmbatch._limits.redis_limit import RedisLimiter, SharedBreaker, limiter_prefix, namespace
from tests.conftest import CANARY_OPENAI, run_cli
from tests.redis_server import RedisServer

pytestmark = pytest.mark.anyio

PER_HOUR = Window("cost", HOUR, 0.05, "--budget-per-hour")


class NoSleep:
    """The real clock, noting each sleep (the ledger never sleeps)."""

    def __init__(self) -> None:
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        await anyio.sleep(seconds)


async def ledger(server: RedisServer, hold_s: float = 360.0) -> RedisLedger:
    return RedisLedger(await connect(server.url), "default", [PER_HOUR], NoSleep(), hold_s=hold_s)


async def test_ledger_shared_by_two_runs(redis_server: RedisServer) -> None:
    a, b = await ledger(redis_server), await ledger(redis_server)
    total = 0.0
    for i in range(200):
        led = (a, b)[i % 2]
        hold = await led.reserve(0.002, 10)
        if isinstance(hold, Refusal):
            refusal = hold
            break
        await led.settle(hold, 0.001, 5)
        total += 0.001
    assert refusal.reason == "budget_window" and not refusal.may_fit_later
    assert 0.05 - 0.002 <= total + 1e-9 <= 0.05
    assert refusal.resets_at is not None and "--budget-per-hour 0.05" in refusal.message
    stats = led.statistics()  # the one refused last saw every settle
    assert stats.limit_cost == 0.05 and stats.spent_cost == pytest.approx(total)
    await a.aclose()
    await b.aclose()


async def test_holds_in_flight_then_a_dead_run(redis_server: RedisServer) -> None:
    dead = await ledger(redis_server, hold_s=0.3)
    for _ in range(4):
        assert isinstance(await dead.reserve(0.01, 0), Hold)  # never settled: killed
    alive = await ledger(redis_server)
    refusal = await alive.reserve(0.02, 0)
    assert isinstance(refusal, Refusal) and refusal.may_fit_later
    await anyio.sleep(0.4)
    # Past its deadline the dead run's room counts as spent at its worst case.
    refusal = await alive.reserve(0.02, 0)
    assert isinstance(refusal, Refusal) and not refusal.may_fit_later
    assert isinstance(await alive.reserve(0.01, 0), Hold)
    await dead.aclose()
    await alive.aclose()


async def test_ledger_fails_closed_when_redis_goes(redis_server: RedisServer) -> None:
    led = await ledger(redis_server)
    hold = await led.reserve(0.001, 1)
    assert isinstance(hold, Hold)
    redis_server.stop()
    with pytest.raises(SharedStoreError):
        await led.settle(hold, 0.001, 1)
    with pytest.raises(SharedStoreError):
        await led.reserve(0.001, 1)
    await led.aclose()
    with pytest.raises(SharedStoreError):
        await connect(redis_server.url)


async def test_limiter_shares_one_pace(redis_server: RedisServer) -> None:
    client = await connect(redis_server.url)
    limits = ModelLimits(rpm=6000)
    prefix = limiter_prefix(ProviderSettings("openai", "openai"), "gpt-x")
    clocks = [NoSleep() for _ in range(3)]
    limiters = [
        # Local gates unlimited here: the shared slots alone.
        RedisLimiter(ModelGate(ModelLimits()), limits, client, prefix, clock)
        for clock in clocks
    ]
    start = float((await client.time())[0])
    async with anyio.create_task_group() as tg:
        for lim in limiters:
            for _ in range(10):
                tg.start_soon(lim.acquire, 10, 10)
    # 30 sends share one schedule: the next free slot is 30 steps on, at least.
    step = 60 / (6000 * RedisLimiter.SHARED_MARGIN)
    tat = float(await client.get(prefix + ":req") or 0)
    assert tat - start >= 30 * step - 1.0  # TIME's seconds part was truncated
    assert any(c.slept for c in clocks)  # someone waited for a slot
    assert all(lim.processes == 3 for lim in limiters)
    assert limiters[0].describe()["shared"] == "redis"
    await client.aclose()


async def test_limiter_shares_pauses_and_falls_back(redis_server: RedisServer) -> None:
    client = await connect(redis_server.url)
    limits = ModelLimits()  # learned
    prefix = limiter_prefix(ProviderSettings("openai", "openai"), "gpt-y")
    a = RedisLimiter(ModelGate(limits), limits, client, prefix, NoSleep())
    b_clock = NoSleep()
    b = RedisLimiter(ModelGate(limits), limits, client, prefix, b_clock)
    await a.acquire(1, 1)
    await b.acquire(1, 1)
    # a learns a pause and a rate: the quota is spent (a lone 429 without that evidence
    # would slow nobody)…
    a.on_rate_limited(
        1.0, RateLimitHint(requests_limit=600, requests_remaining=0, requests_reset_s=1.0)
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(a.acquire, 1, 1)  # publishes them, then sleeps out its own pause
        await anyio.sleep(0.05)
        await b.acquire(1, 1)  # … and b waits for the pause too
    assert b_clock.slept and max(b_clock.slept) > 0.5
    assert b.gate.requests.rate == a.gate.requests.rate
    rate = b.gate.requests.rate
    assert rate is not None
    redis_server.stop()
    await b.acquire(1, 1)  # no error: local pacing at our share
    assert b.down is not None and b.gate.requests.rate == pytest.approx(rate / 2)
    assert "redis down" in str(b.describe()["shared"])
    await client.aclose()


def test_namespace_hides_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = ProviderSettings("openai", "openai", base_url="http://127.0.0.1:1/v1")
    monkeypatch.setenv("OPENAI_API_KEY", CANARY_OPENAI)
    one = namespace(settings)
    assert CANARY_OPENAI not in one and "DO-NOT-LEAK" not in limiter_prefix(settings, "m")
    monkeypatch.setenv("OPENAI_API_KEY", CANARY_OPENAI + "x")
    assert namespace(settings) != one


def test_budget_status_and_reset_on_redis(redis_server: RedisServer) -> None:
    async def spend() -> None:
        led = RedisLedger(await connect(redis_server.url), "team", [PER_HOUR], NoSleep())
        hold = await led.reserve(0.01, 100)
        assert isinstance(hold, Hold)
        await led.settle(hold, 0.004, 40)
        await led.aclose()

    anyio.run(spend)
    res = run_cli("budget", "status", "--json", "--shared", redis_server.url)
    assert res.code == 0, res.output
    rows = json.loads(res.stdout)
    assert [(r["scope"], r["window"]) for r in rows] == [("team", "hour"), ("team", "day")]
    assert rows[0]["spent_usd"] == pytest.approx(0.004) and rows[0]["spent_tokens"] == 40
    assert run_cli("budget", "reset", "--scope", "team", "--shared", redis_server.url).code == 0
    res = run_cli("budget", "status", "--json", "--shared", redis_server.url)
    assert json.loads(res.stdout) == []


async def test_a_breaker_trip_reaches_every_process(redis_server: RedisServer) -> None:
    client = await connect(redis_server.url)
    prefix = limiter_prefix(ProviderSettings("openai", "openai"), "gpt-z")
    limits = ModelLimits()
    breakers = [SharedBreaker(), SharedBreaker()]
    a, b = (
        RedisLimiter(ModelGate(limits), limits, client, prefix, NoSleep(), breaker=br)
        for br in breakers
    )
    await b.acquire(1, 1)
    for _ in range(breakers[0].threshold):
        breakers[0].record_failure()  # the model keeps failing for a
    assert breakers[0].is_open and not breakers[1].is_open
    await a.acquire(1, 1)  # a tells the others …
    await b.acquire(1, 1)  # … and b skips the model too
    assert not breakers[1].allow() and breakers[1].trips == 1
    await client.aclose()
