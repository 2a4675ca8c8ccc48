"""Pacing, learned limits, backoff and breakers, on a fake clock: no sleeping, no wall clock."""

from __future__ import annotations

import random

import anyio
import pytest

from llmbatch._config.settings import ModelLimits
from llmbatch._core.events import BreakerChanged, LimitChanged
from llmbatch._core.headers import RateLimitHint, hint_from_headers
from llmbatch._core.retry import RETRY_AFTER_JITTER_S, Backoff
from llmbatch._limits.breaker import Breaker
from llmbatch._limits.learned import RateLearner
from llmbatch._limits.ratelimit import ModelGate, Pacer
from llmbatch.testing import FakeClock
from tests.fakeapi import FakeAPI
from tests.limits_sim import LIMITED, SimResult, SimServer, simulate

# -- the fake clock ------------------------------------------------------------------------


async def test_advance_wakes_due_sleepers_in_deadline_order() -> None:
    clock = FakeClock(start=100.0, wall_start=5000.0)
    woke: list[str] = []

    async def nap(name: str, seconds: float) -> None:
        await clock.sleep(seconds)
        woke.append(name)

    async with anyio.create_task_group() as tg:
        tg.start_soon(nap, "late", 2.0)
        tg.start_soon(nap, "early", 1.0)
        tg.start_soon(nap, "tie", 1.0)
        await anyio.lowlevel.checkpoint()
        assert clock.next_deadline == 101.0
        clock.advance(0.5)
        await anyio.lowlevel.checkpoint()
        assert woke == []
        clock.advance(0.5)
        await anyio.wait_all_tasks_blocked()
        assert woke == ["early", "tie"]  # equal deadlines: in the order they slept
        clock.advance(5.0)
    assert woke == ["early", "tie", "late"]
    assert clock.monotonic() == 106.0 and clock.time() == 5006.0


async def test_autojump_runs_sleeps_in_virtual_time() -> None:
    clock = FakeClock()
    start = clock.monotonic()
    order: list[tuple[str, float]] = []
    ready = anyio.Event()

    async def sleeper(name: str, seconds: float) -> None:
        await clock.sleep(seconds)
        order.append((name, clock.monotonic() - start))
        if name == "b":
            ready.set()

    async def waiter() -> None:
        await ready.wait()  # blocked on an event, not the clock: time still moves
        await clock.sleep(10.0)
        order.append(("after b", clock.monotonic() - start))

    async with clock.autojump(), anyio.create_task_group() as tg:
        tg.start_soon(sleeper, "a", 3600.0)
        tg.start_soon(sleeper, "b", 60.0)
        tg.start_soon(waiter)
    assert order == [("b", 60.0), ("after b", 70.0), ("a", 3600.0)]


async def test_sleep_zero_does_not_move_time_and_a_cancelled_sleep_is_forgotten() -> None:
    clock = FakeClock()
    await clock.sleep(0)
    assert clock.monotonic() == 1000.0
    with anyio.move_on_after(0.01):  # real time: the fake clock never moves here
        await clock.sleep(50.0)
    assert clock.next_deadline is None
    with pytest.raises(ValueError):
        clock.advance(-1)


# -- pacing ------------------------------------------------------------------------------------


def test_pacer_spreads_slots_evenly() -> None:
    clock = FakeClock()
    p = Pacer(10.0, clock=clock)  # 10 per second, no burst
    waits = [p.reserve() for _ in range(5)]
    assert waits == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])
    clock.advance(10.0)  # idle time is not banked beyond the burst
    assert p.reserve() == 0.0 and p.reserve() == pytest.approx(0.1)


def test_pacer_burst_is_bounded_by_seconds_not_minutes() -> None:
    p = Pacer(100.0, burst_s=1.0, clock=FakeClock())
    free = sum(1 for _ in range(500) if p.reserve() <= 0.0)
    assert free == 101  # one second's worth (and the slot at its edge)


def test_pacer_pause_follows_the_clock() -> None:
    clock = FakeClock()
    p = Pacer(None, clock=clock)
    p.pause(5.0)
    assert p.reserve() == 5.0
    clock.advance(4.0)
    assert p.reserve() == 1.0
    clock.advance(1.0)
    assert p.reserve() == 0.0


async def test_given_rpm_paces_acquisitions_on_the_clock() -> None:
    clock = FakeClock()
    gate = ModelGate(ModelLimits(rpm=600), clock=clock)
    start = clock.monotonic()
    async with clock.autojump():
        for _ in range(11):
            await gate.acquire(10, 10)
    # 10 steps at 98% of 10 per second
    assert clock.monotonic() - start == pytest.approx(10 / (10 * ModelGate.GIVEN_MARGIN))


# -- backoff -----------------------------------------------------------------------------------


def test_equal_jitter_gaps_grow_with_each_failure() -> None:
    backoff = Backoff(cap=60.0, base=0.5, rng=random.Random(3))
    for tries in range(1, 9):
        ceiling = min(60.0, 0.5 * 2 ** (tries - 1))
        gaps = [backoff.delay(tries) for _ in range(200)]
        assert all(ceiling / 2 <= g <= ceiling for g in gaps)
        assert max(gaps) - min(gaps) > ceiling / 4  # still jittered
    # The shortest gap after the fourth failure is longer than the longest after the first.
    assert min(backoff.delay(4) for _ in range(100)) > max(backoff.delay(1) for _ in range(100))


def test_retry_after_wins_capped_with_a_little_jitter() -> None:
    backoff = Backoff(cap=30.0, rng=random.Random(5))
    told = [backoff.delay(1, 2.0) for _ in range(100)]
    assert all(2.0 <= d <= 2.0 + RETRY_AFTER_JITTER_S for d in told)
    assert len(set(told)) > 90
    assert 30.0 <= backoff.delay(1, 600.0) <= 30.0 + RETRY_AFTER_JITTER_S
    again = Backoff(cap=30.0, rng=random.Random(5))
    assert [again.delay(1, 2.0) for _ in range(100)] == told  # seeded: replays exactly


# -- the gate's reading of 429s ------------------------------------------------------------


def _rate(gate: ModelGate) -> float | None:
    return gate.requests.rate


def _plenty() -> RateLimitHint:
    return RateLimitHint(1_000_000, 999_000, 60.0, 2e6, 1.9e6, 60.0)


def test_a_429_with_quota_left_slows_nobody() -> None:
    clock = FakeClock()
    events: list[LimitChanged] = []
    gate = ModelGate(ModelLimits(), clock=clock, name="openai:m", on_change=events.append)
    for _ in range(20):
        gate.on_success(_plenty())
    rate = _rate(gate)
    for _ in range(10):
        gate.on_rate_limited(1.0, _plenty())
        clock.advance(0.1)
    assert _rate(gate) == rate
    assert gate.requests.paused_until <= clock.monotonic()  # only its own request waits
    assert [e.reason for e in events] == ["headers"]
    assert events[0].model == "openai:m" and events[0].rpm_after == pytest.approx(980_000)
    assert gate.describe()["rate_limited"] == 10


async def test_a_streak_of_429s_holds_until_the_quota_frees_then_measures_it() -> None:
    clock = FakeClock()
    events: list[LimitChanged] = []
    gate = ModelGate(ModelLimits(), clock=clock, name="x:m", on_change=events.append)
    first_send = clock.monotonic()
    async with clock.autojump():
        for _ in range(40):
            await gate.acquire(1, 1)
            clock.advance(0.01)
            gate.settle(1, 1, 1, 1)
            gate.on_success(None)
    assert _rate(gate) is None  # open until something says otherwise
    async with clock.autojump():
        for _ in range(11):  # in flight as the quota runs out
            await gate.acquire(1, 1)
    for _ in range(10):
        gate.settle(1, 1, 0, 0)
        gate.on_rate_limited(2.0, None)
    cuts = [e for e in events if e.reason == "rate_limited"]
    assert len(cuts) == 1 and cuts[0].rpm_before is None  # one run of 429s: one cut
    # Nothing is sent until a horizon after the oldest request (past the retry-after)...
    hold = RateLearner.HORIZON + RateLearner.ARRIVAL_S
    assert gate.requests.paused_until == pytest.approx(first_send + hold)
    assert gate.requests.paused_until > clock.monotonic() + 2.0
    clock.advance(1.0)
    gate.settle(1, 1, 1, 1)
    gate.on_success(None)  # the last one in flight got through: it counts
    clock.advance(RateLearner.HORIZON)
    async with clock.autojump():
        await gate.acquire(1, 1)
    # ...then the limit is what got through over the horizon, paced at 95% of it.
    assert events[-1].reason == "limit measured"
    assert events[-1].rpm_after == pytest.approx(RateLearner.MARGIN * 41 / RateLearner.HORIZON * 60)
    assert len([e for e in events if e.reason == "rate_limited"]) == 1
    assert gate.describe()["source"] == "learned"


def test_exhausted_quota_pauses_until_the_reset() -> None:
    clock = FakeClock()
    hint = hint_from_headers(
        {
            "anthropic-ratelimit-requests-limit": "4000",
            "anthropic-ratelimit-requests-remaining": "3999",
            "anthropic-ratelimit-tokens-remaining": "90000",
            "anthropic-ratelimit-output-tokens-remaining": "0",
            "anthropic-ratelimit-output-tokens-reset": "20s",
        }
    )
    assert hint is not None and hint.tokens_remaining == 0
    gate = ModelGate(ModelLimits(), clock=clock)
    gate.on_success(hint)
    assert gate.requests.paused_until == pytest.approx(clock.monotonic() + 20)
    assert _rate(gate) == pytest.approx(4000 / 60 * ModelGate.GIVEN_MARGIN)


def test_a_stated_token_limit_paces_tokens() -> None:
    gate = ModelGate(ModelLimits(), clock=FakeClock())
    assert gate.tokens.rate is None
    gate.on_success(hint_from_headers({"x-ratelimit-limit-tokens": "60000"}))
    assert gate.tokens.rate == pytest.approx(1000 * ModelGate.GIVEN_MARGIN)
    assert gate.describe()["tpm"] == 60000
    given = ModelGate(ModelLimits(tpm=6000), clock=FakeClock())
    given.on_success(hint_from_headers({"x-ratelimit-limit-tokens": "60000"}))
    assert given.tokens.rate == pytest.approx(100)  # a given limit stays as given


def test_given_rpm_pauses_only_on_repeated_429s() -> None:
    clock = FakeClock()
    gate = ModelGate(ModelLimits(rpm=1200), clock=clock)
    gate.on_rate_limited(1.0, None)
    assert gate.requests.paused_until <= clock.monotonic()  # lone: scheduling jitter
    clock.advance(0.5)
    gate.on_rate_limited(1.0, None)
    assert gate.requests.paused_until == pytest.approx(clock.monotonic() + 1.0)
    assert _rate(gate) == pytest.approx(20 * ModelGate.GIVEN_MARGIN)  # never learned down


# -- simulations: a provider and the attempt loop, in virtual time ------------------------


def _run(
    limits: ModelLimits, jobs: int, concurrency: int = 32, jitter: float = 0.0, **server: object
) -> Sim:
    async def go() -> Sim:
        clock = FakeClock()
        events: list[LimitChanged] = []
        gate = ModelGate(limits, clock=clock, name="sim:m", on_change=events.append)
        srv = SimServer(clock, **server)  # type: ignore[arg-type]
        result = await simulate(gate, srv, jobs=jobs, concurrency=concurrency, jitter=jitter)
        return Sim(result, events, gate)

    return anyio.run(go)


class Sim:
    def __init__(self, result: SimResult, events: list[LimitChanged], gate: ModelGate) -> None:
        self.result = result
        self.events = events
        self.gate = gate


CLEAN_300 = _run(ModelLimits(), 300).result.elapsed


def test_random_429s_with_quota_left_do_not_slow_the_run() -> None:
    sim = _run(ModelLimits(), 300, noise_429=0.08)
    r = sim.result
    assert r.done == 300 and r.outcomes["noise_429"] > 10
    assert [e.reason for e in sim.events] == ["headers"]  # the rate never moved down
    assert r.elapsed <= 3 * CLEAN_300


def test_chaos_with_quota_left_finishes_within_three_times_the_clean_run() -> None:
    r = _run(ModelLimits(), 300, noise_429=0.08, noise_5xx=0.13).result
    assert r.done == 300 and r.outcomes["500"] > 20
    assert r.elapsed <= 3 * CLEAN_300


def test_random_429s_without_headers_are_recognised_as_noise() -> None:
    sim = _run(ModelLimits(), 3000, noise_429=0.08, headers=False)
    r = sim.result
    assert r.done == 3000
    assert any(e.reason == "429s do not follow our pace" for e in sim.events)
    told = _run(ModelLimits(), 3000, noise_429=0.08).result  # headers said quota remains
    assert r.elapsed <= 1.5 * told.elapsed
    # Within seconds it runs as fast as if the headers had said so.
    assert r.pace(15.0, 25.0) >= 0.9 * told.pace(15.0, 25.0)


def test_a_burst_of_429s_at_the_start_does_lasting_harm_to_nothing() -> None:
    sim = _run(ModelLimits(), 3000, burst_429s=30, headers=False)
    r = sim.result
    clean = _run(ModelLimits(), 3000, headers=False).result
    assert r.done == 3000
    assert sim.events[0].reason == "rate_limited"  # it did take the burst for a spent quota
    # but as the answers came in, almost nothing had got through: not a quota we spent
    assert sim.events[1].reason == "not a spent quota" and sim.events[1].rpm_after is None
    assert r.elapsed <= clean.elapsed + 5.0  # and got over it within seconds
    assert r.pace(10.0, 15.0) >= 0.9 * clean.pace()


def test_a_genuine_limit_without_rpm_is_learned_close_to_its_pace() -> None:
    # 600/min, enforced in 5-second windows; no headers, no --rpm.
    r = _run(ModelLimits(), 1500, limit=50, window_s=5.0, headers=False).result
    assert r.done == 1500
    assert r.pace() >= 0.8 * 10.0
    assert r.rejected_share <= 0.03, r.outcomes


def test_a_sliding_window_with_a_fixed_retry_after_is_learned_without_collapse() -> None:
    # As tests/fakeapi.py enforces it: 50 in any 5 s, and "retry-after: 1" whatever the wait.
    sim = _run(
        ModelLimits(), 3000, limit=50, window_s=5.0, headers=False, sliding=True,
        limit_retry_after=1.0,
    )  # fmt: skip
    r = sim.result
    assert r.done == 3000
    assert r.pace() >= 0.8 * 10.0
    assert r.rejected_share <= 0.03, r.outcomes
    late = [e.rpm_after for e in sim.events if e.ts - FakeClock().time() > 60.0]
    assert late and min(x or 0.0 for x in late) >= 0.8 * 600  # it never sank far below


_RETRY: dict[str, dict[str, object]] = {
    "retry-after 1": {"limit_retry_after": 1.0},  # as tests/fakeapi.py says by default
    "retry-after until free": {},  # the real wait, as llmock says
    "whole seconds until free": {"whole_seconds": True},  # rounded up, as providers say
    "no retry-after": {"no_retry_after": True},
}


@pytest.mark.parametrize("retry", list(_RETRY))
@pytest.mark.parametrize("kind", ["fixed", "sliding"])
@pytest.mark.parametrize("jitter", [0.0, 0.15])
def test_a_genuine_limit_in_windows_is_measured_after_the_first_burst(
    kind: str, retry: str, jitter: float
) -> None:
    # The live case: 600/min in 5 s windows of 50, no headers, no --rpm, -c 32. The first
    # burst spends the quota; with jitter, answers and 429s interleave as on a real loop.
    server = {"limit": 50, "window_s": 5.0, "headers": False, "sliding": kind == "sliding"}
    sim = _run(ModelLimits(), 600, 32, jitter, **server, **_RETRY[retry])
    r = sim.result
    assert r.done == 600
    assert r.pace() >= 0.8 * 10.0, [(e.rpm_after, e.reason) for e in sim.events]
    assert r.rejected_share <= 0.03, r.outcomes
    measured = [e for e in sim.events if e.reason == "limit measured"]
    assert measured and all(0.8 * 600 <= (e.rpm_after or 0.0) <= 600 for e in measured)


def test_a_genuine_limit_with_headers_is_held_under() -> None:
    r = _run(ModelLimits(), 1500, limit=50, window_s=5.0).result
    assert r.done == 1500 and r.pace() >= 0.9 * 10.0
    assert r.rejected_share <= 0.01, r.outcomes


def test_a_given_rpm_runs_at_full_pace_with_almost_no_429s() -> None:
    # 1,200/min enforced in half-second windows, --rpm 1200.
    r = _run(ModelLimits(rpm=1200), 1500, limit=10, window_s=0.5, headers=False).result
    assert r.done == 1500
    assert r.pace() >= 0.95 * 20.0
    assert r.rejected_share <= 0.01, r.outcomes


def test_llmock_sixty_a_minute() -> None:
    # A token bucket of 60, refilled at 1/s, with headers and retry-after on 429s.
    r = _run(ModelLimits(), 100, limit=60, window_s=60.0, bucket=True).result
    assert r.done == 100 and r.outcomes.get(LIMITED, 0) == 0
    assert r.elapsed <= 75.0  # 32 at once, then paced at 0.98/s


def test_llmock_sixty_a_minute_without_headers_still_finishes() -> None:
    r = _run(ModelLimits(), 100, limit=60, window_s=60.0, bucket=True, headers=False).result
    assert r.done == 100
    assert r.elapsed <= 70.0  # the bucket lets 100 through in 41 s at best


# -- the loopback fake's windows (what bench/limits_live.py runs against) -------------------


@pytest.mark.parametrize("kind", ["fixed", "sliding"])
def test_the_fake_enforces_windows_and_can_say_the_real_wait(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [100.0]
    monkeypatch.setattr("tests.fakeapi.time.monotonic", lambda: now[0])
    fake = FakeAPI(window_limit=2, window_s=5.0, window_kind=kind, window_retry="until_free")

    def at(t: float) -> tuple[str, float | None]:
        now[0] = t
        return fake._plan_with_wait({})

    assert at(100.0) == ("ok", None) and at(103.0) == ("ok", None)
    assert at(104.0) == ("429", 1.0)  # both free a slot at 105
    assert at(105.0) == ("ok", None)
    # A fixed window starts afresh at 105; a sliding one still holds the send at 103.
    fault, wait = at(105.0)
    if kind == "fixed":
        assert (fault, wait) == ("ok", None)
    else:
        assert (fault, wait) == ("429", 3.0)
        assert fake._error("openai", 429, "limited", wait).headers["retry-after"] == "3"
    fake.window_retry = "given"  # the default: whatever ``retry_after`` says
    assert fake._error("openai", 429, "limited", 4.2).headers["retry-after"] == "0.05"


# -- breakers ----------------------------------------------------------------------------------


def _is_open(b: Breaker) -> bool:
    return b.is_open  # a call: mypy must not narrow the property across state changes


def test_breaker_opens_then_probes_on_the_clock() -> None:
    clock = FakeClock()
    events: list[BreakerChanged] = []
    b = Breaker(threshold=3, cooldown=15.0, clock=clock, name="x:m", on_change=events.append)
    for _ in range(3):
        assert b.allow()
        b.record_failure()
    assert _is_open(b) and not b.allow()
    clock.advance(14.9)
    assert not b.allow()
    clock.advance(0.1)
    assert b.allow()  # the probe
    assert not b.allow()  # only one
    b.record_success()
    assert b.allow() and not _is_open(b)
    assert b.consecutive == 0 and b.trips == 1
    assert [(e.state, e.model) for e in events] == [("open", "x:m"), ("closed", "x:m")]
    assert events[0].consecutive_failures == 3 and events[0].ts == clock.time() - 15.0


def test_a_failed_probe_doubles_the_cooldown_up_to_the_cap() -> None:
    clock = FakeClock()
    events: list[BreakerChanged] = []
    b = Breaker(threshold=2, cooldown=10.0, max_cooldown=30.0, clock=clock, on_change=events.append)
    b.record_failure()
    b.record_failure()
    for expected in (20.0, 30.0, 30.0):
        clock.advance(b.cooldown)
        assert b.allow()
        b.record_failure()
        assert b.cooldown == expected and not b.allow()
    assert [e.state for e in events] == ["open"]  # still open all along: one event
    clock.advance(30.0)
    assert b.allow()
    b.record_success()
    assert b.cooldown == 15.0 and [e.state for e in events] == ["open", "closed"]


@pytest.mark.parametrize("kind", ["fixed", "sliding"])
def test_a_short_window_with_a_precise_retry_after_is_measured_over_that_window(
    kind: str,
) -> None:
    # 1,200/min enforced in half-second windows, no headers, no --rpm; the 429s say
    # when the quota frees ("retry-after" the real wait, under a second). Measured over
    # a whole horizon instead, the limit would come out ten times too low (2/s). The
    # measurement adds the arrival margin to the window, so it lands near two thirds.
    server = {"limit": 10, "window_s": 0.5, "headers": False, "sliding": kind == "sliding"}
    sim = _run(ModelLimits(), 600, 32, 0.0, **server)
    r = sim.result
    assert r.done == 600
    assert r.pace() >= 0.6 * 20.0, [(e.rpm_after, e.reason) for e in sim.events]
    assert r.rejected_share <= 0.05, r.outcomes
