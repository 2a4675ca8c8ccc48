"""What the HTTP providers share: one aiohttp session, SSE reading, and the error seam.

``HttpProvider.send`` runs the adapter's ``_send`` inside
:func:`~llmbatch.providers._errors.translate_errors`, so only ProviderError
subclasses leave it. Every response is read to its end (an error body, the bytes
after ``[DONE]``) so aiohttp's pool keeps the connection alive for the next request.
"""

from __future__ import annotations

import contextvars
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import orjson

from llmbatch._core.exceptions import (
    ProviderError,
    RateLimited,
    UsageError,
    error_for_status,
)
from llmbatch._core.headers import RateLimitHint, hint_from_headers, parse_retry_after
from llmbatch._core.jobs import Request
from llmbatch.providers._base import Answer
from llmbatch.providers._errors import Attempt, redact, translate_errors, unexpected_shape

if TYPE_CHECKING:
    import aiohttp

    from llmbatch._config.settings import ProviderSettings, RunConfig

__all__ = ["HttpProvider", "SSEDecoder", "SSEEvent", "redact"]

MAX_LINE = 32 * 1024 * 1024  # one SSE line longer than this is not an answer we can hold
DRAIN_GRACE_S = 2.0  # after the last event, how long the end of the body may take to come

# The current attempt's --timeout: a context variable, so each worker task has its own.
_TIME_LIMIT: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "llmbatch_time_limit", default=None
)


class SSEEvent:
    __slots__ = ("data", "event")

    def __init__(self, event: str | None, data: bytes) -> None:
        self.event = event
        self.data = data


class SSEDecoder:
    """Turns the bytes of a ``text/event-stream`` body, in chunks of any size, into events."""

    __slots__ = ("_data", "_event", "_pending", "_pending_size")

    def __init__(self) -> None:
        self._event: str | None = None
        self._data: list[bytes] = []
        self._pending: list[bytes] = []  # a line not yet ended, kept in pieces (no quadratic +=)
        self._pending_size = 0

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        if b"\n" not in chunk:
            self._pending.append(chunk)
            self._pending_size += len(chunk)
            if self._pending_size > MAX_LINE:
                raise unexpected_shape(f"a line longer than {MAX_LINE} bytes")
            return []
        if self._pending:
            chunk = b"".join(self._pending) + chunk
            self._pending.clear()
            self._pending_size = 0
        lines = chunk.split(b"\n")
        tail = lines.pop()
        if tail:
            self._pending.append(tail)
            self._pending_size = len(tail)
        out: list[SSEEvent] = []
        for line in lines:
            self._line(line, out)
        return out

    def close(self) -> list[SSEEvent]:
        """The events still held when the body ends (a last line without its newline)."""
        out: list[SSEEvent] = []
        if self._pending:
            self._line(b"".join(self._pending), out)
            self._pending.clear()
        if self._data:
            out.append(SSEEvent(self._event, b"\n".join(self._data)))
            self._data = []
        return out

    def _line(self, line: bytes, out: list[SSEEvent]) -> None:
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line:
            if self._data:
                out.append(SSEEvent(self._event, b"\n".join(self._data)))
                self._data = []
            self._event = None
        elif line.startswith(b"data:"):
            self._data.append(line[6:] if line.startswith(b"data: ") else line[5:])
        elif line.startswith(b"event:"):
            self._event = line[6:].strip().decode("utf-8", "replace")
        # comments (":") and unknown fields are ignored, as the SSE spec says


class EventStream(Protocol):
    """An adapter's reader of one answer: fed events, it knows when the answer is complete."""

    done: bool  # the last event of the answer (or an error event) was seen

    def feed(self, event: SSEEvent) -> None: ...

    def whole(self, raw: bytes) -> None: ...


class HttpProvider:
    """Base of the Anthropic and OpenAI adapters."""

    name: str
    key_env: str | None

    def __init__(self, settings: ProviderSettings, config: RunConfig) -> None:
        self.name = settings.name
        self.settings = settings
        self.base_url = settings.resolved_base_url()
        env = settings.key_env()
        self.key_env = env
        self.api_key = os.environ.get(env) if env else None
        if env and not self.api_key:
            raise UsageError(f"{env} is not set (needed by provider {self.name})")
        self.proxy = proxy_for(self.base_url)
        self.pool_size = max(4, config.concurrency + 4)
        self.idle_timeout = config.idle_timeout
        self._session: aiohttp.ClientSession | None = None
        self._timeouts: dict[float | None, Any] = {}
        self.notes: set[str] = set()  # said once in the report

    # The engine sets no timer of its own: aiohttp's total timeout ends the attempt.
    honours_deadline = True

    async def send(self, model: str, request: Request, time_limit: float) -> Answer:
        """One attempt; raises ProviderError subclasses only."""
        _TIME_LIMIT.set(time_limit)
        with translate_errors(
            key=self.api_key,
            idle_timeout=self.idle_timeout,
            timeout_message=f"no complete answer within --timeout {time_limit:g} s",
        ) as attempt:
            return await self._send(model, request, attempt)

    def _timeout(self) -> Any:
        """The whole attempt's deadline (connect, send, every byte of the answer)."""
        limit = _TIME_LIMIT.get()
        timeout = self._timeouts.get(limit)
        if timeout is None:
            import aiohttp

            timeout = self._timeouts[limit] = aiohttp.ClientTimeout(
                total=limit, sock_connect=30, sock_read=self.idle_timeout
            )
        return timeout

    async def _send(self, model: str, request: Request, attempt: Attempt) -> Answer:
        raise NotImplementedError

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            import aiohttp

            connector = aiohttp.TCPConnector(
                limit=self.pool_size,
                limit_per_host=self.pool_size,
                ttl_dns_cache=300,
                enable_cleanup_closed=True,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(
                    total=None, sock_connect=30, sock_read=self.idle_timeout
                ),
                json_serialize=lambda o: orjson.dumps(o).decode(),
                auto_decompress=True,
            )
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _redact(self, text: str) -> str:
        return redact(text, self.api_key)

    async def _exchange(
        self, url: str, body: dict[str, Any], headers: Mapping[str, str], stream: EventStream
    ) -> tuple[RateLimitHint | None, str | None]:
        """POST ``body`` and feed the answer to ``stream``; (rate-limit hint, request id).

        An error status raises its ProviderError after its body was read, so the
        connection goes back to the pool.
        """
        return await self._post(url, orjson.dumps(body), headers, stream, _read_events)

    async def _post(
        self,
        url: Any,
        data: bytes,
        headers: Mapping[str, str],
        stream: Any,
        read: Callable[[aiohttp.ClientResponse, Any], Awaitable[None]],
        request_id_headers: tuple[str, ...] = ("request-id", "x-request-id"),
    ) -> tuple[RateLimitHint | None, str | None]:
        """The one POST of an attempt, under the attempt's deadline: an error status raises
        its ProviderError (``_http_error``), a whole JSON answer goes to ``stream.whole``,
        a streamed one to ``read``."""
        session = self._get_session()
        async with session.post(
            url, data=data, headers=headers, proxy=self.proxy, timeout=self._timeout()
        ) as resp:
            request_id = next((v for h in request_id_headers if (v := resp.headers.get(h))), None)
            hint = hint_from_headers(resp.headers)  # type: ignore[arg-type]
            if resp.status != 200:
                raw = await resp.read()
                raise self._http_error(resp.status, raw, resp.headers, hint, request_id)
            if resp.content_type == "application/json":
                # A server that ignored stream=true answered in one piece.
                stream.whole(await resp.read())
            else:
                await read(resp, stream)
        return hint, request_id

    def _http_error(
        self,
        status: int,
        raw: bytes,
        headers: Mapping[str, str],
        hint: RateLimitHint | None,
        request_id: str | None,
    ) -> ProviderError:
        message, body_type, code = parse_error_body(raw)
        if not message:
            message = f"HTTP {status}"
        err = error_for_status(status, self._redact(message), body_type=body_type)
        err.retry_after = parse_retry_after(headers)  # type: ignore[arg-type]
        err.request_id = request_id
        err.limits = hint
        if isinstance(err, RateLimited) and "insufficient_quota" in (code, body_type):
            err.retryable = False  # out of credit: waiting will not help
        return err


def proxy_for(url: str) -> str | None:
    """The proxy for ``url`` from HTTPS_PROXY / HTTP_PROXY / NO_PROXY, as the SDKs honour them.

    Resolved once per provider: aiohttp's ``trust_env`` would redo it (and read
    ~/.netrc) on every request.
    """
    import urllib.request
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if not parts.hostname or urllib.request.proxy_bypass(parts.hostname):
        return None
    return urllib.request.getproxies().get(parts.scheme)


def parse_error_body(raw: bytes) -> tuple[str, str | None, str | None]:
    """(message, error type, error code) from an Anthropic or OpenAI error body."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        text = raw.decode("utf-8", "replace").strip()
        return text[:500], None, None
    if isinstance(obj, dict):
        err = obj.get("error", obj)
        if isinstance(err, dict):
            return (
                str(err.get("message") or ""),
                err.get("type") if isinstance(err.get("type"), str) else None,
                err.get("code") if isinstance(err.get("code"), str) else None,
            )
        if isinstance(err, str):
            return err, None, None
    return "", None, None


async def _read_events(resp: aiohttp.ClientResponse, stream: EventStream) -> None:
    """Feed the SSE events of ``resp`` to ``stream``; after its last event, read the body's end."""
    decoder = SSEDecoder()
    async for chunk in resp.content.iter_any():
        for event in decoder.feed(chunk):
            stream.feed(event)
            if stream.done:
                await _drain(resp)
                return
    for event in decoder.close():
        stream.feed(event)
        if stream.done:
            return


async def _drain(resp: aiohttp.ClientResponse) -> None:
    """Read what follows the last event (usually only the end of the chunked body).

    A connection is reused only when its response was read to the end; a server
    that keeps the stream open after its last event gets a short grace, then the
    connection is closed when the response is released.
    """
    with anyio.move_on_after(DRAIN_GRACE_S):
        while await resp.content.readany():
            pass


def now_ms(since: float) -> float:
    return (time.perf_counter() - since) * 1000
