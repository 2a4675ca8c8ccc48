"""Connections are kept alive: the fake counts the TCP connections a run opens."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmbatch import ModelRef, RunConfig, run_jobs_async
from llmbatch.providers import _http
from tests.conftest import fake_env, prompts, read_jsonl, write_jsonl
from tests.fakeapi import FakeAPI

MODELS = {"anthropic": "claude-haiku-4-5", "openai": "gpt-4o-mini"}


def run_config(tmp_path: Path, provider: str, n: int, concurrency: int) -> RunConfig:
    write_jsonl(tmp_path / "jobs.jsonl", prompts(n))
    return RunConfig(
        jobs=tmp_path / "jobs.jsonl",
        output=tmp_path / "out.jsonl",
        model=ModelRef(provider, MODELS[provider]),
        concurrency=concurrency,
        backoff_cap=0.05,
        quiet=True,
    )


@pytest.fixture
def fake_for_run(fake: FakeAPI, monkeypatch: pytest.MonkeyPatch) -> FakeAPI:
    for name, value in fake_env(fake).items():
        monkeypatch.setenv(name, value)
    return fake


@pytest.mark.parametrize("provider", list(MODELS))
async def test_a_run_opens_no_more_connections_than_its_concurrency(
    provider: str, fake_for_run: FakeAPI, tmp_path: Path
) -> None:
    fake = fake_for_run
    fake.reply = "one two three four five six seven eight"
    fake.latency_s = 0.02
    await run_jobs_async(run_config(tmp_path, provider, 200, 8))
    results = read_jsonl(tmp_path / "out.jsonl")
    assert [x["status"] for x in results] == ["ok"] * 200
    assert fake.count() == 200
    assert fake.connections_opened <= 8


@pytest.mark.parametrize("provider", list(MODELS))
async def test_error_answers_and_broken_streams_keep_their_connection(
    provider: str, fake_for_run: FakeAPI, tmp_path: Path
) -> None:
    """Error bodies, error events and cut streams are read to their end: no new connection."""
    fake = fake_for_run
    fake.reply = "one two three four five six"
    fake.retry_after = 0.0
    for i in range(0, 40, 4):
        fake.add_rule(f"Question {i}:", "500", "429", "error_event", "truncate", "no_finish")
    await run_jobs_async(run_config(tmp_path, provider, 40, 4))
    results = read_jsonl(tmp_path / "out.jsonl")
    assert [x["status"] for x in results] == ["ok"] * 40
    assert fake.count() == 40 + 10 * 5
    assert fake.connections_opened <= 4


@pytest.mark.parametrize("provider", list(MODELS))
async def test_a_reset_costs_one_reconnect(
    provider: str, fake_for_run: FakeAPI, tmp_path: Path
) -> None:
    fake = fake_for_run
    for i in range(3):
        fake.add_rule(f"Question {i}:", "reset")
    await run_jobs_async(run_config(tmp_path, provider, 30, 2))
    assert [x["status"] for x in read_jsonl(tmp_path / "out.jsonl")] == ["ok"] * 30
    assert fake.connections_opened <= 2 + 3


@pytest.mark.parametrize("provider", list(MODELS))
async def test_a_body_held_open_after_the_last_event_still_gives_the_answer(
    provider: str, fake_for_run: FakeAPI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The end of the body gets a short grace; then that connection is dropped, not the answer."""
    monkeypatch.setattr(_http, "DRAIN_GRACE_S", 0.05)
    fake = fake_for_run
    fake.reply = "complete"
    fake.add_rule("Question 0:", "linger")
    cfg = run_config(tmp_path, provider, 4, 1)
    cfg.timeout = 30
    await run_jobs_async(cfg)
    results = read_jsonl(tmp_path / "out.jsonl")
    assert [(x["status"], x["output"], x["attempts"]) for x in results] == [
        ("ok", "complete", 1)
    ] * 4
    assert fake.connections_opened == 2  # the held one was closed; one more for the rest
