"""Provider Batch APIs end to end on the fake: submit, status, fetch, cancel, faults, budgets."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import orjson
import pytest

from llmbatch._batch.context import batch_context
from llmbatch._batch.fetch import FetchReport, fetch
from llmbatch._batch.status import batch_cancel, batch_status
from llmbatch._batch.submit import SubmitReport, submit
from llmbatch._config.settings import RunConfig
from llmbatch._core.batch_price import batch_price
from llmbatch._core.exceptions import InputError, UsageError
from llmbatch._core.models import ModelRef
from llmbatch._core.pricing import PriceBook
from llmbatch._core.usage import Usage
from llmbatch._io.batch_state import BatchState
from tests.batchutil import AN, OA, VirtualClock, config, jobs_file
from tests.conftest import CANARY_ANTHROPIC, CANARY_OPENAI, read_jsonl, write_jsonl
from tests.fakebatch import FakeBatch


def do_submit(cfg: RunConfig, clock: VirtualClock, batch_size: int | None = None) -> SubmitReport:
    return anyio.run(lambda: submit(cfg, batch_size=batch_size, clock=clock))


def do_fetch(cfg: RunConfig, clock: VirtualClock, **kw: Any) -> FetchReport:
    return anyio.run(lambda: fetch(cfg, clock=clock, **kw))


def batch_cost(model: str, provider: str, tokens: tuple[int, int], at: float) -> float:
    price, note = batch_price(PriceBook(), {}, ModelRef(provider, model), at)
    assert price is not None and note is None
    return price.cost(Usage(*tokens))


def test_ten_thousand_jobs_split_fetched_once_at_batch_price(fb: FakeBatch, tmp_path: Path) -> None:
    clock = VirtualClock(fb)
    cfg = config(jobs_file(tmp_path, 10_000))
    rep = do_submit(cfg, clock, batch_size=3000)
    assert rep.jobs == 10_000 and rep.exit_code == 0
    sizes = sorted((kind, n) for kind, _, n in fb.created)
    assert sizes == [
        ("anthropic", 2000),
        ("anthropic", 3000),
        ("openai", 2000),
        ("openai", 3000),
    ]
    rows = anyio.run(lambda: _status(cfg))
    assert len(rows) == 4 and all(r.in_progress for r in rows)
    early = do_fetch(cfg, clock)
    assert early.exit_code == 4 and early.ok == 0
    fb.advance(3600)
    first = do_fetch(cfg, clock)
    assert first.exit_code == 0 and first.ok == 10_000 and first.closed == 4
    assert cfg.output is not None
    lines = read_jsonl(cfg.output)
    assert len(lines) == 10_000
    assert Counter(x["id"] for x in lines) == Counter(f"job-{i}" for i in range(10_000))
    assert all(x["latency_ms"] is None and x["ttft_ms"] is None for x in lines)
    assert all(x["batch"]["custom_id"].startswith(x["id"] + "_") for x in lines)
    billed = fb.billed()
    expected = batch_cost(OA, "openai", billed[OA], clock.time()) + batch_cost(
        AN, "anthropic", billed[AN], clock.time()
    )
    # Each line's cost is rounded to 8 decimals.
    assert sum(x["cost_usd"] for x in lines) == pytest.approx(expected, abs=len(lines) * 5e-9)
    assert first.cost_usd == pytest.approx(expected, rel=1e-6)
    assert first.online_cost_usd == pytest.approx(2 * expected, rel=1e-3)
    second = do_fetch(cfg, clock)
    assert (second.ok, second.failed, second.closed) == (0, 0, 0)
    assert len(read_jsonl(cfg.output)) == 10_000
    again = do_submit(cfg, clock)
    assert again.jobs == 0 and again.skipped_done == 10_000 and len(fb.created) == 4


async def _status(cfg: RunConfig) -> list[Any]:
    async with batch_context(cfg, write=False) as ctx:
        return await batch_status(ctx)


def test_expired_batch_keeps_partial_results_and_resubmits_the_rest(
    fb: FakeBatch, tmp_path: Path
) -> None:
    clock = VirtualClock(fb)
    cfg = config(jobs_file(tmp_path, 20))
    fb.expire_after = 0.5
    do_submit(cfg, clock)
    fb.advance(25 * 3600)
    rep = do_fetch(cfg, clock)
    assert (rep.ok, rep.returned, rep.exit_code) == (10, 10, 6)  # 6: jobs back to pending
    fb.expire_after = None
    again = do_submit(cfg, clock)
    assert again.jobs == 10
    rep2 = do_fetch(cfg, clock, wait=True, poll=300)
    assert rep2.ok == 10 and rep2.exit_code == 0
    assert cfg.output is not None
    lines = read_jsonl(cfg.output)
    assert sorted(x["id"] for x in lines) == sorted(f"job-{i}" for i in range(20))
    assert {x["attempts"] for x in lines} == {1, 2}


def test_faults_on_create_download_and_whole_batch(fb: FakeBatch, tmp_path: Path) -> None:
    clock = VirtualClock(fb)
    cfg = config(jobs_file(tmp_path, 8))
    fb.create_429 = 2
    fb.fail_next = "token_limit_exceeded"
    rep = do_submit(cfg, clock)
    assert rep.jobs == 8 and len(fb.created) == 2 and fb.calls["msgbatch_create"] == 3
    fb.truncate_downloads = 1
    fb.advance(700)
    first = do_fetch(cfg, clock)
    # The failed batch's jobs go back to pending; a cut download is fetched again.
    assert (first.ok, first.returned, first.exit_code) == (4, 4, 6)
    assert fb.calls["msgbatch_results"] == 2
    assert any("token_limit_exceeded" in n for n in first.notes)
    fb.null_output_polls = 2
    fb.empty_error_file = True
    assert do_submit(cfg, clock).jobs == 4
    fb.advance(700)
    lagging = do_fetch(cfg, clock)
    assert lagging.exit_code == 4 and lagging.still_open == 1
    done = do_fetch(cfg, clock, wait=True, poll=60)
    assert done.ok == 4 and done.exit_code == 0
    assert cfg.output is not None
    assert len(read_jsonl(cfg.output)) == 8


def test_permanent_errors_fail_transient_ones_come_back(fb: FakeBatch, tmp_path: Path) -> None:
    clock = VirtualClock(fb)
    cfg = config(jobs_file(tmp_path, 6))
    fb.api.add_rule("Question 2:", "400")
    fb.api.add_rule("Question 3:", "500")
    do_submit(cfg, clock)
    fb.advance(700)
    rep = do_fetch(cfg, clock)
    assert (rep.ok, rep.failed, rep.returned, rep.exit_code) == (4, 1, 1, 6)  # 6 before 1
    assert cfg.output is not None
    failed = [x for x in read_jsonl(cfg.output) if x["status"] == "failed"]
    assert [(x["id"], x["error"]["type"]) for x in failed] == [("job-2", "bad_request")]
    do_submit(cfg, clock)
    fb.advance(700)
    assert do_fetch(cfg, clock).ok == 1


def test_rounds_are_capped_by_max_attempts(fb: FakeBatch, tmp_path: Path) -> None:
    clock = VirtualClock(fb)
    cfg = config(jobs_file(tmp_path, 2, models=(OA, OA)))
    fb.api.add_rule("Question 1:", "500", "500", "500")
    do_submit(cfg, clock)
    fb.advance(700)
    assert do_fetch(cfg, clock, max_attempts=2).returned == 1
    do_submit(cfg, clock)
    fb.advance(700)
    rep = do_fetch(cfg, clock, max_attempts=2)
    assert (rep.failed, rep.returned) == (1, 0)
    assert cfg.output is not None
    bad = [x for x in read_jsonl(cfg.output) if x["status"] == "failed"]
    assert bad[0]["error"]["type"] == "server_error" and bad[0]["attempts"] == 2


def test_cancel_mid_run_keeps_what_finished(fb: FakeBatch, tmp_path: Path) -> None:
    clock = VirtualClock(fb)
    cfg = config(jobs_file(tmp_path, 8))
    do_submit(cfg, clock)
    fb.advance(300)

    async def cancel() -> list[Any]:
        async with batch_context(cfg, clock=clock) as ctx:
            return await batch_cancel(ctx)

    rows = anyio.run(cancel)
    assert len(rows) == 2 and fb.calls["batch_cancel"] == 1 and fb.calls["msgbatch_cancel"] == 1
    rep = do_fetch(cfg, clock, wait=True, poll=5)
    assert (rep.ok, rep.returned, rep.failed, rep.exit_code) == (4, 4, 0, 6)  # 6: 4 pending
    assert rep.pending == 4
    state = BatchState.load(tmp_path / "out.jsonl")
    assert not state.rounds  # a cancel is the user's choice: no round counted
    assert do_submit(cfg, clock).jobs == 4


def test_custom_ids_mapped_schema_checked_and_bodies_as_run_sends(
    fb: FakeBatch, tmp_path: Path
) -> None:
    clock = VirtualClock(fb)
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    rows = [
        {"id": "with space/and:colon", "prompt": "first", "model": AN},
        {"id": "x" * 80, "prompt": "second", "model": OA, "schema": schema},
    ]
    cfg = config(write_jsonl(tmp_path / "jobs.jsonl", rows), system="Be brief.")
    do_submit(cfg, clock)
    ids = set(fb.sent_ids())
    assert len(ids) == 2 and all(len(i) <= 64 and " " not in i for i in ids)
    bodies = [it.body for b in fb.batches.values() for it in b.items]
    assert all("stream" not in b and "stream_options" not in b for b in bodies)
    an_body = next(b for b in bodies if b["model"] == AN)
    assert an_body["system"] == "Be brief." and an_body["max_tokens"] == 1024
    oa_body = next(b for b in bodies if b["model"] == OA)
    assert oa_body["response_format"]["type"] == "json_schema"
    fb.advance(700)
    rep = do_fetch(cfg, clock, repair=False)  # fetch's own repair step: test_batch_repair.py
    assert cfg.output is not None
    lines = {x["id"]: x for x in read_jsonl(cfg.output)}
    assert set(lines) == {"with space/and:colon"}
    assert lines["with space/and:colon"]["batch"]["custom_id"].startswith("m-")
    # The fake answers prose: the schema job's answer is kept for the online repair.
    assert rep.repair_pending == 1 and rep.failed == 0 and rep.exit_code == 1
    assert any("missed the schema" in n for n in rep.notes)


def test_check_pass_refuses_before_sending(fb: FakeBatch, tmp_path: Path) -> None:
    clock = VirtualClock(fb)
    path = tmp_path / "jobs.jsonl"
    path.write_text('{"id": "a", "prompt": "x", "model": "gpt-4o-mini"}\nnot json\n')
    with pytest.raises(InputError):
        do_submit(config(path), clock)
    write_jsonl(path, [{"id": "a", "prompt": "x", "model": "sim:gpt-4o-mini"}])
    with pytest.raises(UsageError, match="no Batch API"):
        do_submit(config(path), clock)
    assert not fb.created and not fb.files


def test_max_cost_holds_against_the_bill(fb: FakeBatch, tmp_path: Path) -> None:
    clock = VirtualClock(fb)
    cfg = config(jobs_file(tmp_path, 400), max_cost=0.02)
    rep = do_submit(cfg, clock)
    assert rep.exit_code == 3 and 0 < rep.jobs < 400 and rep.not_submitted == 400 - rep.jobs
    assert rep.reserved_cost <= 0.02
    again = do_submit(cfg, clock)  # the open reservations still count
    assert again.jobs == 0 and again.exit_code == 3
    fb.advance(700)
    do_fetch(cfg, clock)
    more = do_submit(cfg, clock)  # settled at real cost: room for more
    assert more.jobs > 0
    fb.advance(700)
    do_fetch(cfg, clock)
    billed = fb.billed()
    bill = sum(
        batch_cost(m, "openai" if m == OA else "anthropic", t, clock.time())
        for m, t in billed.items()
    )
    assert bill <= 0.02
    assert cfg.output is not None
    assert sum(x["cost_usd"] for x in read_jsonl(cfg.output)) == pytest.approx(bill, abs=1e-5)


def test_keys_never_reach_state_or_results(fb: FakeBatch, tmp_path: Path) -> None:
    clock = VirtualClock(fb)
    cfg = config(jobs_file(tmp_path, 4))
    do_submit(cfg, clock)
    fb.advance(700)
    do_fetch(cfg, clock)
    for path in tmp_path.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert CANARY_OPENAI.encode() not in data and CANARY_ANTHROPIC.encode() not in data
    state = (tmp_path / "out.jsonl.batches" / "batches.jsonl").read_bytes()
    assert [orjson.loads(x)["ev"] for x in state.splitlines()].count("closed") == 2


def test_create_that_times_out_is_found_not_sent_again(fb: FakeBatch, tmp_path: Path) -> None:
    clock = VirtualClock(fb)
    cfg = config(jobs_file(tmp_path, 6), idle_timeout=0.5)
    fb.create_delay_s = 3  # each create is made, then its answer comes too late
    rep = do_submit(cfg, clock)
    assert rep.jobs == 6 and len(fb.created) == 2
    # OpenAI's is proven by its metadata; Anthropic's is checked line by line at fetch.
    assert sum("found batch" in n or "may be its" in n for n in rep.notes) == 2
    assert set(fb.sent_ids().values()) == {1}
    fb.create_delay_s = 0
    fb.advance(700)
    assert do_fetch(cfg, clock).ok == 6


def test_chunks_stay_under_the_byte_limit(
    fb: FakeBatch, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from llmbatch.providers.batch_openai import OpenAIBatchClient

    monkeypatch.setattr(OpenAIBatchClient, "max_bytes", 2000)
    clock = VirtualClock(fb)
    cfg = config(jobs_file(tmp_path, 20, models=(OA, OA)))
    assert do_submit(cfg, clock).jobs == 20
    sizes = [len(f.data) for f in fb.files.values() if f.purpose == "batch"]
    assert len(sizes) > 1 and max(sizes) <= 2000 and sum(n for _, _, n in fb.created) == 20


def test_a_batch_the_provider_does_not_know_stays_open(fb: FakeBatch, tmp_path: Path) -> None:
    clock = VirtualClock(fb)
    cfg = config(jobs_file(tmp_path, 4, models=(OA, OA)))
    do_submit(cfg, clock)
    fb.batches.clear()  # gone at the provider (or made with another key)
    rep = do_fetch(cfg, clock)
    assert rep.exit_code == 4 and any("does not know" in n for n in rep.notes)
    rows = anyio.run(lambda: _status(cfg))
    assert [(r.state, r.in_progress, r.fetched) for r in rows] == [("not found", True, False)]
    assert do_submit(cfg, clock).jobs == 0  # its jobs are not sent again


def test_state_log_survives_a_torn_last_line(fb: FakeBatch, tmp_path: Path) -> None:
    clock = VirtualClock(fb)
    cfg = config(jobs_file(tmp_path, 4))
    do_submit(cfg, clock)
    log = tmp_path / "out.jsonl.batches" / "batches.jsonl"
    whole = log.read_bytes()
    with log.open("ab") as f:
        f.write(b'{"ev": "closed", "local": "c00')  # a crash mid-append
    assert len(BatchState.load(tmp_path / "out.jsonl").open_chunks()) == 2
    fb.advance(700)
    assert do_fetch(cfg, clock).ok == 4  # the writer cuts the torn line, then appends
    assert log.read_bytes().startswith(whole + b'{"ev":"closed"')
