"""The cache, the event log and the spans on whole runs against the fake API."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from llmbatch import RunReport, run_jobs_async
from llmbatch._cache.sqlfile import default_cache_path
from llmbatch._config.settings import FileConfig, build_run_config
from tests.conftest import (
    CANARY_ANTHROPIC,
    CANARY_OPENAI,
    fake_env,
    prompts,
    read_jsonl,
    run_cli,
    write_jsonl,
)
from tests.fakeapi import FakeAPI
from tests.otlp_receiver import OTLPReceiver

HAIKU = "anthropic:claude-haiku-4-5"
MINI = "openai:gpt-4o-mini"
FAULTS = {"429": "rate_limited", "500": "server_error", "529": "overloaded", "reset": "connection"}


@pytest.fixture
def env(fake: FakeAPI, monkeypatch: pytest.MonkeyPatch) -> FakeAPI:
    for name, value in fake_env(fake).items():
        monkeypatch.setenv(name, value)
    return fake


def backup(tmp_path: Path) -> Path:
    return next(tmp_path.glob("jobs.results.jsonl.*.bak"))


def cache_exists() -> bool:
    return default_cache_path().exists()


async def run(tmp_path: Path, **flags: Any) -> RunReport:
    flags = {"model": HAIKU, "concurrency": 8, "quiet": True, **flags}
    cfg = build_run_config(tmp_path / "jobs.jsonl", flags, FileConfig())
    return await run_jobs_async(cfg, handle_signals=False)


async def test_a_fresh_rerun_sends_nothing_and_reports_the_dollars_saved(
    env: FakeAPI, tmp_path: Path
) -> None:
    write_jsonl(tmp_path / "jobs.jsonl", prompts(20))
    first = await run(tmp_path)
    assert env.count() == 20 and first.cost_usd > 0 and first.cache_hits == 0
    again = await run(tmp_path, fresh=True)
    assert env.count() == 20  # not one request more
    assert again.ok == 20 and again.cost_usd == 0.0 and again.attempts == 0
    assert again.to_dict()["cache"] == {
        "hits": 20,
        "saved_usd": pytest.approx(round(first.cost_usd, 6)),
    }
    lines = read_jsonl(tmp_path / "jobs.results.jsonl")
    assert all(x["cache"]["hit"] is True and x["cost_usd"] == 0.0 for x in lines)
    assert sum(x["cache"]["saved_usd"] for x in lines) == pytest.approx(first.cost_usd)
    assert {x["output"] for x in lines} == {x["output"] for x in read_jsonl(backup(tmp_path))}
    assert cache_exists()


async def test_sampled_duplicates_get_one_request_per_id(env: FakeAPI, tmp_path: Path) -> None:
    same = [{"id": f"s{i}", "prompt": "Name a colour.", "temperature": 1} for i in range(5)]
    write_jsonl(tmp_path / "jobs.jsonl", same)
    await run(tmp_path, model=MINI)
    assert env.count() == 5  # five samples, not one answer five times
    again = await run(tmp_path, model=MINI, fresh=True)
    assert env.count() == 5 and again.cache_hits == 5


async def test_deterministic_duplicates_share_one_answer(env: FakeAPI, tmp_path: Path) -> None:
    same = [{"id": f"d{i}", "prompt": "2 + 2?", "temperature": 0} for i in range(5)]
    write_jsonl(tmp_path / "jobs.jsonl", same)
    report = await run(tmp_path, model=MINI, concurrency=1)
    assert env.count() == 1 and report.ok == 5 and report.cache_hits == 4


async def test_no_cache_pays_again(env: FakeAPI, tmp_path: Path) -> None:
    write_jsonl(tmp_path / "jobs.jsonl", prompts(4))
    await run(tmp_path)
    report = await run(tmp_path, fresh=True, no_cache=True)
    assert env.count() == 8 and report.cache_hits == 0


async def test_changing_the_model_misses(env: FakeAPI, tmp_path: Path) -> None:
    write_jsonl(tmp_path / "jobs.jsonl", prompts(3))
    await run(tmp_path)
    await run(tmp_path, fresh=True, model="anthropic:claude-sonnet-4-5")
    assert env.count() == 6


async def test_answers_that_fail_the_schema_are_not_kept(env: FakeAPI, tmp_path: Path) -> None:
    env.reply = "not json at all"
    schema = tmp_path / "schema.json"
    schema.write_text('{"type": "object"}')
    write_jsonl(tmp_path / "jobs.jsonl", prompts(2))
    first = await run(tmp_path, schema=str(schema), repair_attempts=0)
    assert first.failed == 2
    env.reply = '{"ok": true}'
    second = await run(tmp_path, schema=str(schema), repair_attempts=0, retry_failed=True)
    assert second.ok == 2 and second.cache_hits == 0 and env.count() == 4
    third = await run(tmp_path, schema=str(schema), fresh=True)
    assert third.cache_hits == 2 and env.count() == 4  # the valid answers were kept


async def test_a_corrupt_cache_file_warns_once_and_the_run_completes(
    env: FakeAPI, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = tmp_path / "broken.sqlite"
    cache.write_bytes(b"\x00corrupted on purpose\xff" * 512)
    write_jsonl(tmp_path / "jobs.jsonl", prompts(6))
    report = await run(tmp_path, cache=str(cache))
    assert report.ok == 6 and report.exit_code == 0 and env.count() == 6
    err = capsys.readouterr().err
    assert err.count("warning") == 1 and "running without it" in err


async def test_the_event_log_of_a_chaos_run_matches_the_server(
    env: FakeAPI, tmp_path: Path
) -> None:
    env.chaos = {"429": 0.05, "500": 0.05, "529": 0.05, "reset": 0.03}
    env.retry_after = 0.02
    write_jsonl(tmp_path / "jobs.jsonl", prompts(120))
    log = tmp_path / "events.jsonl"
    # One request in six fails: with the default 6 tries, now and then a job drew six
    # faults in a row and the run (rightly) wrote it failed. The log is the point here.
    report = await run(tmp_path, log_json=str(log), concurrency=16, max_attempts=12)
    assert report.ok == 120
    lines = [orjson.loads(line) for line in log.read_bytes().splitlines()]
    assert lines[0]["event"] == "run_start" and lines[-1]["event"] == "run_end"
    attempts = [x for x in lines if x["event"] == "attempt"]
    assert len(attempts) == env.count()  # exactly one line per request the server saw
    seen = env.outcomes()
    expected = Counter({FAULTS[k]: v for k, v in seen.items() if k in FAULTS})
    expected["ok"] = seen["ok"]
    assert Counter(x["outcome"] for x in attempts) == expected
    assert sum(expected.values()) > 120  # the chaos really happened
    assert {x["http_status"] for x in attempts if x["outcome"] == "rate_limited"} == {429}
    assert all(x["backoff_s"] is not None for x in attempts if x["outcome"] != "ok")
    per_job = Counter(x["job"] for x in attempts)
    results = {x["id"]: x for x in read_jsonl(tmp_path / "jobs.results.jsonl")}
    assert all(per_job[job] == r["attempts"] for job, r in results.items())
    assert lines[-1]["report"]["attempts"]["total"] == env.count()
    raw = log.read_text()
    assert CANARY_ANTHROPIC not in raw and "Question 7" not in raw


async def test_log_prompts_puts_the_messages_in(env: FakeAPI, tmp_path: Path) -> None:
    write_jsonl(tmp_path / "jobs.jsonl", prompts(2))
    log = tmp_path / "events.jsonl"
    await run(tmp_path, log_json=str(log), log_prompts=True)
    attempts = [orjson.loads(x) for x in log.read_bytes().splitlines() if b'"attempt"' in x]
    contents = sorted(a["prompt"]["messages"][0]["content"] for a in attempts)
    assert contents == [p["prompt"] for p in prompts(2)]
    assert CANARY_ANTHROPIC not in log.read_text()


async def test_cache_hits_are_logged(env: FakeAPI, tmp_path: Path) -> None:
    write_jsonl(tmp_path / "jobs.jsonl", prompts(3))
    await run(tmp_path)
    log = tmp_path / "events.jsonl"
    await run(tmp_path, fresh=True, log_json=str(log))
    kinds = Counter(orjson.loads(x)["event"] for x in log.read_bytes().splitlines())
    assert kinds == {"run_start": 1, "cache_hit": 3, "run_end": 1}


async def test_spans_reach_a_collector_one_per_request(env: FakeAPI, tmp_path: Path) -> None:
    env.chaos = {"429": 0.1, "500": 0.05}
    env.retry_after = 0.02
    write_jsonl(tmp_path / "jobs.jsonl", prompts(40))
    with OTLPReceiver() as receiver:
        report = await run(tmp_path, otlp=receiver.url, model=MINI, max_attempts=12)
        spans = list(receiver.received.spans)
        raw = b"".join(receiver.received.raw)
    assert report.ok == 40
    runs = [s for s in spans if s.name == "llmbatch run"]
    jobs = [s for s in spans if s.name == "llmbatch job"]
    chats = [s for s in spans if s.name == "chat gpt-4o-mini"]
    assert len(runs) == 1 and len(jobs) == 40
    assert len(chats) == env.count()
    job_ids = {j.span_id for j in jobs}
    assert all(c.parent_span_id in job_ids for c in chats)
    assert all(j.parent_span_id == runs[0].span_id for j in jobs)
    for c in chats:
        a = c.attributes
        assert a["gen_ai.system"] == "openai" and a["gen_ai.request.model"] == "gpt-4o-mini"
        assert a["gen_ai.operation.name"] == "chat"
        if "error.type" not in a:
            assert a["gen_ai.usage.input_tokens"] > 0 and a["gen_ai.usage.output_tokens"] > 0
            assert a["gen_ai.response.finish_reasons"] and a["llmbatch.cost_usd"] > 0
        else:
            assert a["error.type"] in ("rate_limited", "server_error")
    errors = Counter(c.attributes.get("error.type") for c in chats)
    assert errors["rate_limited"] == env.count("429")
    assert CANARY_OPENAI.encode() not in raw and b"Question 3" not in raw


def test_the_flags_on_the_command_line(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "jobs.jsonl", prompts(5))
    with OTLPReceiver() as receiver:
        r = run_cli(
            "run",
            "jobs.jsonl",
            "-m",
            "sim:claude-haiku-4-5",
            "--quiet",
            "--log-json",
            "log.jsonl",
            "--otlp",
            receiver.url,
            "--cache",
            "my-cache.sqlite",
        )
        assert r.code == 0, r.output
        assert len([s for s in receiver.received.spans if s.name.startswith("chat ")]) == 5
    events = [orjson.loads(x)["event"] for x in (tmp_path / "log.jsonl").read_bytes().splitlines()]
    assert events.count("attempt") == 5
    assert (tmp_path / "my-cache.sqlite").exists()
    r = run_cli("run", "jobs.jsonl", "-m", "sim:claude-haiku-4-5", "--fresh", "--no-cache")
    assert r.code == 0 and "answered from the cache" not in r.stderr
    r = run_cli(
        "run", "jobs.jsonl", "-m", "sim:claude-haiku-4-5", "--fresh", "--cache", "my-cache.sqlite"
    )
    assert r.code == 0 and "5 answered from the cache" in r.stderr
