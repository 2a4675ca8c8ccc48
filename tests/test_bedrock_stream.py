"""Reading ConverseStream answers without a server: events, errors, and fuzzed bodies.

A body of frames goes through the decoder and the reader inside the error seam,
as the provider runs them: the outcome is an Answer or a ProviderError, never
anything else, and never an ok answer from a stream that did not finish.
"""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest

from llmbatch._core.exceptions import (
    AuthError,
    BadRequest,
    ConnectionFailed,
    ContentFiltered,
    NotFound,
    ProviderError,
    ProviderTimeout,
    RateLimited,
    ServerError,
)
from llmbatch._core.jobs import Request
from llmbatch.providers._base import Answer
from llmbatch.providers._errors import translate_errors
from llmbatch.providers.bedrock import build_bedrock_body
from llmbatch.providers.bedrock_stream import ConverseStream, bedrock_error, error_code
from llmbatch.providers.eventstream import FrameDecoder
from tests.fakebedrock import event, exception, frame

REQUEST = Request([{"role": "user", "content": "hi"}])
USAGE = {
    "inputTokens": 5,
    "outputTokens": 2,
    "cacheReadInputTokens": 10,
    "cacheWriteInputTokens": 1,
}


def good_events(text: str = "hello world", stop: str = "end_turn") -> list[bytes]:
    words = text.split(" ")
    return [
        event("messageStart", {"role": "assistant"}),
        *(
            event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": w}})
            for w in [words[0], *(" " + w for w in words[1:])]
        ),
        event("contentBlockStop", {"contentBlockIndex": 0}),
        event("messageStop", {"stopReason": stop}),
        event("metadata", {"usage": USAGE, "metrics": {"latencyMs": 9}}),
    ]


def read(body: bytes, chunk: int = 17) -> Answer:
    """The provider's path, minus HTTP: decoder, reader, answer, inside the seam."""
    notes: set[str] = set()
    with translate_errors() as attempt:
        stream = ConverseStream(0.0, lambda s: s)
        attempt.spent = stream.spent
        decoder = FrameDecoder()
        for i in range(0, len(body), chunk):
            for f in decoder.feed(body[i : i + chunk]):
                stream.feed(f)
                if stream.done:
                    return stream.answer(REQUEST, None, "rid", notes)
        decoder.close()
        return stream.answer(REQUEST, None, "rid", notes)


def test_a_complete_stream_is_an_answer_with_bedrocks_usage_in_our_convention() -> None:
    answer = read(b"".join(good_events()))
    assert answer.text == "hello world" and answer.stop_reason == "end_turn"
    u = answer.usage
    assert (u.input_tokens, u.cache_read_tokens, u.cache_write_tokens) == (16, 10, 1)
    assert u.output_tokens == 2 and answer.request_id == "rid"


def test_reasoning_and_tool_deltas_are_not_the_answer() -> None:
    events = good_events("x")
    extra = event("contentBlockDelta", {"delta": {"reasoningContent": {"text": "hmm"}}})
    assert read(b"".join([events[0], extra, *events[1:]])).text == "x"


@pytest.mark.parametrize("stop", ["content_filtered", "guardrail_intervened"])
def test_filtered_stops_are_content_filter_failures(stop: str) -> None:
    with pytest.raises(ContentFiltered) as info:
        read(b"".join(good_events(stop=stop)))
    assert not info.value.retryable and info.value.usage is not None


@pytest.mark.parametrize("keep", [1, 2, 3, 4])
def test_a_stream_that_ends_before_message_stop_is_never_an_answer(keep: int) -> None:
    events = good_events()
    body = b"".join(e for e in events if b"messageStop" not in e)  # metadata, but no stop
    with pytest.raises(ConnectionFailed, match="before messageStop"):
        read(body)
    with pytest.raises(ConnectionFailed, match="before messageStop"):
        read(b"".join(events[:keep]))


@pytest.mark.parametrize(
    ("kind", "cls"),
    [
        ("throttlingException", RateLimited),
        ("modelStreamErrorException", ServerError),
        ("internalServerException", ServerError),
        ("serviceUnavailableException", ServerError),
        ("validationException", BadRequest),
    ],
)
def test_exception_frames_map_to_our_classes(kind: str, cls: type[ProviderError]) -> None:
    events = good_events()
    body = b"".join([*events[:2], exception(kind, "broke"), *events[2:]])
    with pytest.raises(cls) as info:
        read(body)
    assert type(info.value) is cls and info.value.status is None
    assert kind in info.value.message and "broke" in info.value.message


def test_an_error_message_frame_maps_by_its_code() -> None:
    err = frame(
        {":message-type": "error", ":error-code": "ThrottlingException", ":error-message": "no"},
        b"",
    )
    with pytest.raises(RateLimited):
        read(good_events()[0] + err)


@pytest.mark.parametrize(
    ("code", "status", "cls", "retryable"),
    [
        ("ThrottlingException", 429, RateLimited, True),
        ("ModelNotReadyException", 429, ServerError, True),
        ("ServiceUnavailableException", 503, ServerError, True),
        ("InternalServerException", 500, ServerError, True),
        ("ModelTimeoutException", 408, ProviderTimeout, True),
        ("ValidationException", 400, BadRequest, False),
        ("AccessDeniedException", 403, AuthError, False),
        ("UnrecognizedClientException", 403, AuthError, False),
        ("ResourceNotFoundException", 404, NotFound, False),
        (None, 502, ServerError, True),
        (None, 401, AuthError, False),
    ],
)
def test_http_errors_map_by_their_aws_type(
    code: str | None, status: int, cls: type[ProviderError], retryable: bool
) -> None:
    err = bedrock_error(code, status, "m")
    assert type(err) is cls and err.retryable is retryable and err.status == status


def test_the_error_type_comes_from_the_header_or_the_body() -> None:
    header = {"x-amzn-errortype": "ThrottlingException:http://internal.amazon.com/coral/x/"}
    assert error_code(header, None) == "ThrottlingException"
    body = {"__type": "com.amazon.coral.validate#ValidationException", "message": "m"}
    assert error_code({}, body) == "ValidationException"
    assert error_code({}, {"message": "m"}) is None


def test_a_whole_converse_answer_is_read_too() -> None:
    stream = ConverseStream(0.0, lambda s: s)
    stream.whole(
        orjson.dumps(
            {
                "output": {"message": {"role": "assistant", "content": [{"text": "hi"}]}},
                "stopReason": "end_turn",
                "usage": USAGE,
                "metrics": {"latencyMs": 1},
            }
        )
    )
    answer = stream.answer(REQUEST, None, None, set())
    assert answer.text == "hi" and answer.usage.input_tokens == 16


def test_the_body_carries_images_and_refuses_what_converse_cannot_take() -> None:
    png = "iVBORw0KGgo="
    request = Request(
        [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is it"},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png}"}},
                    {"cachePoint": {"type": "default"}},
                ],
            }
        ]
    )
    body = build_bedrock_body(request)
    assert body["messages"][0]["content"] == [
        {"text": "what is it"},
        {"image": {"format": "png", "source": {"bytes": png}}},
        {"cachePoint": {"type": "default"}},
    ]
    remote = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
    with pytest.raises(BadRequest, match="data: URLs"):
        build_bedrock_body(Request([{"role": "user", "content": [remote]}]))
    with pytest.raises(BadRequest, match="'audio'"):
        build_bedrock_body(Request([{"role": "user", "content": [{"type": "audio"}]}]))


# -- fuzz ------------------------------------------------------------------------------------------

JUNK: list[Any] = [None, 0, -5, 1.5, True, "", "x", [], [1], {}, {"a": 1}, "é" * 50]


def fuzzed_body(rng: random.Random) -> bytes:
    events = good_events("a b c")
    case = rng.randrange(6)
    if case == 0:  # a field of the wrong type
        kind, data = rng.choice(
            [
                ("contentBlockDelta", {"delta": {"text": rng.choice(JUNK)}}),
                ("contentBlockDelta", {"delta": rng.choice(JUNK)}),
                ("messageStop", {"stopReason": rng.choice(JUNK)}),
                ("metadata", {"usage": rng.choice(JUNK)}),
                ("metadata", {"usage": {"inputTokens": rng.choice(JUNK)}}),
            ]
        )
        events.insert(rng.randrange(1, len(events)), event(kind, data))
    elif case == 1:  # a payload that is not a JSON object, with valid CRCs
        payload = rng.choice([b"[1]", b"null", b"\xff{", b"{", b'"x"'])
        headers = {":message-type": "event", ":event-type": "contentBlockDelta"}
        events.insert(rng.randrange(1, len(events)), frame(headers, payload))
    elif case == 2:  # a message type nobody sends
        events.insert(1, frame({":message-type": rng.choice(["", "eventx", "x"])}, b"{}"))
    body = b"".join(events)
    if case == 3:  # one byte flipped anywhere
        i = rng.randrange(len(body))
        body = body[:i] + bytes([body[i] ^ (1 << rng.randrange(8))]) + body[i + 1 :]
    elif case == 4:  # cut at a random byte
        body = body[: rng.randrange(len(body))]
    elif case == 5:  # random bytes
        body = rng.randbytes(rng.randrange(1, 80))
    return body


def test_fuzzed_bodies_give_an_answer_or_a_provider_error_only() -> None:
    rng = random.Random(22)
    outcomes: dict[str, int] = {}
    for _ in range(400):
        body = fuzzed_body(rng)
        try:
            answer = read(body, chunk=rng.randrange(1, 40))
        except ProviderError as err:
            name = type(err).__name__
        else:
            assert answer.stop_reason is not None  # an answer always finished
            name = "Answer"
        outcomes[name] = outcomes.get(name, 0) + 1
    # every kind of outcome was met, not only one
    assert {"Answer", "ConnectionFailed", "OtherProviderError"} <= set(outcomes)
