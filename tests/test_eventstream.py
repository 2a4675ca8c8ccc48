"""The AWS event-stream decoder: frames in chunks of any size, checksums, torn bodies.

Each test runs against our decoder and botocore's (what ``new_decoder`` picks with
``llmbatch[aws]``): both must give the same frames and refuse the same damage.
"""

from __future__ import annotations

import struct
import uuid
from binascii import crc32

import pytest

from llmbatch._core.exceptions import ConnectionFailed
from llmbatch.providers.eventstream import (
    BotocoreDecoder,
    Frame,
    FrameDecoder,
    StreamDecoder,
    new_decoder,
)
from tests.fakebedrock import event, exception, frame

DECODERS: dict[str, type[FrameDecoder] | type[BotocoreDecoder]] = {
    "ours": FrameDecoder,
    "botocore": BotocoreDecoder,
}


@pytest.fixture(params=list(DECODERS))
def decoder(request: pytest.FixtureRequest) -> StreamDecoder:
    return DECODERS[request.param]()


def stream_bytes() -> bytes:
    return b"".join(
        [
            event("messageStart", {"role": "assistant"}),
            event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "héllo "}}),
            event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "world"}}),
            event("messageStop", {"stopReason": "end_turn"}),
            exception("throttlingException", "slow down"),
        ]
    )


def kinds(frames: list[Frame]) -> list[tuple[str, bytes]]:
    return [
        (f.headers.get(":event-type") or f.headers[":exception-type"], f.payload) for f in frames
    ]


def test_whole_frames_in_one_chunk(decoder: StreamDecoder) -> None:
    frames = decoder.feed(stream_bytes())
    decoder.close()
    assert [k for k, _ in kinds(frames)] == [
        "messageStart",
        "contentBlockDelta",
        "contentBlockDelta",
        "messageStop",
        "throttlingException",
    ]
    assert frames[1].headers[":message-type"] == "event"
    assert frames[1].payload == '{"contentBlockIndex":0,"delta":{"text":"héllo "}}'.encode()
    assert frames[4].headers[":message-type"] == "exception"


@pytest.mark.parametrize("size", [1, 2, 3, 5, 11, 12, 13, 64, 1000])
def test_frames_split_across_chunks_come_out_whole_and_in_order(
    decoder: StreamDecoder, size: int
) -> None:
    data = stream_bytes()
    frames = []
    for i in range(0, len(data), size):
        frames.extend(decoder.feed(data[i : i + size]))
    decoder.close()
    assert kinds(frames) == kinds(FrameDecoder().feed(data))
    assert len(frames) == 5


def test_every_split_point_of_two_frames(decoder: StreamDecoder) -> None:
    data = stream_bytes()[:200]
    whole = FrameDecoder().feed(stream_bytes())
    for cut in range(1, len(data)):
        d = type(decoder)()
        got = d.feed(data[:cut]) + d.feed(data[cut:])
        assert kinds(got) == kinds([f for f in whole][: len(got)])


def test_a_message_checksum_mismatch_is_a_retryable_connection_failure(
    decoder: StreamDecoder,
) -> None:
    good = event("messageStart", {"role": "assistant"})
    bad = event("contentBlockDelta", {"delta": {"text": "x"}})
    bad = bad[:-5] + bytes([bad[-5] ^ 0x01]) + bad[-4:]  # one payload bit flipped
    with pytest.raises(ConnectionFailed) as info:
        decoder.feed(good + bad)
    assert info.value.retryable
    assert "torn or corrupt" in info.value.message
    assert "checksum" in info.value.message.lower()


def test_a_prelude_checksum_mismatch_is_refused(decoder: StreamDecoder) -> None:
    data = bytearray(event("messageStart", {"role": "assistant"}))
    data[9] ^= 0x10  # the prelude CRC itself
    with pytest.raises(ConnectionFailed, match="(?i)checksum"):
        decoder.feed(bytes(data))


def test_a_body_that_ends_inside_a_frame_is_torn(decoder: StreamDecoder) -> None:
    data = stream_bytes()
    cut = len(event("messageStart", {"role": "assistant"})) + 7
    frames = decoder.feed(data[:cut])
    assert len(frames) == 1
    with pytest.raises(ConnectionFailed, match="7 bytes into a frame"):
        decoder.close()


def test_an_empty_body_is_not_torn(decoder: StreamDecoder) -> None:
    assert decoder.feed(b"") == []
    decoder.close()


def test_impossible_lengths_are_refused_before_waiting_for_them() -> None:
    prelude = struct.pack(">II", 10, 0)  # shorter than a prelude and a CRC
    data = prelude + struct.pack(">I", crc32(prelude))
    with pytest.raises(ConnectionFailed, match="impossible lengths"):
        FrameDecoder().feed(data)


def typed_header(name: str, kind: int, value: bytes) -> bytes:
    return bytes([len(name)]) + name.encode() + bytes([kind]) + value


def test_every_header_type_reads_as_botocore_reads_it() -> None:
    u = uuid.UUID("12345678-1234-5678-1234-567812345678")
    head = b"".join(
        [
            typed_header("t", 0, b""),
            typed_header("f", 1, b""),
            typed_header("b", 2, struct.pack(">b", -3)),
            typed_header("s", 3, struct.pack(">h", -300)),
            typed_header("i", 4, struct.pack(">i", 70000)),
            typed_header("l", 5, struct.pack(">q", 2**40)),
            typed_header("a", 6, struct.pack(">H", 3) + b"\x00\x01\x02"),
            typed_header("str", 7, struct.pack(">H", 2) + b"ok"),
            typed_header("ts", 8, struct.pack(">q", 1_700_000_000_000)),
            typed_header("u", 9, u.bytes),
        ]
    )
    total = 12 + len(head) + 2 + 4
    prelude = struct.pack(">II", total, len(head))
    prelude += struct.pack(">I", crc32(prelude))
    body = prelude + head + b"{}"
    data = body + struct.pack(">I", crc32(body))
    (ours,) = FrameDecoder().feed(data)
    (theirs,) = BotocoreDecoder().feed(data)
    assert ours.headers["t"] is True and ours.headers["f"] is False
    assert ours.headers["b"] == -3 and ours.headers["s"] == -300
    assert ours.headers["i"] == 70000 and ours.headers["l"] == 2**40
    assert ours.headers["a"] == b"\x00\x01\x02" and ours.headers["str"] == "ok"
    assert ours.headers["ts"] == 1_700_000_000_000
    assert ours.headers["u"] == u
    for name in ("t", "f", "b", "s", "i", "l", "a", "str", "ts"):
        assert ours.headers[name] == theirs.headers[name], name
    assert ours.payload == theirs.payload == b"{}"


def test_malformed_headers_are_torn_not_a_crash() -> None:
    # (botocore reads a string header that claims more bytes than there are as the bytes
    # there are; the frame's CRC holds either way, so this is a server's bug, not damage.)
    head = typed_header("x", 7, struct.pack(">H", 50) + b"short")
    total = 12 + len(head) + 4
    prelude = struct.pack(">II", total, len(head))
    prelude += struct.pack(">I", crc32(prelude))
    body = prelude + head
    data = body + struct.pack(">I", crc32(body))
    with pytest.raises(ConnectionFailed, match="malformed headers"):
        FrameDecoder().feed(data)


def test_the_decoder_in_use_is_botocores_when_the_aws_extra_is_installed() -> None:
    assert isinstance(new_decoder(), BotocoreDecoder)


def test_without_botocore_our_decoder_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "botocore.eventstream", None)
    decoder = new_decoder()
    assert isinstance(decoder, FrameDecoder)
    assert len(decoder.feed(frame({":message-type": "event"}, b"{}"))) == 1
