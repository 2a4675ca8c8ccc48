"""What the online part takes over from the batches: schema repairs, billed misses, fallbacks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

from llmbatch._batch.fetch import FetchReport, fetch
from llmbatch._batch.submit import SubmitReport, submit
from llmbatch._config.settings import RunConfig
from llmbatch._io.batch_state import BatchState
from llmbatch._io.resume import read_existing
from llmbatch._observe.progress import NoProgress
from llmbatch._report.batch import batch_part_from_results
from llmbatch._report.report import RunReport
from llmbatch._run.online import run_jobs_async
from tests.batchutil import (
    AN,
    OA,
    SCHEMA,
    VirtualClock,
    config,
    jobs_file,
    repair_requests,
)
from tests.conftest import read_jsonl, write_jsonl
from tests.fakebatch import FakeBatch
from tests.test_batch import batch_cost
from tests.test_batch_run import run_mode


def do_submit(cfg: RunConfig, clock: VirtualClock) -> SubmitReport:
    return anyio.run(lambda: submit(cfg, clock=clock))


def do_fetch(cfg: RunConfig, clock: VirtualClock, **kw: Any) -> FetchReport:
    return anyio.run(lambda: fetch(cfg, clock=clock, **kw))


def run_online(cfg: RunConfig) -> RunReport:
    return anyio.run(lambda: run_jobs_async(cfg, progress=NoProgress(), handle_signals=False))


def test_schema_misses_are_repaired_online_in_one_run(fb: FakeBatch, tmp_path: Path) -> None:
    clock = VirtualClock(fb)
    cfg = config(jobs_file(tmp_path, 6), schema=SCHEMA)
    fb.reply = "Sure! The answer is four."  # every batch answer misses the schema
    fb.api.reply = '{"n": 4}'  # the repair turn online gets it right
    rep = run_mode(cfg, clock, "batch", deadline=None)
    assert rep.exit_code == 0 and rep.batch.jobs == 6
    assert cfg.output is not None
    lines = read_jsonl(cfg.output)
    assert len(lines) == 6 and all(x["status"] == "ok" for x in lines)
    assert all(x["parsed"] == {"n": 4} and x["repairs"] == 1 for x in lines)
    assert all(x["attempts"] == 2 and x["batch"]["id"] for x in lines)
    # Only the repair turns went online: the bad batch answer and the problem in each.
    sent = repair_requests(fb)
    assert len(fb.api.records) == len(sent) == 6
    assert all("Sure! The answer is four." in str(b["messages"]) for b in sent)
    assert set(fb.sent_ids().values()) == {1}
    # Each line's cost is its batch answer plus its repair; the run's report counts both
    # (the batch requests are attempts of the run, as the online ones are).
    total = sum(x["cost_usd"] for x in lines)
    assert rep.batch.cost_usd > 0 and rep.report.cost_usd > rep.batch.cost_usd
    assert total == pytest.approx(rep.report.cost_usd, abs=6e-8)
    assert rep.report.ok == 6 and rep.report.attempts == 12
    assert not BatchState.load(cfg.output).pending_repairs(lambda _i: None)


def test_killed_between_fetch_and_repair_nothing_lost_nothing_paid_twice(
    fb: FakeBatch, tmp_path: Path
) -> None:
    clock = VirtualClock(fb)
    cfg = config(jobs_file(tmp_path, 4), schema=SCHEMA)
    fb.reply = "not json"
    do_submit(cfg, clock)
    fb.advance(700)
    first = do_fetch(cfg, clock, repair=False)  # as if killed before its repair step
    assert (first.ok, first.repair_pending, first.exit_code) == (0, 4, 1)
    assert cfg.output is not None and not read_jsonl(cfg.output)  # no line written yet
    # The process dies here. Whatever runs next keeps the paid answers.
    assert do_submit(cfg, clock).jobs == 0  # not submitted again
    again = do_fetch(cfg, clock, repair=False)
    assert (again.closed, again.repair_pending) == (0, 4)
    state = BatchState.load(cfg.output)
    assert state.spent(lambda _i: None)[0] == pytest.approx(first.cost_usd)
    fb.api.reply = '{"n": 2}'
    report = run_online(cfg)
    assert report.exit_code == 0 and report.ok == 4
    assert len(repair_requests(fb)) == len(fb.api.records) == 4
    lines = read_jsonl(cfg.output)
    assert sorted(x["id"] for x in lines) == [f"job-{i}" for i in range(4)]
    assert all(x["parsed"] == {"n": 2} and "batch" in x for x in lines)
    assert run_online(cfg).ok == 0 and len(fb.api.records) == 4  # nothing asked twice
    assert set(fb.sent_ids().values()) == {1}
    assert BatchState.load(cfg.output).spent(lambda _i: None) == (0.0, 0)
    # Killed after the lines were written, before the repairs were marked done: the
    # lines decide, nothing is repaired or counted twice.
    log = cfg.output.with_name("out.jsonl.batches") / "batches.jsonl"
    log.write_bytes(b"".join(x for x in log.read_bytes().splitlines(True) if b"repaired" not in x))
    lines_fp = read_existing(cfg.output, retry_failed=False).done.fingerprint
    assert BatchState.load(cfg.output).spent(lines_fp) == (0.0, 0)
    assert run_online(cfg).ok == 0 and len(fb.api.records) == 4


def test_repairs_count_against_repair_attempts(fb: FakeBatch, tmp_path: Path) -> None:
    clock = VirtualClock(fb)
    cfg = config(jobs_file(tmp_path, 2), schema=SCHEMA, repair_attempts=2)
    fb.reply = "prose"
    fb.api.reply = "still prose"
    rep = run_mode(cfg, clock, "batch", deadline=None)
    assert rep.exit_code == 1
    assert cfg.output is not None
    lines = read_jsonl(cfg.output)
    assert all(x["error"]["type"] == "schema_invalid" and x["repairs"] == 2 for x in lines)
    assert len(repair_requests(fb)) == 4  # the batch answer counted as the first try


def test_no_repairs_allowed_writes_the_batch_answer_failed(fb: FakeBatch, tmp_path: Path) -> None:
    clock = VirtualClock(fb)
    cfg = config(jobs_file(tmp_path, 2), schema=SCHEMA, repair_attempts=0)
    fb.reply = "prose"
    rep = run_mode(cfg, clock, "batch", deadline=None)
    assert rep.exit_code == 1 and not fb.api.records
    assert cfg.output is not None
    lines = read_jsonl(cfg.output)
    assert all(x["error"]["type"] == "schema_invalid" and x["output"] == "prose" for x in lines)
    assert all(x["cost_usd"] > 0 and "batch" in x for x in lines)


def test_billed_unanswered_requests_count_against_max_cost(fb: FakeBatch, tmp_path: Path) -> None:
    clock = VirtualClock(fb)
    cap = 0.003
    cfg = config(jobs_file(tmp_path, 40, models=(OA, OA)), max_cost=cap)
    fb.bill_errors = True  # each request runs to its token cap, fails (500), and is billed
    fb.api.add_rule("Question", *["500"] * 1000)
    first = do_submit(cfg, clock)
    assert 0 < first.jobs < 40 and first.exit_code == 3
    fb.advance(700)
    fetched = do_fetch(cfg, clock)
    assert fetched.returned == first.jobs and fetched.ok == 0
    bill = batch_cost(OA, "openai", fb.billed()[OA], clock.time())
    assert fetched.cost_usd == pytest.approx(bill, rel=1e-6) and bill > cap / 2
    assert any("billed without an answer" in n for n in fetched.notes)
    # The spend is in no result line, yet the budget counts it: no room for another round.
    again = do_submit(cfg, clock)
    assert again.exit_code == 3 and again.jobs < first.jobs
    fb.advance(700)
    do_fetch(cfg, clock)
    total = batch_cost(OA, "openai", fb.billed()[OA], clock.time())
    assert total <= cap
    assert cfg.output is not None
    state = BatchState.load(cfg.output)
    assert state.spent(lambda _i: None)[0] == pytest.approx(total, rel=1e-6)
    part = batch_part_from_results(cfg.output)  # the report's batch block counts it too
    assert part.jobs == 0 and part.cost_usd == pytest.approx(total, rel=1e-6)
    assert part.online_cost_usd == pytest.approx(2 * total, rel=1e-3)
    # The online part counts it too.
    report = run_online(cfg)
    assert report.stopped_by == "budget" and report.ok == 0
    assert report.cost_usd_cumulative + total <= cap


def chain_jobs(tmp_path: Path, chains: list[tuple[str, list[str]]]) -> Path:
    rows = [
        {"id": f"job-{i}", "prompt": f"Question {i}: what is {i} + {i}?", "model": m, "fallback": f}
        for i, (m, f) in enumerate(chains)
    ]
    return write_jsonl(tmp_path / "jobs.jsonl", rows)


def test_a_model_that_fails_for_good_hands_the_job_to_its_fallback(
    fb: FakeBatch, tmp_path: Path
) -> None:
    clock = VirtualClock(fb)
    fb.api.model_faults["gpt-gone"] = "404"  # the model does not exist (any more)
    chains = [("openai:gpt-gone", [f"anthropic:{AN}"]), ("openai:gpt-gone", [])]
    chains += [(f"sim:{OA}", [f"openai:{OA}"])]  # sim has no Batch API: its next model does
    cfg = config(chain_jobs(tmp_path, chains))
    first = do_submit(cfg, clock)
    assert sorted((k, n) for k, _, n in fb.created) == [("openai", 1), ("openai", 2)]
    assert first.jobs == 3
    fb.advance(700)
    rep = do_fetch(cfg, clock)
    # job-0 goes on to its fallback; job-1 has none: a failed line; job-2 is answered.
    assert (rep.ok, rep.failed, rep.returned, rep.exit_code) == (1, 1, 0, 6)  # job-0: pending
    assert any("next model" in n for n in rep.notes)
    again = do_submit(cfg, clock)
    assert again.jobs == 1 and fb.created[-1][0] == "anthropic"
    fb.advance(700)
    assert do_fetch(cfg, clock).ok == 1
    assert cfg.output is not None
    lines = {x["id"]: x for x in read_jsonl(cfg.output)}
    assert (lines["job-0"]["model"], lines["job-0"]["fallbacks"]) == (AN, 1)
    assert lines["job-0"]["attempts"] == 2  # its round on the failed model counts
    assert lines["job-1"]["error"]["type"] == "not_found"
    assert (lines["job-2"]["model"], lines["job-2"]["fallbacks"]) == (OA, 1)
    assert not fb.api.records  # all of it by batch


def test_rounds_run_out_on_one_model_then_the_next(fb: FakeBatch, tmp_path: Path) -> None:
    clock = VirtualClock(fb)
    fb.api.model_faults[OA] = "500"  # the first model keeps failing (transiently)
    cfg = config(chain_jobs(tmp_path, [(f"openai:{OA}", [f"anthropic:{AN}"])]), max_attempts=2)
    for _ in range(2):
        do_submit(cfg, clock)
        fb.advance(700)
        do_fetch(cfg, clock)
    do_submit(cfg, clock)
    fb.advance(700)
    assert do_fetch(cfg, clock).ok == 1
    assert [k for k, _, _ in fb.created] == ["openai", "openai", "anthropic"]
    assert cfg.output is not None
    (line,) = read_jsonl(cfg.output)
    assert (line["model"], line["fallbacks"], line["attempts"]) == (AN, 1, 3)


def test_leftovers_online_honour_the_chain(fb: FakeBatch, tmp_path: Path) -> None:
    clock = VirtualClock(fb)
    fb.api.model_faults["gpt-gone"] = "404"
    chains = [("openai:gpt-gone", [f"anthropic:{AN}"]), (f"sim:{OA}", [])]
    cfg = config(chain_jobs(tmp_path, chains))
    rep = run_mode(cfg, clock, "batch", deadline=None)
    assert rep.exit_code == 0
    # job-0 went on online at its fallback, never again to the model that failed;
    # job-1 has no model with a Batch API: it ran online (sim) from the start.
    assert [r.body["model"] for r in fb.api.records] == [AN]
    assert sum(fb.sent_ids().values()) == 1
    assert cfg.output is not None
    lines = {x["id"]: x for x in read_jsonl(cfg.output)}
    assert (lines["job-0"]["model"], lines["job-0"]["fallbacks"]) == (AN, 1)
    assert lines["job-1"]["provider"] == "sim" and lines["job-1"]["status"] == "ok"


def test_a_job_changed_before_its_repair_runs_anew_its_answer_stays_counted(
    fb: FakeBatch, tmp_path: Path
) -> None:
    clock = VirtualClock(fb)
    cfg = config(jobs_file(tmp_path, 2, models=(OA, OA)), schema=SCHEMA)
    fb.reply = "not json"
    do_submit(cfg, clock)
    fb.advance(700)
    paid = do_fetch(cfg, clock, repair=False).cost_usd
    cfg.system = "Answer in JSON."  # the jobs now ask something else
    fb.api.reply = '{"n": 1}'
    assert run_online(cfg).ok == 2
    assert not repair_requests(fb)  # asked anew, not repaired
    assert cfg.output is not None
    lines = read_jsonl(cfg.output)
    assert all("batch" not in x and "repairs" not in x for x in lines)
    lines_fp = read_existing(cfg.output, retry_failed=False).done.fingerprint
    assert BatchState.load(cfg.output).spent(lines_fp)[0] == pytest.approx(paid)


def test_a_fallback_without_batch_api_is_left_for_run(fb: FakeBatch, tmp_path: Path) -> None:
    clock = VirtualClock(fb)
    fb.api.model_faults["gpt-gone"] = "404"
    cfg = config(chain_jobs(tmp_path, [("openai:gpt-gone", [f"sim:{OA}"]), (OA, [])]))
    do_submit(cfg, clock)
    fb.advance(700)
    assert do_fetch(cfg, clock).ok == 1
    later = do_submit(cfg, clock)  # not refused: the other jobs may go on by batch
    assert later.jobs == 0 and later.left_online == 1
    assert any("run online" in n for n in later.notes)
    report = run_online(cfg)
    assert report.ok == 1 and not fb.api.records  # sim answered, gpt-gone not asked again
    assert cfg.output is not None
    lines = {x["id"]: x for x in read_jsonl(cfg.output)}
    assert (lines["job-0"]["provider"], lines["job-0"]["fallbacks"]) == ("sim", 1)
