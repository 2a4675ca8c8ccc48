"""Retries, rate limits, fallback and signals, end to end against the fake API."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import orjson
import pytest

from tests.conftest import (
    fake_env,
    prompts,
    read_jsonl,
    run_cli,
    start_cli,
    wait_until,
    write_jsonl,
)
from tests.fakeapi import FakeAPI

HAIKU = "anthropic:claude-haiku-4-5"
MINI = "openai:gpt-4o-mini"


@pytest.mark.parametrize("model", [HAIKU, MINI])
def test_chaos_run_ends_all_ok_and_counts_match_the_server(
    model: str, fake: FakeAPI, tmp_path: Path
) -> None:
    fake.chaos = {"429": 0.03, "500": 0.03, "529": 0.03, "reset": 0.03}
    fake.retry_after = 0.02
    write_jsonl(tmp_path / "jobs.jsonl", prompts(300))
    r = run_cli(
        "run",
        "jobs.jsonl",
        "-m",
        model,
        "-c",
        "16",
        "--max-attempts",  # one request in nine fails: six in a row for one job is rare, not never
        "12",
        "--report",
        "rep.json",
        "--quiet",
        env=fake_env(fake),
    )
    assert r.code == 0, r.output
    results = read_jsonl(tmp_path / "jobs.results.jsonl")
    assert len(results) == 300 and all(x["status"] == "ok" for x in results)
    assert sum(x["attempts"] for x in results) == fake.count()
    seen = fake.outcomes()
    faults = {
        "429": "rate_limited",
        "500": "server_error",
        "529": "overloaded",
        "reset": "connection",
    }
    expected = {faults[k]: v for k, v in seen.items() if k in faults}
    assert sum(expected.values()) > 0  # the chaos really happened
    report = orjson.loads((tmp_path / "rep.json").read_bytes())
    assert report["errors"] == expected
    assert report["attempts"]["total"] == fake.count()
    assert report["attempts"]["retries"] == fake.count() - 300


def test_529_three_times_then_ok(fake: FakeAPI, tmp_path: Path) -> None:
    fake.add_rule("Question 0:", "529", "529", "529")
    write_jsonl(tmp_path / "jobs.jsonl", prompts(1))
    r = run_cli("run", "jobs.jsonl", "-m", HAIKU, "--quiet", env=fake_env(fake))
    assert r.code == 0
    (x,) = read_jsonl(tmp_path / "jobs.results.jsonl")
    assert x["attempts"] == 4 and x["attempt_errors"] == {"overloaded": 3}


def test_transient_errors_exhaust_max_attempts_and_fail(fake: FakeAPI, tmp_path: Path) -> None:
    fake.add_rule("Question 0:", *["500"] * 10)
    write_jsonl(tmp_path / "jobs.jsonl", prompts(1))
    r = run_cli(
        "run", "jobs.jsonl", "-m", MINI, "--max-attempts", "3", "--quiet", env=fake_env(fake)
    )
    assert r.code == 1
    (x,) = read_jsonl(tmp_path / "jobs.results.jsonl")
    assert x["status"] == "failed" and x["attempts"] == 3 == fake.count()
    assert x["error"]["type"] == "server_error" and x["error"]["status"] == 500


def test_retry_after_is_honoured(fake: FakeAPI, tmp_path: Path) -> None:
    fake.retry_after = 1.0
    fake.add_rule("Question 0:", "429")
    write_jsonl(tmp_path / "jobs.jsonl", prompts(1))
    r = run_cli("run", "jobs.jsonl", "-m", HAIKU, "--quiet", env=fake_env(fake))
    assert r.code == 0
    first, second = fake.records[0].at, fake.records[1].at
    assert second - first >= 0.95


def test_retry_after_ms_wins(fake: FakeAPI, tmp_path: Path) -> None:
    fake.retry_after = 30.0
    fake.retry_after_ms = 100
    fake.add_rule("Question 0:", "429")
    write_jsonl(tmp_path / "jobs.jsonl", prompts(1))
    started = time.monotonic()
    r = run_cli("run", "jobs.jsonl", "-m", MINI, "--quiet", env=fake_env(fake))
    assert r.code == 0
    assert time.monotonic() - started < 20  # not the 30 s of retry-after
    assert fake.records[1].at - fake.records[0].at >= 0.09


@pytest.mark.parametrize("headers", [True, False])
def test_without_rpm_it_learns_the_limit(headers: bool, fake: FakeAPI, tmp_path: Path) -> None:
    fake.window_limit = 20
    fake.window_s = 0.5
    fake.retry_after = 0.5
    fake.rate_limit_headers = headers
    write_jsonl(tmp_path / "jobs.jsonl", prompts(100))
    r = run_cli(
        "run",
        "jobs.jsonl",
        "-m",
        MINI,
        "-c",
        "16",
        "--report",
        "rep.json",
        "--quiet",
        env=fake_env(fake),
    )
    assert r.code == 0, r.output
    results = read_jsonl(tmp_path / "jobs.results.jsonl")
    assert all(x["status"] == "ok" for x in results)
    assert fake.count() <= 1.5 * 100, fake.outcomes()
    report = orjson.loads((tmp_path / "rep.json").read_bytes())
    assert report["limits"][MINI]["source"] == "learned"


def test_fallback_when_the_primary_always_529s_and_the_breaker_spares_it(
    fake: FakeAPI, tmp_path: Path
) -> None:
    fake.model_faults = {"claude-haiku-4-5": "529"}
    fake.retry_after = 0.01
    write_jsonl(tmp_path / "jobs.jsonl", prompts(60))
    r = run_cli(
        "run",
        "jobs.jsonl",
        "-m",
        HAIKU,
        "--fallback",
        MINI,
        "--max-attempts",
        "3",
        "-c",
        "4",
        "--report",
        "rep.json",
        "--quiet",
        env=fake_env(fake),
    )
    assert r.code == 0, r.output
    results = read_jsonl(tmp_path / "jobs.results.jsonl")
    assert all(x["status"] == "ok" and x["model"] == "gpt-4o-mini" for x in results)
    primary_calls = sum(1 for rec in fake.records if rec.body["model"] == "claude-haiku-4-5")
    # Without the breaker every job would try the primary 3 times: 180 calls.
    assert primary_calls <= 40
    assert sum(x["attempts"] for x in results) == fake.count()
    report = orjson.loads((tmp_path / "rep.json").read_bytes())
    assert report["fallbacks"] >= 1
    assert report["by_model"]["openai:gpt-4o-mini"]["ok"] == 60


def test_per_job_fallback(fake: FakeAPI, tmp_path: Path) -> None:
    fake.model_faults = {"claude-haiku-4-5": "500"}
    write_jsonl(
        tmp_path / "jobs.jsonl", [{"id": "a", "prompt": "hi", "model": HAIKU, "fallback": [MINI]}]
    )
    r = run_cli("run", "jobs.jsonl", "--max-attempts", "2", "--quiet", env=fake_env(fake))
    assert r.code == 0, r.output
    (x,) = read_jsonl(tmp_path / "jobs.results.jsonl")
    assert x["model"] == "gpt-4o-mini" and x["attempts"] == 3 and x["fallbacks"] == 1


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_stops_cleanly_and_a_rerun_completes(
    signum: int, code: int, fake: FakeAPI, tmp_path: Path
) -> None:
    fake.latency_s = 0.5
    fake.ttft_s = 0.1
    write_jsonl(tmp_path / "jobs.jsonl", prompts(60))
    args = ["run", "jobs.jsonl", "-m", HAIKU, "-c", "4", "--report", "rep.json"]
    proc = start_cli(*args, env=fake_env(fake))
    out = tmp_path / "jobs.results.jsonl"
    wait_until(lambda: out.exists() and len(out.read_bytes().splitlines()) >= 4)
    proc.send_signal(signum)
    sent_at = time.monotonic()
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == code, stderr.decode()
    assert time.monotonic() - sent_at < 10  # promptly: in-flight requests take < 1 s
    results = read_jsonl(out)
    assert 4 <= len(results) < 60
    # Every request the server answered was written: in flight ones were let finish.
    assert len(results) == fake.count()
    report = orjson.loads((tmp_path / "rep.json").read_bytes())
    assert report["stopped_by"] == "signal"
    assert report["jobs"]["not_run"] == 60 - len(results)
    fake.latency_s = fake.ttft_s = 0.01
    r = run_cli("run", "jobs.jsonl", "-m", HAIKU, "-c", "16", "--quiet", env=fake_env(fake))
    assert r.code == 0, r.output
    ids = [x["id"] for x in read_jsonl(out)]
    assert len(ids) == len(set(ids)) == 60
    assert fake.count() == 60


def test_second_signal_cancels_in_flight(fake: FakeAPI, tmp_path: Path) -> None:
    fake.add_rule("Question", "hang", "hang", "hang", "hang")
    write_jsonl(tmp_path / "jobs.jsonl", prompts(4))
    proc = start_cli("run", "jobs.jsonl", "-m", MINI, "-c", "4", env=fake_env(fake))
    wait_until(lambda: fake.count() == 4)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.5)
    assert proc.poll() is None  # waiting for the hung requests
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stderr.decode()
    assert not (tmp_path / "jobs.results.jsonl").read_bytes()


def test_a_signal_ends_a_long_backoff_at_once(fake: FakeAPI, tmp_path: Path) -> None:
    fake.retry_after = 30.0
    fake.add_rule("Question 0:", "429", "429")
    write_jsonl(tmp_path / "jobs.jsonl", prompts(3))
    proc = start_cli("run", "jobs.jsonl", "-m", MINI, "--quiet", env=fake_env(fake))
    out = tmp_path / "jobs.results.jsonl"
    # The other two are written: job-0 is waiting out its 30 s retry-after.
    wait_until(lambda: out.exists() and len(out.read_bytes().splitlines()) == 2)
    proc.send_signal(signal.SIGINT)
    sent_at = time.monotonic()
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stderr.decode()
    assert time.monotonic() - sent_at < 5
    ids = {x["id"] for x in read_jsonl(tmp_path / "jobs.results.jsonl")}
    assert ids == {"job-1", "job-2"}  # job-0 was not answered: it runs on resume
