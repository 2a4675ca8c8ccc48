"""The Gemini API on the loopback FakeAPI's server, written from Google's REST reference.

``POST /v1beta/models/{model}:streamGenerateContent?alt=sse`` (SSE, each event a whole
``GenerateContentResponse``, ``\\r\\n\\r\\n`` between events, no end marker: the last
chunk carries ``finishReason`` and the full ``usageMetadata``) and
``:generateContent`` (one JSON body). Errors are ``{"error": google.rpc.Status}``
with ``details`` (``RetryInfo.retryDelay`` on 429 ``RESOURCE_EXHAUSTED``,
``ErrorInfo.reason`` ``API_KEY_INVALID`` for a bad key, which Google answers with
400). The key must come in ``x-goog-api-key``; a ``?key=`` is recorded (tests
assert it never happens).

Faults come from the FakeAPI's rules and chaos (text matched against the parts'
text), with the same kinds: an HTTP status, ``reset``, ``hang``, ``stall``,
``truncate`` (a clean end halfway, no finishReason), ``no_finish``, ``refuse``
(finishReason SAFETY), ``error_event`` (an error object inside the 200 stream),
plus ``malformed`` (a chunk that is not JSON). ``test_gemini_sdk.py`` checks the
official ``google-genai`` SDK parses what it sends.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from tests.fakeapi import HANG, NO_FINISH, OK, REFUSE, RESET, STALL, TRUNCATE, FakeAPI, Record

VERSIONS = ("v1beta", "v1")  # we send v1beta; google-genai 3.x defaults to v1
MALFORMED = "malformed"
ERROR_EVENT = "error_event"
STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def dumps(obj: Any) -> str:
    return orjson.dumps(obj).decode()


def error_body(status: int, message: str, retry_delay: float | None = None) -> dict[str, Any]:
    details: list[dict[str, Any]] = []
    if status == 429:
        details.append(
            {
                "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                "violations": [{"quotaMetric": "generativelanguage.googleapis.com/requests"}],
            }
        )
        if retry_delay is not None:
            details.append(
                {
                    "@type": "type.googleapis.com/google.rpc.RetryInfo",
                    "retryDelay": f"{retry_delay:g}s",
                }
            )
    return {
        "error": {
            "code": status,
            "message": message,
            "status": STATUS_NAMES.get(status, "UNKNOWN"),
            "details": details,
        }
    }


def text_of_contents(body: dict[str, Any]) -> str:
    return " ".join(
        str(p.get("text", ""))
        for c in body.get("contents") or ()
        for p in c.get("parts") or ()
        if isinstance(p, dict)
    )


def example_of(schema: Any) -> Any:
    """A small value that validates against ``schema`` (the fake's structured answer)."""
    if not isinstance(schema, dict):
        return None
    if "enum" in schema:
        return schema["enum"][0]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = kind[0]
    kind = str(kind or "object").lower()
    if kind == "object":
        props = schema.get("properties") or {}
        return {k: example_of(v) for k, v in props.items()}
    if kind == "array":
        return [example_of(schema.get("items") or {})] * int(schema.get("minItems") or 0)
    return {"string": "x", "integer": 1, "number": 1.5, "boolean": True}.get(kind)


def usage_metadata(
    in_tokens: int, out_tokens: int | None, cached: int, thoughts: int
) -> dict[str, Any]:
    u: dict[str, Any] = {
        "promptTokenCount": in_tokens,
        "totalTokenCount": in_tokens + (out_tokens or 0) + thoughts,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": in_tokens}],
    }
    if out_tokens is not None:
        u["candidatesTokenCount"] = out_tokens
    if cached:
        u["cachedContentTokenCount"] = cached
    if thoughts:
        u["thoughtsTokenCount"] = thoughts
    return u


def response(
    model: str, text: str, finish: str | None, usage: dict[str, Any], rid: str
) -> dict[str, Any]:
    cand: dict[str, Any] = {"content": {"parts": [{"text": text}], "role": "model"}, "index": 0}
    if finish is not None:
        cand["finishReason"] = finish
    return {"candidates": [cand], "usageMetadata": usage, "modelVersion": model, "responseId": rid}


@dataclass
class FakeGemini:
    """Mount with ``FakeGemini(api)`` before ``api.start()``."""

    api: FakeAPI
    thoughts_tokens: int = 0
    retry_header: bool = True  # a 429 says Retry-After as well as RetryInfo.retryDelay
    rejects_json_schema: bool = False  # answer responseJsonSchema as an unknown field (400)
    key_in_query: list[str] = field(default_factory=list)  # any ?key= seen (must stay empty)
    batch: Any = None  # a FakeGeminiBatch (tests/fakegemini_batch.py) takes :batchGenerateContent
    # Explicit context caching: entries by name, and what happened to them, in order
    # (("create", name), ("delete", name)); ``create_status`` makes every create fail.
    cached_contents: dict[str, dict[str, Any]] = field(default_factory=dict)
    cache_log: list[tuple[str, str]] = field(default_factory=list)
    create_status: int | None = None
    expire_at_once: bool = False  # entries expire as soon as they are created
    _ids: int = 0

    def __post_init__(self) -> None:
        self.api.route_hooks.append(self.mount)

    def mount(self, app: web.Application) -> None:
        for version in VERSIONS:
            app.router.add_post(f"/{version}/models/{{call}}", self._model_call)
            app.router.add_post(f"/{version}/cachedContents", self._cache_create)
            app.router.add_get(f"/{version}/cachedContents/{{id}}", self._cache_get)
            app.router.add_delete(f"/{version}/cachedContents/{{id}}", self._cache_delete)

    # -- cachedContents (explicit context caching) ----------------------------------

    async def _cache_create(self, request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        if self.api.expected_key is not None and (
            request.headers.get("x-goog-api-key") != self.api.expected_key
        ):
            return self.error(403, "The caller does not have permission")
        if self.create_status is not None:
            self.cache_log.append(("create_failed", ""))
            return self.error(self.create_status, f"simulated {self.create_status}")
        if not str(body.get("model", "")).startswith("models/") or "ttl" not in body:
            return self.error(400, "cachedContent needs a model and a ttl")
        self._ids += 1
        name = f"cachedContents/fake{self._ids:06d}"
        cached = [body.get("systemInstruction") or {}, *(body.get("contents") or ())]
        entry = {
            "name": name,
            "model": body["model"],
            "ttl": body["ttl"],
            "usageMetadata": {"totalTokenCount": len(orjson.dumps(cached)) // 4},
            "_body": body,
        }
        if not self.expire_at_once:
            self.cached_contents[name] = entry
        self.cache_log.append(("create", name))
        return web.json_response(_public(entry), dumps=dumps)

    async def _cache_get(self, request: web.Request) -> web.Response:
        entry = self.cached_contents.get(f"cachedContents/{request.match_info['id']}")
        if entry is None:
            return self.error(404, "CachedContent not found (or permission denied)")
        return web.json_response(_public(entry), dumps=dumps)

    async def _cache_delete(self, request: web.Request) -> web.Response:
        name = f"cachedContents/{request.match_info['id']}"
        if self.cached_contents.pop(name, None) is None:
            return self.error(404, "CachedContent not found (or permission denied)")
        self.cache_log.append(("delete", name))
        return web.json_response({}, dumps=dumps)

    def cache_of(self, body: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
        """(the entry a request names, or None; an error message when it may not name one)."""
        name = body.get("cachedContent")
        if name is None:
            return None, None
        entry = self.cached_contents.get(str(name))
        if entry is None:
            return None, "CachedContent not found (or permission denied)"
        if any(k in body for k in ("systemInstruction", "tools", "toolConfig")):
            return None, (
                "CachedContent can not be used with GenerateContent request setting "
                "system_instruction, tools or tool_config."
            )
        return entry, None

    def answer_of(self, model: str, body: dict[str, Any]) -> tuple[str, int, int, str]:
        """(text, input tokens, output tokens, finishReason) the fake gives this request."""
        pseudo = {"model": model, "messages": [{"role": "user", "content": text_of_contents(body)}]}
        config = body.get("generationConfig") or {}
        schema = config.get("responseJsonSchema") or config.get("responseSchema")
        if config.get("responseMimeType") == "application/json" and not self.api.replies:
            text = dumps(example_of(schema or {"type": "object"}))
        else:
            text = self.api._answer_text(pseudo)
        words = self.api.chunks(text)
        cap = int(config.get("maxOutputTokens") or 4096)
        finish = "STOP"
        if len(words) > cap:
            words, finish = words[:cap], "MAX_TOKENS"
        in_tokens = len(orjson.dumps(body.get("contents") or [])) // 4 + 7
        return "".join(words), in_tokens, len(words), finish

    def plan(self, model: str, body: dict[str, Any]) -> tuple[str, float | None]:
        pseudo = {"model": model, "messages": [{"role": "user", "content": text_of_contents(body)}]}
        return self.api._plan_with_wait(pseudo)

    def error(self, status: int, message: str, wait: float | None = None) -> web.Response:
        headers = {}
        delay = wait if wait is not None else self.api.retry_after
        if status == 429 and delay is not None and self.retry_header:
            headers["retry-after"] = f"{max(delay, 0.0):g}"
        return web.json_response(
            error_body(status, message, delay), status=status, headers=headers, dumps=dumps
        )

    def next_id(self) -> str:
        self._ids += 1
        return f"resp-{self._ids:06d}"

    async def _model_call(self, request: web.Request) -> web.StreamResponse:
        call = request.match_info["call"]
        model, _, method = call.partition(":")
        if method == "batchGenerateContent" and self.batch is not None:
            return await self.batch.create(request, model)  # type: ignore[no-any-return]
        if method not in ("streamGenerateContent", "generateContent"):
            return self.error(404, f"Method {method!r} not found")
        if "key" in request.query:
            self.key_in_query.append(request.query["key"])
        body = orjson.loads(await request.read())
        headers = {k.lower(): v for k, v in request.headers.items()}
        record = Record("gemini", {"model": model, **body}, headers, OK, at=time.monotonic())
        api = self.api
        with api._lock:
            api.records.append(record)
            api.in_flight += 1
            api.peak_in_flight = max(api.peak_in_flight, api.in_flight)
        try:
            return await self._answer(request, model, method, body, record, headers)
        finally:
            with api._lock:
                api.in_flight -= 1

    async def _answer(
        self,
        request: web.Request,
        model: str,
        method: str,
        body: dict[str, Any],
        record: Record,
        headers: dict[str, str],
    ) -> web.StreamResponse:
        api = self.api
        key = headers.get("x-goog-api-key")
        if api.expected_key is not None and key != api.expected_key:
            record.outcome = "401"
            resp = error_body(400, "API key not valid. Please pass a valid API key.")
            resp["error"]["details"] = [
                {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID"}
            ]
            return web.json_response(resp, status=400, dumps=dumps)
        config = body.get("generationConfig") or {}
        if self.rejects_json_schema and "responseJsonSchema" in config:
            record.outcome = "structured_rejected"
            return self.error(
                400,
                'Invalid JSON payload received. Unknown name "responseJsonSchema" at '
                "'generation_config': Cannot find field.",
            )
        with api._lock:
            raw = api.raw_streams.pop(0) if api.raw_streams else None
        if raw is not None:
            record.outcome = "raw"
            return await api._raw(request, raw)
        fault, wait = self.plan(model, body)
        record.outcome = fault
        if fault == RESET:
            assert request.transport is not None
            request.transport.abort()
            raise asyncio.CancelledError
        if fault == HANG:
            await asyncio.sleep(3600)
        if fault.isdigit():
            return self.error(int(fault), f"simulated {fault}", wait)
        entry, problem = self.cache_of(body)
        if problem is not None:
            record.outcome = "cache_refused"
            return self.error(404 if "not found" in problem else 400, problem)
        text, in_tokens, out_tokens, finish = self.answer_of(model, body)
        if fault == REFUSE:
            finish = "SAFETY"
        cached = api.cache_read_tokens
        if entry is not None:  # promptTokenCount includes the cached tokens
            cached = int(entry["usageMetadata"]["totalTokenCount"])
            in_tokens += cached
        record.input_tokens, record.output_tokens = in_tokens, out_tokens + self.thoughts_tokens
        record.cache_read = cached
        final = usage_metadata(in_tokens, out_tokens, cached, self.thoughts_tokens)
        rid = self.next_id()
        if method == "generateContent" or request.query.get("alt") != "sse":
            whole = response(model, text, None if fault == NO_FINISH else finish, final, rid)
            payload: Any = whole if method == "generateContent" else [whole]
            return web.json_response(payload, dumps=dumps)
        try:
            return await self._stream(request, model, text, finish, final, rid, fault)
        except ConnectionResetError:
            record.outcome = "client_gone"
            raise asyncio.CancelledError from None

    async def _stream(
        self,
        request: web.Request,
        model: str,
        text: str,
        finish: str,
        final: dict[str, Any],
        rid: str,
        fault: str,
    ) -> web.StreamResponse:
        api = self.api
        resp = web.StreamResponse(
            status=200,
            headers={"content-type": "text/event-stream", "x-content-type-options": "nosniff"},
        )
        await resp.prepare(request)
        words = api.chunks(text)
        partial = usage_metadata(final["promptTokenCount"], None, 0, 0)
        if fault == STALL:
            await resp.write(_event(response(model, words[0], None, partial, rid)))
            await asyncio.sleep(3600)
        if api.ttft_s:
            await asyncio.sleep(api.ttft_s)
        for i, w in enumerate(words):
            last = i == len(words) - 1
            if fault in (TRUNCATE, ERROR_EVENT, MALFORMED) and i == len(words) // 2:
                if fault == ERROR_EVENT:
                    await resp.write(_event(error_body(503, "The model is overloaded.")))
                elif fault == MALFORMED:
                    await resp.write(b'data: {"candidates": [{"content": {"par\r\n\r\n')
                await resp.write_eof()
                return resp
            if last and fault != NO_FINISH:
                chunk = response(model, w, finish, final, rid)
            else:
                chunk = response(model, w, None, partial, rid)
            await resp.write(_event(chunk))
        await asyncio.sleep(0.001)
        await resp.write_eof()
        return resp


def _public(entry: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in entry.items() if not k.startswith("_")}


def _event(obj: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\r\n\r\n"
