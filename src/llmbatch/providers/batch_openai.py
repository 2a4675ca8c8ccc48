"""OpenAI's Batch API: upload a JSONL file, create a batch, read its output and error files.

One model per file (the API's rule). The batch carries our own metadata key,
so a batch whose creation was interrupted can be found again by listing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from llmbatch._core.batch_types import BatchInfo, ItemResult
from llmbatch._core.embed import decode_vectors
from llmbatch._core.exceptions import (
    ContentFiltered,
    OtherProviderError,
    ProviderError,
    ServerError,
    error_for_status,
)
from llmbatch._core.usage import Usage
from llmbatch.providers._batch_http import BatchHttp, jsonl_lines, timestamp
from llmbatch.providers._http import parse_error_body
from llmbatch.providers.openai_responses import ResponsesStream, responses_usage

if TYPE_CHECKING:
    from llmbatch._config.settings import ProviderSettings, RunConfig

META_KEY = "llmbatch_chunk"
ENDPOINT = "/v1/chat/completions"
RESPONSES_ENDPOINT = "/v1/responses"
EMBEDDINGS_ENDPOINT = "/v1/embeddings"
_OPEN = ("validating", "in_progress", "finalizing", "cancelling")
# Per-request error codes that mean "not run": the request goes back to pending.
_NOT_RUN = {"batch_expired": "expired", "batch_cancelled": "canceled"}
# Other services' words for OpenAI's batch states (Mistral's upper-case ones).
_STATUS = {
    "queued": "validating",
    "running": "in_progress",
    "success": "completed",
    "timeout_exceeded": "expired",
    "cancellation_requested": "cancelling",
}


class OpenAIBatchClient(BatchHttp):
    """OpenAI's Batch API, and any service that copies it: ``[providers.NAME]`` with
    ``batch = true`` names its differences (``batch_purpose``, ``batch_inline``,
    ``batch_endpoint``, ``batch_path``)."""

    max_requests = 50_000
    max_bytes = 200 * 1024 * 1024

    def __init__(self, settings: ProviderSettings, config: RunConfig) -> None:
        super().__init__(settings, config)
        self.headers = {"user-agent": "llmbatch/0.1", **dict(settings.headers)}
        self.headers.update(self.auth_headers())
        responses = config.api_for(settings.name) == "responses"
        self.endpoint = settings.batch_endpoint or (RESPONSES_ENDPOINT if responses else ENDPOINT)
        self.purpose = settings.batch_purpose
        self.inline = settings.batch_inline
        self.batches_url = self.base_url + settings.batch_path
        self.query: dict[str, str] = {}  # on every call (Azure's api-version)
        self._uploaded: dict[str, str] = {}  # key → file id: a retried create uploads once

    def auth_headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def for_embeddings(self) -> None:
        """Send embedding requests: a batch holds one endpoint (Azure's lacks ``/v1``)."""
        v1 = self.endpoint.startswith("/v1")
        self.endpoint = EMBEDDINGS_ENDPOINT if v1 else EMBEDDINGS_ENDPOINT.removeprefix("/v1")

    def encode(self, custom_id: str, body: dict[str, object]) -> bytes:
        if self.inline:
            return orjson.dumps({"custom_id": custom_id, "body": body}) + b"\n"
        line = {"custom_id": custom_id, "method": "POST", "url": self.endpoint, "body": body}
        return orjson.dumps(line) + b"\n"

    async def create(self, key: str, lines: list[bytes]) -> BatchInfo:
        body: dict[str, Any] = {
            "endpoint": self.endpoint,
            "completion_window": "24h",
            "metadata": {META_KEY: key},
        }
        if self.inline:
            body["requests"] = [orjson.loads(line) for line in lines]
        else:
            body["input_file_id"] = await self._upload(key, lines)
        made = await self._json(
            "POST", self.batches_url, data=orjson.dumps(body), params=self.query
        )
        return _info(made)

    async def _upload(self, key: str, lines: list[bytes]) -> str:
        import aiohttp

        file_id = self._uploaded.get(key)
        if file_id is None:
            form = aiohttp.FormData()
            form.add_field("purpose", self.purpose)
            form.add_field(
                "file",
                b"".join(lines),
                filename=f"llmbatch-{key}.jsonl",
                content_type="application/jsonl",
            )
            uploaded = await self._json(
                "POST", self.base_url + "/files", data=form, content_type=None, params=self.query
            )
            file_id = self._uploaded[key] = str(_unwrap(uploaded)["id"])
        return file_id

    async def find(self, key: str, created_after: float, count: int) -> list[BatchInfo]:
        found: list[BatchInfo] = []
        after: str | None = None
        while True:
            params = self.query | {"limit": "100"} | ({"after": after} if after else {})
            page = await self._json("GET", self.batches_url, params=params)
            rows = [_info(d) for d in page.get("data") or ()]
            found.extend(b for b in rows if b.metadata.get(META_KEY) == key)
            if not page.get("has_more") or not rows or rows[-1].created_at < created_after - 600:
                return found
            after = rows[-1].id

    async def get(self, batch_id: str) -> BatchInfo:
        return _info(await self._json("GET", f"{self.batches_url}/{batch_id}", params=self.query))

    async def cancel(self, batch_id: str) -> BatchInfo:
        url = f"{self.batches_url}/{batch_id}/cancel"
        return _info(await self._json("POST", url, params=self.query))

    async def results(self, info: BatchInfo) -> list[ItemResult]:
        out: list[ItemResult] = []
        for file_id in (info.output_ref, info.error_ref):
            if file_id:  # error_file_id may be "" as well as null
                url = f"{self.base_url}/files/{file_id}/content"
                raw = await self._call("GET", url, params=self.query)
                out.extend(_item(d, self._redact) for d in jsonl_lines(raw))
        return out


def _unwrap(d: dict[str, Any]) -> dict[str, Any]:
    """Together answers ``{"job": {...}}`` where OpenAI answers the batch itself."""
    inner = d.get("job")
    return inner if isinstance(inner, dict) and "id" in inner else d


def _info(d: dict[str, Any]) -> BatchInfo:
    d = _unwrap(d)
    counts = d.get("request_counts") or {}
    status = str(d.get("status"))
    status = _STATUS.get(status.lower(), status.lower())
    errors = ((d.get("errors") or {}).get("data")) or []
    batch_error = None
    if status == "failed":
        first = errors[0] if errors else {}
        batch_error = f"{first.get('code') or 'failed'}: {first.get('message') or ''}".strip()
    return BatchInfo(
        id=str(d["id"]),
        status=status,
        ended=status not in _OPEN,
        total=int(counts.get("total") or d.get("total_requests") or 0),
        succeeded=int(counts.get("completed") or d.get("succeeded_requests") or 0),
        failed=int(counts.get("failed") or d.get("failed_requests") or 0),
        created_at=timestamp(d.get("created_at")) or 0.0,
        expires_at=timestamp(d.get("expires_at")),
        output_ref=d.get("output_file_id") or d.get("output_file") or None,
        error_ref=d.get("error_file_id") or d.get("error_file") or None,
        batch_error=batch_error,
        metadata=dict(d.get("metadata") or {}),
    )


def _item(d: dict[str, Any], redact: Any) -> ItemResult:
    cid = str(d.get("custom_id"))
    resp = d.get("response")
    if isinstance(resp, dict) and resp.get("status_code") == 200:
        return _answer(cid, resp.get("body") or {})
    if isinstance(resp, dict):
        body = resp.get("body")
        message, body_type, _ = parse_error_body(orjson.dumps(body))
        status = int(resp.get("status_code") or 500)
        err = error_for_status(status, redact(message or f"HTTP {status}"), body_type=body_type)
        # A request can fail after it ran: what it was billed comes with the error.
        billed = body.get("usage") if isinstance(body, dict) else None
        usage = _usage(billed) if isinstance(billed, dict) else None
        return ItemResult(cid, "error", usage=usage, error=err)
    err_obj = d.get("error") or {}
    code = str(err_obj.get("code") or "")
    if code in _NOT_RUN:
        return ItemResult(cid, _NOT_RUN[code])
    message = redact(str(err_obj.get("message") or code or "the request failed"))
    error: ProviderError = (
        ServerError(message)
        if "server" in code or "timeout" in code
        else OtherProviderError(message)
    )
    return ItemResult(cid, "error", error=error)


def _usage(u: dict[str, Any]) -> Usage:
    if "input_tokens" in u:  # a Responses API body
        return responses_usage(u)
    cached = (u.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    return Usage(int(u.get("prompt_tokens") or 0), int(u.get("completion_tokens") or 0), cached, 0)


def _response(cid: str, body: dict[str, Any]) -> ItemResult:
    """A Responses API answer (``url: /v1/responses``)."""
    read = ResponsesStream()
    read.whole(orjson.dumps(body))
    usage = read.usage or Usage()
    if read.error is not None:
        return ItemResult(cid, "error", usage=usage, error=read.error.with_usage(usage))
    if read.finish == "content_filter" or read.refusal:
        reason = "".join(read.refusal) or "incomplete: content_filter"
        err = ContentFiltered(f"the answer was filtered or refused: {reason}").with_usage(usage)
        return ItemResult(cid, "error", usage=usage, error=err)
    if read.finish is None:
        err2 = ServerError(f"the response ended {body.get('status')!r}, not completed")
        return ItemResult(cid, "error", usage=usage, error=err2)
    return ItemResult(cid, "ok", text="".join(read.parts), usage=usage, stop_reason=read.finish)


def _embeddings(cid: str, body: dict[str, Any]) -> ItemResult:
    """An embeddings answer (``url: /v1/embeddings``): one float32 matrix, decoded with
    ``numpy.frombuffer`` (base64) or one ``numpy.asarray`` (JSON floats)."""
    data = body.get("data")
    if not isinstance(data, list):
        return ItemResult(cid, "error", error=ServerError("an embeddings answer without data"))
    if any(item.get("index", i) != i for i, item in enumerate(data)):
        data = sorted(data, key=lambda item: item.get("index", 0))
    usage = body.get("usage") or {}
    tokens = int(usage.get("prompt_tokens") or usage.get("total_tokens") or 0)
    return ItemResult(cid, "ok", usage=Usage(tokens, 0), vectors=decode_vectors(data))


def _answer(cid: str, body: dict[str, Any]) -> ItemResult:
    if body.get("object") == "response":
        return _response(cid, body)
    if body.get("object") == "list":
        return _embeddings(cid, body)
    usage = _usage(body.get("usage") or {})
    choice: dict[str, Any] = next(
        (c for c in body.get("choices") or () if c.get("index", 0) == 0), {}
    )
    message = choice.get("message") or {}
    finish = choice.get("finish_reason")
    if finish == "content_filter" or message.get("refusal"):
        reason = message.get("refusal") or "finish_reason: content_filter"
        err = ContentFiltered(f"the answer was filtered or refused: {reason}").with_usage(usage)
        return ItemResult(cid, "error", usage=usage, error=err)
    return ItemResult(cid, "ok", text=message.get("content") or "", usage=usage, stop_reason=finish)
