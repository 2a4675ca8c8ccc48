"""Anthropic's Message Batches: one JSON create, a JSONL results stream.

Batches carry no metadata, so an interrupted create is looked for by its
creation time and request count, and proven by its custom_ids once it has ended
(``_batch.context.recover_chunk``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from llmbatch._core.batch_types import BatchInfo, ItemResult
from llmbatch._core.exceptions import ContentFiltered
from llmbatch.providers._batch_http import BatchHttp, timestamp
from llmbatch.providers._spool import ResultStream
from llmbatch.providers.anthropic import ANTHROPIC_VERSION, _stream_error, _usage

if TYPE_CHECKING:
    from llmbatch._config.settings import ProviderSettings, RunConfig

# Clocks differ; a batch created this long before our record of the intent is not ours.
_SKEW_S = 600


class AnthropicBatchClient(BatchHttp):
    max_requests = 100_000
    max_bytes = 256 * 1024 * 1024

    def __init__(self, settings: ProviderSettings, config: RunConfig) -> None:
        super().__init__(settings, config)
        self.url = self.base_url + "/v1/messages/batches"
        self.headers = {
            "anthropic-version": ANTHROPIC_VERSION,
            "authorization": f"Bearer {self.api_key}",
            "user-agent": "llmbatch/0.1",
            **dict(settings.headers),
        }

    def encode(self, custom_id: str, body: dict[str, object]) -> bytes:
        return orjson.dumps({"custom_id": custom_id, "params": body})

    async def create(self, key: str, lines: list[bytes]) -> BatchInfo:
        data = b'{"requests":[' + b",".join(lines) + b"]}"
        return _info(await self._json("POST", self.url, data=data))

    async def find(self, key: str, created_after: float, count: int) -> list[BatchInfo]:
        found: list[BatchInfo] = []
        after: str | None = None
        while True:
            params = {"limit": "100"} | ({"after_id": after} if after else {})
            page = await self._json("GET", self.url, params=params)
            rows = [_info(d) for d in page.get("data") or ()]
            found.extend(
                b for b in rows if b.total == count and b.created_at >= created_after - _SKEW_S
            )
            if (
                not page.get("has_more")
                or not rows
                or rows[-1].created_at < created_after - _SKEW_S
            ):
                return found
            after = rows[-1].id

    async def get(self, batch_id: str) -> BatchInfo:
        return _info(await self._json("GET", f"{self.url}/{batch_id}"))

    async def cancel(self, batch_id: str) -> BatchInfo:
        return _info(await self._json("POST", f"{self.url}/{batch_id}/cancel"))

    async def stream_results(self, info: BatchInfo) -> ResultStream:
        url = info.output_ref or ""
        if not url.startswith(self.base_url + "/"):
            url = f"{self.url}/{info.id}/results"  # our key goes to our base URL only
        path = await self._download(url, info.id, 0)
        redact = self._redact
        return ResultStream([path], lambda d: _item(d, redact))


def _info(d: dict[str, Any]) -> BatchInfo:
    c = d.get("request_counts") or {}
    n = {
        k: int(c.get(k) or 0) for k in ("processing", "succeeded", "errored", "canceled", "expired")
    }
    status = str(d.get("processing_status"))
    return BatchInfo(
        id=str(d["id"]),
        status=status,
        ended=status == "ended",
        total=sum(n.values()),
        succeeded=n["succeeded"],
        failed=n["errored"] + n["canceled"] + n["expired"],
        created_at=timestamp(d.get("created_at")) or 0.0,
        expires_at=timestamp(d.get("expires_at")),
        output_ref=d.get("results_url") or None,
    )


def _item(d: dict[str, Any], redact: Any) -> ItemResult:
    cid = str(d.get("custom_id"))
    result = d.get("result") or {}
    kind = result.get("type")
    if kind in ("expired", "canceled"):
        return ItemResult(cid, str(kind))
    if kind == "errored":
        err = (result.get("error") or {}).get("error") or {}
        return ItemResult(
            cid, "error", error=_stream_error(err, redact(str(err.get("message") or "")))
        )
    message = result.get("message") or {}
    u = message.get("usage") or {}
    usage = _usage(
        int(u.get("input_tokens") or 0),
        int(u.get("cache_read_input_tokens") or 0),
        int(u.get("cache_creation_input_tokens") or 0),
        int(u.get("output_tokens") or 0),
    )
    text = "".join(
        str(b.get("text", "")) for b in message.get("content") or () if b.get("type") == "text"
    )
    stop = message.get("stop_reason")
    if stop == "refusal":
        err = ContentFiltered("the model refused to answer (stop_reason: refusal)").with_usage(
            usage
        )
        return ItemResult(cid, "error", usage=usage, error=err)
    return ItemResult(cid, "ok", text=text, usage=usage, stop_reason=stop)
