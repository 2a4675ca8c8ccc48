"""What the HTTP adapters promise, in-process against the fake: only complete answers are ok,
and structured output adapts to what the server accepts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from llmbatch import ModelRef, RunConfig, run_jobs_async
from llmbatch._config.settings import ProviderSettings
from llmbatch._core.exceptions import BadRequest, ConnectionFailed, ServerError
from llmbatch._core.jobs import Request
from llmbatch.providers._http import HttpProvider
from llmbatch.providers.anthropic import AnthropicProvider
from llmbatch.providers.openai import OpenAIProvider
from tests.conftest import fake_env, prompts, read_jsonl, write_jsonl
from tests.fakeapi import FakeAPI

MODELS = {"anthropic": "claude-haiku-4-5", "openai": "gpt-4o-mini"}
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"answer": {"type": "integer"}},
    "required": ["answer"],
    "additionalProperties": False,
}


@pytest.fixture
def api(fake: FakeAPI, monkeypatch: pytest.MonkeyPatch) -> FakeAPI:
    for name, value in fake_env(fake).items():
        monkeypatch.setenv(name, value)
    return fake


def run_config(tmp_path: Path, provider: str, n: int, **kw: Any) -> RunConfig:
    write_jsonl(tmp_path / "jobs.jsonl", prompts(n))
    cfg = RunConfig(
        jobs=tmp_path / "jobs.jsonl",
        output=tmp_path / "out.jsonl",
        model=ModelRef(provider, MODELS[provider]),
        backoff_cap=0.05,
        quiet=True,
    )
    for key, value in kw.items():
        setattr(cfg, key, value)
    return cfg


def provider_for(kind: str, tmp_path: Path) -> HttpProvider:
    cfg = RunConfig(jobs=tmp_path / "jobs.jsonl")
    settings = ProviderSettings(kind, kind)
    return (
        AnthropicProvider(settings, cfg) if kind == "anthropic" else OpenAIProvider(settings, cfg)
    )


# -- only complete answers are ok ------------------------------------------------------------


@pytest.mark.parametrize("streamed", [True, False])
@pytest.mark.parametrize("kind", list(MODELS))
async def test_an_answer_without_a_finish_reason_is_a_retryable_connection_failure(
    kind: str, streamed: bool, api: FakeAPI, tmp_path: Path
) -> None:
    api.reply = "half an answer"
    api.ignore_stream = not streamed
    api.add_rule("cut short", "no_finish")
    provider = provider_for(kind, tmp_path)
    try:
        with pytest.raises(ConnectionFailed) as info:
            await provider.send(
                MODELS[kind], Request([{"role": "user", "content": "cut short"}]), 9
            )
        # Then the same job again: a complete answer.
        answer = await provider.send(
            MODELS[kind], Request([{"role": "user", "content": "cut short"}]), 9
        )
    finally:
        await provider.aclose()
    assert info.value.message == "the stream ended without a finish reason"
    assert info.value.retryable
    assert info.value.usage is not None  # what it billed still counts
    assert answer.text == "half an answer" and answer.stop_reason in ("end_turn", "stop")


@pytest.mark.parametrize("kind", list(MODELS))
async def test_a_run_retries_incomplete_answers_until_one_is_complete(
    kind: str, api: FakeAPI, tmp_path: Path
) -> None:
    api.reply = "all of it"
    api.add_rule("Question 1:", "no_finish", "no_finish")
    report = await run_jobs_async(run_config(tmp_path, kind, 3, concurrency=2))
    results = {x["id"]: x for x in read_jsonl(tmp_path / "out.jsonl")}
    assert all(x["status"] == "ok" and x["output"] == "all of it" for x in results.values())
    assert results["job-1"]["attempts"] == 3
    assert results["job-1"]["attempt_errors"] == {"connection": 2}
    assert all(x["stop_reason"] for x in results.values())
    assert report.errors == {"connection": 2}


# -- structured output adapts -------------------------------------------------------------------


def sent_formats(api: FakeAPI) -> list[str | None]:
    return [(r.body.get("response_format") or {}).get("type") for r in api.records]


async def test_a_server_that_rejects_json_schema_gets_json_object_once_and_for_all(
    api: FakeAPI, tmp_path: Path
) -> None:
    api.reply = '{"answer": 4}'
    api.rejects_response_format = {"json_schema": 500}
    cfg = run_config(tmp_path, "openai", 8, concurrency=2, schema=SCHEMA, max_attempts=6)
    report = await run_jobs_async(cfg)
    results = read_jsonl(tmp_path / "out.jsonl")
    assert [x["status"] for x in results] == ["ok"] * 8
    assert all(x["parsed"] == {"answer": 4} for x in results)
    # At most the attempts already in flight met the rejection; never one job twice.
    rejected = api.count("structured_rejected")
    assert 1 <= rejected <= 2
    assert sum(x["attempts"] for x in results) == 8 + rejected
    formats = sent_formats(api)
    assert formats.count("json_schema") == rejected
    assert formats[rejected:] == ["json_object"] * 8
    later = api.records[-1].body["messages"][0]
    assert later["role"] == "system" and '"answer"' in later["content"]
    notes = [n for n in report.notes if "rejected structured output" in n]
    assert len(notes) == 1
    assert "as json_schema (HTTP 500" in notes[0] and "json_object" in notes[0]


async def test_a_server_that_takes_neither_gets_the_schema_in_a_system_message(
    api: FakeAPI, tmp_path: Path
) -> None:
    api.reply = '{"answer": 4}'
    api.rejects_response_format = {"json_schema": 500, "json_object": 400}
    cfg = run_config(tmp_path, "openai", 3, concurrency=1, schema=SCHEMA, max_attempts=3)
    report = await run_jobs_async(cfg)
    results = read_jsonl(tmp_path / "out.jsonl")
    assert [x["status"] for x in results] == ["ok"] * 3
    assert sent_formats(api) == ["json_schema", "json_object", None, None, None]
    assert results[0]["attempts"] == 3
    assert len([n for n in report.notes if "rejected structured output" in n]) == 2


async def test_anthropic_rejecting_output_config_gets_the_schema_in_the_system_prompt(
    api: FakeAPI, tmp_path: Path
) -> None:
    api.reply = '{"answer": 4}'
    api.rejects_output_config = 400
    cfg = run_config(tmp_path, "anthropic", 4, concurrency=1, schema=SCHEMA, max_attempts=2)
    report = await run_jobs_async(cfg)
    results = read_jsonl(tmp_path / "out.jsonl")
    assert [x["status"] for x in results] == ["ok"] * 4
    assert api.count("structured_rejected") == 1
    assert ["output_config" in r.body for r in api.records] == [True] + [False] * 4
    assert all('"answer"' in r.body["system"] for r in api.records[1:])
    assert any("as output_config (HTTP 400" in n for n in report.notes)


@pytest.mark.parametrize("kind", list(MODELS))
async def test_the_rejected_attempt_asks_to_be_retried_at_once(
    kind: str, api: FakeAPI, tmp_path: Path
) -> None:
    api.rejects_response_format = {"json_schema": 500}
    api.rejects_output_config = 400
    provider = provider_for(kind, tmp_path)
    request = Request([{"role": "user", "content": "x"}], schema=SCHEMA)
    try:
        with pytest.raises((ServerError, BadRequest)) as info:
            await provider.send(MODELS[kind], request, 9)
    finally:
        await provider.aclose()
    assert info.value.retryable and info.value.retry_after == 0 and info.value.retry_now
    assert len(provider.notes) == 1


async def test_a_mode_switch_is_not_a_try(api: FakeAPI, tmp_path: Path) -> None:
    # With one attempt per job, the refused first attempt must not end the job.
    api.reply = '{"answer": 4}'
    api.rejects_response_format = {"json_schema": 500, "json_object": 400}
    cfg = run_config(tmp_path, "openai", 2, concurrency=1, schema=SCHEMA, max_attempts=1)
    report = await run_jobs_async(cfg)
    results = read_jsonl(tmp_path / "out.jsonl")
    assert [x["status"] for x in results] == ["ok", "ok"]
    assert report.attempts == len(api.records) == 4  # two refusals, two answers
    assert report.errors == {"server_error": 1, "bad_request": 1}


async def test_a_rejection_that_does_not_name_the_field_changes_nothing(
    api: FakeAPI, tmp_path: Path
) -> None:
    api.add_rule("x", "400")
    provider = provider_for("openai", tmp_path)
    request = Request([{"role": "user", "content": "x"}], schema=SCHEMA)
    try:
        with pytest.raises(BadRequest) as info:
            await provider.send(MODELS["openai"], request, 9)
    finally:
        await provider.aclose()
    assert not info.value.retryable and info.value.retry_after is None
    assert provider.notes == set()
    body = api.records[0].body
    assert orjson.dumps(body["response_format"]["json_schema"]["schema"]) == orjson.dumps(SCHEMA)


# -- a malformed event fails one attempt, not the run ----------------------------------------


@pytest.mark.parametrize("kind", list(MODELS))
@pytest.mark.parametrize("data", [b"[1]", b"null", b'{"choices": 7, "delta": "x"}', b"\xff{"])
async def test_a_malformed_event_is_a_retryable_other_error(
    kind: str, data: bytes, api: FakeAPI, tmp_path: Path
) -> None:
    api.reply = "fine"
    event = b"event: content_block_delta\n" if kind == "anthropic" else b""
    api.raw_streams.append(event + b"data: " + data + b"\n\n")
    await run_jobs_async(run_config(tmp_path, kind, 2, concurrency=1))
    results = read_jsonl(tmp_path / "out.jsonl")
    assert [(x["status"], x["output"]) for x in results] == [("ok", "fine")] * 2
    assert [x["attempts"] for x in results] == [2, 1]
    assert results[0]["attempt_errors"] == {"other": 1}
