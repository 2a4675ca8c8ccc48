"""A loopback HTTPS fake of both streaming APIs for benchmarks, cheap enough not to be a bottleneck.

usage: tls_fake.py CERT_DIR [--tokens 300] [--writes 10] [--gap-ms 2]

Makes a self-signed certificate for 127.0.0.1 in CERT_DIR (``cert.pem``, for
clients' ``SSL_CERT_FILE``), listens on a free port and prints ``READY <port>``.
It answers ``POST /v1/messages`` (Anthropic SSE) and ``POST /v1/chat/completions``
(OpenAI SSE with ``include_usage``) with a ``--tokens``-token answer, one token per
event, in chunked HTTP/1.1 with keep-alive and rate-limit headers, like the real
services. Bodies are rendered once at start: a request costs a header parse and a
few ``write`` calls. The answer goes out in ``--writes`` bursts ``--gap-ms`` apart,
so a client reads it in pieces as it would a real stream.

Control on stdin, one command a line, one JSON line back on stdout:
``stats`` → connections opened (by clients that sent an API request), requests
answered, and this process's own CPU seconds. End of stdin stops the fake.
"""

from __future__ import annotations

import asyncio
import resource
import ssl
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import orjson

WORDS = [f" word{i % 97}" for i in range(10_000)]


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed P-256 certificate for IP 127.0.0.1, made with the openssl CLI."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def sse(event: str | None, obj: object) -> bytes:
    head = f"event: {event}\n".encode() if event else b""
    return head + b"data: " + orjson.dumps(obj) + b"\n\n"


def anthropic_events(tokens: int) -> list[bytes]:
    msg = {
        "id": "msg_01BenchFake",
        "type": "message",
        "role": "assistant",
        "model": "claude-haiku-4-5",
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": 24, "output_tokens": 1},
    }
    out = [
        sse("message_start", {"type": "message_start", "message": msg}),
        sse(
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        ),
        sse("ping", {"type": "ping"}),
    ]
    for word in WORDS[:tokens]:
        delta = {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "text_delta", "text": word},
        }
        out.append(sse("content_block_delta", delta))
    out.append(sse("content_block_stop", {"type": "content_block_stop", "index": 0}))
    out.append(
        sse(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": tokens},
            },
        )
    )
    out.append(sse("message_stop", {"type": "message_stop"}))
    return out


def openai_events(tokens: int) -> list[bytes]:
    def chunk(delta: dict[str, object], finish: str | None, usage: object = None) -> bytes:
        choices = (
            []
            if usage
            else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
        )
        return sse(
            None,
            {
                "id": "chatcmpl-BenchFake",
                "object": "chat.completion.chunk",
                "created": 1764300000,
                "model": "gpt-4o-mini-2024-07-18",
                "service_tier": "default",
                "system_fingerprint": "fp_bench",
                "choices": choices,
                "usage": usage,
            },
        )

    out = [chunk({"role": "assistant", "content": "", "refusal": None}, None)]
    out.extend(chunk({"content": word}, None) for word in WORDS[:tokens])
    out.append(chunk({}, "stop"))
    usage = {"prompt_tokens": 24, "completion_tokens": tokens, "total_tokens": 24 + tokens}
    out.append(chunk({}, None, usage))
    out.append(b"data: [DONE]\n\n")
    return out


def bursts(events: list[bytes], writes: int) -> list[bytes]:
    """The events as ``writes`` HTTP chunks (chunked transfer encoding), then the closing chunk.

    The closing chunk goes out on its own, after a gap, as a real server's does
    when its handler returns: a client that stops reading at the last event
    leaves the response unfinished and loses the connection.
    """
    per = max(1, -(-len(events) // writes))
    out = []
    for i in range(0, len(events), per):
        payload = b"".join(events[i : i + per])
        out.append(b"%x\r\n%s\r\n" % (len(payload), payload))
    out.append(b"0\r\n\r\n")
    return out


def rate_headers(kind: str) -> bytes:
    """Rate-limit headers of a big key with plenty left, in the real services' shapes.

    The stated limit (100,000 RPM) is above what one process reaches here, so the
    clients' pacing never binds: the benchmark measures CPU, not the limiter.
    """
    if kind == "openai":
        lines = [
            "x-ratelimit-limit-requests: 100000",
            "x-ratelimit-remaining-requests: 99999",
            "x-ratelimit-reset-requests: 2ms",
            "x-ratelimit-limit-tokens: 150000000",
            "x-ratelimit-remaining-tokens: 149999000",
            "x-ratelimit-reset-tokens: 0s",
            "x-request-id: req_benchfake",
        ]
    else:
        reset = datetime.fromtimestamp(int(time.time()) + 1, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        lines = [
            "anthropic-ratelimit-requests-limit: 100000",
            "anthropic-ratelimit-requests-remaining: 99999",
            f"anthropic-ratelimit-requests-reset: {reset}",
            "anthropic-ratelimit-tokens-limit: 150000000",
            "anthropic-ratelimit-tokens-remaining: 149999000",
            f"anthropic-ratelimit-tokens-reset: {reset}",
            "request-id: req_benchfake",
        ]
    return "".join(line + "\r\n" for line in lines).encode()


class Counters:
    connections = 0
    requests = 0


class Answers:
    """The pre-rendered responses; headers re-rendered once a second (Anthropic's reset time)."""

    def __init__(self, tokens: int, writes: int) -> None:
        self.bodies = {
            b"/v1/messages": ("anthropic", bursts(anthropic_events(tokens), writes)),
            b"/v1/chat/completions": ("openai", bursts(openai_events(tokens), writes)),
        }
        self._heads: dict[str, tuple[int, bytes]] = {}

    def head(self, kind: str) -> bytes:
        second = int(time.time())
        cached = self._heads.get(kind)
        if cached is None or cached[0] != second:
            head = (
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
                b"transfer-encoding: chunked\r\ncache-control: no-cache\r\n"
                + rate_headers(kind)
                + b"\r\n"
            )
            cached = (second, head)
            self._heads[kind] = cached
        return cached[1]


NOT_FOUND = (
    b"HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"
)


class Conn(asyncio.Protocol):
    """One client connection: read a request (headers + Content-Length body), stream the answer."""

    def __init__(self, answers: Answers, gap_s: float) -> None:
        self.answers = answers
        self.gap_s = gap_s
        self.buf = b""
        self.counted = False
        self.transport: asyncio.Transport | None = None
        self.busy = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.busy:
            self._next()

    def _next(self) -> None:
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = self.buf[:end]
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if len(self.buf) < end + 4 + length:
            return
        path = head.split(b" ", 2)[1]
        self.buf = self.buf[end + 4 + length :]
        answer = self.answers.bodies.get(path)
        assert self.transport is not None
        if answer is None:
            self.transport.write(NOT_FOUND)
            return self._next()
        if not self.counted:
            self.counted = True
            Counters.connections += 1
        Counters.requests += 1
        self.busy = True
        asyncio.get_running_loop().create_task(self._answer(*answer))

    async def _answer(self, kind: str, pieces: list[bytes]) -> None:
        transport = self.transport
        if transport is None:
            return
        transport.write(self.answers.head(kind))
        for i, piece in enumerate(pieces):
            if self.transport is None:
                return  # the client hung up mid-answer
            if i and self.gap_s:
                await asyncio.sleep(self.gap_s)
            transport.write(piece)
        self.busy = False
        if self.buf and self.transport is not None:
            self._next()


def stats() -> bytes:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return orjson.dumps(
        {
            "connections": Counters.connections,
            "requests": Counters.requests,
            "cpu_s": usage.ru_utime + usage.ru_stime,
        }
    )


async def serve(cert_dir: Path, tokens: int, writes: int, gap_s: float) -> None:
    cert, key = make_certificate(cert_dir)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(["http/1.1"])
    answers = Answers(tokens, writes)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: Conn(answers, gap_s), "127.0.0.1", 0, ssl=ctx, backlog=1024
    )
    port = server.sockets[0].getsockname()[1]
    sys.stdout.write(f"READY {port}\n")
    sys.stdout.flush()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        if line.strip() == b"stats":
            sys.stdout.write(stats().decode() + "\n")
            sys.stdout.flush()
    server.close()


def main() -> None:
    args = sys.argv[1:]
    opts = {"--tokens": "300", "--writes": "10", "--gap-ms": "2"}
    cert_dir = None
    while args:
        arg = args.pop(0)
        if arg in opts:
            opts[arg] = args.pop(0)
        else:
            cert_dir = Path(arg)
    if cert_dir is None:
        sys.exit(__doc__)
    asyncio.run(
        serve(
            cert_dir, int(opts["--tokens"]), int(opts["--writes"]), float(opts["--gap-ms"]) / 1000
        )
    )


if __name__ == "__main__":
    main()
