"""Gemini's Batch API through ``batch submit|status|fetch|cancel`` and ``run --mode``, on the fake:
inline and file-backed batches, kill -9 in create and in fetch with nothing paid twice."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

import llmbatch.providers.batch_gemini as batch_gemini
from tests.conftest import read_jsonl, run_cli, start_cli, wait_until, write_jsonl
from tests.fakeapi import FakeAPI
from tests.fakegemini import FakeGemini
from tests.fakegemini_batch import FakeGeminiBatch

CANARY_GEMINI = "AIzaSy-canary-DO-NOT-LEAK-0123456789abcdef"
MODEL = "gemini:gemini-2.5-flash"
SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}


@pytest.fixture
def gb() -> Iterator[FakeGeminiBatch]:
    api = FakeAPI(retry_after=0.01)
    batch = FakeGeminiBatch(FakeGemini(api))
    api.start()
    try:
        yield batch
    finally:
        api.stop()


def env(gb: FakeGeminiBatch) -> dict[str, str]:
    return {"GEMINI_BASE_URL": gb.gemini.api.url, "GEMINI_API_KEY": CANARY_GEMINI}


def jobs(tmp_path: Path, n: int, **extra: Any) -> Path:
    rows = [
        {"id": f"job-{i}", "prompt": f"Question {i}?", "model": MODEL, **extra} for i in range(n)
    ]
    return write_jsonl(tmp_path / "jobs.jsonl", rows)


def cli(gb: FakeGeminiBatch, *args: str) -> Any:
    r = run_cli(*args, env=env(gb))
    assert CANARY_GEMINI not in r.output
    return r


def test_submit_status_fetch_inline_at_the_batch_price(gb: FakeGeminiBatch, tmp_path: Path) -> None:
    path = jobs(tmp_path, 30)
    out = str(tmp_path / "out.jsonl")
    sub = cli(gb, "batch", "submit", str(path), "-o", out, "--batch-size", "10")
    assert sub.code == 0, sub.output
    assert [(n, inline) for _, n, inline in gb.created] == [(10, True)] * 3
    status = cli(gb, "batch", "status", out, "--json")
    assert status.code == 4, status.output
    rows = orjson.loads(status.stdout)["batches"]
    assert len(rows) == 3 and all(
        r["in_progress"] and r["state"] in ("pending", "running") for r in rows
    )
    assert all(r["id"].startswith("batches/") and r["counts"]["total"] == 10 for r in rows)
    assert cli(gb, "batch", "fetch", out).code == 4  # nothing ended yet
    gb.advance(3600)
    fetched = cli(gb, "batch", "fetch", out)
    assert fetched.code == 0, fetched.output
    lines = read_jsonl(Path(out))
    assert sorted(x["id"] for x in lines) == sorted(f"job-{i}" for i in range(30))
    for x in lines:
        n = x["id"].split("-")[1]
        assert x["status"] == "ok" and x["output"].startswith(f"Answer to: Question {n}?")
        assert x["batch"]["id"].startswith("batches/") and x["usage"]["output_tokens"] > 0
    report = orjson.loads(run_cli("report", out, "--json").stdout)
    batch = report["batch"]
    assert batch["jobs"] == 30 and batch["online_cost_usd"] == pytest.approx(
        2 * batch["cost_usd"], rel=0.01
    )
    assert report["by_model"][MODEL]["jobs"] == 30
    assert not gb.gemini.key_in_query
    assert gb.calls["upload"] == 0  # small: inline


def test_above_the_inline_limit_the_requests_go_through_the_files_api(
    gb: FakeGeminiBatch, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(batch_gemini, "INLINE_MAX_BYTES", 1000)
    path = jobs(tmp_path, 12, schema=SCHEMA)
    out = str(tmp_path / "out.jsonl")
    assert cli(gb, "batch", "submit", str(path), "-o", out).code == 0
    assert [(n, inline) for _, n, inline in gb.created] == [(12, False)]
    assert gb.calls["upload"] == 2  # start, then upload + finalize
    (data,) = gb.files.values()
    first = orjson.loads(data.splitlines()[0])
    assert first["key"].startswith("job-0_")  # the job id, then the submission's nonce
    assert first["request"]["model"] == "models/gemini-2.5-flash"
    config = first["request"]["generationConfig"]
    assert config["responseMimeType"] == "application/json"
    assert config["responseJsonSchema"] == SCHEMA
    gb.advance(3600)
    assert cli(gb, "batch", "fetch", out).code == 0
    lines = read_jsonl(Path(out))
    assert len(lines) == 12 and all(x["parsed"] == {"n": 1} for x in lines)
    assert gb.calls["download"] == 1


def test_item_errors_fail_or_come_back_and_counts_arrive_as_strings(
    gb: FakeGeminiBatch, tmp_path: Path
) -> None:
    gb.gemini.api.add_rule("Question 1?", "400")
    gb.gemini.api.add_rule("Question 2?", "503")
    path = jobs(tmp_path, 4)
    out = str(tmp_path / "out.jsonl")
    assert cli(gb, "batch", "submit", str(path), "-o", out).code == 0
    gb.advance(3600)
    rows = orjson.loads(cli(gb, "batch", "status", out, "--json").stdout)["batches"]
    assert rows[0]["counts"] == {"total": 4, "succeeded": 2, "failed": 2}
    fetched = cli(gb, "batch", "fetch", out, "--json")
    rep = orjson.loads(fetched.stdout)
    assert (rep["jobs"]["ok"], rep["jobs"]["failed"], rep["jobs"]["returned_to_pending"]) == (
        2,
        1,
        1,
    )
    failed = {x["id"]: x for x in read_jsonl(Path(out))}["job-1"]
    assert failed["status"] == "failed" and failed["error"]["type"] == "bad_request"
    # The transient one goes into the next batch, and is answered there.
    assert cli(gb, "batch", "submit", str(path), "-o", out).code == 0
    assert gb.created[-1][1] == 1
    gb.advance(3600)
    assert cli(gb, "batch", "fetch", out).code == 0
    assert len(read_jsonl(Path(out))) == 4


def test_cancel_keeps_what_finished_and_returns_the_rest(
    gb: FakeGeminiBatch, tmp_path: Path
) -> None:
    path = jobs(tmp_path, 8)
    out = str(tmp_path / "out.jsonl")
    assert cli(gb, "batch", "submit", str(path), "-o", out).code == 0
    gb.advance(300)  # half of process_s: 4 answered
    res = cli(gb, "batch", "cancel", out, "--json")
    assert res.code == 0, res.output
    assert gb.calls["cancel"] == 1
    (row,) = orjson.loads(res.stdout)
    assert row["state"] == "cancelled" and not row["in_progress"]
    rep = orjson.loads(cli(gb, "batch", "fetch", out, "--json").stdout)
    assert (rep["jobs"]["ok"], rep["jobs"]["returned_to_pending"]) == (4, 4)


def test_run_mode_batch(gb: FakeGeminiBatch, tmp_path: Path) -> None:
    gb.process_s = 0.0  # answered as soon as it is looked at
    path = jobs(tmp_path, 5)
    out = tmp_path / "out.jsonl"
    res = cli(gb, "run", str(path), "-o", str(out), "--mode", "batch", "--quiet")
    assert res.code == 0, res.output
    assert len(gb.created) == 1 and not gb.gemini.api.records  # nothing went online
    assert sorted(x["id"] for x in read_jsonl(out)) == [f"job-{i}" for i in range(5)]


def test_kill_during_create_then_submit_again_pays_once(
    gb: FakeGeminiBatch, tmp_path: Path
) -> None:
    path = jobs(tmp_path, 10)
    out = str(tmp_path / "out.jsonl")
    gb.create_delay_s = 60  # the batch exists; its name never reaches the client
    proc = start_cli(
        "batch", "submit", str(path), "-o", out, "--batch-size", "5", env=env(gb), capture=False
    )
    try:
        wait_until(lambda: len(gb.created) == 1)
    finally:
        proc.kill()
        proc.wait()
    gb.create_delay_s = 0
    res = cli(gb, "batch", "submit", str(path), "-o", out, "--batch-size", "5")
    assert res.code == 0, res.output
    assert "found batch" in res.stderr
    assert len(gb.created) == 2
    assert Counter(gb.sent_keys().values()) == Counter({1: 10})  # nothing sent twice
    gb.advance(3600)
    assert cli(gb, "batch", "fetch", out).code == 0
    assert sorted(x["id"] for x in read_jsonl(Path(out))) == sorted(f"job-{i}" for i in range(10))


@pytest.mark.parametrize("inline", [True, False])
def test_kill_during_fetch_then_fetch_again_writes_each_once(
    gb: FakeGeminiBatch, tmp_path: Path, inline: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not inline:
        monkeypatch.setattr(batch_gemini, "INLINE_MAX_BYTES", 100)
    path = jobs(tmp_path, 10)
    out = str(tmp_path / "out.jsonl")
    assert cli(gb, "batch", "submit", str(path), "-o", out, "--batch-size", "5").code == 0
    assert [i for _, _, i in gb.created] == [inline, inline]
    gb.advance(3600)
    gb.download_delay_s = 60  # the results are on their way when the process dies
    proc = start_cli("batch", "fetch", out, env=env(gb), capture=False)
    try:
        wait_until(lambda: gb.calls["get" if inline else "download"] >= 1)
    finally:
        proc.kill()
        proc.wait()
    gb.download_delay_s = 0
    res = cli(gb, "batch", "fetch", out)
    assert res.code == 0, res.output
    lines = read_jsonl(Path(out))
    assert Counter(x["id"] for x in lines) == Counter(f"job-{i}" for i in range(10))
    # Nothing created again, each request in one batch, and what the results say was
    # spent is what the provider billed.
    assert len(gb.created) == 2 and Counter(gb.sent_keys().values()) == Counter({1: 10})
    spent = (
        sum(x["usage"]["input_tokens"] for x in lines),
        sum(x["usage"]["output_tokens"] for x in lines),
    )
    assert gb.billed() == spent
    assert cli(gb, "batch", "submit", str(path), "-o", out).code == 0
    assert len(gb.created) == 2  # every job is done: nothing to submit


def test_batch_objects_as_the_api_and_the_sdk_name_them() -> None:
    from llmbatch.providers.batch_gemini import INLINE, _info

    op = {
        "name": "batches/abc",
        "metadata": {
            "displayName": "llmbatch-x",
            "state": "JOB_STATE_SUCCEEDED",
            "createTime": "2026-12-07T04:00:00.123456789Z",
            "batchStats": {"requestCount": "7", "successfulRequestCount": "5",
                           "failedRequestCount": "2"},
        },
    }  # fmt: skip
    info = _info(op)
    assert (info.id, info.status, info.ended, info.total, info.succeeded, info.failed) == (
        "batches/abc", "succeeded", True, 7, 5, 2,
    )  # fmt: skip
    assert info.created_at == pytest.approx(1796616000.123456)
    assert not info.results_ready  # succeeded, its output not there yet: wait for it
    running = _info({"name": "batches/b", "metadata": {"state": "BATCH_STATE_RUNNING"}})
    assert (running.status, running.ended, running.total) == ("running", False, 0)
    cancelled = _info({"name": "batches/c", "metadata": {"state": "BATCH_STATE_CANCELLED"}})
    assert cancelled.ended and cancelled.output_ref == INLINE and cancelled.results_ready
    failed = _info(
        {
            "name": "batches/d",
            "metadata": {"state": "BATCH_STATE_FAILED"},
            "error": {"code": 400, "status": "INVALID_ARGUMENT", "message": "bad file"},
        }
    )
    assert failed.batch_error == "INVALID_ARGUMENT: bad file" and failed.results_ready


def test_a_bare_batch_object_and_a_flat_inline_list_are_read_too() -> None:
    from llmbatch.providers.batch_gemini import INLINE, _info

    info = _info(
        {
            "name": "batches/e",
            "state": "BATCH_STATE_SUCCEEDED",
            "batchStats": {"requestCount": "1", "successfulRequestCount": "1"},
            "output": {"inlinedResponses": [{"metadata": {"key": "a"}, "response": {}}]},
        }
    )
    assert info.ended and info.output_ref == INLINE and info.succeeded == 1


def test_create_429s_wait_and_the_batch_is_made_once(gb: FakeGeminiBatch, tmp_path: Path) -> None:
    gb.create_429 = 2
    path = jobs(tmp_path, 3)
    out = str(tmp_path / "out.jsonl")
    res = cli(gb, "batch", "submit", str(path), "-o", out)
    assert res.code == 0, res.output
    assert gb.calls["create"] == 3 and len(gb.created) == 1
