"""``batch fetch`` makes the schema repairs itself: online, once, within the budget, kill-safe."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest

from llmbatch._batch.fetch import FetchReport, fetch
from llmbatch._batch.submit import submit
from llmbatch._config.settings import RunConfig
from llmbatch._core.exceptions import ResumeConflict
from llmbatch._core.jobs import Request
from llmbatch._io.batch_state import BatchState
from llmbatch._io.resume import read_existing
from llmbatch._observe.progress import NoProgress
from llmbatch._report.report import RunReport
from llmbatch._run.online import run_jobs_async
from llmbatch.providers._base import Answer, Provider
from llmbatch.providers.factory import ProviderFactory, default_provider_factory
from tests.batchutil import (
    AN,
    OA,
    REPAIR_MARK,
    SCHEMA,
    VirtualClock,
    config,
    jobs_file,
    repair_requests,
)
from tests.conftest import (
    CANARY_ANTHROPIC,
    CANARY_OPENAI,
    fake_env,
    read_jsonl,
    run_cli,
    write_jsonl,
)
from tests.fakebatch import FakeBatch


def do_fetch(cfg: RunConfig, clock: VirtualClock, **kw: Any) -> FetchReport:
    return anyio.run(lambda: fetch(cfg, clock=clock, **kw))


def submitted(
    fb: FakeBatch, tmp_path: Path, n: int, models: tuple[str, ...] = (OA, AN), **kw: Any
) -> tuple[RunConfig, VirtualClock]:
    """Jobs with a schema, submitted; every batch answer misses it, the batches have ended."""
    clock = VirtualClock(fb)
    cfg = config(jobs_file(tmp_path, n, models), schema=SCHEMA, **kw)
    fb.reply = "Sure! The answer is four."
    anyio.run(lambda: submit(cfg, clock=clock))
    fb.advance(700)
    return cfg, clock


def run_online(cfg: RunConfig) -> RunReport:
    return anyio.run(lambda: run_jobs_async(cfg, progress=NoProgress(), handle_signals=False))


def chunk_rows(cfg: RunConfig) -> list[Path]:
    assert cfg.output is not None
    return sorted(cfg.output.with_name("out.jsonl.batches").glob("*.jobs.jsonl"))


def test_fetch_repairs_schema_misses_online_then_exits_0(fb: FakeBatch, tmp_path: Path) -> None:
    cfg, clock = submitted(fb, tmp_path, 6)
    fb.api.reply = '{"n": 4}'
    rep = do_fetch(cfg, clock)
    assert (rep.ok, rep.failed, rep.repaired, rep.repair_pending, rep.exit_code) == (6, 0, 6, 0, 0)
    assert cfg.output is not None
    lines = read_jsonl(cfg.output)
    assert len(lines) == 6 and all(x["status"] == "ok" and x["parsed"] == {"n": 4} for x in lines)
    assert all(x["repairs"] == 1 and x["attempts"] == 2 and x["batch"]["id"] for x in lines)
    # The original fingerprints: a later run on the same jobs file sees them as done.
    rows = [orjson.loads(r) for p in chunk_rows(cfg) for r in p.read_bytes().splitlines()]
    assert {x["id"]: x["fingerprint"] for x in lines} == {r["id"]: r["fp"] for r in rows}
    # Online went only the repair turns, each with its bad answer, to the job's own model.
    sent = repair_requests(fb)
    assert len(sent) == len(fb.api.records) == 6
    assert all("Sure! The answer is four." in str(b["messages"]) for b in sent)
    assert Counter(b["model"] for b in sent) == Counter({OA: 3, AN: 3})
    # Each line holds its batch answer and its repair: the batch cost plus the online one.
    assert rep.repair_cost_usd > 0
    total = sum(x["cost_usd"] for x in lines)
    assert total == pytest.approx(rep.cost_usd + rep.repair_cost_usd, abs=6e-8)
    # Idempotent: a second fetch, then a run, write and ask nothing more.
    again = do_fetch(cfg, clock)
    assert (again.ok, again.repaired, again.exit_code) == (0, 0, 0)
    report = run_online(cfg)
    assert report.exit_code == 0 and report.ok == 0 and report.skipped_done == 6
    assert len(read_jsonl(cfg.output)) == 6 and len(fb.api.records) == 6
    assert not BatchState.load(cfg.output).pending_repairs(lambda _i: None)


def test_fetch_wait_ends_with_the_repairs_done(fb: FakeBatch, tmp_path: Path) -> None:
    clock = VirtualClock(fb)
    cfg = config(jobs_file(tmp_path, 4), schema=SCHEMA)
    fb.reply = "prose"
    fb.api.reply = '{"n": 1}'
    anyio.run(lambda: submit(cfg, clock=clock))
    rep = do_fetch(cfg, clock, wait=True, poll=300)
    assert clock.slept >= 600 and (rep.ok, rep.repaired, rep.exit_code) == (4, 4, 0)
    assert len(repair_requests(fb)) == 4


def test_repairs_that_still_miss_fail_within_repair_attempts(fb: FakeBatch, tmp_path: Path) -> None:
    cfg, clock = submitted(fb, tmp_path, 2, repair_attempts=2)
    fb.api.reply = "still prose"
    rep = do_fetch(cfg, clock)
    assert (rep.ok, rep.failed, rep.repaired, rep.exit_code) == (0, 2, 2, 1)
    assert cfg.output is not None
    lines = read_jsonl(cfg.output)
    assert all(x["error"]["type"] == "schema_invalid" and x["repairs"] == 2 for x in lines)
    assert len(repair_requests(fb)) == 4  # the batch answer counted as the first try
    assert do_fetch(cfg, clock).repaired == 0 and len(fb.api.records) == 4


@pytest.mark.parametrize("damage", ["old_state", "tampered"])
def test_a_request_that_cannot_be_rebuilt_is_left_for_run(
    fb: FakeBatch, tmp_path: Path, damage: str
) -> None:
    cfg, clock = submitted(fb, tmp_path, 4)
    for path in chunk_rows(cfg):  # as an older llmbatch wrote them, or altered since
        rows = [orjson.loads(r) for r in path.read_bytes().splitlines()]
        for r in rows:
            if damage == "old_state":
                del r["req"], r["chain"]
            else:
                r["req"]["messages"][0]["content"] += " (edited)"
        path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    fb.api.reply = '{"n": 3}'
    rep = do_fetch(cfg, clock)
    assert (rep.ok, rep.repaired, rep.repair_pending, rep.exit_code) == (0, 0, 4, 1)
    assert not fb.api.records
    why = "without its request" if damage == "old_state" else "no longer matches"
    assert any(why in n for n in rep.notes)
    assert any("`llmbatch run JOBS -o" in n for n in rep.notes)
    # `run` repairs them from the jobs file, as before.
    report = run_online(cfg)
    assert report.exit_code == 0 and report.ok == 4 and len(repair_requests(fb)) == 4


def test_a_jobs_file_changed_after_submit_repairs_what_was_submitted(
    fb: FakeBatch, tmp_path: Path
) -> None:
    cfg, clock = submitted(fb, tmp_path, 2, models=(OA, OA))
    rows = [{"id": f"job-{i}", "prompt": f"Another question {i}", "model": OA} for i in range(2)]
    write_jsonl(cfg.jobs, rows)
    fb.api.reply = '{"n": 5}'
    rep = do_fetch(cfg, clock)  # fetch answers for what was sent, as for every batch line
    assert (rep.ok, rep.repaired, rep.exit_code) == (2, 2, 0)
    assert all("Question" in str(b["messages"]) for b in repair_requests(fb))
    with pytest.raises(ResumeConflict):  # run names the changed jobs, as for any batch line
        run_online(cfg)


def test_the_budget_holds_each_repair_and_leaves_the_rest_pending(
    fb: FakeBatch, tmp_path: Path
) -> None:
    cfg, clock = submitted(fb, tmp_path, 1, models=(OA,), max_cost=0.0005)
    fb.api.reply = '{"n": 0}'
    # The submit's cap held the batch (worst case ~$0.0003); a repair's worst case online
    # (~$0.0006) does not fit: nothing is sent, the paid answer stays for later.
    capped = do_fetch(replace(cfg, max_cost=None), clock)
    assert (capped.stopped_by, capped.exit_code, capped.repair_pending) == ("budget", 3, 1)
    assert not fb.api.records and cfg.output is not None and not read_jsonl(cfg.output)
    assert any("max-cost" in n or "budget" in n for n in capped.notes)
    raised = do_fetch(replace(cfg, max_cost=0.01), clock)
    assert (raised.ok, raised.repaired, raised.exit_code) == (1, 1, 0)
    assert len(repair_requests(fb)) == 1


class _Killer:
    """Passes requests through until the ``at``-th, then kills the fetch (a process death)."""

    def __init__(self, inner: Provider, kill: list[anyio.CancelScope], sent: list[int], at: int):
        self.inner, self.kill, self.sent, self.at = inner, kill, sent, at
        self.name = inner.name
        self.notes = inner.notes

    async def send(self, model: str, request: Request, time_limit: float) -> Answer:
        self.sent[0] += 1
        if self.sent[0] == self.at:
            self.kill[0].cancel()
            await anyio.sleep_forever()
        return await self.inner.send(model, request, time_limit)

    async def aclose(self) -> None:
        await self.inner.aclose()


def test_killed_mid_repair_the_next_fetch_finishes_nothing_twice(
    fb: FakeBatch, tmp_path: Path
) -> None:
    cfg, clock = submitted(fb, tmp_path, 5, concurrency=1)
    fb.api.reply = '{"n": 7}'
    kill: list[anyio.CancelScope] = []
    sent = [0]

    def killing(name: str, c: RunConfig) -> Provider:
        return _Killer(default_provider_factory(name, c), kill, sent, at=3)

    async def killed_fetch(factory: ProviderFactory) -> None:
        with anyio.CancelScope() as scope:
            kill.append(scope)
            await fetch(cfg, clock=clock, provider_factory=factory)

    anyio.run(killed_fetch, killing)
    assert cfg.output is not None
    before = {x["id"] for x in read_jsonl(cfg.output)}
    asked_before = len(fb.api.records)
    assert asked_before == 2 and len(before) <= 2
    rep = do_fetch(cfg, clock)
    assert rep.exit_code == 0 and rep.repaired == 5 - len(before)
    lines = read_jsonl(cfg.output)
    assert Counter(x["id"] for x in lines) == Counter(f"job-{i}" for i in range(5))
    # Only jobs without a line were asked again: none paid twice but the one in flight.
    assert len(fb.api.records) == asked_before + 5 - len(before)
    # Killed after the lines were written but before their repairs were marked done:
    # the lines decide.
    log = cfg.output.with_name("out.jsonl.batches") / "batches.jsonl"
    log.write_bytes(b"".join(x for x in log.read_bytes().splitlines(True) if b"repaired" not in x))
    assert do_fetch(cfg, clock).repaired == 0 and len(read_jsonl(cfg.output)) == 5
    assert read_existing(cfg.output, retry_failed=False).done.fingerprint("job-0")


def test_cli_fetch_repairs_and_exits_0(tmp_path: Path) -> None:
    from tests.fakeapi import FakeAPI

    api = FakeAPI(retry_after=0.01, reply='{"n": 9}')
    fb = FakeBatch(api, reply="no json here")
    api.start()
    try:
        env = fake_env(api)
        schema = tmp_path / "schema.json"
        schema.write_bytes(orjson.dumps(SCHEMA))
        path = jobs_file(tmp_path, 4)
        out = str(tmp_path / "out.jsonl")
        sub = run_cli("batch", "submit", str(path), "-o", out, "--schema", str(schema), env=env)
        assert sub.code == 0, sub.output
        fb.advance(3600)
        got = run_cli("batch", "fetch", out, env=env)
        assert got.code == 0, got.output
        assert "repaired 4 schema misses online" in got.stderr
        lines = read_jsonl(Path(out))
        assert len(lines) == 4 and all(x["parsed"] == {"n": 9} for x in lines)
        again = run_cli("batch", "fetch", out, "--json", env=env)
        assert again.code == 0 and orjson.loads(again.stdout)["jobs"]["repaired_online"] == 0
        assert len(read_jsonl(Path(out))) == 4 and len(api.records) == 4
        for text in (sub.output, got.output, again.output):
            assert CANARY_OPENAI not in text and CANARY_ANTHROPIC not in text
    finally:
        api.stop()


def test_a_repair_refused_authentication_stays_pending(fb: FakeBatch, tmp_path: Path) -> None:
    cfg, clock = submitted(fb, tmp_path, 2, models=(OA, OA))
    fb.api.add_rule(REPAIR_MARK, "401", "401")  # the repair turns only
    rep = do_fetch(cfg, clock)
    assert (rep.repaired, rep.repair_pending, rep.exit_code) == (0, 2, 1)
    assert any("authentication" in n for n in rep.notes)
    assert cfg.output is not None and not read_jsonl(cfg.output)
    fb.api.reply = '{"n": 2}'
    assert do_fetch(cfg, clock).exit_code == 0 and len(read_jsonl(cfg.output)) == 2
