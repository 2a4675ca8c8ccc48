"""What the HTTP providers share: one aiohttp session, SSE reading, and the error seam.

Every foreign exception (aiohttp, asyncio, orjson) is translated here, to the
most specific ProviderError, so the engine matches only our own classes.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any

import orjson

from .._exceptions import (
    ConnectionFailed,
    OtherProviderError,
    ProviderError,
    ProviderTimeout,
    RateLimited,
    UsageError,
    error_for_status,
)
from .._headers import RateLimitHint, hint_from_headers, parse_retry_after
from ._sse import SSEEvent, SSEParser

if TYPE_CHECKING:
    import aiohttp

    from .._config import ProviderSettings, RunConfig

_KEYLIKE = re.compile(r"\b(sk-(?:ant-)?[A-Za-z0-9_\-]{6})[A-Za-z0-9_\-]{8,}")


def redact(text: str, key: str | None) -> str:
    """Remove an API key (ours, or anything shaped like one) from text we show."""
    if key:
        text = text.replace(key, "[redacted]")
    return _KEYLIKE.sub(r"\1…[redacted]", text)


WHOLE_ANSWER = "llmbatch.whole-answer"  # the event name given to a non-streamed JSON body


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
        self.notes: set[str] = set()  # said once in the report

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

    async def _stream(
        self,
        url: str,
        body: dict[str, Any],
        headers: Mapping[str, str],
    ) -> AsyncIterator[tuple[SSEEvent | None, RateLimitHint | None, str | None]]:
        """POST ``body`` and yield SSE events.

        The first item is ``(None, hint, request_id)`` from the response headers.
        Raises ProviderError subclasses only.
        """
        import aiohttp

        session = self._get_session()
        data = orjson.dumps(body)
        try:
            async with session.post(url, data=data, headers=headers, proxy=self.proxy) as resp:
                request_id = resp.headers.get("request-id") or resp.headers.get("x-request-id")
                hint = hint_from_headers(resp.headers)  # type: ignore[arg-type]
                if resp.status != 200:
                    raw = await resp.read()
                    raise self._http_error(resp.status, raw, resp.headers, hint, request_id)
                yield None, hint, request_id
                if resp.content_type == "application/json":
                    # A server that ignored stream=true answered in one piece.
                    yield SSEEvent(WHOLE_ANSWER, await resp.read()), None, None
                    return
                parser = SSEParser()
                async for chunk in resp.content.iter_any():
                    for event in parser.feed(chunk):
                        yield event, None, None
                for event in parser.close():
                    yield event, None, None
        except ProviderError:
            raise
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise ProviderTimeout(
                f"the stream went silent for more than {self.idle_timeout:g} s"
                if isinstance(exc, aiohttp.ServerTimeoutError)
                else "timed out waiting for the provider"
            ) from exc
        except aiohttp.ClientPayloadError as exc:
            raise ConnectionFailed(f"the response was cut off: {self._redact(str(exc))}") from exc
        except aiohttp.ClientConnectionError as exc:
            raise ConnectionFailed(
                f"connection failed: {type(exc).__name__}: {self._redact(str(exc))}"
            ) from exc
        except aiohttp.ClientError as exc:
            raise OtherProviderError(f"HTTP error: {self._redact(str(exc))}") from exc

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


def now_ms(since: float) -> float:
    return (time.perf_counter() - since) * 1000
