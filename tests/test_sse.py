"""The SSE parser gives the same events however the stream is cut into chunks."""

from __future__ import annotations

import pytest

from llmbatch.providers._sse import SSEParser

STREAM = (
    b": a comment\n"
    b"event: message_start\n"
    b'data: {"type": "message_start"}\n'
    b"\n"
    b"data: first line\n"
    b"data:second line\n"
    b"id: 7\n"
    b"\n"
    b"\n"
    b"event: ping\n"
    b"\n"
    b"data: [DONE]\n"
    b"\n"
)
EXPECTED = [
    ("message_start", b'{"type": "message_start"}'),
    (None, b"first line\nsecond line"),
    (None, b"[DONE]"),
]


def parse(chunks: list[bytes]) -> list[tuple[str | None, bytes]]:
    parser = SSEParser()
    events = [e for chunk in chunks for e in parser.feed(chunk)] + parser.close()
    return [(e.event, e.data) for e in events]


def test_one_chunk() -> None:
    assert parse([STREAM]) == EXPECTED


@pytest.mark.parametrize("crlf", [False, True])
def test_every_split_point_gives_the_same_events(crlf: bool) -> None:
    stream = STREAM.replace(b"\n", b"\r\n") if crlf else STREAM
    for cut in range(1, len(stream)):
        assert parse([stream[:cut], stream[cut:]]) == EXPECTED, cut


def test_byte_by_byte() -> None:
    stream = STREAM.replace(b"\n", b"\r\n")
    assert parse([stream[i : i + 1] for i in range(len(stream))]) == EXPECTED


def test_a_last_event_without_its_blank_line_still_counts() -> None:
    assert parse([b"data: a\n\ndata: b\n"]) == [(None, b"a"), (None, b"b")]
    assert parse([b"data: a\n\nevent: x\ndata: b"]) == [(None, b"a"), ("x", b"b")]


def test_an_event_name_without_data_is_dropped() -> None:
    assert parse([b"event: ping\n\nevent: x\ndata: 1\n\n"]) == [("x", b"1")]
