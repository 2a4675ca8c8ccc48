"""The fake API checked against the official SDKs: if they parse it, its wire formats are right."""

from __future__ import annotations

import anthropic
import openai
import pytest

from tests.conftest import CANARY_ANTHROPIC, CANARY_OPENAI
from tests.fakeapi import FakeAPI


async def test_anthropic_sdk_parses_a_whole_message(fake: FakeAPI) -> None:
    fake.reply = "Hello there, friend."
    client = anthropic.AsyncAnthropic(api_key=CANARY_ANTHROPIC, base_url=fake.url, max_retries=0)
    async with client:
        msg = await client.messages.create(
            model="claude-haiku-4-5",
            max_tokens=100,
            messages=[{"role": "user", "content": "hi"}],
        )
    assert msg.content[0].type == "text"
    assert msg.content[0].text == "Hello there, friend."
    assert msg.stop_reason == "end_turn"
    assert msg.usage.output_tokens == 3
    sent = fake.records[-1]
    # What the SDK sends is what our adapter sends: version and auth header.
    from llmbatch.providers.anthropic import ANTHROPIC_VERSION

    assert sent.headers["anthropic-version"] == ANTHROPIC_VERSION
    assert sent.headers.get("authorization") == f"Bearer {CANARY_ANTHROPIC}" or (
        sent.headers.get("x-api-key") == CANARY_ANTHROPIC
    )


async def test_anthropic_sdk_parses_the_stream(fake: FakeAPI) -> None:
    fake.reply = "One two three four five."
    fake.cache_read_tokens = 3
    client = anthropic.AsyncAnthropic(api_key=CANARY_ANTHROPIC, base_url=fake.url, max_retries=0)
    async with client:
        async with client.messages.stream(
            model="claude-haiku-4-5",
            max_tokens=100,
            messages=[{"role": "user", "content": "count"}],
        ) as stream:
            chunks = [t async for t in stream.text_stream]
            final = await stream.get_final_message()
    assert "".join(chunks) == "One two three four five."
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == 5
    assert final.usage.cache_read_input_tokens == 3


async def test_anthropic_sdk_reads_error_bodies(fake: FakeAPI) -> None:
    fake.add_rule("boom", "529")
    fake.add_rule("slow down", "429")
    client = anthropic.AsyncAnthropic(api_key=CANARY_ANTHROPIC, base_url=fake.url, max_retries=0)
    async with client:
        with pytest.raises(anthropic.APIStatusError) as info:
            await client.messages.create(
                model="m", max_tokens=5, messages=[{"role": "user", "content": "boom"}]
            )
        assert info.value.status_code == 529
        assert isinstance(info.value.body, dict)
        assert info.value.body["error"]["type"] == "overloaded_error"
        with pytest.raises(anthropic.RateLimitError) as rl:
            await client.messages.create(
                model="m", max_tokens=5, messages=[{"role": "user", "content": "slow down"}]
            )
        assert rl.value.response.headers["retry-after"] == "0.05"
        assert "anthropic-ratelimit-requests-limit" in rl.value.response.headers


async def test_anthropic_sdk_raises_on_error_event_in_stream(fake: FakeAPI) -> None:
    fake.reply = "a b c d e f g h"
    fake.add_rule("mid", "error_event")
    client = anthropic.AsyncAnthropic(api_key=CANARY_ANTHROPIC, base_url=fake.url, max_retries=0)
    async with client:
        with pytest.raises(anthropic.APIStatusError) as info:
            async with client.messages.stream(
                model="m", max_tokens=50, messages=[{"role": "user", "content": "mid"}]
            ) as stream:
                async for _ in stream.text_stream:
                    pass
    assert "overloaded" in str(info.value).lower()


async def test_openai_sdk_parses_a_whole_completion(fake: FakeAPI) -> None:
    fake.reply = "Bonjour le monde."
    client = openai.AsyncOpenAI(api_key=CANARY_OPENAI, base_url=fake.url + "/v1", max_retries=0)
    async with client:
        resp = await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "translate"}], max_tokens=50
        )
    assert resp.choices[0].message.content == "Bonjour le monde."
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage is not None and resp.usage.completion_tokens == 3
    assert fake.records[-1].headers["authorization"] == f"Bearer {CANARY_OPENAI}"


async def test_openai_sdk_parses_the_stream_with_usage(fake: FakeAPI) -> None:
    fake.reply = "alpha beta gamma"
    fake.cache_read_tokens = 2
    client = openai.AsyncOpenAI(api_key=CANARY_OPENAI, base_url=fake.url + "/v1", max_retries=0)
    async with client:
        stream = await client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "go"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        text = []
        usage = None
        finish = None
        async for chunk in stream:
            for choice in chunk.choices:
                if choice.delta.content:
                    text.append(choice.delta.content)
                if choice.finish_reason:
                    finish = choice.finish_reason
            if chunk.usage is not None:
                usage = chunk.usage
    assert "".join(text) == "alpha beta gamma"
    assert finish == "stop"
    assert usage is not None and usage.completion_tokens == 3
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == 2


async def test_openai_sdk_reads_error_bodies(fake: FakeAPI) -> None:
    fake.add_rule("bad", "400")
    client = openai.AsyncOpenAI(api_key=CANARY_OPENAI, base_url=fake.url + "/v1", max_retries=0)
    async with client:
        with pytest.raises(openai.BadRequestError) as info:
            await client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "bad"}]
            )
    assert info.value.status_code == 400
    assert "simulated 400" in str(info.value)


async def test_sdks_see_no_finish_reason_in_a_no_finish_stream(fake: FakeAPI) -> None:
    fake.reply = "cut short here"
    fake.add_rule("go", "no_finish", "no_finish")
    oa = openai.AsyncOpenAI(api_key=CANARY_OPENAI, base_url=fake.url + "/v1", max_retries=0)
    async with oa:
        stream = await oa.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "go"}], stream=True
        )
        text, finishes = [], []
        async for chunk in stream:
            for choice in chunk.choices:
                text.append(choice.delta.content or "")
                finishes.append(choice.finish_reason)
    assert "".join(text) == "cut short here"
    assert finishes and all(f is None for f in finishes)
    client = anthropic.AsyncAnthropic(api_key=CANARY_ANTHROPIC, base_url=fake.url, max_retries=0)
    async with client:
        async with client.messages.stream(
            model="m", max_tokens=50, messages=[{"role": "user", "content": "go"}]
        ) as s:
            final = await s.get_final_message()
    assert final.stop_reason is None
    assert final.content[0].type == "text" and final.content[0].text == "cut short here"


async def test_sdks_read_the_rejections_of_structured_output(fake: FakeAPI) -> None:
    fake.rejects_response_format = {"json_schema": 500}
    fake.rejects_output_config = 400
    oa = openai.AsyncOpenAI(api_key=CANARY_OPENAI, base_url=fake.url + "/v1", max_retries=0)
    schema = {"type": "object", "properties": {}, "additionalProperties": False}
    async with oa:
        with pytest.raises(openai.InternalServerError) as info:
            await oa.chat.completions.create(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": "x"}],
                response_format={
                    "type": "json_schema",
                    "json_schema": {"name": "o", "schema": schema},
                },
            )
        assert "response_format.type" in str(info.value)
        ok = await oa.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "json please"}],
            response_format={"type": "json_object"},
        )
        assert ok.choices[0].finish_reason == "stop"
    client = anthropic.AsyncAnthropic(api_key=CANARY_ANTHROPIC, base_url=fake.url, max_retries=0)
    async with client:
        with pytest.raises(anthropic.BadRequestError) as bad:
            await client.messages.create(
                model="m",
                max_tokens=5,
                messages=[{"role": "user", "content": "x"}],
                output_config={"format": {"type": "json_schema", "schema": schema}},
            )
    assert "output_config" in str(bad.value)
