"""The providers' Batch APIs, faked on the loopback FakeAPI's server, on virtual time.

OpenAI: ``/v1/files`` (upload, list, delete, content) and ``/v1/batches`` (create,
list, retrieve, cancel). Anthropic: ``/v1/messages/batches`` (create, list,
retrieve, delete, cancel, results). Field names and states follow the installed
SDKs' types; ``test_fakebatch.py`` drives the SDKs against it.

Time is virtual: ``now()`` is the wall clock plus ``offset``, which a test moves
with ``advance(seconds)`` (or ``tick_per_poll`` moves on every status read). A
batch works through its requests in ``process_s`` virtual seconds; answers come
from the FakeAPI's own answer generator, and its rules decide per-request faults
(``"400"`` → an errored request, ``"500"`` → a transient one).

Faults: ``create_429`` (that many 429s on create), ``fail_next`` (the next OpenAI
batch fails with that error code), ``null_output_polls`` (completed but no
``output_file_id`` for that many reads), ``empty_error_file`` (``error_file_id:
""``), ``truncate_downloads`` (that many downloads cut off), ``expire_after``
(the fraction of requests done before a batch stalls and expires), ``create_delay_s``
(a create is made, then answers late: the window where a client may die), ``cancel_s``
(a cancel takes that long, in virtual seconds).
"""

from __future__ import annotations

import asyncio
import itertools
import math
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from tests.fakeapi import FakeAPI
from tests.fakebatch_wire import (
    FakeBatchJob,
    FakeFile,
    Item,
    an_batch,
    an_line,
    file_obj,
    oa_batch,
    oa_line,
)
from tests.fakeembed import tokens_of, vector_of


@dataclass
class FakeBatch:
    """Mount with ``FakeBatch(api)`` before ``api.start()``; then drive time from the test."""

    api: FakeAPI
    offset: float = 0.0
    process_s: float = 600.0
    tick_per_poll: float = 0.0
    create_429: int = 0
    fail_next: str | None = None
    null_output_polls: int = 0
    empty_error_file: bool = False
    truncate_downloads: int = 0
    expire_after: float | None = None
    create_delay_s: float = 0.0  # real seconds a create waits, once made, before it answers
    reply: str | None = None  # every batch answer's text (the online endpoints keep their own)
    bill_errors: bool = False  # errored requests are billed (OpenAI: usage in the error body)
    cancel_s: float = 0.0  # virtual seconds a cancel takes before the batch has ended
    download_delay_s: float = 0.0  # real seconds a results download waits (a fetch to kill)
    file_purpose: str = "batch"  # the purpose a batch's input file must have been uploaded with
    embed_dimensions: int = 64  # an embeddings request's vectors when it names no dimensions
    paths: Counter[str] = field(default_factory=Counter)  # OpenAI-shaped calls by path prefix
    batches: dict[str, FakeBatchJob] = field(default_factory=dict)
    files: dict[str, FakeFile] = field(default_factory=dict)
    created: list[tuple[str, str, int]] = field(default_factory=list)  # (kind, id, requests)
    calls: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self._lock = threading.RLock()
        self._ids = itertools.count(1)
        self.api.route_hooks.append(self.mount)

    # -- control ----------------------------------------------------------------------

    def now(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.offset += seconds

    def billed(self) -> dict[str, tuple[int, int]]:
        """model → (input, output) tokens of every request billed inside a batch."""
        out: dict[str, tuple[int, int]] = {}
        with self._lock:
            for b in self.batches.values():
                for it in b.items:
                    if it.answer is not None:  # answers, and errors billed
                        i, o = out.get(str(it.body.get("model")), (0, 0))
                        u = it.answer["usage"]
                        out[str(it.body.get("model"))] = (i + u[0], o + u[1])
        return out

    def sent_ids(self) -> Counter[str]:
        """How many batches each custom_id was created in."""
        with self._lock:
            return Counter(it.custom_id for b in self.batches.values() for it in b.items)

    def mount(self, app: web.Application) -> None:
        # Batch bodies run to hundreds of MB; aiohttp's default cap is 1 MB.
        app._client_max_size = 512 * 1024 * 1024
        r = app.router
        # OpenAI; Azure's v1 API and deployment path; a compatible service (tests/...).
        for pre in ("/v1", "/openai/v1", "/openai", "/compat/v1"):
            r.add_post(f"{pre}/files", self._file_create)
            r.add_get(f"{pre}/files", self._file_list)
            r.add_delete(f"{pre}/files/{{id}}", self._file_delete)
            r.add_get(f"{pre}/files/{{id}}/content", self._file_content)
            r.add_post(f"{pre}/batches", self._oa_create)
            r.add_get(f"{pre}/batches", self._oa_list)
            r.add_get(f"{pre}/batches/{{id}}", self._oa_get)
            r.add_post(f"{pre}/batches/{{id}}/cancel", self._oa_cancel)
        r.add_post("/v1/messages/batches", self._an_create)
        r.add_get("/v1/messages/batches", self._an_list)
        r.add_get("/v1/messages/batches/{id}", self._an_get)
        r.add_delete("/v1/messages/batches/{id}", self._an_delete)
        r.add_post("/v1/messages/batches/{id}/cancel", self._an_cancel)
        r.add_get("/v1/messages/batches/{id}/results", self._an_results)

    # -- the batch machine ---------------------------------------------------------------

    def _new_id(self, prefix: str) -> str:
        return f"{prefix}{next(self._ids):06d}fake"

    def _make(self, kind: str, items: list[Item], **kw: Any) -> FakeBatchJob:
        with self._lock:
            prefix = "batch_" if kind == "openai" else "msgbatch_"
            b = FakeBatchJob(kind, self._new_id(prefix), self.now(), items, **kw)
            if self.fail_next is not None and kind == "openai":  # an OpenAI batch state
                b.failed_code, self.fail_next = self.fail_next, None
            if self.expire_after is not None:
                b.stall_at = math.floor(len(items) * self.expire_after)
            self.batches[b.id] = b
            self.created.append((kind, b.id, len(items)))
            return b

    def _advance(self, b: FakeBatchJob) -> None:
        """Bring one batch up to the virtual now: process requests, end it when due."""
        now = self.now()
        if b.ended_at is not None:
            return
        if b.failed_code is not None:
            if b.kind == "openai" and now > b.created_at:
                b.status, b.ended_at = "failed", now
            return
        elapsed = (b.cancel_at or now) - b.created_at
        due = (
            len(b.items)
            if elapsed >= self.process_s
            else int(len(b.items) * elapsed / self.process_s)
        )
        if b.stall_at is not None:
            due = min(due, b.stall_at)
        for it in b.items[:due]:
            if it.outcome is None and b.endpoint.endswith("/embeddings"):
                self._embed_answer(it)
            elif it.outcome is None:
                self._answer(it, b.kind)
        if b.cancel_at is not None:
            if now < b.cancel_at + self.cancel_s:
                return  # still cancelling
            # What finished before the cancel is kept; the rest is canceled.
            self._finish(b, "cancelled" if b.kind == "openai" else "ended", "canceled")
            return
        if b.kind == "openai" and b.status == "validating" and elapsed > 0:
            b.status = "in_progress"
        if all(it.outcome is not None for it in b.items):
            self._finish(b, "completed" if b.kind == "openai" else "ended", None)
            b.null_polls_left = self.null_output_polls
        elif now >= b.expires_at:
            self._finish(b, "expired" if b.kind == "openai" else "ended", "expired")

    def _answer(self, it: Item, kind: str) -> None:
        fault = self.api._plan(it.body)
        if fault.isdigit() and fault != "200":
            it.outcome = fault
            if self.bill_errors and kind == "openai":
                # It ran to its token cap, then failed: billed in full, no answer.
                cap = int(it.body.get("max_tokens") or it.body.get("max_completion_tokens") or 0)
                it.answer = {"usage": (self.api.input_tokens_of(it.body), cap)}
            return
        text = self.reply if self.reply is not None else self.api._answer_text(it.body)
        words = self.api.chunks(text)
        cap = (
            it.body.get("max_tokens")
            or it.body.get("max_completion_tokens")
            or it.body.get("max_output_tokens")
            or 4096
        )
        stop = "end_turn"
        if len(words) > cap:
            words, stop = words[:cap], "max_tokens"
        in_tokens = self.api.input_tokens_of(it.body)
        it.outcome = "ok"
        it.answer = {"text": "".join(words), "usage": (in_tokens, len(words)), "stop": stop}

    def _embed_answer(self, it: Item) -> None:
        """An embeddings request (``url: /v1/embeddings``): the online fake's vectors
        (``tests.fakeembed.vector_of``), base64 or floats as asked, ``prompt_tokens``."""
        fault = self.api._plan(it.body)
        if fault.isdigit() and fault != "200":
            it.outcome = fault
            return
        texts = it.body.get("input")
        texts = [texts] if isinstance(texts, str) else list(texts or [])
        dim = int(it.body.get("dimensions") or self.embed_dimensions)
        tokens = sum(tokens_of(t) for t in texts)
        it.outcome = "ok"
        it.answer = {
            "embed": [vector_of(t, dim) for t in texts],
            "encoding": it.body.get("encoding_format") or "float",
            "usage": (tokens, 0),
        }

    def _finish(self, b: FakeBatchJob, status: str, rest: str | None) -> None:
        now = self.now()
        for it in b.items:
            if it.outcome is None and rest is not None:
                it.outcome = rest
        b.status, b.ended_at = status, now
        if b.kind == "openai":
            self._write_openai_files(b)

    def _write_openai_files(self, b: FakeBatchJob) -> None:
        ok = [
            oa_line(it, self._new_id("batch_req_"), self.now())
            for it in b.items
            if it.outcome == "ok"
        ]
        bad = [
            oa_line(it, self._new_id("batch_req_"), self.now())
            for it in b.items
            if it.outcome != "ok"
        ]
        if ok:
            b.output_file_id = self._store(f"{b.id}_output.jsonl", "batch_output", b"".join(ok)).id
        if bad and not self.empty_error_file:
            b.error_file_id = self._store(f"{b.id}_error.jsonl", "batch_output", b"".join(bad)).id
        elif self.empty_error_file:
            b.error_file_id = ""

    def _store(self, name: str, purpose: str, data: bytes) -> FakeFile:
        f = FakeFile(self._new_id("file-"), name, purpose, data, self.now())
        self.files[f.id] = f
        return f

    # -- handlers: shared -------------------------------------------------------------------

    def _gate(self, request: web.Request, kind: str, what: str) -> web.Response | None:
        """Count the call, check the key, and answer a scripted 429 on create."""
        self.calls[what] += 1
        headers = {k.lower(): v for k, v in request.headers.items()}
        key = (
            headers.get("authorization", "")[7:]
            or headers.get("x-api-key")
            or headers.get("api-key")
        )
        if kind == "openai":
            self.paths[request.path.split("/files")[0].split("/batches")[0]] += 1
            legacy = request.path.startswith("/openai/") and not request.path.startswith(
                "/openai/v1/"
            )
            if legacy and "api-version" not in request.query:
                return self.api._error("azure", 404, "Resource not found")
        if self.api.expected_key is not None and key != self.api.expected_key:
            return self.api._error(kind, 401, "invalid api key")
        if what in ("batch_create", "msgbatch_create") and self.create_429 > 0:
            with self._lock:
                self.create_429 -= 1
            return self.api._error(kind, 429, "Too many batch creations; retry later")
        return None

    def _get(self, request: web.Request, kind: str) -> FakeBatchJob | None:
        b = self.batches.get(request.match_info["id"])
        if b is None or b.kind != kind or b.deleted:
            return None
        if self.tick_per_poll:
            self.advance(self.tick_per_poll)
        self._advance(b)
        return b

    def _paged(
        self, items: list[dict[str, Any]], request: web.Request, cursor: str
    ) -> dict[str, Any]:
        limit = int(request.query.get("limit", "20"))
        after = request.query.get(cursor)
        if after is not None:
            ids = [d["id"] for d in items]
            items = items[ids.index(after) + 1 :] if after in ids else []
        page = items[:limit]
        return {
            "data": page,
            "has_more": len(items) > limit,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
        }

    def _missing(self, kind: str) -> web.Response:
        return self.api._error(kind, 404, "no such batch")

    # -- handlers: OpenAI ---------------------------------------------------------------------

    async def _file_create(self, request: web.Request) -> web.Response:
        if (bad := self._gate(request, "openai", "file_create")) is not None:
            return bad
        form = await request.post()
        upload = form.get("file")
        if upload is None or isinstance(upload, str | bytes | bytearray):
            return self.api._error("openai", 400, "file is required")
        with self._lock:
            f = self._store(str(upload.filename), str(form.get("purpose", "")), upload.file.read())
        return _json(file_obj(f))

    async def _file_list(self, request: web.Request) -> web.Response:
        self.calls["file_list"] += 1
        data = [file_obj(f) for f in reversed(self.files.values())]
        return _json({"object": "list", **self._paged(data, request, "after")})

    async def _file_delete(self, request: web.Request) -> web.Response:
        self.calls["file_delete"] += 1
        f = self.files.pop(request.match_info["id"], None)
        if f is None:
            return self.api._error("openai", 404, "no such file")
        return _json({"id": f.id, "object": "file", "deleted": True})

    async def _file_content(self, request: web.Request) -> web.StreamResponse:
        if (bad := self._gate(request, "openai", "file_content")) is not None:
            return bad
        f = self.files.get(request.match_info["id"])
        if f is None:
            return self.api._error("openai", 404, "no such file")
        if self.download_delay_s:
            await asyncio.sleep(self.download_delay_s)
        if self.truncate_downloads > 0:
            with self._lock:
                self.truncate_downloads -= 1
            return await _cut_off(request, f.data)
        return web.Response(body=f.data, content_type="application/octet-stream")

    async def _oa_create(self, request: web.Request) -> web.Response:
        if (bad := self._gate(request, "openai", "batch_create")) is not None:
            return bad
        body = orjson.loads(await request.read())
        if "requests" in body:  # inline requests (Mistral's batch jobs take them)
            items = [Item(str(r["custom_id"]), r["body"]) for r in body["requests"]]
            file_id = ""
        else:
            f = self.files.get(str(body.get("input_file_id")))
            if f is None:
                return self.api._error("openai", 400, "input_file_id not found")
            if f.purpose != self.file_purpose:
                return self.api._error(
                    "openai", 400, f"the input file's purpose must be {self.file_purpose!r}"
                )
            lines = list(map(orjson.loads, f.data.splitlines()))
            if any(line.get("url") != body.get("endpoint") for line in lines):
                return self.api._error("openai", 400, "a line's url is not the batch's endpoint")
            items = [Item(str(line["custom_id"]), line["body"]) for line in lines]
            file_id = f.id
        models = {it.body.get("model") for it in items}
        if len(models) != 1:
            return self.api._error("openai", 400, "a batch file may hold one model only")
        b = self._make(
            "openai",
            items,
            model=str(models.pop()),
            input_file_id=file_id,
            metadata=body.get("metadata"),
            endpoint=str(body.get("endpoint")),
        )
        if self.create_delay_s:
            await asyncio.sleep(self.create_delay_s)
        return _json(oa_batch(b))

    async def _oa_list(self, request: web.Request) -> web.Response:
        self.calls["batch_list"] += 1
        with self._lock:
            rows = [b for b in reversed(self.batches.values()) if b.kind == "openai"]
            for b in rows:
                self._advance(b)
            data = [oa_batch(b) for b in rows]
        return _json({"object": "list", **self._paged(data, request, "after")})

    async def _oa_get(self, request: web.Request) -> web.Response:
        self.calls["batch_get"] += 1
        with self._lock:
            b = self._get(request, "openai")
            return _json(oa_batch(b)) if b else self._missing("openai")

    async def _oa_cancel(self, request: web.Request) -> web.Response:
        self.calls["batch_cancel"] += 1
        with self._lock:
            b = self._get(request, "openai")
            if b is None:
                return self._missing("openai")
            if b.ended_at is None:
                b.cancel_at, b.status = self.now(), "cancelling"
            return _json(oa_batch(b))

    # -- handlers: Anthropic ---------------------------------------------------------------------

    async def _an_create(self, request: web.Request) -> web.Response:
        if (bad := self._gate(request, "anthropic", "msgbatch_create")) is not None:
            return bad
        body = orjson.loads(await request.read())
        items = [Item(str(r["custom_id"]), dict(r["params"])) for r in body.get("requests", [])]
        b = self._make("anthropic", items)
        if self.create_delay_s:
            await asyncio.sleep(self.create_delay_s)
        return _json(an_batch(b, _base(request)))

    async def _an_list(self, request: web.Request) -> web.Response:
        self.calls["msgbatch_list"] += 1
        with self._lock:
            rows = [
                b
                for b in reversed(self.batches.values())
                if b.kind == "anthropic" and not b.deleted
            ]
            for b in rows:
                self._advance(b)
            data = [an_batch(b, _base(request)) for b in rows]
        return _json(self._paged(data, request, "after_id"))

    async def _an_get(self, request: web.Request) -> web.Response:
        self.calls["msgbatch_get"] += 1
        with self._lock:
            b = self._get(request, "anthropic")
            return _json(an_batch(b, _base(request))) if b else self._missing("anthropic")

    async def _an_delete(self, request: web.Request) -> web.Response:
        with self._lock:
            b = self._get(request, "anthropic")
            if b is None:
                return self._missing("anthropic")
            if b.ended_at is None:
                return self.api._error("anthropic", 400, "cancel the batch before deleting it")
            b.deleted = True
        return _json({"id": b.id, "type": "message_batch_deleted"})

    async def _an_cancel(self, request: web.Request) -> web.Response:
        self.calls["msgbatch_cancel"] += 1
        with self._lock:
            b = self._get(request, "anthropic")
            if b is None:
                return self._missing("anthropic")
            if b.ended_at is None:
                b.cancel_at = self.now()
            data = an_batch(b, _base(request))
            if b.ended_at is None:
                data["processing_status"] = "canceling"
            return _json(data)

    async def _an_results(self, request: web.Request) -> web.StreamResponse:
        if (bad := self._gate(request, "anthropic", "msgbatch_results")) is not None:
            return bad
        with self._lock:
            b = self._get(request, "anthropic")
            if b is None:
                return self._missing("anthropic")
            if b.ended_at is None:
                return self.api._error("anthropic", 400, "the batch is still processing")
            data = b"".join(an_line(it) for it in b.items)
            cut = self.truncate_downloads > 0
            if cut:
                self.truncate_downloads -= 1
        if cut:
            return await _cut_off(request, data)
        return web.Response(body=data, content_type="application/binary")


async def _cut_off(request: web.Request, data: bytes) -> web.StreamResponse:
    """Promise the whole body, send half, and drop the connection."""
    resp = web.StreamResponse(headers={"content-length": str(len(data))})
    resp.content_type = "application/octet-stream"
    await resp.prepare(request)
    await resp.write(data[: len(data) // 2])
    assert request.transport is not None
    request.transport.abort()
    return resp


def _base(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}"


def _json(payload: dict[str, Any]) -> web.Response:
    return web.json_response(payload, dumps=lambda o: orjson.dumps(o).decode())
