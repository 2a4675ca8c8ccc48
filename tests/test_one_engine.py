"""Every mode through one engine and one run: budgets, cache, report, HTML, signals.

``run --mode batch|auto`` and ``batch fetch`` repairs used to build their own
stack and drift from ``run``; these hold them to the same guarantees, checked
against what the fake itself saw and billed.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from llmbatch._batch.fetch import fetch
from llmbatch._batch.run import run_with_batches
from llmbatch._batch.submit import submit
from llmbatch._config.settings import RunConfig
from llmbatch._core.batch_price import batch_price
from llmbatch._core.models import ModelRef
from llmbatch._core.usage import Usage
from llmbatch._observe.progress import NoProgress
from llmbatch._report.report import RunReport
from llmbatch._run.online import run_jobs_async
from llmbatch._run.session import exit_code_for
from tests.batchutil import AN, OA, SCHEMA, VirtualClock, config, jobs_file
from tests.conftest import fake_env, read_jsonl, run_cli, start_cli, wait_until, write_jsonl
from tests.fakebatch import FakeBatch
from tests.redis_server import RedisServer


def run_batch_mode(cfg: RunConfig, clock: VirtualClock, mode: str = "batch") -> RunReport:
    report, _run = anyio.run(
        lambda: run_with_batches(
            cfg,
            mode=mode,
            deadline=3600 if mode == "auto" else None,
            poll=600,
            clock=clock,
            progress=NoProgress(),
            handle_signals=False,
            say=lambda _m: None,
        )
    )
    return report


def fake_bill(fb: FakeBatch, cfg: RunConfig, clock: VirtualClock) -> float:
    """What the fake charged: its batch tokens at the batch price, its online answers
    at the online price (both from genai-prices, as the run prices them)."""
    book = cfg.price_book()
    total = 0.0
    for model, (tokens_in, tokens_out) in fb.billed().items():
        provider = "anthropic" if model.startswith("claude") else "openai"
        price, _note = batch_price(book, cfg.prices, ModelRef(provider, model), clock.time())
        assert price is not None
        total += price.cost(Usage(tokens_in, tokens_out))
    for r in fb.api.records:
        if r.outcome != "ok":
            continue
        model = str(r.body.get("model"))
        cost = book.cost(ModelRef(r.kind, model), Usage(r.input_tokens, r.output_tokens))
        total += cost or 0.0
    return total


def test_batch_mode_never_spends_past_the_hourly_budget(fb: FakeBatch, tmp_path: Path) -> None:
    clock = VirtualClock(fb)
    cap = 0.0004  # room for about half of the 40 jobs' worst case at the batch price
    cfg = config(
        jobs_file(tmp_path, 40),
        budget_per_hour=cap,
        ledger=tmp_path / "ledger.sqlite",
        max_tokens=50,
    )
    report = run_batch_mode(cfg, clock)
    bill = fake_bill(fb, cfg, clock)
    assert 0 < bill <= cap
    assert report.stopped_by == "budget_window" and exit_code_for(report, None) == 4
    assert cfg.output is not None
    written = read_jsonl(cfg.output)
    assert 0 < len(written) < 40 and len(written) == report.ok
    # A second run in the same hour may not spend the window again.
    fb.api.records.clear()
    again = run_batch_mode(
        config(cfg.jobs, budget_per_hour=cap, ledger=cfg.ledger, max_tokens=50), clock
    )
    assert again.stopped_by == "budget_window"
    assert fake_bill(fb, cfg, clock) <= cap


def test_cached_answers_are_never_submitted(fb: FakeBatch, tmp_path: Path) -> None:
    clock = VirtualClock(fb)
    cache = tmp_path / "cache.sqlite"
    jobs = jobs_file(tmp_path, 20)
    first = config(jobs, cache_path=cache)
    online = anyio.run(lambda: run_jobs_async(first, progress=NoProgress(), handle_signals=False))
    assert online.ok == 20 and len(fb.api.records) == 20
    # The same jobs into a new output, by batch: every answer is in the cache.
    second = RunConfig(jobs=jobs, output=tmp_path / "second.jsonl", cache_path=cache)
    report = run_batch_mode(second, clock)
    assert fb.created == [] and len(fb.api.records) == 20  # nothing submitted, nothing sent
    assert report.ok == 20 and report.cost_usd == 0 and report.cache_hits == 20
    lines = read_jsonl(tmp_path / "second.jsonl")
    assert len(lines) == 20 and all(x["cache"]["hit"] for x in lines)


def test_batch_mode_report_counts_and_cost_equal_the_fakes(fb: FakeBatch, tmp_path: Path) -> None:
    clock = VirtualClock(fb)
    cfg = config(jobs_file(tmp_path, 30))
    report = run_batch_mode(cfg, clock)
    assert report.ok == 30 and report.failed == 0 and report.attempts == 30
    assert len(fb.api.records) == 0  # all of it by batch
    assert report.cost_usd == pytest.approx(fake_bill(fb, cfg, clock), abs=1e-9)
    assert report.batch is not None and report.batch.jobs == 30
    assert report.batch.saved_usd > 0
    assert {f"openai:{OA}", f"anthropic:{AN}"} <= set(report.to_dict()["by_model"])


def test_auto_mode_report_counts_batch_and_online_work(fb: FakeBatch, tmp_path: Path) -> None:
    clock = VirtualClock(fb)
    cfg = config(jobs_file(tmp_path, 24))
    fb.process_s = 4 * 3600  # the deadline comes first: the rest goes online
    report = run_batch_mode(cfg, clock, "auto")
    assert report.ok == 24
    assert report.cost_usd == pytest.approx(fake_bill(fb, cfg, clock), abs=1e-9)
    assert 0 < len(fb.api.records) <= 24


def test_html_and_history_in_batch_mode_from_the_shell(fb: FakeBatch, tmp_path: Path) -> None:
    write_jsonl(
        tmp_path / "jobs.jsonl",
        [{"id": f"j{i}", "prompt": f"Question {i}", "model": OA} for i in range(6)],
    )
    fb.process_s = 4 * 3600
    env = fake_env(fb.api)
    args = ["run", "jobs.jsonl", "-o", "out.jsonl", "--mode", "auto", "--batch-deadline", "1s"]
    res = run_cli(*args, "--html", "page.html", "--report", "rep.json", env=env)
    assert res.code == 0, res.output
    page = (tmp_path / "page.html").read_text()
    assert "6 ok" in page
    assert (tmp_path / "out.jsonl.runs.jsonl").exists()  # the run history, as in run


def test_sigterm_while_waiting_for_batches_exits_143(fb: FakeBatch, tmp_path: Path) -> None:
    write_jsonl(
        tmp_path / "jobs.jsonl",
        [{"id": f"j{i}", "prompt": f"Question {i}", "model": OA} for i in range(4)],
    )
    fb.process_s = 24 * 3600  # the batch will not end while we wait
    args = ("run", "jobs.jsonl", "-o", "out.jsonl", "--mode", "batch")
    proc = start_cli(*args, env=fake_env(fb.api))
    try:
        wait_until(lambda: len(fb.created) == 1 or proc.poll() is not None)
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.5)  # past the submit's last write: the run is in its wait now
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=60)
        assert proc.returncode == 128 + signal.SIGTERM, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert len(fb.api.records) == 0  # nothing went online after the signal


def test_fetch_repairs_use_the_shared_limits(
    fb: FakeBatch, tmp_path: Path, redis_server: RedisServer
) -> None:
    """With ``[shared] url``, the repairs' rate limits are the shared ones in Redis."""
    import redis

    clock = VirtualClock(fb)
    cfg = config(jobs_file(tmp_path, 4, (OA, OA)), schema=SCHEMA, rpm=600, shared=redis_server.url)
    fb.reply = "Sure! The answer is four."
    anyio.run(lambda: submit(cfg, clock=clock))
    fb.advance(700)
    fb.api.reply = '{"n": 4}'
    client = redis.Redis.from_url(redis_server.url)
    before = set(client.keys("llmbatch:limit:*"))
    rep = anyio.run(lambda: fetch(cfg, clock=clock))
    assert rep.repaired == 4 and rep.ok == 4
    after: set[Any] = set(client.keys("llmbatch:limit:*"))
    assert after - before, "the repairs took no slot from the shared limiter"


def test_identical_requests_in_flight_together_pay_once(fb: FakeBatch, tmp_path: Path) -> None:
    """Single flight: five shareable (temperature 0) copies of one question at once send
    one request; the others wait for it and take its answer from the cache."""
    fb.api.latency_s = 0.2
    rows = [
        {"id": f"same-{i}", "prompt": "What is 2 + 2?", "model": OA, "temperature": 0}
        for i in range(5)
    ]
    jobs = write_jsonl(tmp_path / "jobs.jsonl", rows)
    cfg = RunConfig(
        jobs=jobs, output=tmp_path / "out.jsonl", cache_path=tmp_path / "c.sqlite", concurrency=5
    )
    report = anyio.run(lambda: run_jobs_async(cfg, progress=NoProgress(), handle_signals=False))
    assert report.ok == 5 and len(fb.api.records) == 1
    assert report.cache_hits == 4
    lines = read_jsonl(tmp_path / "out.jsonl")
    assert sorted(x["id"] for x in lines) == [f"same-{i}" for i in range(5)]
    assert len({x["output"] for x in lines}) == 1


def test_batch_mode_warms_each_prompt_cache_group_online_first(
    fb: FakeBatch, tmp_path: Path
) -> None:
    """Issue 24: the first job of a shared prefix goes online (writing the cache), the rest
    of its group goes by batch with the same marks; a job of no group is not held back."""
    system = "You grade answers to arithmetic questions strictly and briefly. " * 320
    rows: list[dict[str, Any]] = [
        {"id": f"g{i}", "prompt": f"Is {i} + {i} = {2 * i}?", "system": system, "model": AN}
        for i in range(6)
    ]
    rows.append({"id": "alone", "prompt": "What is 7 * 6?", "model": AN})
    jobs = write_jsonl(tmp_path / "jobs.jsonl", rows)
    clock = VirtualClock(fb)
    report = run_batch_mode(config(jobs), clock)
    assert report.ok == 7
    online = fb.api.records
    assert len(online) == 1 and online[0].body["system"][-1]["cache_control"]["type"] == "ephemeral"
    assert [n for _kind, _id, n in fb.created] == [6]  # 5 of the group and the lone job
    items = [it for b in fb.batches.values() for it in b.items]
    marked = [it for it in items if isinstance(it.body.get("system"), list)]
    assert len(marked) == 5
    assert all(it.body["system"][-1]["cache_control"]["ttl"] == "1h" for it in marked)
    lines = read_jsonl(tmp_path / "out.jsonl")
    assert sorted(x["id"] for x in lines) == sorted(r["id"] for r in rows)
    assert sum(1 for x in lines if "batch" not in x) == 1  # the warm-up, answered online


def test_batch_mode_without_prompt_caching_sends_everything_by_batch(
    fb: FakeBatch, tmp_path: Path
) -> None:
    system = "You grade answers to arithmetic questions strictly and briefly. " * 320
    rows = [{"id": f"g{i}", "prompt": f"q{i}", "system": system, "model": AN} for i in range(4)]
    jobs = write_jsonl(tmp_path / "jobs.jsonl", rows)
    report = run_batch_mode(config(jobs, prompt_cache="off"), VirtualClock(fb))
    assert report.ok == 4 and len(fb.api.records) == 0
    assert [n for _kind, _id, n in fb.created] == [4]


def test_batch_submit_keeps_the_hourly_budget_of_llmbatch_toml(
    fb: FakeBatch, tmp_path: Path
) -> None:
    """`batch submit` on its own reads budget_per_hour from llmbatch.toml, as run does."""
    (tmp_path / "llmbatch.toml").write_text(
        f'budget_per_hour = 0.0004\nledger = "{tmp_path / "ledger.sqlite"}"\nmax_tokens = 50\n'
    )
    jobs_file(tmp_path, 40)
    res = run_cli("batch", "submit", "jobs.jsonl", "-o", "out.jsonl", env=fake_env(fb.api))
    assert res.code == 4, res.output
    submitted = sum(n for _kind, _id, n in fb.created)
    assert 0 < submitted < 40
    assert "budget-per-hour" in res.stderr


def test_embed_runs_write_their_html_too(tmp_path: Path) -> None:
    """--html in every mode: an embedding run's page comes from the same timeline."""
    rows = [{"id": f"e{i}", "input": f"text {i}"} for i in range(20)]
    write_jsonl(tmp_path / "texts.jsonl", rows)
    res = run_cli(
        "run", "texts.jsonl", "-m", "sim:text-embedding-3-small", "-o", "v.parquet",
        "--html", "page.html", "--quiet", "--no-cache",
    )  # fmt: skip
    assert res.code == 0, res.output
    assert "<html" in (tmp_path / "page.html").read_text()
