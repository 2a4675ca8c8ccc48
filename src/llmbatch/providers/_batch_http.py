"""What the two Batch API clients share: plain JSON calls over the adapters' session.

Foreign exceptions are translated here, as in ``_http``, so callers match only
ProviderError subclasses; error texts pass through the key redaction.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from llmbatch._core.batch_types import BatchInfo, ItemResult
from llmbatch._core.exceptions import (
    ConnectionFailed,
    OtherProviderError,
    ProviderError,
    ProviderTimeout,
)
from llmbatch.providers._http import HttpProvider
from llmbatch.providers._spool import CHUNK_BYTES, ResultStream, check_complete, spool_path

if TYPE_CHECKING:
    from llmbatch._config.settings import ProviderSettings, RunConfig


class BatchHttp(HttpProvider):
    """An HttpProvider that makes ordinary requests instead of streaming ones."""

    headers: dict[str, str]

    def __init__(self, settings: ProviderSettings, config: RunConfig) -> None:
        super().__init__(settings, config)
        out = config.output
        # Results files are spooled next to the batch state (None: the temp directory).
        self.spool_dir = None if out is None else out.with_name(out.name + ".batches")

    async def _call(
        self,
        method: str,
        url: str,
        *,
        data: Any = None,
        params: Mapping[str, str] | None = None,
        content_type: str | None = "application/json",
        headers: Mapping[str, str] | None = None,
        into: Path | None = None,
    ) -> bytes:
        """One request; its body returned, or with ``into`` written there in chunks
        as it arrives (b"" returned): a results file never sits in memory whole."""
        import aiohttp

        headers = dict(self.headers if headers is None else headers)
        if content_type is not None and data is not None:
            headers["content-type"] = content_type
        session = self._get_session()
        try:
            async with session.request(
                method, url, data=data, params=params, headers=headers, proxy=self.proxy
            ) as resp:
                if resp.status >= 400 or into is None:
                    raw = await resp.read()
                if resp.status >= 400:
                    rid = resp.headers.get("request-id") or resp.headers.get("x-request-id")
                    raise self._http_error(resp.status, raw, resp.headers, None, rid)
                if into is None:
                    return raw
                await _spool(resp, into)
                return b""
        except ProviderError:
            raise
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise ProviderTimeout(f"{method} {url}: timed out") from exc
        except aiohttp.ClientPayloadError as exc:
            raise ConnectionFailed(f"the download was cut off: {self._redact(str(exc))}") from exc
        except aiohttp.ClientConnectorError as exc:  # before any byte of the request went out
            err = ConnectionFailed(
                "could not connect (nothing was sent): "
                f"{type(exc).__name__}: {self._redact(str(exc))}"
            )
            err.nothing_sent = True
            raise err from exc
        except aiohttp.ClientConnectionError as exc:
            raise ConnectionFailed(
                f"connection failed: {type(exc).__name__}: {self._redact(str(exc))}"
            ) from exc
        except aiohttp.ClientError as exc:
            raise OtherProviderError(f"HTTP error: {self._redact(str(exc))}") from exc

    async def _download(
        self, url: str, batch_id: str, n: int, params: Mapping[str, str] | None = None
    ) -> Path:
        """A results file, GET to a spool file (checked whole; removed on any error)."""
        path = spool_path(self.spool_dir, batch_id, n)
        try:
            await self._call("GET", url, params=params, into=path)
            check_complete(path)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return path

    async def stream_results(self, info: BatchInfo) -> ResultStream:
        """A batch's results, one at a time from its spooled files (``close`` deletes them)."""
        raise NotImplementedError

    async def results(self, info: BatchInfo) -> list[ItemResult]:
        """Every result at once (chat fetch, recovery): the download still goes through disk."""
        with await self.stream_results(info) as stream:
            return list(stream)

    async def _json(self, method: str, url: str, **kw: Any) -> dict[str, Any]:
        raw = await self._call(method, url, **kw)
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ConnectionFailed(f"{method} {url}: the answer is not JSON") from exc
        if not isinstance(obj, dict):
            raise OtherProviderError(f"{method} {url}: unexpected answer")
        return obj


async def _spool(resp: Any, into: Path) -> None:
    with into.open("wb") as f:
        async for chunk in resp.content.iter_chunked(CHUNK_BYTES):
            f.write(chunk)


def jsonl_lines(raw: bytes) -> list[dict[str, Any]]:
    """Parse a downloaded JSONL file; a cut-off last line means the download was cut off."""
    out: list[dict[str, Any]] = []
    for line in raw.splitlines():
        if not line.strip():
            continue
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise ConnectionFailed("a results file ended mid-line (download cut off)") from exc
        if isinstance(obj, dict):
            out.append(obj)
    return out


def timestamp(value: Any) -> float | None:
    """Unix seconds from an int (OpenAI) or an RFC 3339 string (Anthropic)."""
    if value is None:
        return None
    if isinstance(value, int | float):
        return float(value)
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
