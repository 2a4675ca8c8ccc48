"""The AWS event-stream framing (``application/vnd.amazon.eventstream``), decoded.

One message is a 12-byte prelude (total length, headers length, CRC32 of those
eight bytes), the headers, the payload, and a CRC32 of everything before it.
Bytes arrive in chunks of any size; a frame may span several. A CRC that does
not match, a length that cannot be, or a body that ends inside a frame is a
torn stream: :class:`~llmbatch._core.exceptions.ConnectionFailed`, retryable.

:func:`new_decoder` uses botocore's own parser when ``llmbatch[aws]`` is
installed, and the small decoder here otherwise; both give the same frames.
"""

from __future__ import annotations

import struct
import uuid
from binascii import crc32
from typing import Any, Protocol

from llmbatch._core.exceptions import ConnectionFailed

__all__ = ["Frame", "FrameDecoder", "StreamDecoder", "new_decoder"]

PRELUDE = 12
MAX_HEADERS = 128 * 1024  # botocore's limits
MAX_PAYLOAD = 24 * 1024 * 1024

_U32 = struct.Struct(">I")
_PRELUDE = struct.Struct(">III")


class Frame:
    """One event-stream message: its headers (``:event-type``…) and raw payload."""

    __slots__ = ("headers", "payload")

    def __init__(self, headers: dict[str, Any], payload: bytes) -> None:
        self.headers = headers
        self.payload = payload


class StreamDecoder(Protocol):
    def feed(self, chunk: bytes) -> list[Frame]: ...

    def close(self) -> None: ...


def torn(detail: str) -> ConnectionFailed:
    return ConnectionFailed(f"the event stream was torn or corrupt: {detail}")


class FrameDecoder:
    """Turns the bytes of an event-stream body, in chunks of any size, into frames."""

    __slots__ = ("_buf", "_pos")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0  # where the next frame starts in _buf

    def feed(self, chunk: bytes) -> list[Frame]:
        self._buf += chunk
        out: list[Frame] = []
        buf = self._buf
        while len(buf) - self._pos >= PRELUDE:
            start = self._pos
            total, headers_len, prelude_crc = _PRELUDE.unpack_from(buf, start)
            if crc32(buf[start : start + 8]) != prelude_crc:
                raise torn("prelude checksum mismatch")
            if headers_len > MAX_HEADERS or total < PRELUDE + headers_len + 4:
                raise torn(f"impossible lengths (total {total}, headers {headers_len})")
            if total - PRELUDE - headers_len - 4 > MAX_PAYLOAD:
                raise torn(f"a payload of {total} bytes")
            if len(buf) - start < total:
                break
            end = start + total
            (message_crc,) = _U32.unpack_from(buf, end - 4)
            if crc32(buf[start : end - 4]) != message_crc:
                raise torn("message checksum mismatch")
            head_end = start + PRELUDE + headers_len
            headers = parse_headers(bytes(buf[start + PRELUDE : head_end]))
            out.append(Frame(headers, bytes(buf[head_end : end - 4])))
            self._pos = end
        if self._pos:
            del buf[: self._pos]
            self._pos = 0
        return out

    def close(self) -> None:
        """The body ended: anything still held is a frame cut short."""
        if self._buf:
            raise torn(f"the body ended {len(self._buf)} bytes into a frame")


def parse_headers(data: bytes) -> dict[str, Any]:
    """Header name (u8 length) → typed value, as the framing defines types 0-9."""
    out: dict[str, Any] = {}
    i = 0
    try:
        while i < len(data):
            n = data[i]
            name = data[i + 1 : i + 1 + n].decode("utf-8")
            i += 1 + n
            kind = data[i]
            i += 1
            value: Any
            if kind in (0, 1):
                value = kind == 0
            elif kind in _FIXED:
                size, fmt = _FIXED[kind]
                if i + size > len(data):
                    raise IndexError
                (value,) = struct.unpack_from(fmt, data, i)
                i += size
            elif kind in (6, 7):
                (size,) = struct.unpack_from(">H", data, i)
                raw = data[i + 2 : i + 2 + size]
                if len(raw) != size:
                    raise IndexError
                value = raw.decode("utf-8") if kind == 7 else bytes(raw)
                i += 2 + size
            elif kind == 9:
                raw = data[i : i + 16]
                if len(raw) != 16:
                    raise IndexError
                value = uuid.UUID(bytes=bytes(raw))
                i += 16
            else:
                raise torn(f"unknown header type {kind}")
            if name in out:
                raise torn(f"duplicate header {name!r}")
            out[name] = value
    except (IndexError, struct.error, UnicodeDecodeError):
        raise torn("malformed headers") from None
    return out


# type → (size, struct format): byte, short, integer, long, timestamp (ms since the epoch)
_FIXED = {2: (1, ">b"), 3: (2, ">h"), 4: (4, ">i"), 5: (8, ">q"), 8: (8, ">q")}


class BotocoreDecoder:
    """The same interface over botocore's ``EventStreamBuffer`` (``llmbatch[aws]``)."""

    __slots__ = ("_buffer", "_errors", "_held")

    def __init__(self) -> None:
        from botocore.eventstream import EventStreamBuffer, ParserError

        self._buffer = EventStreamBuffer()
        self._errors = ParserError
        self._held = 0  # bytes fed and not yet part of a returned frame

    def feed(self, chunk: bytes) -> list[Frame]:
        self._buffer.add_data(chunk)
        self._held += len(chunk)
        out: list[Frame] = []
        try:
            for message in self._buffer:
                self._held -= message.prelude.total_length
                out.append(Frame(dict(message.headers), bytes(message.payload)))
        except (self._errors, KeyError, IndexError, ValueError, struct.error) as exc:
            # botocore raises its ParserError for checksums and lengths, and whatever its
            # header unpacking meets on a malformed header block
            raise torn(str(exc) or type(exc).__name__) from exc
        return out

    def close(self) -> None:
        if self._held:
            raise torn(f"the body ended {self._held} bytes into a frame")


def new_decoder() -> StreamDecoder:
    """botocore's parser when it is installed, ours otherwise."""
    try:
        return BotocoreDecoder()
    except ImportError:
        return FrameDecoder()
