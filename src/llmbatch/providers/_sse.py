"""Server-sent events parsed from byte chunks as they arrive, not line by line.

A 300-token answer is ~600 lines; reading them one ``readline`` at a time costs
more than everything else a request does (aiohttp's line reader runs several
Python calls a line). Whole chunks are split on the blank line that ends an
event instead: a few splits per chunk, then a small loop per event.
"""

from __future__ import annotations


class SSEEvent:
    """One event: its ``event:`` name (None when unnamed) and its ``data:`` lines joined."""

    __slots__ = ("data", "event")

    def __init__(self, event: str | None, data: bytes) -> None:
        self.event = event
        self.data = data


def parse_block(block: bytes) -> SSEEvent | None:
    """The event in the lines between two blank lines; None when it carries no data."""
    event: str | None = None
    data: list[bytes] = []
    for line in block.split(b"\n"):
        if line.startswith(b"data:"):
            data.append(line[5:].lstrip(b" "))
        elif line.startswith(b"event:"):
            event = line[6:].strip().decode()
        # comments (":") and unknown fields are ignored, as the SSE spec says
    if not data:
        return None
    return SSEEvent(event, b"\n".join(data))


class SSEParser:
    """Feed chunks, get the events they complete; a partial event waits for the next chunk."""

    __slots__ = ("_rest",)

    def __init__(self) -> None:
        self._rest = b""

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        buf = self._rest + chunk if self._rest else chunk
        if b"\r" in buf:
            # CRLF line ends become LF. A CR that ends the buffer stays with its
            # partial event and meets its LF in the next chunk.
            buf = buf.replace(b"\r\n", b"\n")
        end = buf.rfind(b"\n\n")
        if end < 0:
            self._rest = buf
            return []
        self._rest = buf[end + 2 :]
        events = []
        for block in buf[:end].split(b"\n\n"):
            event = parse_block(block)
            if event is not None:
                events.append(event)
        return events

    def close(self) -> list[SSEEvent]:
        """The last event when the stream ended without its blank line."""
        rest, self._rest = self._rest, b""
        event = parse_block(rest)
        return [] if event is None else [event]
