"""Gemini explicit context caching: the estimate, and one ``cachedContents`` entry per group
on the fake (created once, named by every request of the group, deleted at the end)."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from llmbatch._core.prefix import PrefixInfo
from llmbatch._engine.gemini_cache import (
    MIN_TTL_S,
    explicit_pays,
    explicit_saving,
    storage_price,
    ttl_seconds,
    with_explicit_cache,
)
from llmbatch.providers.gemini_cache import split_body
from tests.conftest import read_jsonl, run_cli, start_cli, wait_until, write_jsonl
from tests.fakeapi import FakeAPI
from tests.fakegemini import FakeGemini

KEY = "AIzaSy-canary-DO-NOT-LEAK-gcache"
MODEL = "gemini:gemini-2.5-flash"
SYSTEM = "You grade answers to arithmetic questions strictly and briefly. " * 125  # ~2,000 tok


@pytest.fixture
def gem() -> Iterator[FakeGemini]:
    api = FakeAPI(reply="ok", rate_limit_headers=False)
    g = FakeGemini(api)
    api.start()
    try:
        yield g
    finally:
        api.stop()


def _env(g: FakeGemini) -> dict[str, str]:
    return {"GEMINI_BASE_URL": g.api.url, "GEMINI_API_KEY": KEY}


def _jobs(path: Path, n: int, system: str = SYSTEM) -> None:
    write_jsonl(
        path,
        [{"id": f"j{i}", "prompt": f"Is {i} + {i} = {2 * i}?", "system": system} for i in range(n)],
    )


def _run(g: FakeGemini, *extra: str) -> dict[str, Any]:
    r = run_cli(
        "run", "jobs.jsonl", "-m", MODEL, "-c", "8", "--report", "rep.json", *extra, env=_env(g)
    )
    assert r.code == 0, r.output
    assert KEY not in r.output
    return dict(orjson.loads(Path("rep.json").read_bytes()))


def _bodies(g: FakeGemini) -> list[dict[str, Any]]:
    return [r.body for r in g.api.records]


# -- the estimate ---------------------------------------------------------------------------


def test_the_estimate_weighs_reads_saved_against_the_write_and_storage() -> None:
    # 2.5 Flash: $0.30 in, $0.03 cached, $1.00 per M tokens per hour stored.
    assert storage_price("gemini-2.5-flash") == 1.0 and storage_price("gemini-2.5-pro") == 4.5
    # 100 jobs × 2,000 tokens × 0.27 saved − 2,000 × 0.30 written − 2,000 × 1.00 × 5 min stored
    saving = explicit_saving(100, 2000, 0.30, 0.03, 1.0, 60)
    assert saving == pytest.approx((100 * 2000 * 0.27 - 2000 * 0.30 - 2000 * 1.0 / 12) / 1e6)
    assert explicit_pays(100, 2000, 0.30, 0.03, 1.0, 60)
    # A short run is billed the minimum life; a long one its length.
    assert explicit_saving(3, 2000, 0.3, 0.03, 1.0, 1) == explicit_saving(
        3, 2000, 0.3, 0.03, 1.0, 300
    )
    assert not explicit_pays(3, 2000, 0.30, 0.03, 4.5, 3600)  # 3 reads cannot pay an hour of Pro
    assert not explicit_pays(2, 2000, 0.30, 0.03, 1.0, 10 * 3600)
    assert explicit_pays(2000, 2000, 0.30, 0.03, 1.0, 10 * 3600)
    assert not explicit_pays(100, 2000, 0.30, 0.30, 1.0, 60)  # no discount: never
    assert ttl_seconds(10) == MIN_TTL_S and ttl_seconds(3600) == 7200


def test_only_a_marked_prefix_that_pays_gets_an_entry() -> None:
    info = PrefixInfo("k", 2000, 1024, "system", group_size=50, mark=True)
    assert with_explicit_cache(info, "gemini-2.5-flash", 0.3, 0.03, 60).explicit_ttl_s == MIN_TTL_S
    assert with_explicit_cache(info, "gemini-2.5-pro", 1.25, 0.125, 40 * 3600).explicit_ttl_s == 0
    unmarked = PrefixInfo("k", 500, 1024, "system", group_size=50, mark=False)
    assert with_explicit_cache(unmarked, "gemini-2.5-flash", 0.3, 0.03, 60).explicit_ttl_s == 0
    tools = PrefixInfo("k", 2000, 1024, "tools", group_size=50, mark=True)
    assert with_explicit_cache(tools, "gemini-2.5-flash", 0.3, 0.03, 60).explicit_ttl_s == 0


def test_split_body_moves_the_prefix_into_the_entry() -> None:
    body = {
        "contents": [
            {"role": "user", "parts": [{"text": "shot q"}]},
            {"role": "model", "parts": [{"text": "shot a"}]},
            {"role": "user", "parts": [{"text": "HEAD: the question"}]},
        ],
        "systemInstruction": {"parts": [{"text": "sys"}]},
        "generationConfig": {"maxOutputTokens": 5},
    }
    info = PrefixInfo("k", 2000, 1024, "template", messages=2, split=6, mark=True)
    split = split_body("gemini-2.5-flash", body, info)
    assert split is not None
    cached, rest = split
    assert cached["model"] == "models/gemini-2.5-flash"
    assert cached["systemInstruction"] == body["systemInstruction"]
    assert [c["parts"][0]["text"] for c in cached["contents"]] == ["shot q", "shot a", "HEAD: "]
    assert rest == {
        "generationConfig": {"maxOutputTokens": 5},
        "contents": [{"role": "user", "parts": [{"text": "the question"}]}],
    }
    sys_only = split_body("m", body, PrefixInfo("k", 2000, 1024, "system", mark=True))
    assert sys_only is not None and "contents" not in sys_only[0]
    assert len(sys_only[1]["contents"]) == 3 and "systemInstruction" not in sys_only[1]


# -- on the fake ----------------------------------------------------------------------------


def test_a_group_that_pays_creates_one_entry_every_request_names_and_it_is_deleted(
    gem: FakeGemini, tmp_path: Path
) -> None:
    _jobs(tmp_path / "jobs.jsonl", 60)
    report = _run(gem)
    creates = [n for what, n in gem.cache_log if what == "create"]
    assert len(creates) == 1  # once, with 8 jobs in flight
    (name,) = creates
    assert gem.cache_log[-1] == ("delete", name) and not gem.cached_contents
    bodies = _bodies(gem)
    assert len(bodies) == 60
    assert all(b.get("cachedContent") == name for b in bodies)
    assert not any("systemInstruction" in b for b in bodies)  # the prefix went only once
    results = read_jsonl(tmp_path / "jobs.results.jsonl")
    assert len(results) == 60 and all(r["status"] == "ok" for r in results)
    # cachedContentTokenCount is booked as cache reads, and priced as such.
    assert all(r["usage"]["cache_read_tokens"] > 1000 for r in results)
    assert report["prompt_cache"]["saved_usd"] > 0


def test_a_short_prefix_or_prompt_cache_off_creates_nothing(
    gem: FakeGemini, tmp_path: Path
) -> None:
    _jobs(tmp_path / "jobs.jsonl", 20, system="Be brief. " * 20)  # ~50 tokens: too short
    _run(gem)
    _jobs(tmp_path / "jobs.jsonl", 20)
    _run(gem, "--prompt-cache", "off", "--fresh")
    assert gem.cache_log == []
    assert not any("cachedContent" in b for b in _bodies(gem))


def test_a_failed_create_sends_the_group_in_full(gem: FakeGemini, tmp_path: Path) -> None:
    gem.create_status = 500
    _jobs(tmp_path / "jobs.jsonl", 20)
    report = _run(gem)
    assert gem.cache_log == [("create_failed", "")]  # tried once, not by every job
    bodies = _bodies(gem)
    assert len(bodies) == 20 and all("systemInstruction" in b for b in bodies)
    assert not any("cachedContent" in b for b in bodies)
    assert report["jobs"]["ok"] == 20


def test_an_entry_that_is_gone_falls_back_to_the_full_request(
    gem: FakeGemini, tmp_path: Path
) -> None:
    _jobs(tmp_path / "jobs.jsonl", 3)
    gem.expire_at_once = True
    _run(gem, "-c", "1")
    # The entry is gone after its create (expired): each job tries it once, then goes in full.
    kinds = [("cachedContent" in b, "systemInstruction" in b) for b in _bodies(gem)]
    assert kinds == [(True, False), (False, True), (False, True), (False, True)]
    assert [r["status"] for r in read_jsonl(tmp_path / "jobs.results.jsonl")] == ["ok"] * 3


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_still_deletes_the_entry(
    signum: int, code: int, gem: FakeGemini, tmp_path: Path
) -> None:
    gem.api.ttft_s = 0.3
    _jobs(tmp_path / "jobs.jsonl", 200)
    proc = start_cli("run", "jobs.jsonl", "-m", MODEL, "-c", "2", env=_env(gem))
    out = tmp_path / "jobs.results.jsonl"
    try:
        wait_until(lambda: out.exists() and len(out.read_bytes().splitlines()) >= 3)
        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == code, stderr.decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert len(read_jsonl(out)) < 200  # stopped early
    (create,) = [e for e in gem.cache_log if e[0] == "create"]
    assert gem.cache_log[-1] == ("delete", create[1]) and not gem.cached_contents


def test_estimate_predicts_the_explicit_entrys_saving(gem: FakeGemini, tmp_path: Path) -> None:
    _jobs(tmp_path / "jobs.jsonl", 400)
    r = run_cli("estimate", "jobs.jsonl", "-m", MODEL, "--json", env=_env(gem))
    assert r.code == 0, r.output
    (group,) = orjson.loads(r.stdout)["prompt_cache"]["groups"]
    assert group["jobs"] == 400 and group["cacheable"] is True
    # A run of under 5 minutes: stored for the 5-minute minimum; Flash prices.
    want = explicit_saving(400, group["prefix_tokens"], 0.30, 0.03, 1.0, MIN_TTL_S)
    assert group["saved_usd"] == pytest.approx(want, abs=1e-6)
    assert gem.cache_log == []  # an estimate creates nothing


def test_no_explicit_entry_under_a_spend_cap() -> None:
    """An entry's write and storage are billed outside any attempt: with a cap on spend,
    the planner leaves the group to implicit caching."""
    from pathlib import Path as _Path

    from llmbatch._config.settings import RunConfig
    from llmbatch._core.models import ModelRef
    from llmbatch._engine.plan import Planner

    ref = ModelRef("gemini", "gemini-2.5-flash")
    capped = Planner(RunConfig(jobs=_Path("x.jsonl"), model=ref, max_cost=1.0))
    free = Planner(RunConfig(jobs=_Path("x.jsonl"), model=ref))
    info = PrefixInfo("k", 2000, 1024, "system", group_size=50, mark=True)
    assert capped._gemini_explicit(ref, info) is info
    chosen = free._gemini_explicit(ref, info)
    assert chosen is not info and chosen.explicit_ttl_s
