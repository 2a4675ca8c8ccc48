"""The fake's Azure and Responses API endpoints checked against the official ``openai`` SDK:
``AzureOpenAI`` on both paths, ``responses.create(stream=True)``, and the batch files."""

from __future__ import annotations

import openai
import orjson
import pytest

from tests.conftest import CANARY_OPENAI
from tests.fakeapi import FakeAPI
from tests.fakebatch import FakeBatch


async def test_azure_sdk_parses_the_deployment_path_stream(fake: FakeAPI) -> None:
    fake.reply = "One two three."
    client = openai.AsyncAzureOpenAI(
        api_key=CANARY_OPENAI,
        azure_endpoint=fake.url,
        api_version="2024-10-21",
        max_retries=0,
    )
    async with client:
        stream = await client.chat.completions.create(
            model="my-deploy",
            messages=[{"role": "user", "content": "count"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        text, usage = [], None
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                text.append(chunk.choices[0].delta.content)
            if chunk.usage is not None:
                usage = chunk.usage
    assert "".join(text) == "One two three."
    assert usage is not None and usage.completion_tokens == 3
    sent = fake.records[-1]
    assert sent.kind == "azure"
    assert sent.path == "/openai/deployments/my-deploy/chat/completions?api-version=2024-10-21"
    assert sent.headers["api-key"] == CANARY_OPENAI  # what our adapter sends, too


async def test_azure_sdk_on_the_v1_path_reads_an_azure_error(fake: FakeAPI) -> None:
    fake.add_rule("slow down", "429")
    client = openai.AsyncOpenAI(
        api_key=CANARY_OPENAI, base_url=fake.url + "/openai/v1", max_retries=0
    )
    async with client:
        done = await client.chat.completions.create(
            model="my-deploy", messages=[{"role": "user", "content": "hi"}]
        )
        with pytest.raises(openai.RateLimitError) as info:
            await client.chat.completions.create(
                model="my-deploy", messages=[{"role": "user", "content": "slow down"}]
            )
    assert done.choices[0].finish_reason == "stop"
    assert info.value.status_code == 429
    assert info.value.response.headers["retry-after"]
    assert fake.records[0].path == "/openai/v1/chat/completions"


async def test_responses_sdk_parses_the_stream(fake: FakeAPI) -> None:
    fake.reply = "Four five six seven."
    fake.cache_read_tokens = 2
    client = openai.AsyncOpenAI(api_key=CANARY_OPENAI, base_url=fake.url + "/v1", max_retries=0)
    async with client:
        stream = await client.responses.create(
            model="gpt-4o-mini", input="count on", stream=True, store=False
        )
        deltas, final = [], None
        async for event in stream:
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
            elif event.type == "response.completed":
                final = event.response
    assert "".join(deltas) == "Four five six seven."
    assert final is not None and final.status == "completed"
    assert final.output_text == "Four five six seven."
    assert final.usage is not None
    assert final.usage.output_tokens == 4
    assert final.usage.input_tokens_details.cached_tokens == 2
    assert final.usage.output_tokens_details.reasoning_tokens == 0


async def test_responses_sdk_parses_a_whole_and_an_incomplete_response(fake: FakeAPI) -> None:
    fake.reply = "one two three four five"
    client = openai.AsyncOpenAI(api_key=CANARY_OPENAI, base_url=fake.url + "/v1", max_retries=0)
    async with client:
        whole = await client.responses.create(model="gpt-4o-mini", input="hi")
        capped = await client.responses.create(model="gpt-4o-mini", input="hi", max_output_tokens=2)
        stream = await client.responses.create(
            model="gpt-4o-mini", input="hi", max_output_tokens=2, stream=True
        )
        kinds = [event.type async for event in stream]
    assert whole.output_text == "one two three four five" and whole.status == "completed"
    assert capped.status == "incomplete"
    assert capped.incomplete_details is not None
    assert capped.incomplete_details.reason == "max_output_tokens"
    assert kinds[0] == "response.created" and kinds[-1] == "response.incomplete"


async def test_azure_sdk_runs_a_global_batch_on_the_fake(fb: FakeBatch) -> None:
    client = openai.AsyncAzureOpenAI(
        api_key=CANARY_OPENAI,
        azure_endpoint=fb.api.url,
        api_version="2024-10-21",
        max_retries=0,
    )
    line = {
        "custom_id": "a",
        "method": "POST",
        "url": "/chat/completions",
        "body": {"model": "my-batch-deploy", "messages": [{"role": "user", "content": "hi"}]},
    }
    async with client:
        f = await client.files.create(file=("in.jsonl", orjson.dumps(line)), purpose="batch")
        b = await client.batches.create(
            input_file_id=f.id,
            endpoint="/chat/completions",  # type: ignore[arg-type]  # Azure's, not in the SDK's list
            completion_window="24h",
        )
        fb.advance(3600)
        done = await client.batches.retrieve(b.id)
        assert done.status == "completed" and done.output_file_id
        content = await client.files.content(done.output_file_id)
    (out,) = [orjson.loads(x) for x in content.read().splitlines()]
    assert out["custom_id"] == "a" and out["response"]["status_code"] == 200
    assert fb.paths["/openai"] >= 2


async def test_responses_batch_lines_parse_as_responses(fb: FakeBatch) -> None:
    from openai.types.responses import Response

    client = openai.AsyncOpenAI(api_key=CANARY_OPENAI, base_url=fb.api.url + "/v1", max_retries=0)
    line = {
        "custom_id": "r",
        "method": "POST",
        "url": "/v1/responses",
        "body": {"model": "gpt-4o-mini", "input": "hello there"},
    }
    async with client:
        f = await client.files.create(file=("in.jsonl", orjson.dumps(line)), purpose="batch")
        b = await client.batches.create(
            input_file_id=f.id, endpoint="/v1/responses", completion_window="24h"
        )
        fb.advance(3600)
        done = await client.batches.retrieve(b.id)
        assert done.endpoint == "/v1/responses" and done.output_file_id
        content = await client.files.content(done.output_file_id)
    (out,) = [orjson.loads(x) for x in content.read().splitlines()]
    parsed = Response.model_validate(out["response"]["body"])
    assert parsed.status == "completed" and parsed.output_text.startswith("Answer to:")
