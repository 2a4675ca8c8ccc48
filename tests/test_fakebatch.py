"""The fake Batch APIs, driven by the official SDKs: what they parse, llmbatch may rely on."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import orjson
import pytest

from tests.conftest import CANARY_ANTHROPIC, CANARY_OPENAI
from tests.fakeapi import FakeAPI
from tests.fakebatch import FakeBatch


@pytest.fixture
def fb() -> Iterator[FakeBatch]:
    api = FakeAPI()
    batch = FakeBatch(api)
    api.start()
    try:
        yield batch
    finally:
        api.stop()


@pytest.fixture
def oa(fb: FakeBatch) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(api_key=CANARY_OPENAI, base_url=fb.api.url + "/v1", max_retries=0) as c:
        yield c


@pytest.fixture
def an(fb: FakeBatch) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(api_key=CANARY_ANTHROPIC, base_url=fb.api.url, max_retries=0) as c:
        yield c


def oa_file(n: int, model: str = "gpt-4o-mini") -> bytes:
    lines = [
        {
            "custom_id": f"r{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": model,
                "messages": [{"role": "user", "content": f"question {i}"}],
                "max_completion_tokens": 50,
            },
        }
        for i in range(n)
    ]
    return b"".join(orjson.dumps(x) + b"\n" for x in lines)


def an_requests(n: int) -> list[Any]:
    return [
        {
            "custom_id": f"r{i}",
            "params": {
                "model": "claude-haiku-4-5",
                "max_tokens": 50,
                "messages": [{"role": "user", "content": f"question {i}"}],
            },
        }
        for i in range(n)
    ]


def oa_batch(client: openai.OpenAI, n: int) -> openai.types.Batch:
    f = client.files.create(file=("in.jsonl", oa_file(n)), purpose="batch")
    return client.batches.create(
        input_file_id=f.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"llmbatch_chunk": "c1"},
    )


def lines(data: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(x) for x in data.splitlines() if x]


def test_openai_round_trip(fb: FakeBatch, oa: openai.OpenAI) -> None:
    client = oa
    f = client.files.create(file=("in.jsonl", oa_file(4)), purpose="batch")
    assert f.purpose == "batch" and f.status == "processed" and f.bytes > 0
    b = client.batches.create(
        input_file_id=f.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"llmbatch_chunk": "c1"},
    )
    assert b.status == "validating" and b.request_counts is not None
    assert b.request_counts.total == 4 and b.metadata == {"llmbatch_chunk": "c1"}
    fb.advance(300)
    mid = client.batches.retrieve(b.id)
    assert mid.status == "in_progress" and mid.request_counts is not None
    assert mid.request_counts.completed == 2
    fb.advance(400)
    done = client.batches.retrieve(b.id)
    assert done.status == "completed" and done.output_file_id and done.completed_at
    out = lines(client.files.content(done.output_file_id).content)
    assert [x["custom_id"] for x in out] == ["r0", "r1", "r2", "r3"]
    body = out[0]["response"]["body"]
    assert out[0]["response"]["status_code"] == 200
    assert body["choices"][0]["message"]["content"].startswith("Answer to: question 0")
    assert body["usage"]["prompt_tokens"] > 0
    listed = list(client.batches.list(limit=1))
    assert [x.id for x in listed] == [b.id] and listed[0].metadata == {"llmbatch_chunk": "c1"}
    assert f.id in {x.id for x in client.files.list()}
    assert client.files.delete(f.id).deleted


def test_openai_faults(fb: FakeBatch, oa: openai.OpenAI) -> None:
    client = oa
    fb.create_429 = 1
    f = client.files.create(file=("in.jsonl", oa_file(2)), purpose="batch")
    with pytest.raises(openai.RateLimitError):
        client.batches.create(
            input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
    fb.fail_next = "token_limit_exceeded"
    failed = oa_batch(client, 2)
    fb.advance(1)
    failed = client.batches.retrieve(failed.id)
    assert failed.status == "failed" and failed.errors and failed.errors.data
    assert failed.errors.data[0].code == "token_limit_exceeded"
    fb.null_output_polls = 2
    fb.empty_error_file = True
    b = oa_batch(client, 2)
    fb.advance(700)
    first = client.batches.retrieve(b.id)
    assert first.status == "completed" and first.output_file_id is None
    assert first.error_file_id == ""
    assert client.batches.retrieve(b.id).output_file_id is None
    ready = client.batches.retrieve(b.id)
    assert ready.output_file_id
    fb.truncate_downloads = 1
    with pytest.raises((openai.APIConnectionError, openai.APIError)):
        client.files.content(ready.output_file_id).content  # noqa: B018
    assert len(lines(client.files.content(ready.output_file_id).content)) == 2


def test_openai_expiry_and_cancel(fb: FakeBatch, oa: openai.OpenAI) -> None:
    client = oa
    fb.expire_after = 0.5
    b = oa_batch(client, 4)
    fb.advance(3600)
    assert client.batches.retrieve(b.id).status == "in_progress"
    fb.advance(24 * 3600)
    expired = client.batches.retrieve(b.id)
    assert expired.status == "expired" and expired.output_file_id and expired.error_file_id
    assert len(lines(client.files.content(expired.output_file_id).content)) == 2
    errs = lines(client.files.content(expired.error_file_id).content)
    assert {e["error"]["code"] for e in errs} == {"batch_expired"}
    fb.expire_after = None
    c = oa_batch(client, 4)
    fb.advance(150)
    cancelling = client.batches.cancel(c.id)
    assert cancelling.status == "cancelling"
    cancelled = client.batches.retrieve(c.id)
    assert cancelled.status == "cancelled" and cancelled.request_counts is not None
    assert cancelled.request_counts.completed == 1


def test_anthropic_round_trip(fb: FakeBatch, an: anthropic.Anthropic) -> None:
    client = an
    b = client.messages.batches.create(requests=an_requests(3))
    assert b.processing_status == "in_progress" and b.request_counts.processing == 3
    assert b.expires_at > b.created_at
    fb.advance(700)
    done = client.messages.batches.retrieve(b.id)
    assert done.processing_status == "ended" and done.request_counts.succeeded == 3
    assert done.ended_at is not None and done.results_url
    results = list(client.messages.batches.results(b.id))
    assert [r.custom_id for r in results] == ["r0", "r1", "r2"]
    first = results[0].result
    assert first.type == "succeeded"
    assert first.message.usage.input_tokens > 0
    assert [x.id for x in client.messages.batches.list(limit=5)] == [b.id]
    assert client.messages.batches.delete(b.id).type == "message_batch_deleted"


def test_anthropic_faults(fb: FakeBatch, an: anthropic.Anthropic) -> None:
    client = an
    fb.create_429 = 1
    with pytest.raises(anthropic.RateLimitError):
        client.messages.batches.create(requests=an_requests(1))
    fb.api.add_rule("question 1", "400")
    fb.expire_after = 0.5
    b = client.messages.batches.create(requests=an_requests(4))
    fb.advance(25 * 3600)
    ended = client.messages.batches.retrieve(b.id)
    counts = ended.request_counts
    assert (counts.succeeded, counts.errored, counts.expired) == (1, 1, 2)
    kinds = {r.custom_id: r.result.type for r in client.messages.batches.results(b.id)}
    assert kinds == {"r0": "succeeded", "r1": "errored", "r2": "expired", "r3": "expired"}
    fb.expire_after = None
    c = client.messages.batches.create(requests=an_requests(4))
    fb.advance(300)
    assert client.messages.batches.cancel(c.id).processing_status == "canceling"
    after = client.messages.batches.retrieve(c.id)
    assert after.processing_status == "ended" and after.request_counts.canceled == 2
    fb.truncate_downloads = 1
    with pytest.raises(Exception, match="peer closed connection"):
        list(client.messages.batches.results(c.id))
    assert len(list(client.messages.batches.results(c.id))) == 4
