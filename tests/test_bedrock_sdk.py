"""The fake Bedrock endpoint, checked against the official SDK: boto3's ``bedrock-runtime``
client must sign for it, send to it, and parse what it says (events, usage, errors).

And the other way round: what ``build_bedrock_body`` sends passes botocore's own
validation of a ConverseStream request.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, EventStreamError

from llmbatch._core.jobs import Request
from llmbatch.providers.bedrock import build_bedrock_body
from tests.fakeapi import FakeAPI
from tests.fakebedrock import FakeBedrock

MODEL = "anthropic.claude-haiku-4-5-20251001-v1:0"
ACCESS, SECRET = "AKIAFAKESDK000000001", "sdk-secret-0123456789abcdefghijklmnopqrstu"
SCHEMA: dict[str, Any] = {"type": "object", "properties": {"a": {"type": "integer"}}}


_CLIENTS: list[Any] = []


@pytest.fixture
def bedrock() -> Iterator[FakeBedrock]:
    api = FakeAPI()
    fake = FakeBedrock(api, credentials=(ACCESS, SECRET))  # boto3's signatures are checked too
    api.start()
    try:
        yield fake
    finally:
        while _CLIENTS:  # their pooled sockets, before the fake goes
            _CLIENTS.pop().close()
        api.stop()


def client(fake: FakeBedrock) -> Any:
    c = boto3.client(
        "bedrock-runtime",
        endpoint_url=fake.api.url,
        region_name="us-east-1",
        aws_access_key_id=ACCESS,
        aws_secret_access_key=SECRET,
        config=Config(retries={"total_max_attempts": 1}),
    )
    _CLIENTS.append(c)
    return c


def converse(c: Any, text: str, **kw: Any) -> Any:
    return c.converse_stream(
        modelId=MODEL,
        messages=[{"role": "user", "content": [{"text": text}]}],
        inferenceConfig={"maxTokens": 100},
        **kw,
    )


def test_boto3_parses_the_fakes_stream_events_and_usage(bedrock: FakeBedrock) -> None:
    bedrock.api.reply = "one two three"
    bedrock.api.cache_read_tokens = 4
    bedrock.chunk_size = 5
    response = converse(client(bedrock), "hello")
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 200
    events = list(response["stream"])
    kinds = [next(iter(e)) for e in events]
    assert kinds == [
        "messageStart",
        "contentBlockDelta",
        "contentBlockDelta",
        "contentBlockDelta",
        "contentBlockStop",
        "messageStop",
        "metadata",
    ]
    assert events[0]["messageStart"] == {"role": "assistant"}
    text = "".join(e["contentBlockDelta"]["delta"]["text"] for e in events[1:4])
    assert text == "one two three"
    assert events[5]["messageStop"]["stopReason"] == "end_turn"
    meta = events[6]["metadata"]
    record = bedrock.api.records[0]
    assert meta["usage"] == {
        "inputTokens": record.input_tokens - 4,
        "outputTokens": 3,
        "totalTokens": record.input_tokens + 3,
        "cacheReadInputTokens": 4,
        "cacheWriteInputTokens": 0,
    }
    assert meta["metrics"] == {"latencyMs": 123}
    assert bedrock.bad_signatures == 0  # the fake's SigV4 check agrees with boto3's signer
    assert record.body["model"] == MODEL


def test_boto3_reads_a_throttling_error_with_its_code_and_status(bedrock: FakeBedrock) -> None:
    bedrock.api.add_rule("slow", "429")
    with pytest.raises(ClientError) as info:
        converse(client(bedrock), "slow")
    err = info.value.response
    assert err["Error"]["Code"] == "ThrottlingException"
    assert err["Error"]["Message"] == "simulated 429"
    assert err["ResponseMetadata"]["HTTPStatusCode"] == 429
    assert err["ResponseMetadata"]["RequestId"] == "req-fake-error"


@pytest.mark.parametrize(
    ("fault", "code"),
    [("stream_throttle", "throttlingException"), ("error_event", "modelStreamErrorException")],
)
def test_boto3_reads_an_exception_frame_inside_the_stream(
    fault: str, code: str, bedrock: FakeBedrock
) -> None:
    bedrock.api.reply = "a b c d"
    bedrock.api.add_rule("mid", fault)
    response = converse(client(bedrock), "mid")
    got: list[Any] = []
    with pytest.raises(EventStreamError) as info:
        for e in response["stream"]:
            got.append(e)
    response["stream"].close()
    assert info.value.response["Error"]["Code"] == code
    assert [next(iter(e)) for e in got] == [
        "messageStart",
        "contentBlockDelta",
        "contentBlockDelta",
    ]


def test_boto3_refuses_a_frame_whose_crc_is_wrong(bedrock: FakeBedrock) -> None:
    bedrock.api.reply = "a b c d"
    bedrock.api.add_rule("crc", "bad_crc")
    response = converse(client(bedrock), "crc")
    with pytest.raises(Exception, match="(?i)checksum"):
        list(response["stream"])
    response["stream"].close()


def test_our_converse_body_passes_botocores_request_validation(bedrock: FakeBedrock) -> None:
    request = Request(
        [
            {"role": "system", "content": "terse"},
            {"role": "user", "content": [{"type": "text", "text": "hi"}]},
            {"role": "assistant", "content": "yes?"},
            {"role": "user", "content": "more"},
        ],
        system="sys",
        max_tokens=50,
        temperature=0.5,
        schema=SCHEMA,
    )
    bedrock.api.reply = '{"a": 1}'
    body = build_bedrock_body(request)
    # botocore checks every field against the service model before it sends anything
    response = client(bedrock).converse_stream(modelId=MODEL, **body)
    events = list(response["stream"])
    assert events[1]["contentBlockDelta"]["delta"]["text"] == '{"a": '
    sent = bedrock.api.records[0].body
    assert sent["outputConfig"] == body["outputConfig"]
    assert sent["system"] == [{"text": "sys"}, {"text": "terse"}]
    assert sent["inferenceConfig"] == {"maxTokens": 50, "temperature": 0.5}
