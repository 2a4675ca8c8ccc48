"""Prompt caching end to end: the CLI against the fake that learns to cache and keeps a bill."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from llmbatch._core.models import ModelRef
from llmbatch._core.pricing import PriceBook
from tests._fakecache import FakePrices, FakePromptCache
from tests.conftest import fake_env, read_jsonl, run_cli, write_jsonl
from tests.fakeapi import FakeAPI

SONNET = "claude-sonnet-4-5"
SYSTEM = "You grade answers to arithmetic questions strictly and briefly. " * 125  # 8,000 chars
JOBS = 600  # CI size; the report gives the figures measured at 10,000


def _prices(provider: str, model: str) -> FakePrices:
    price = PriceBook().price(ModelRef(provider, model))
    assert price is not None
    return FakePrices(
        price.input.base, price.output.base, price.cache_read.base, price.cache_write.base
    )


@pytest.fixture
def cfake() -> Iterator[FakeAPI]:
    # No rate-limit headers: its 2M tokens a minute would pace 2,000-token prompts.
    api = FakeAPI(reply="ok", rate_limit_headers=False)
    api.prompt_cache = FakePromptCache(_prices("anthropic", SONNET))
    api.start()
    try:
        yield api
    finally:
        api.stop()


def _shared(n: int, system: str | None = SYSTEM) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for i in range(n):
        row: dict[str, Any] = {"id": f"j{i}", "prompt": f"Is {i} + {i} = {2 * i}?"}
        if system is not None:
            row["system"] = system
        rows.append(row)
    return rows


def _run(fake: FakeAPI, model: str, *extra: str) -> dict[str, Any]:
    r = run_cli(
        "run", "jobs.jsonl", "-m", model, "-c", "64", "--report", "rep.json", *extra,
        env=fake_env(fake),
    )  # fmt: skip
    assert r.code == 0, r.output
    return dict(orjson.loads(Path("rep.json").read_bytes()))


def _marks(fake: FakeAPI) -> int:
    return sum(b"cache_control" in orjson.dumps(r.body) for r in fake.records)


def test_a_shared_system_prompt_is_written_once_then_read(cfake: FakeAPI, tmp_path: Path) -> None:
    write_jsonl(tmp_path / "jobs.jsonl", _shared(JOBS))
    report = _run(cfake, f"anthropic:{SONNET}")
    cache = cfake.prompt_cache
    assert cache is not None
    bill = cache.bill
    assert bill.answers == JOBS and _marks(cfake) == JOBS
    writes = [r for r in cfake.records if r.cache_write]
    assert len(writes) == 1  # the warm-up; every other request read the prefix
    # Warm, then fan out: the first request had answered before the second was sent.
    ordered = sorted(cfake.records, key=lambda r: r.at)
    assert ordered[0].done_at is not None and ordered[0].done_at <= ordered[1].at
    assert cfake.peak_in_flight > 1  # and then the rest went in parallel
    # Within 1.15 x the ideal: one write (at the 5-minute price), every other a read.
    p = cache.prices
    assert p is not None
    prefix = writes[0].cache_write
    ideal = (
        bill.no_cache
        - (JOBS - 1) * prefix * (p.input - p.cache_read) / 1e6
        + prefix * (p.cache_write - p.input) / 1e6
    )
    assert bill.charged <= 1.15 * ideal
    # The report's saving is the fake's bill difference, to the cent.
    pc = report["prompt_cache"]
    assert round(pc["saved_usd"], 2) == round(bill.saved, 2)
    assert abs(pc["saved_usd"] - bill.saved) < 0.005
    assert report["cost_usd"] == pytest.approx(bill.charged, abs=0.005)
    (group,) = pc["groups"]
    assert group["jobs"] == JOBS and group["hit_rate"] == pytest.approx((JOBS - 1) / JOBS, abs=1e-4)
    assert group["cache_write_tokens"] == prefix
    assert group["cache_read_tokens"] == (JOBS - 1) * prefix
    results = read_jsonl(tmp_path / "jobs.results.jsonl")
    assert {x["prefix_group"] for x in results} == {group["group"]}
    assert sum(x["usage"]["cache_read_tokens"] for x in results) == (JOBS - 1) * prefix


def test_prompt_cache_off_pays_full_price(cfake: FakeAPI, tmp_path: Path) -> None:
    write_jsonl(tmp_path / "jobs.jsonl", _shared(200))
    report = _run(cfake, f"anthropic:{SONNET}", "--prompt-cache", "off")
    cache = cfake.prompt_cache
    assert cache is not None
    assert _marks(cfake) == 0
    assert cache.bill.charged == pytest.approx(cache.bill.no_cache)
    assert report["prompt_cache"]["saved_usd"] == 0 if "prompt_cache" in report else True


def test_prompt_cache_off_in_llmbatch_toml(cfake: FakeAPI, tmp_path: Path) -> None:
    (tmp_path / "llmbatch.toml").write_text('prompt_cache = "off"\n')
    write_jsonl(tmp_path / "jobs.jsonl", _shared(20))
    _run(cfake, f"anthropic:{SONNET}")
    assert _marks(cfake) == 0


def test_no_shared_prefix_sends_no_mark_and_waits_for_nothing(
    cfake: FakeAPI, tmp_path: Path
) -> None:
    cfake.latency_s = 0.2
    cfake.reply = "yes that is right"  # several words: the latency is spread between them
    rows = [
        {"id": f"j{i}", "system": f"Persona {i}. " + SYSTEM, "prompt": f"q{i}"} for i in range(64)
    ]
    write_jsonl(tmp_path / "jobs.jsonl", rows)
    report = _run(cfake, f"anthropic:{SONNET}")
    assert _marks(cfake) == 0
    first_done = min(r.done_at for r in cfake.records if r.done_at is not None)
    # A warm-up would send exactly one request before the first answer; here the first
    # wave goes out together (how many of 64 make it depends on the machine's load).
    assert sum(r.at < first_done for r in cfake.records) >= 8
    assert not report.get("prompt_cache", {}).get("groups")


def test_a_short_shared_prefix_is_grouped_but_not_marked(cfake: FakeAPI, tmp_path: Path) -> None:
    write_jsonl(tmp_path / "jobs.jsonl", _shared(30, system="Be brief."))
    _run(cfake, f"anthropic:{SONNET}")
    assert _marks(cfake) == 0
    assert cfake.peak_in_flight > 1


def test_openai_routes_a_shared_prefix_by_key_and_reads_it(tmp_path: Path) -> None:
    fake = FakeAPI(reply="ok", rate_limit_headers=False)
    fake.prompt_cache = FakePromptCache(_prices("openai", "gpt-4.1"))
    fake.start()
    try:
        write_jsonl(tmp_path / "jobs.jsonl", _shared(100))
        report = _run(fake, "openai:gpt-4.1")
    finally:
        fake.stop()
    keys = {r.body.get("prompt_cache_key") for r in fake.records}
    assert None not in keys and 1 < len(keys) <= 6  # spread, each key worth its miss
    assert {r.body.get("prompt_cache_retention") for r in fake.records} == {"24h"}
    cache = fake.prompt_cache
    cold = [r for r in fake.records if not r.cache_read]
    assert len(cold) == len(keys)  # one cold request per key: the warm-ups
    assert abs(report["prompt_cache"]["saved_usd"] - cache.bill.saved) < 0.005


def test_estimate_predicts_the_saving(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "jobs.jsonl", _shared(1000))
    r = run_cli("estimate", "jobs.jsonl", "-m", f"anthropic:{SONNET}", "--json")
    assert r.code == 0, r.output
    est = orjson.loads(r.stdout)
    pc = est["prompt_cache"]
    assert pc["groups"][0]["jobs"] == 1000 and pc["groups"][0]["cacheable"] is True
    assert pc["saved_usd"] > 0
    price = PriceBook().price(ModelRef("anthropic", SONNET))
    assert price is not None
    tokens = pc["groups"][0]["prefix_tokens"]
    expected = (999 * tokens * (price.input.base - price.cache_read.base)) / 1e6 - tokens * (
        price.cache_write.base - price.input.base
    ) / 1e6
    assert pc["saved_usd"] == pytest.approx(expected, rel=0.01)


def test_a_long_run_writes_for_an_hour_and_is_priced_so(cfake: FakeAPI, tmp_path: Path) -> None:
    write_jsonl(tmp_path / "jobs.jsonl", _shared(200))
    r = run_cli(
        "run",
        "jobs.jsonl",
        "-m",
        f"anthropic:{SONNET}",
        "-c",
        "1",
        "--report",
        "rep.json",
        env=fake_env(cfake),
    )  # fmt: skip  (200 waves of ~2 s: longer than 5 minutes)
    assert r.code == 0, r.output
    report = orjson.loads((tmp_path / "rep.json").read_bytes())
    marks = {orjson.dumps(x.body["system"][0]["cache_control"]) for x in cfake.records}
    assert marks == {b'{"type":"ephemeral","ttl":"1h"}'}
    cache = cfake.prompt_cache
    assert cache is not None
    results = read_jsonl(tmp_path / "jobs.results.jsonl")
    assert (
        sum(x["usage"].get("cache_write_1h_tokens", 0) for x in results) == cache.bill.write_tokens
    )
    assert abs(report["prompt_cache"]["saved_usd"] - cache.bill.saved) < 0.005
    assert report["cost_usd"] == pytest.approx(cache.bill.charged, abs=0.005)


def test_the_fake_learns_a_prefix_and_forgets_it_after_five_minutes() -> None:
    now = [0.0]
    cache = FakePromptCache(FakePrices(3, 15, 0.3, 3.75), clock=lambda: now[0])
    block = {"type": "text", "text": SYSTEM, "cache_control": {"type": "ephemeral"}}
    body = {"model": "m", "system": [block], "messages": [{"role": "user", "content": "q"}]}
    first = cache.use("anthropic", body)
    assert first.write > 1024 and first.read == 0
    cache.answered(first, 1)
    second = cache.use("anthropic", body)
    assert second.read == first.write and second.write == 0
    cache.answered(second, 1)
    now[0] += 301
    assert cache.use("anthropic", body).write == first.write  # expired: written again
    plain = {"model": "m", "system": SYSTEM, "messages": [{"role": "user", "content": "q"}]}
    assert cache.use("anthropic", plain).write == 0  # no cache_control: nothing cached
    assert cache.bill.saved == pytest.approx(
        (first.write * (3 - 0.3) - first.write * (3.75 - 3)) / 1e6
    )
    # OpenAI: by prefix, without marks, under the same prompt_cache_key only.
    system = {"role": "system", "content": SYSTEM}
    chat = {"model": "g", "messages": [system, {"role": "user", "content": "a"}]}
    cold = cache.use("openai", {**chat, "prompt_cache_key": "k1"})
    assert cold.read == 0
    cache.answered(cold, 1)
    other = {**chat, "messages": [system, {"role": "user", "content": "b"}]}
    assert cache.use("openai", {**other, "prompt_cache_key": "k1"}).read >= 1024
    assert cache.use("openai", {**other, "prompt_cache_key": "k2"}).read == 0
