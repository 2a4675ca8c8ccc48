"""Prompt caching, the parts without a server: prefix groups, the warm-up gate, the marks."""

from __future__ import annotations

from typing import Any

import anyio
import anyio.lowlevel
import pytest

from llmbatch._core.jobs import Request
from llmbatch._core.models import ModelRef
from llmbatch._core.prefix import PrefixInfo, anthropic_min_tokens, openai_extended_retention
from llmbatch._core.pricing import Price
from llmbatch._core.states import Status
from llmbatch._core.usage import Usage
from llmbatch._engine.prefix import PrefixGroups, candidates
from llmbatch._engine.warmup import PrefixWarmup, warmup_key
from llmbatch._report.render import render_report
from llmbatch.providers._prefix import count_breakpoints, mark_prefix
from llmbatch.providers.anthropic import build_anthropic_body
from llmbatch.providers.openai import build_openai_body
from llmbatch.testing import FakeClock

pytestmark = pytest.mark.anyio

SONNET = ModelRef("anthropic", "claude-sonnet-4-5")
LONG = "You are a careful grader. " * 400  # ~10,000 characters: ~2,500 tokens


# -- the gate -----------------------------------------------------------------------


async def test_the_first_request_of_a_group_goes_alone_then_the_rest_together() -> None:
    gate = PrefixWarmup()
    log: list[str] = []
    release = anyio.Event()

    async def job(i: int) -> None:
        async def call() -> str:
            log.append(f"start {i}")
            if i == 0:
                await release.wait()
            log.append(f"end {i}")
            return "answer"

        await gate.send("g", call)

    async with anyio.create_task_group() as tg:
        tg.start_soon(job, 0)
        await anyio.wait_all_tasks_blocked()
        for i in range(1, 5):
            tg.start_soon(job, i)
        await anyio.wait_all_tasks_blocked()
        assert log == ["start 0"]  # the others wait for the warm-up
        release.set()
    assert log[:2] == ["start 0", "end 0"]
    assert sorted(log[2:]) == sorted(
        [f"start {i}" for i in range(1, 5)] + [f"end {i}" for i in range(1, 5)]
    )
    assert gate.warmups == 1 and gate.waits == 4


async def test_a_failed_warm_up_lets_exactly_one_more_go_alone() -> None:
    gate = PrefixWarmup()
    in_flight = 0
    peak_before_ok = 0
    ok_seen = False
    outcomes = iter([RuntimeError("529"), RuntimeError("529"), "ok"])

    async def job() -> None:
        async def call() -> object:
            nonlocal in_flight, peak_before_ok, ok_seen
            in_flight += 1
            if not ok_seen:
                peak_before_ok = max(peak_before_ok, in_flight)
            await anyio.lowlevel.checkpoint()
            outcome = next(outcomes, "ok")
            ok_seen = ok_seen or outcome == "ok"
            in_flight -= 1
            return outcome

        await gate.send("g", call)

    async with anyio.create_task_group() as tg:
        for _ in range(6):
            tg.start_soon(job)
    assert peak_before_ok == 1  # failures never released the group
    assert gate.warmups == 3


async def test_a_cancelled_warm_up_does_not_block_its_group() -> None:
    gate = PrefixWarmup()

    async def hang() -> str:
        await anyio.sleep_forever()
        return "never"

    with anyio.move_on_after(0.01):
        await gate.send("g", hang)

    async def quick() -> str:
        return "ok"

    with anyio.fail_after(5):
        assert await gate.send("g", quick) == "ok"


async def test_no_key_passes_straight_through_and_an_idle_group_warms_again() -> None:
    clock = FakeClock()
    gate = PrefixWarmup(clock, idle_s=300)
    assert await gate.before_send(None) is False
    assert await gate.before_send("g") is True  # the lead
    gate.after_send("g", True)
    assert await gate.before_send("g") is False  # warm: no wait, not a lead
    clock.advance(301)
    assert await gate.before_send("g") is True  # the cache has expired: warm again


def test_the_gate_key_is_the_marked_group_on_the_model_sent_to() -> None:
    info = PrefixInfo("abc", 2000, 1024, "system", mark=True)
    assert warmup_key(info, "anthropic", "m") == "anthropic:m:abc"
    assert warmup_key(PrefixInfo("abc", 200, 1024, "system"), "anthropic", "m") is None
    assert warmup_key(None, "anthropic", "m") is None
    sharded = PrefixInfo("abc", 2000, 1024, "system", mark=True, cache_key="llmbatch-abc-3")
    assert warmup_key(sharded, "openai", "m") == "openai:m:llmbatch-abc-3"


# -- prefix groups ------------------------------------------------------------------


def _req(system: str | None, *messages: str) -> Request:
    roles = ["user", "assistant"]
    return Request(
        messages=[{"role": roles[i % 2], "content": m} for i, m in enumerate(messages)],
        system=system,
    )


def _groups(
    reqs: list[Request], kind: str = "anthropic", ref: ModelRef = SONNET
) -> list[PrefixInfo | None]:
    groups = PrefixGroups(concurrency=64)
    cands = [candidates(ref, kind, r) for r in reqs]
    for c in cands:
        groups.count(c)
    return [groups.choose(c, kind, ref.model, f"j{i}", True) for i, c in enumerate(cands)]


def test_jobs_sharing_a_long_system_prompt_form_one_marked_group() -> None:
    chosen = _groups([_req(LONG, f"q{i}") for i in range(5)])
    keys = {c.key for c in chosen if c is not None}
    assert len(keys) == 1
    first = chosen[0]
    assert first is not None and first.mark and first.end == "system"
    assert first.group_size == 5 and first.tokens >= 2000


def test_a_short_or_unshared_prefix_is_not_marked() -> None:
    short = _groups([_req("Be brief.", f"q{i}") for i in range(3)])
    assert all(c is not None and not c.mark for c in short)  # a group, too short to cache
    unique = _groups([_req(LONG + str(i), "q") for i in range(3)])
    assert unique == [None, None, None]  # nothing shared
    none = _groups([_req(None, f"q{i}") for i in range(3)])
    assert none == [None, None, None]


def test_a_shared_few_shot_block_is_the_longer_prefix() -> None:
    shots = ["example question " * 300, "example answer"]
    chosen = _groups([_req(LONG, *shots, f"q{i}") for i in range(3)])
    assert chosen[0] is not None and chosen[0].end == "messages" and chosen[0].messages == 2


def test_a_template_head_is_a_prefix() -> None:
    head = "Read this policy carefully. " * 200
    reqs = [Request(messages=[{"role": "user", "content": head + f"Case {i}"}]) for i in range(3)]
    groups = PrefixGroups()
    cands = [candidates(SONNET, "anthropic", r, head) for r in reqs]
    for c in cands:
        groups.count(c)
    info = groups.choose(cands[0], "anthropic", SONNET.model, "j0", True)
    assert info is not None and info.end == "template" and info.split == len(head)
    body = build_anthropic_body(SONNET.model, Request(messages=reqs[0].messages, cache=info))
    blocks = body["messages"][0]["content"]
    assert blocks[0] == {"type": "text", "text": head, "cache_control": {"type": "ephemeral"}}
    assert blocks[1] == {"type": "text", "text": "Case 0"}


def test_minimum_lengths_and_retention_follow_the_docs() -> None:
    assert anthropic_min_tokens("claude-sonnet-4-5") == 1024
    assert anthropic_min_tokens("claude-3-5-haiku-latest") == 2048
    assert anthropic_min_tokens("claude-haiku-4-5") == 4096
    assert anthropic_min_tokens("claude-opus-4-5-20251101") == 4096
    assert openai_extended_retention("gpt-4.1") and openai_extended_retention("gpt-5.1")
    assert openai_extended_retention("gpt-4.1-2025-04-14")
    assert not openai_extended_retention("gpt-4o-mini")


def test_ttl_is_one_hour_when_the_run_outlasts_five_minutes() -> None:
    short, long_run = PrefixGroups(concurrency=64), PrefixGroups(concurrency=64)
    short.todo, long_run.todo = 1000, 10_000  # 16 and 157 waves of ~2 s
    assert short.ttl(1000) == "5m" and long_run.ttl(10_000) == "1h"


def test_openai_keys_spread_a_fast_group_under_15_a_minute_each() -> None:
    groups = PrefixGroups(concurrency=64)
    assert groups.key_shards(10_000) == 128  # 64 workers x 30 a minute / 15
    assert groups.key_shards(100) == 6  # each key worth its one cold request
    assert PrefixGroups(concurrency=1).key_shards(10_000) == 2


# -- the marks ------------------------------------------------------------------------


def _info(**kw: object) -> PrefixInfo:
    base: dict[str, object] = {"key": "k", "tokens": 2000, "min_tokens": 1024, "end": "system"}
    base.update(kw)
    base.setdefault("mark", True)
    return PrefixInfo(**base)  # type: ignore[arg-type]


def test_anthropic_marks_the_last_system_block_once() -> None:
    body = build_anthropic_body(
        "m", Request(messages=[{"role": "user", "content": "q"}], system=LONG, cache=_info())
    )
    assert body["system"] == [
        {"type": "text", "text": LONG, "cache_control": {"type": "ephemeral"}}
    ]
    assert count_breakpoints(body) == 1
    hour = build_anthropic_body(
        "m",
        Request(messages=[{"role": "user", "content": "q"}], system=LONG, cache=_info(ttl="1h")),
    )
    assert hour["system"][0]["cache_control"] == {"type": "ephemeral", "ttl": "1h"}
    unmarked = build_anthropic_body(
        "m",
        Request(messages=[{"role": "user", "content": "q"}], system=LONG, cache=_info(mark=False)),
    )
    assert unmarked["system"] == LONG


def test_the_jobs_own_breakpoints_are_never_moved_and_never_exceed_four() -> None:
    own = {"type": "text", "text": LONG, "cache_control": {"type": "ephemeral"}}
    body = {"system": [own], "messages": [{"role": "user", "content": "q"}]}
    assert mark_prefix(body, _info()) is False and body["system"] == [own]
    marked = {"type": "text", "text": "x", "cache_control": {"type": "ephemeral"}}
    full = {
        "system": [{"type": "text", "text": LONG}],
        "messages": [{"role": "user", "content": [dict(marked) for _ in range(4)]}],
    }
    assert mark_prefix(full, _info()) is False and count_breakpoints(full) == 4
    three: dict[str, Any] = {
        "system": [{"type": "text", "text": LONG}],
        "messages": [{"role": "user", "content": [dict(marked) for _ in range(3)]}],
    }
    assert mark_prefix(three, _info(ttl="1h")) is True and count_breakpoints(three) == 4
    # 1 h entries must precede 5 min ones: next to the job's own marks, ours is 5 min.
    assert three["system"][-1]["cache_control"] == {"type": "ephemeral"}


def test_a_passthrough_body_is_copied_before_it_is_marked() -> None:
    params: dict[str, Any] = {
        "model": "m",
        "max_tokens": 5,
        "system": LONG,
        "messages": [{"role": "user", "content": "q"}],
    }
    req = Request(
        messages=params["messages"],
        system=LONG,
        wire_format="anthropic",
        body=params,
        cache=_info(),
    )
    body = build_anthropic_body("m", req)
    assert body["system"][0]["cache_control"] == {"type": "ephemeral"}
    assert params["system"] == LONG


def test_openai_gets_a_cache_key_and_24h_retention_where_offered() -> None:
    req = Request(
        messages=[{"role": "user", "content": "q"}],
        system=LONG,
        cache=_info(cache_key="llmbatch-k-1", extended=True),
    )
    body = build_openai_body("gpt-4.1", req)
    assert body["prompt_cache_key"] == "llmbatch-k-1" and body["prompt_cache_retention"] == "24h"
    plain = build_openai_body(
        "gpt-4o", Request(messages=[{"role": "user", "content": "q"}], cache=_info(cache_key="c"))
    )
    assert "prompt_cache_retention" not in plain
    assert "prompt_cache_key" not in build_openai_body(
        "m", Request(messages=[{"role": "user", "content": "q"}])
    )


# -- money ------------------------------------------------------------------------------


def test_usage_is_one_shape_and_the_saving_is_net_of_the_write_premium() -> None:
    price = Price.flat(3.0, 15.0, cache_read=0.3, cache_write=3.75)
    hit = Usage(2100, 10, cache_read_tokens=2000)
    assert hit.uncached_input_tokens == 100
    saved, premium = price.cache_saving(hit)
    assert premium == 0 and saved == pytest.approx(2000 * 2.7 / 1e6)
    write = Usage(2100, 10, cache_write_tokens=2000)
    saved, premium = price.cache_saving(write)
    assert premium == pytest.approx(2000 * 0.75 / 1e6) and saved == pytest.approx(-premium)
    hour = Usage(2100, 10, cache_write_tokens=2000, cache_write_1h_tokens=2000)
    assert price.cost(hour) == pytest.approx((100 * 3 + 2000 * 6 + 10 * 15) / 1e6)
    assert Usage.from_dict(hour.to_dict()) == hour
    assert "reasoning_tokens" not in hit.to_dict()  # extra fields only when there is one


def test_the_report_shows_prefix_groups_in_json_terminal_and_html() -> None:
    import io

    from rich.console import Console

    from llmbatch._core.pricing import PriceBook
    from llmbatch._core.results import JobResult
    from llmbatch._observe.stats import RunStats
    from llmbatch._observe.timeline import TimelineRecorder
    from llmbatch._report.html import render_html
    from llmbatch._report.report import build_report

    stats = RunStats(prices=PriceBook())
    for i, usage in enumerate([Usage(2100, 5, 0, 2000), Usage(2100, 5, 2000, 0)]):
        stats.add(
            JobResult(
                f"j{i}",
                Status.OK,
                "x",
                None,
                "anthropic",
                "claude-sonnet-4-5",
                usage,
                0.01,
                5.0,
                1.0,
                1,
                None,
                None,
                prefix_group="abc",
            )  # fmt: skip
        )
    report = build_report(stats)
    pc = report.to_dict()["prompt_cache"]
    (group,) = pc["groups"]
    assert group["jobs"] == 2 and group["hit_rate"] == 0.5
    assert group["write_premium_usd"] == pytest.approx(2000 * 0.75 / 1e6)
    assert group["saved_usd"] == pytest.approx(2000 * 2.7 / 1e6 - 2000 * 0.75 / 1e6)
    out = io.StringIO()
    render_report(report, Console(file=out, width=140))
    assert "shared prompt prefixes" in out.getvalue() and "50.0%" in out.getvalue()
    assert "Shared prompt prefixes" in render_html(report, TimelineRecorder().timeline())
