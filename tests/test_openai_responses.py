"""The Responses API adapter in-process: bodies, events, errors, structured-output fallback
and schema repair turns, against the fake and on raw streams."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from llmbatch import ModelRef, RunConfig, run_jobs_async
from llmbatch._core.exceptions import ConnectionFailed, ContentFiltered, OtherProviderError
from llmbatch._core.jobs import Request
from llmbatch.providers._http import SSEEvent
from llmbatch.providers.openai import OpenAIProvider
from llmbatch.providers.openai_responses import ResponsesStream, build_responses_body
from tests.conftest import fake_env, prompts, read_jsonl, write_jsonl
from tests.fakeapi import FakeAPI

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


def run_config(tmp_path: Path, n: int, **kw: Any) -> RunConfig:
    write_jsonl(tmp_path / "jobs.jsonl", prompts(n))
    cfg = RunConfig(
        jobs=tmp_path / "jobs.jsonl",
        output=tmp_path / "out.jsonl",
        model=ModelRef("openai", "gpt-4o-mini"),
        backoff_cap=0.05,
        quiet=True,
        api="responses",
    )
    for key, value in kw.items():
        setattr(cfg, key, value)
    return cfg


def test_the_body_speaks_responses() -> None:
    req = Request(
        [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        system="be brief",
        max_tokens=50,
        temperature=0.2,
        schema=SCHEMA,
    )
    body = build_responses_body("gpt-5-mini", req)
    assert body["input"] == [{"role": "user", "content": "hi"}]
    assert body["instructions"] == "be brief" and body["max_output_tokens"] == 50
    assert body["temperature"] == 0.2 and body["store"] is False and body["stream"] is True
    assert body["text"]["format"] == {
        "type": "json_schema",
        "name": "output",
        "schema": SCHEMA,
        "strict": True,
    }
    prompt = build_responses_body("m", req, structured="prompt")
    assert "text" not in prompt and '"answer"' in prompt["instructions"]
    assert prompt["instructions"].startswith("be brief")
    assert build_responses_body("m", req, structured="json_object")["text"] == {
        "format": {"type": "json_object"}
    }


def test_a_lines_chat_body_is_translated_and_what_has_no_place_is_said() -> None:
    messages = [{"role": "system", "content": "sys"}, {"role": "user", "content": "q"}]
    chat: dict[str, Any] = {
        "messages": messages,
        "max_completion_tokens": 70,
        "reasoning_effort": "low",
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}},
        "store": True,
        "logit_bias": {"1": 2},
    }
    req = Request(messages[1:], body=chat, wire_format="openai")
    notes: set[str] = set()
    body = build_responses_body("gpt-5-mini", req, notes=notes)
    assert body["instructions"] == "sys" and body["input"] == [{"role": "user", "content": "q"}]
    assert body["max_output_tokens"] == 70 and body["reasoning"] == {"effort": "low"}
    assert body["text"]["format"] == {"type": "json_schema", "name": "x", "schema": {}}
    assert body["store"] is True  # asked by the line: kept
    assert len(notes) == 1 and "logit_bias" in notes.pop()


def events(*objs: dict[str, Any]) -> list[SSEEvent]:
    return [SSEEvent(o.get("type"), orjson.dumps(o)) for o in objs]


def done(status: str = "completed", **more: Any) -> dict[str, Any]:
    usage = {
        "input_tokens": 20,
        "input_tokens_details": {"cached_tokens": 8},
        "output_tokens": 30,
        "output_tokens_details": {"reasoning_tokens": 25},
    }
    return {"type": f"response.{status}", "response": {"status": status, "usage": usage, **more}}


def test_usage_counts_cached_and_reasoning_tokens() -> None:
    stream = ResponsesStream()
    for e in events({"type": "response.output_text.delta", "delta": "ok"}, done()):
        stream.feed(e)
    answer = stream.answer(Request([{"role": "user", "content": "x"}]), None, "r")
    assert answer.text == "ok" and answer.stop_reason == "stop"
    assert (answer.usage.input_tokens, answer.usage.cache_read_tokens) == (20, 8)
    assert answer.usage.output_tokens == 30 and stream.reasoning == 25  # billed as output


@pytest.mark.parametrize(
    ("final", "error"),
    [
        (None, ConnectionFailed),  # the stream ended before response.completed
        ({"type": "error", "code": "server_error", "message": "boom"}, Exception),
        (done("failed", error={"code": "server_error", "message": "x"}), Exception),
        (done("incomplete", incomplete_details={"reason": "content_filter"}), ContentFiltered),
    ],
)
def test_an_answer_is_whole_only_after_completed(
    final: dict[str, Any] | None, error: type[Exception]
) -> None:
    stream = ResponsesStream()
    for e in events({"type": "response.output_text.delta", "delta": "half"}):
        stream.feed(e)
    if final is not None:
        for e in events(final):
            stream.feed(e)
    with pytest.raises(error) as info:
        stream.answer(Request([{"role": "user", "content": "x"}]), None, None)
    if error is Exception:  # an error event / a failed response: a transient server error
        assert getattr(info.value, "retryable", False)


def test_a_capped_answer_is_length() -> None:
    stream = ResponsesStream()
    for e in events(
        {"type": "response.output_text.delta", "delta": "a b"},
        done("incomplete", incomplete_details={"reason": "max_output_tokens"}),
    ):
        stream.feed(e)
    assert stream.answer(Request([{"role": "user", "content": "x"}]), None, None).stop_reason == (
        "length"
    )


async def test_an_error_event_mid_stream_is_retried(api: FakeAPI, tmp_path: Path) -> None:
    api.reply = "one two three four"
    api.add_rule("Question 0:", "error_event")
    await run_jobs_async(run_config(tmp_path, 2))
    results = {x["id"]: x for x in read_jsonl(tmp_path / "out.jsonl")}
    assert results["job-0"]["status"] == "ok" and results["job-0"]["attempts"] == 2
    assert results["job-0"]["attempt_errors"] == {"server_error": 1}


@pytest.mark.parametrize("data", [b"[1]", b"null", b'{"type": 7}', b"\xff{"])
async def test_a_malformed_event_is_a_retryable_other_error(
    data: bytes, api: FakeAPI, tmp_path: Path
) -> None:
    api.reply = "fine"
    api.raw_streams.append(b"data: " + data + b"\n\n")
    await run_jobs_async(run_config(tmp_path, 2, concurrency=1))
    results = read_jsonl(tmp_path / "out.jsonl")
    assert [(x["status"], x["output"]) for x in results] == [("ok", "fine")] * 2
    assert [x["attempts"] for x in results] == [2, 1]
    assert results[0]["attempt_errors"] == {"other": 1}


async def test_a_server_that_rejects_json_schema_steps_down(api: FakeAPI, tmp_path: Path) -> None:
    api.reply = '{"answer": 4}'
    api.rejects_response_format = {"json_schema": 400}
    report = await run_jobs_async(run_config(tmp_path, 3, concurrency=1, schema=SCHEMA))
    results = read_jsonl(tmp_path / "out.jsonl")
    assert [x["parsed"] for x in results] == [{"answer": 4}] * 3
    formats = [r.body["text"]["format"]["type"] for r in api.records]
    assert formats == ["json_schema", "json_object", "json_object", "json_object"]
    assert any("rejected structured output" in n for n in report.notes)


async def test_a_schema_miss_is_repaired_in_the_same_conversation(
    api: FakeAPI, tmp_path: Path
) -> None:
    api.replies = ["not json at all", '{"answer": 7}']
    await run_jobs_async(run_config(tmp_path, 1, schema=SCHEMA))
    (x,) = read_jsonl(tmp_path / "out.jsonl")
    assert x["status"] == "ok" and x["parsed"] == {"answer": 7}
    repair = api.records[-1].body["input"]
    assert [m["role"] for m in repair] == ["user", "assistant", "user"]
    assert repair[1]["content"] == "not json at all"


async def test_a_non_streamed_response_is_read_whole(api: FakeAPI, tmp_path: Path) -> None:
    api.ignore_stream = True
    api.reply = "all at once"
    cfg = RunConfig(jobs=tmp_path / "j.jsonl", api="responses")
    provider = OpenAIProvider(cfg.providers["openai"], cfg)
    try:
        answer = await provider.send("gpt-4o-mini", Request([{"role": "user", "content": "x"}]), 9)
    finally:
        await provider.aclose()
    assert answer.text == "all at once" and answer.stop_reason == "stop"
    assert api.records[0].path == "/v1/responses"


def test_other_provider_error_is_what_a_garbled_event_becomes() -> None:
    stream = ResponsesStream()
    with pytest.raises(OtherProviderError):
        stream.feed(SSEEvent(None, b'{"type": "response.output_text.delta", "delta": 5}'))


def test_a_stream_whose_text_comes_only_in_the_final_event_is_read() -> None:
    stream = ResponsesStream()
    final = done()
    final["response"]["output"] = [
        {"type": "message", "content": [{"type": "output_text", "text": "late"}]}
    ]
    for e in events(final):
        stream.feed(e)
    answer = stream.answer(Request([{"role": "user", "content": "x"}]), None, None)
    assert answer.text == "late" and answer.ttft_ms is None


def test_the_prompt_cache_key_goes_as_for_chat() -> None:
    from llmbatch._core.prefix import PrefixInfo

    info = PrefixInfo("k", 2000, 1024, "system", mark=True, cache_key="grp-1", extended=True)
    req = Request([{"role": "user", "content": "x"}], cache=info)
    body = build_responses_body("gpt-5-mini", req)
    assert body["prompt_cache_key"] == "grp-1" and body["prompt_cache_retention"] == "24h"
