"""Gemini's Batch API: ``models/{model}:batchGenerateContent``, inline or through a file.

A chunk whose requests fit under ``INLINE_MAX_BYTES`` goes inline; a larger one is
uploaded as JSONL through the Files API (the resumable upload protocol) and named
by ``inputConfig.fileName``. Every batch is a long-running ``Operation`` whose
``metadata`` is the ``GenerateContentBatch``: ``state`` ``BATCH_STATE_*`` (the SDK
says ``JOB_STATE_*``; both are read), ``batchStats`` counts as int64 strings,
and results either inline (``inlinedResponses``, each with our ``metadata.key``)
or in a responses file (``files/…:download?alt=media``, one ``{"key", "response"
| "error"}`` a line). The batch's ``displayName`` carries our chunk key, so a
create that was interrupted is found again by listing.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit, urlunsplit

import orjson

from llmbatch._core.batch_types import BatchInfo, ItemResult
from llmbatch._core.exceptions import OtherProviderError, ProviderError
from llmbatch._core.headers import RateLimitHint
from llmbatch.providers._batch_http import BatchHttp
from llmbatch.providers._spool import ResultStream
from llmbatch.providers.gemini import (
    GeminiStream,
    finish_verdict,
    gemini_headers,
    http_error,
    rpc_error,
    stop_word,
)
from llmbatch.providers.gemini_wire import API_VERSION, model_url

if TYPE_CHECKING:
    from llmbatch._config.settings import ProviderSettings, RunConfig

INLINE_MAX_BYTES = 20 * 1000 * 1000  # the documented cap of an inline batch request
NAME_PREFIX = "llmbatch-"
_STOPPED = {"FAILED", "CANCELLED", "EXPIRED"}
_ENDED = {"SUCCEEDED", "FAILED", "CANCELLED", "EXPIRED", "PARTIALLY_SUCCEEDED"}
_MAX_PAGES = 1000  # of 100 batches each, when looking for an interrupted create
INLINE = "inline"  # output_ref of a batch whose answers come inside the batch object


class GeminiBatchClient(BatchHttp):
    max_requests = 100_000
    max_bytes = 2 * 1000 * 1000 * 1000  # a Files API upload: 2 GB

    def __init__(self, settings: ProviderSettings, config: RunConfig) -> None:
        super().__init__(settings, config)
        self.headers = gemini_headers(settings, self.api_key)
        self.headers.pop("content-type")
        self.root = f"{self.base_url}/{API_VERSION}"
        self._uploaded: dict[str, str] = {}  # key → file name: a retried create uploads once

    def _http_error(
        self,
        status: int,
        raw: bytes,
        headers: Mapping[str, str],
        hint: RateLimitHint | None,
        request_id: str | None,
    ) -> ProviderError:
        return http_error(status, raw, headers, self.api_key, hint, request_id)

    def encode(self, custom_id: str, body: dict[str, object]) -> bytes:
        """One JSONL line of the input file (inline requests are made from it)."""
        return orjson.dumps({"key": custom_id, "request": body}) + b"\n"

    async def create(self, key: str, lines: list[bytes]) -> BatchInfo:
        first = orjson.loads(lines[0])
        model = str(first["request"].get("model") or "")
        batch: dict[str, Any] = {"displayName": NAME_PREFIX + key}
        if sum(len(line) for line in lines) <= INLINE_MAX_BYTES * 0.95:
            requests = []
            for line in lines:
                row = orjson.loads(line)
                requests.append({"request": row["request"], "metadata": {"key": row["key"]}})
            batch["inputConfig"] = {"requests": {"requests": requests}}
        else:
            name = self._uploaded.get(key)
            if name is None:
                name = self._uploaded[key] = await self._upload(key, b"".join(lines))
            batch["inputConfig"] = {"fileName": name}
        url = model_url(self.base_url, model, "batchGenerateContent")
        data = orjson.dumps({"batch": batch})
        return _info(await self._json("POST", url, data=data))

    async def _upload(self, key: str, data: bytes) -> str:
        """The resumable upload protocol: start (metadata), then upload and finalize."""
        import aiohttp

        headers = {
            **self.headers,
            "content-type": "application/json",
            "x-goog-upload-protocol": "resumable",
            "x-goog-upload-command": "start",
            "x-goog-upload-header-content-length": str(len(data)),
            "x-goog-upload-header-content-type": "application/jsonl",
        }
        meta = orjson.dumps({"file": {"displayName": f"{NAME_PREFIX}{key}.jsonl"}})
        session = self._get_session()
        start = f"{self.base_url}/upload/{API_VERSION}/files"
        try:
            async with session.post(start, data=meta, headers=headers, proxy=self.proxy) as resp:
                raw = await resp.read()
                if resp.status >= 400:
                    raise self._http_error(resp.status, raw, resp.headers, None, None)
                upload_url = resp.headers.get("x-goog-upload-url")
        except aiohttp.ClientError as exc:
            raise OtherProviderError(f"upload start failed: {self._redact(str(exc))}") from exc
        if not upload_url:
            raise OtherProviderError("the upload start answered without x-goog-upload-url")
        headers = {
            **self.headers,
            "x-goog-upload-command": "upload, finalize",
            "x-goog-upload-offset": "0",
        }
        url = self._ours(upload_url)
        obj = await self._json(
            "POST", url, data=data, content_type="application/jsonl", headers=headers
        )
        file = obj.get("file") or {}
        if not file.get("name"):
            raise OtherProviderError("the upload answered without a file name")
        return str(file["name"])

    def _ours(self, url: str) -> str:
        """The upload URL on our base URL's host: our key goes nowhere else."""
        base = urlsplit(self.base_url)
        parts = urlsplit(url)
        return urlunsplit((base.scheme, base.netloc, parts.path, parts.query, ""))

    async def find(self, key: str, created_after: float, count: int) -> list[BatchInfo]:
        # The display name is ours and unique per output: every page is read (the
        # listing's order is not documented, and a batch missed is one paid twice).
        found: list[BatchInfo] = []
        token: str | None = None
        for _ in range(_MAX_PAGES):
            params = {"pageSize": "100"} | ({"pageToken": token} if token else {})
            page = await self._json("GET", f"{self.root}/batches", params=params)
            for op in page.get("operations") or page.get("batches") or ():
                if isinstance(op, dict) and _meta(op).get("displayName") == NAME_PREFIX + key:
                    found.append(_info(op))
            token = page.get("nextPageToken") or None
            if not token:
                break
        return found

    async def get(self, batch_id: str) -> BatchInfo:
        return _info(await self._json("GET", self._url(batch_id)))

    async def cancel(self, batch_id: str) -> BatchInfo:
        await self._call("POST", self._url(batch_id) + ":cancel")  # answers an empty object
        return await self.get(batch_id)

    async def stream_results(self, info: BatchInfo) -> ResultStream:
        if info.output_ref == INLINE:
            op = await self._json("GET", self._url(info.id))
            out = _output(op)
            rows = out.get("inlinedResponses") or []
            if isinstance(rows, dict):  # {"inlinedResponses": {"inlinedResponses": [...]}}
                rows = rows.get("inlinedResponses") or []
            key = self._key
            return ResultStream(
                items=[_item(str((r.get("metadata") or {}).get("key")), r, key) for r in rows]
            )
        if not info.output_ref:
            return ResultStream()
        name = quote(info.output_ref, safe="/")
        url = f"{self.root}/{name}:download"
        path = await self._download(url, info.id, 0, {"alt": "media"})
        key = self._key
        return ResultStream([path], lambda d: _item(str(d.get("key")), d, key))

    @property
    def _key(self) -> str | None:
        return self.api_key

    def _url(self, batch_id: str) -> str:
        name = batch_id if batch_id.startswith("batches/") else f"batches/{batch_id}"
        return f"{self.root}/{quote(name, safe='/')}"


def _meta(op: dict[str, Any]) -> dict[str, Any]:
    """The GenerateContentBatch: an Operation's ``metadata``, or the object itself."""
    meta = op.get("metadata")
    return meta if isinstance(meta, dict) and meta else op


def _output(op: dict[str, Any]) -> dict[str, Any]:
    out = _meta(op).get("output") or (op.get("response") or {}).get("output") or {}
    return out if isinstance(out, dict) else {}


def _state(meta: dict[str, Any]) -> str:
    """``BATCH_STATE_RUNNING`` / ``JOB_STATE_RUNNING`` → ``RUNNING``."""
    state = str(meta.get("state") or "STATE_UNSPECIFIED")
    for prefix in ("BATCH_STATE_", "JOB_STATE_"):
        state = state.removeprefix(prefix)
    return state


def _count(stats: dict[str, Any], name: str) -> int:
    value = stats.get(name)
    return int(value) if isinstance(value, int | str) and str(value).isdigit() else 0


def _time(value: Any) -> float | None:
    """RFC 3339 with up to nine fractional digits (Python reads six)."""
    if not isinstance(value, str):
        return None
    text = value.replace("Z", "+00:00")
    head, dot, rest = text.partition(".")
    if dot:
        digits = len(rest) - len(rest.lstrip("0123456789"))
        text = f"{head}.{rest[: min(digits, 6)]}{rest[digits:]}"
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def _info(op: dict[str, Any]) -> BatchInfo:
    meta = _meta(op)
    stats = meta.get("batchStats") or {}
    state = _state(meta)
    out = _output(op)
    ref: str | None = None
    if out.get("responsesFile"):
        ref = str(out["responsesFile"])
    elif "inlinedResponses" in out or state in _STOPPED:
        # A batch stopped early may have no output at all: what it holds is read (none
        # then), and the rest goes back to pending. A SUCCEEDED one without its output
        # is not ready yet: read early, its answers would look missing and be paid twice.
        ref = INLINE
    error = op.get("error")
    batch_error = None
    if state == "FAILED" or (isinstance(error, dict) and error):
        err = error if isinstance(error, dict) else {}
        batch_error = f"{err.get('status') or 'failed'}: {err.get('message') or ''}".strip()
    return BatchInfo(
        id=str(op.get("name") or meta.get("name")),
        status=state.lower(),
        ended=state in _ENDED,
        total=_count(stats, "requestCount"),
        succeeded=_count(stats, "successfulRequestCount"),
        failed=_count(stats, "failedRequestCount"),
        created_at=_time(meta.get("createTime")) or 0.0,
        expires_at=None,
        output_ref=ref,
        batch_error=batch_error,
        metadata={"displayName": str(meta.get("displayName") or "")},
    )


def _item(cid: str, row: dict[str, Any], key: str | None) -> ItemResult:
    if row.get("error"):
        return ItemResult(cid, "error", error=rpc_error(row["error"], key))
    stream = GeminiStream(0.0, key)
    stream.chunk(row.get("response") or {})
    if stream.error is not None:
        return ItemResult(cid, "error", error=stream.error)
    usage = stream.usage
    verdict = finish_verdict(stream.finish, stream.blocked, usage)
    if verdict is not None:
        return ItemResult(cid, "error", usage=usage, error=verdict)
    return ItemResult(
        cid,
        "ok",
        text="".join(stream.parts),
        usage=usage,
        stop_reason=stop_word(stream.finish or "STOP"),
    )
