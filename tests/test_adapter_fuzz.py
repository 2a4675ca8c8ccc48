"""Fuzzing the adapters: random event sequences in, only project errors (or an Answer) out.

Each case is a raw SSE body the fake sends verbatim: valid events of the wire
format, mutated ones (a key removed, a value of the wrong type), JSON that is
not an object, invalid JSON and UTF-8, empty and comment lines, huge lines, and
streams cut at a random byte. The adapter must answer with an Answer or raise a
ProviderError subclass — never anything else.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from llmbatch import RunConfig
from llmbatch._config.settings import ProviderSettings
from llmbatch._core.exceptions import (
    ConnectionFailed,
    OtherProviderError,
    ProviderError,
    ProviderTimeout,
    RateLimited,
)
from llmbatch._core.jobs import Request
from llmbatch._core.usage import Usage
from llmbatch.providers._base import Answer
from llmbatch.providers._errors import translate_errors
from llmbatch.providers._http import HttpProvider, SSEDecoder, SSEEvent
from llmbatch.providers.anthropic import AnthropicProvider
from llmbatch.providers.openai import OpenAIProvider
from tests.conftest import fake_env
from tests.fakeapi import FakeAPI

CASES = 250
JUNK: list[Any] = [None, 0, -5, 1.5, True, "", "x", [], [1], {}, {"a": 1}, "é" * 50]


def openai_events(rng: random.Random) -> list[Any]:
    chunk = {"id": "c", "object": "chat.completion.chunk", "model": "m"}
    events: list[Any] = [{**chunk, "choices": [{"index": 0, "delta": {"role": "assistant"}}]}]
    for _ in range(rng.randrange(4)):
        events.append({**chunk, "choices": [{"index": 0, "delta": {"content": "word "}}]})
    events.append({**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    usage = {"prompt_tokens": 5, "completion_tokens": 3, "prompt_tokens_details": {}}
    events.append({**chunk, "choices": [], "usage": usage})
    if rng.random() < 0.1:
        events.insert(rng.randrange(len(events)), {"error": {"message": "boom", "type": "x"}})
    events.append("[DONE]")
    return events


def anthropic_events(rng: random.Random) -> list[Any]:
    usage = {"input_tokens": 5, "output_tokens": 1, "cache_read_input_tokens": 0}
    events: list[Any] = [
        ("message_start", {"type": "message_start", "message": {"usage": usage}}),
        ("content_block_start", {"type": "content_block_start", "index": 0}),
        ("ping", {"type": "ping"}),
    ]
    for _ in range(rng.randrange(4)):
        delta = {"type": "text_delta", "text": "word "}
        events.append(("content_block_delta", {"type": "content_block_delta", "delta": delta}))
    events.append(
        (
            "message_delta",
            {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": usage},
        )
    )
    if rng.random() < 0.1:
        err = {"type": "error", "error": {"type": "overloaded_error", "message": "x"}}
        events.insert(rng.randrange(len(events)), ("error", err))
    events.append(("message_stop", {"type": "message_stop"}))
    return events


def mutate(value: Any, rng: random.Random) -> Any:
    """One random change somewhere inside ``value``: a key dropped or a value replaced."""
    if isinstance(value, dict) and value:
        key = rng.choice(list(value))
        out = dict(value)
        roll = rng.random()
        if roll < 0.3:
            del out[key]
        elif roll < 0.6:
            out[key] = rng.choice(JUNK)
        else:
            out[key] = mutate(value[key], rng)
        return out
    if isinstance(value, list) and value:
        out_list = list(value)
        i = rng.randrange(len(out_list))
        out_list[i] = mutate(out_list[i], rng) if rng.random() < 0.7 else rng.choice(JUNK)
        return out_list
    return rng.choice(JUNK)


def frame(name: str | None, data: bytes, rng: random.Random) -> bytes:
    nl = b"\r\n" if rng.random() < 0.1 else b"\n"
    head = b"event: " + name.encode() + nl if name else b""
    return head + b"data: " + data + nl + nl


def noise(rng: random.Random) -> bytes:
    """A frame no well-behaved server sends."""
    return rng.choice(
        [
            frame(None, rng.choice([b"[1]", b"null", b"3", b'"s"', b"true", b"[]"]), rng),
            frame(None, rng.choice([b"{", b'{"a":', b"\xff\xfe", b"not json"]), rng),
            b"\n\n\n",
            b": keep-alive comment\n\n",
            b"event: \xff\xfe\ndata: {}\n\n",
            b"retry: 100\nid: 7\n\n",
            frame(None, orjson.dumps({"huge": "y" * rng.choice([70_000, 300_000])}), rng),
            frame("content_block_delta", b'{"type":"content_block_delta","delta":[1]}', rng),
            frame(None, b"[DONE]", rng),
        ]
    )


def case_body(kind: str, rng: random.Random) -> bytes:
    events = openai_events(rng) if kind == "openai" else anthropic_events(rng)
    parts: list[bytes] = []
    for item in events:
        name, data = (None, item) if kind == "openai" else item
        if rng.random() < 0.15 and data != "[DONE]":
            data = mutate(data, rng)
        raw = b"[DONE]" if data == "[DONE]" else orjson.dumps(data)
        parts.append(frame(name, raw, rng))
        if rng.random() < 0.08:
            parts.append(noise(rng))
    body = b"".join(parts)
    if rng.random() < 0.15:
        body = body[: rng.randrange(len(body) + 1)]  # a stream cut anywhere
    return body


def check_answer(answer: Answer) -> None:
    assert isinstance(answer.text, str)
    assert isinstance(answer.stop_reason, str) and answer.stop_reason
    for n in (answer.usage.input_tokens, answer.usage.output_tokens):
        assert isinstance(n, int) and n >= 0


def make_provider(kind: str, tmp_path: Path) -> HttpProvider:
    cfg = RunConfig(jobs=tmp_path / "jobs.jsonl", concurrency=1, idle_timeout=5)
    settings = ProviderSettings(kind, kind)
    return (
        AnthropicProvider(settings, cfg) if kind == "anthropic" else OpenAIProvider(settings, cfg)
    )


@pytest.fixture
def fake_for_send(fake: FakeAPI, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeAPI]:
    for name, value in fake_env(fake).items():
        monkeypatch.setenv(name, value)
    yield fake


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
async def test_random_event_streams_give_only_project_errors(
    kind: str, fake_for_send: FakeAPI, tmp_path: Path
) -> None:
    rng = random.Random(20261128 + len(kind))
    provider = make_provider(kind, tmp_path)
    request = Request(messages=[{"role": "user", "content": "hi"}], max_tokens=50)
    outcomes: Counter[str] = Counter()
    try:
        for _ in range(CASES):
            fake_for_send.raw_streams.append(case_body(kind, rng))
            try:
                answer = await provider.send("m", request, 30)
            except ProviderError as exc:
                outcomes[exc.error_type] += 1
                assert len(exc.message) < 1000  # a huge line never becomes a huge message
            else:
                check_answer(answer)
                outcomes["answer"] += 1
    finally:
        await provider.aclose()
    assert fake_for_send.count("raw") == CASES
    # The generator reaches every kind of ending: answers, shape errors, cut streams.
    assert outcomes["answer"] >= CASES // 10
    assert outcomes["other"] >= CASES // 20
    assert outcomes["connection"] >= 5


class Unprintable(ValueError):
    def __str__(self) -> str:
        raise AttributeError("half-built")


FOREIGN: list[tuple[Exception, type[ProviderError], str]] = [
    (aiohttp.ServerDisconnectedError(), ConnectionFailed, "connection failed"),
    (aiohttp.ClientPayloadError("cut"), ConnectionFailed, "cut off"),
    (aiohttp.SocketTimeoutError("read"), ProviderTimeout, "went silent for more than 9 s"),
    (aiohttp.ConnectionTimeoutError("connect"), ProviderTimeout, "could not connect"),
    (aiohttp.ClientError("odd"), OtherProviderError, "HTTP error"),
    (Unprintable(), OtherProviderError, "unexpected event shape from the provider: Unprintable"),
    (TimeoutError(), ProviderTimeout, "no complete answer within --timeout 3 s"),
    (ConnectionResetError("reset by peer"), ConnectionFailed, "ConnectionResetError"),
    (orjson.JSONDecodeError("bad", "{", 0), OtherProviderError, "not valid JSON"),
    (UnicodeDecodeError("utf-8", b"\xff", 0, 1, "x"), OtherProviderError, "not valid UTF-8"),
    (
        AttributeError("'list' object has no attribute 'get'"),
        OtherProviderError,
        "unexpected event shape",
    ),
    (KeyError("choices"), OtherProviderError, "unexpected event shape"),
    (TypeError("bad"), OtherProviderError, "unexpected event shape"),
    (IndexError("out of range"), OtherProviderError, "unexpected event shape"),
    (ValueError("bad"), OtherProviderError, "unexpected event shape"),
    (
        ExceptionGroup("all", [ConnectionRefusedError("no"), OSError("down")]),
        ConnectionFailed,
        "no",
    ),
]


@pytest.mark.parametrize(("exc", "cls", "words"), FOREIGN, ids=lambda v: type(v).__name__)
def test_each_foreign_exception_becomes_a_project_error(
    exc: Exception, cls: type[ProviderError], words: str
) -> None:
    with pytest.raises(ProviderError) as info:
        with translate_errors(
            key="sk-secret-0123456789",
            idle_timeout=9,
            timeout_message="no complete answer within --timeout 3 s",
        ) as attempt:
            attempt.spent = lambda: Usage(3, 4)
            raise exc
    assert type(info.value) is cls
    assert info.value.retryable  # one bad attempt, not a verdict on the request
    assert words in info.value.message
    assert info.value.__cause__ is exc or isinstance(exc, ExceptionGroup)
    assert info.value.usage == Usage(3, 4)  # tokens billed before the failure are kept


def test_the_seam_redacts_clips_and_lets_our_own_errors_and_bugs_through() -> None:
    key = "sk-ant-secret-0123456789abcdef"
    with pytest.raises(ProviderError) as info, translate_errors(key=key):
        raise ValueError(f"echoed {key} " + "z" * 5000)
    assert key not in info.value.message and len(info.value.message) < 500
    own = RateLimited("slow down", status=429)
    with pytest.raises(RateLimited) as same, translate_errors():
        raise own
    assert same.value is own
    with pytest.raises(RuntimeError), translate_errors():
        raise RuntimeError("a bug in our own code stays loud")


def test_the_sse_decoder_gives_the_same_events_however_the_body_is_cut() -> None:
    rng = random.Random(5)
    for _ in range(200):
        events = [
            (rng.choice([None, "message_delta", "ping"]), orjson.dumps({"n": i, "t": "é\n" * i}))
            for i in range(rng.randrange(1, 8))
        ]
        body = b"".join(frame(name, data.replace(b"\n", b"\\n"), rng) for name, data in events)
        whole = SSEDecoder().feed(body)
        decoder = SSEDecoder()
        pieces: list[SSEEvent] = []
        cuts = sorted(rng.randrange(len(body) + 1) for _ in range(rng.randrange(6)))
        for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True):
            pieces.extend(decoder.feed(body[a:b]))
        pieces.extend(decoder.close())
        assert [(e.event, e.data) for e in pieces] == [(e.event, e.data) for e in whole]
        assert len(whole) == len(events)
