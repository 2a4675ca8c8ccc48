"""Gemini's Batch API and Files API on the fake, on virtual time.

``POST /v1beta/models/{model}:batchGenerateContent`` (inline ``requests.requests`` or
``inputConfig.fileName``), ``GET /v1beta/batches`` (``operations``, ``nextPageToken``),
``GET /v1beta/batches/{id}``, ``POST /v1beta/batches/{id}:cancel``; the resumable
upload (``POST /upload/v1beta/files`` with ``X-Goog-Upload-*`` headers, then the
``x-goog-upload-url`` it gave) and ``GET /v1beta/files/{id}:download?alt=media``
(also under ``/download/``). A batch is an ``Operation`` whose ``metadata`` is the
``GenerateContentBatch`` (``state`` ``BATCH_STATE_*``, ``batchStats`` counts as
strings); ``test_gemini_sdk.py`` has the SDK read it.

Time is virtual (``now``/``advance``, as ``FakeBatch``): a batch answers its
requests over ``process_s`` seconds. Faults: ``create_delay_s`` (the batch exists,
its answer comes late: kill the client there), ``download_delay_s`` (the same for
a responses download), ``truncate_downloads``, ``create_429``.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from tests.fakegemini import VERSIONS, FakeGemini, dumps, error_body, response, usage_metadata

BATCH_TYPE = "type.googleapis.com/google.ai.generativelanguage.v1beta.GenerateContentBatch"
RESPONSE_TYPE = (
    "type.googleapis.com/google.ai.generativelanguage.v1beta.BatchGenerateContentResponse"
)


@dataclass
class GItem:
    key: str
    request: dict[str, Any]
    outcome: dict[str, Any] | None = None  # {"response": …} or {"error": …}
    billed: tuple[int, int] = (0, 0)


@dataclass
class GBatch:
    name: str
    model: str
    display_name: str
    items: list[GItem]
    created_at: float
    inline: bool
    state: str = "BATCH_STATE_PENDING"
    ended_at: float | None = None
    cancel_at: float | None = None
    responses_file: str | None = None


@dataclass
class FakeGeminiBatch:
    gemini: FakeGemini
    offset: float = 0.0
    process_s: float = 600.0
    create_delay_s: float = 0.0
    download_delay_s: float = 0.0  # also a GET of an ended inline batch (its results)
    truncate_downloads: int = 0
    create_429: int = 0
    batches: dict[str, GBatch] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)
    uploads: dict[str, tuple[str, int]] = field(default_factory=dict)  # upload id → name, size
    created: list[tuple[str, int, bool]] = field(default_factory=list)  # (name, n, inline)
    calls: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self._lock = threading.RLock()
        self._ids = itertools.count(1)
        self.gemini.batch = self
        self.gemini.api.route_hooks.append(self.mount)

    # -- control ------------------------------------------------------------------------

    def now(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.offset += seconds

    def sent_keys(self) -> Counter[str]:
        """How many batches each request key was created in."""
        with self._lock:
            return Counter(it.key for b in self.batches.values() for it in b.items)

    def billed(self) -> tuple[int, int]:
        with self._lock:
            pairs = [it.billed for b in self.batches.values() for it in b.items]
        return sum(p[0] for p in pairs), sum(p[1] for p in pairs)

    def mount(self, app: web.Application) -> None:
        app._client_max_size = 512 * 1024 * 1024
        r = app.router
        for v in VERSIONS:
            r.add_get(f"/{v}/batches", self._list)
            r.add_get(f"/{v}/batches/{{id}}", self._get)
            r.add_post(f"/{v}/batches/{{call}}", self._cancel)
            r.add_post(f"/upload/{v}/files", self._upload)
            r.add_get(f"/{v}/files/{{call}}", self._download)
            r.add_get(f"/download/{v}/files/{{call}}", self._download)

    # -- the machine --------------------------------------------------------------------------

    def _advance(self, b: GBatch) -> None:
        now = self.now()
        if b.ended_at is not None:
            return
        elapsed = (b.cancel_at or now) - b.created_at
        n = len(b.items)
        due = n if elapsed >= self.process_s else int(n * max(elapsed, 0) / self.process_s)
        for it in b.items[:due]:
            if it.outcome is None:
                self._answer(b, it)
        if b.cancel_at is not None:
            self._finish(b, "BATCH_STATE_CANCELLED")
        elif all(it.outcome is not None for it in b.items):
            self._finish(b, "BATCH_STATE_SUCCEEDED")
        elif elapsed > 0:
            b.state = "BATCH_STATE_RUNNING"

    def _answer(self, b: GBatch, it: GItem) -> None:
        fault, _ = self.gemini.plan(b.model, it.request)
        if fault.isdigit():
            it.outcome = error_body(int(fault), f"simulated {fault}")
            return
        text, in_tokens, out_tokens, finish = self.gemini.answer_of(b.model, it.request)
        usage = usage_metadata(in_tokens, out_tokens, 0, self.gemini.thoughts_tokens)
        it.billed = (in_tokens, out_tokens + self.gemini.thoughts_tokens)
        it.outcome = {"response": response(b.model, text, finish, usage, self.gemini.next_id())}

    def _finish(self, b: GBatch, state: str) -> None:
        b.state, b.ended_at = state, self.now()
        if not b.inline:
            lines = [
                orjson.dumps({"key": it.key, **it.outcome}) + b"\n"
                for it in b.items
                if it.outcome is not None
            ]
            name = f"files/{b.name.split('/')[-1]}-responses"
            self.files[name] = b"".join(lines)
            b.responses_file = name

    def op(self, b: GBatch) -> dict[str, Any]:
        """The batch as the API shows it: an Operation around a GenerateContentBatch."""
        done = [it for it in b.items if it.outcome is not None]
        failed = sum(1 for it in done if "error" in (it.outcome or {}))
        meta: dict[str, Any] = {
            "@type": BATCH_TYPE,
            "name": b.name,
            "model": f"models/{b.model}",
            "displayName": b.display_name,
            "state": b.state,
            "createTime": _rfc3339(b.created_at),
            "updateTime": _rfc3339(self.now()),
            "batchStats": {
                "requestCount": str(len(b.items)),
                "successfulRequestCount": str(len(done) - failed),
                "failedRequestCount": str(failed),
                "pendingRequestCount": str(len(b.items) - len(done)),
            },
        }
        out: dict[str, Any] | None = None
        if b.ended_at is not None:
            meta["endTime"] = _rfc3339(b.ended_at)
            if b.inline:
                rows = [
                    {**it.outcome, "metadata": {"key": it.key}}
                    for it in b.items
                    if it.outcome is not None
                ]
                out = {"inlinedResponses": {"inlinedResponses": rows}}
            else:
                out = {"responsesFile": b.responses_file}
            meta["output"] = out
        result: dict[str, Any] = {"name": b.name, "metadata": meta}
        if b.ended_at is not None:
            result["done"] = True
            result["response"] = {"@type": RESPONSE_TYPE, "output": out}
        return result

    # -- handlers ---------------------------------------------------------------------------------

    def _gate(self, request: web.Request, what: str) -> web.Response | None:
        self.calls[what] += 1
        if "key" in request.query:
            self.gemini.key_in_query.append(request.query["key"])
        key = request.headers.get("x-goog-api-key")
        expected = self.gemini.api.expected_key
        if expected is not None and key != expected:
            return self.gemini.error(401, "Request had invalid authentication credentials.")
        return None

    async def create(self, request: web.Request, model: str) -> web.Response:
        if (bad := self._gate(request, "create")) is not None:
            return bad
        if self.create_429 > 0:
            with self._lock:
                self.create_429 -= 1
            return self.gemini.error(429, "Resource has been exhausted (e.g. check quota).")
        batch = orjson.loads(await request.read())["batch"]
        config = batch.get("inputConfig") or {}
        if "fileName" in config:
            data = self.files.get(str(config["fileName"]))
            if data is None:
                return self.gemini.error(400, f"File {config['fileName']} not found")
            rows = [orjson.loads(line) for line in data.splitlines() if line.strip()]
            items = [GItem(str(r["key"]), r["request"]) for r in rows]
            inline = False
        else:
            reqs = (config.get("requests") or {}).get("requests") or []
            items = [GItem(str((r.get("metadata") or {}).get("key")), r["request"]) for r in reqs]
            inline = True
        with self._lock:
            name = f"batches/fake{next(self._ids):06d}"
            b = GBatch(name, model, str(batch.get("displayName") or ""), items, self.now(), inline)
            self.batches[name] = b
            self.created.append((name, len(items), inline))
            op = self.op(b)
        if self.create_delay_s:
            await asyncio.sleep(self.create_delay_s)
        return web.json_response(op, dumps=dumps)

    async def _list(self, request: web.Request) -> web.Response:
        if (bad := self._gate(request, "list")) is not None:
            return bad
        size = int(request.query.get("pageSize", "50"))
        start = int(request.query.get("pageToken") or 0)
        with self._lock:
            rows = list(reversed(self.batches.values()))
            for b in rows:
                self._advance(b)
            page = [self.op(b) for b in rows[start : start + size]]
        payload: dict[str, Any] = {"operations": page}
        if start + size < len(rows):
            payload["nextPageToken"] = str(start + size)
        return web.json_response(payload, dumps=dumps)

    async def _get(self, request: web.Request) -> web.Response:
        if (bad := self._gate(request, "get")) is not None:
            return bad
        with self._lock:
            b = self.batches.get("batches/" + request.match_info["id"])
            if b is None:
                return self.gemini.error(404, "Requested entity was not found.")
            self._advance(b)
            payload = self.op(b)
        if b.ended_at is not None and b.inline and self.download_delay_s:
            await asyncio.sleep(self.download_delay_s)
        return web.json_response(payload, dumps=dumps)

    async def _cancel(self, request: web.Request) -> web.Response:
        if (bad := self._gate(request, "cancel")) is not None:
            return bad
        name, _, method = request.match_info["call"].partition(":")
        with self._lock:
            b = self.batches.get("batches/" + name)
            if method != "cancel" or b is None:
                return self.gemini.error(404, "Requested entity was not found.")
            self._advance(b)
            if b.ended_at is None:
                b.cancel_at = self.now()
                self._advance(b)
        return web.json_response({}, dumps=dumps)

    async def _upload(self, request: web.Request) -> web.Response:
        if (bad := self._gate(request, "upload")) is not None:
            return bad
        h = {k.lower(): v for k, v in request.headers.items()}
        upload_id = request.query.get("upload_id")
        if upload_id is None:  # start: metadata in, the session's URL out
            if (
                h.get("x-goog-upload-protocol") != "resumable"
                or h.get("x-goog-upload-command") != "start"
            ):
                return self.gemini.error(400, "expected a resumable upload start")
            meta = orjson.loads(await request.read() or b"{}")
            size = int(h.get("x-goog-upload-header-content-length", "0"))
            with self._lock:
                upload_id = f"up{next(self._ids):06d}"
                name = f"files/input{next(self._ids):06d}"
                self.uploads[upload_id] = (name, size)
            del meta
            url = f"{request.scheme}://{request.host}{request.path}?upload_id={upload_id}"
            return web.Response(
                headers={"x-goog-upload-url": url, "x-goog-upload-status": "active"}
            )
        if upload_id not in self.uploads:
            return self.gemini.error(404, "no such upload session")
        command = h.get("x-goog-upload-command", "")
        if "finalize" not in command or h.get("x-goog-upload-offset") != "0":
            return self.gemini.error(400, "expected one upload, finalize at offset 0")
        data = await request.read()
        name, size = self.uploads.pop(upload_id)
        if len(data) != size:
            return self.gemini.error(400, f"declared {size} bytes, got {len(data)}")
        self.files[name] = data
        now = _rfc3339(self.now())
        file = {
            "name": name,
            "mimeType": "application/jsonl",
            "sizeBytes": str(size),
            "createTime": now,
            "updateTime": now,
            "state": "ACTIVE",
            "source": "UPLOADED",
        }
        return web.json_response(
            {"file": file}, headers={"x-goog-upload-status": "final"}, dumps=dumps
        )

    async def _download(self, request: web.Request) -> web.StreamResponse:
        if (bad := self._gate(request, "download")) is not None:
            return bad
        name, _, method = request.match_info["call"].partition(":")
        data = self.files.get("files/" + name)
        if method != "download" or request.query.get("alt") != "media" or data is None:
            return self.gemini.error(404, "Requested entity was not found.")
        if self.download_delay_s:
            await asyncio.sleep(self.download_delay_s)
        if self.truncate_downloads > 0:
            with self._lock:
                self.truncate_downloads -= 1
            resp = web.StreamResponse(headers={"content-length": str(len(data))})
            await resp.prepare(request)
            await resp.write(data[: len(data) // 2])
            assert request.transport is not None
            request.transport.abort()
            return resp
        return web.Response(body=data, content_type="application/octet-stream")


def _rfc3339(t: float) -> str:
    base = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t))
    return f"{base}.{int((t % 1) * 1e9):09d}Z"  # nanoseconds, as Google writes them
