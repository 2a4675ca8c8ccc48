"""The Gemini fake checked against the official ``google-genai`` SDK: what it parses is right.

The SDK is pointed at the fake with ``HttpOptions(base_url=...)``; it reads the
streamed and whole answers, the error bodies, the Files API upload and download,
and the batch objects (inline and file-backed) the fake sends.
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import orjson
import pytest
from google import genai
from google.genai import errors, types

from tests.fakeapi import FakeAPI
from tests.fakegemini import FakeGemini
from tests.fakegemini_batch import FakeGeminiBatch

KEY = "AIzaSy-canary-DO-NOT-LEAK-0123456789abcdef"
SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}


@pytest.fixture
def gb() -> Iterator[FakeGeminiBatch]:
    api = FakeAPI(retry_after=0.01)
    batch = FakeGeminiBatch(FakeGemini(api, thoughts_tokens=2))
    api.start()
    try:
        yield batch
    finally:
        api.stop()


def client(gb: FakeGeminiBatch) -> genai.Client:
    # The version llmbatch speaks (the SDK's own default is v1; the fake serves both).
    options = types.HttpOptions(base_url=gb.gemini.api.url, api_version="v1beta")
    return genai.Client(api_key=KEY, http_options=options)


def test_sdk_parses_a_whole_answer_and_sends_the_key_in_a_header(gb: FakeGeminiBatch) -> None:
    gb.gemini.api.reply = "Hello there, friend."
    gb.gemini.api.cache_read_tokens = 4
    c = client(gb)  # kept: a Client closes its connections when collected
    resp = c.models.generate_content(
        model="gemini-2.5-flash",
        contents="hi",
        config=types.GenerateContentConfig(max_output_tokens=50, system_instruction="be brief"),
    )
    assert resp.text == "Hello there, friend."
    assert resp.candidates and resp.candidates[0].finish_reason == types.FinishReason.STOP
    u = resp.usage_metadata
    assert u is not None
    assert (u.candidates_token_count, u.thoughts_token_count) == (3, 2)
    assert u.cached_content_token_count == 4 and (u.prompt_token_count or 0) > 4
    sent = gb.gemini.api.records[-1]
    assert sent.headers["x-goog-api-key"] == KEY and not gb.gemini.key_in_query
    # What the SDK sends has the shape our adapter sends.
    assert sent.body["systemInstruction"]["parts"][0]["text"] == "be brief"
    assert sent.body["generationConfig"]["maxOutputTokens"] == 50


def test_sdk_parses_the_stream(gb: FakeGeminiBatch) -> None:
    gb.gemini.api.reply = "One two three four five."
    c = client(gb)
    chunks = list(c.models.generate_content_stream(model="gemini-2.5-flash", contents="count"))
    assert "".join(c.text or "" for c in chunks) == "One two three four five."
    assert len(chunks) == 5
    last = chunks[-1]
    assert last.candidates and last.candidates[0].finish_reason == types.FinishReason.STOP
    assert last.usage_metadata and last.usage_metadata.candidates_token_count == 5
    assert all(c.candidates and c.candidates[0].finish_reason is None for c in chunks[:-1])


def test_sdk_parses_structured_output(gb: FakeGeminiBatch) -> None:
    c = client(gb)
    resp = c.models.generate_content(
        model="gemini-2.5-flash",
        contents="a number",
        config=types.GenerateContentConfig(
            response_mime_type="application/json", response_json_schema=SCHEMA
        ),
    )
    assert orjson.loads(resp.text or "") == {"n": 1}
    assert gb.gemini.api.records[-1].body["generationConfig"]["responseJsonSchema"] == SCHEMA


@pytest.mark.parametrize(
    ("fault", "status", "name"),
    [("429", 429, "RESOURCE_EXHAUSTED"), ("503", 503, "UNAVAILABLE"), ("400", 400, None)],
)
def test_sdk_reads_error_bodies(gb: FakeGeminiBatch, fault: str, status: int, name: str) -> None:
    gb.gemini.api.add_rule("boom", fault)
    c = client(gb)
    with pytest.raises(errors.APIError) as info:
        c.models.generate_content(model="gemini-2.5-flash", contents="boom")
    assert info.value.code == status
    assert info.value.status == (name or "INVALID_ARGUMENT")
    if status == 429:
        details = info.value.details["error"]["details"]
        assert any(d.get("retryDelay") == "0.01s" for d in details)


def test_sdk_reads_inline_batches(gb: FakeGeminiBatch) -> None:
    c = client(gb)
    job = c.batches.create(
        model="gemini-2.5-flash",
        src=[
            types.InlinedRequest(
                contents=[types.Content(role="user", parts=[types.Part(text=f"Question {n}")])]
            )
            for n in ("one", "two")
        ],
        config={"display_name": "llmbatch-sdk"},
    )
    assert job.name and job.name.startswith("batches/")
    assert job.state == types.JobState.JOB_STATE_PENDING
    assert job.display_name == "llmbatch-sdk"
    gb.advance(3600)
    done = c.batches.get(name=job.name)
    assert done.state == types.JobState.JOB_STATE_SUCCEEDED and done.done
    assert done.dest and done.dest.inlined_responses
    texts = [r.response.text for r in done.dest.inlined_responses if r.response]
    assert texts and all("Answer to: Question" in (t or "") for t in texts)
    listed = list(c.batches.list(config={"page_size": 10}))
    assert [b.name for b in listed] == [job.name]


def test_sdk_uploads_and_downloads_files_and_reads_file_batches(gb: FakeGeminiBatch) -> None:
    c = client(gb)
    lines = b"".join(
        orjson.dumps({"key": f"k{i}", "request": {"contents": [{"parts": [{"text": f"Q{i}"}]}]}})
        + b"\n"
        for i in range(3)
    )
    up = c.files.upload(
        file=io.BytesIO(lines), config={"mime_type": "application/jsonl", "display_name": "in"}
    )
    assert up.name and up.name.startswith("files/") and up.size_bytes == len(lines)
    assert gb.files[up.name] == lines
    job = c.batches.create(model="gemini-2.5-flash", src=up.name)
    assert job.name
    c.batches.cancel(name=job.name)
    got = c.batches.get(name=job.name)
    assert got.state == types.JobState.JOB_STATE_CANCELLED
    assert got.dest and got.dest.file_name
    data = c.files.download(file=got.dest.file_name)
    assert isinstance(data, bytes)  # canceled at once: nothing answered, an empty file
    assert data == b""
    job2 = c.batches.create(model="gemini-2.5-flash", src=up.name)
    assert job2.name
    gb.advance(3600)
    got2 = c.batches.get(name=job2.name)
    assert got2.state == types.JobState.JOB_STATE_SUCCEEDED
    assert got2.dest and got2.dest.file_name
    rows = [orjson.loads(x) for x in c.files.download(file=got2.dest.file_name).splitlines()]
    assert [r["key"] for r in rows] == ["k0", "k1", "k2"]
    parsed = types.GenerateContentResponse.model_validate(rows[0]["response"])
    assert "Q0" in (parsed.text or "")
