"""A loopback fake of the Anthropic and OpenAI APIs, with fault injection.

It speaks the real wire formats (JSON bodies, SSE streams with the exact event
shapes, error bodies, rate-limit headers); ``test_fakeapi.py`` checks that the
official SDKs parse what it says. It runs on its own thread and event loop, so a
test can drive the ``llmbatch`` CLI in a subprocess against it and then look at
what it saw.

Faults are chosen per request by ``FakeAPI.plan(kind, body)``: scripted per job
(a rule matching text in the request, with one fault per attempt), random chaos
at given rates, or a request-rate window enforced like a provider (``window_kind``:
"sliding", any ``window_s`` seconds, or "fixed", windows that start every
``window_s`` seconds; ``window_retry``: its 429s carry ``retry_after``, or
"until_free", the real wait for a free slot, as providers and llmock say). Server traits
are attributes: ``rejects_response_format`` / ``rejects_output_config`` make it
refuse structured-output fields as some compatible servers do; ``raw_streams``
sends given bytes verbatim as the next answers (for fuzzing the adapters).
It counts the TCP connections it accepts (``connections_opened``).
"""

from __future__ import annotations

import asyncio
import math
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from tests._fakecache import FakePromptCache
from tests._fakewire import SSE, dumps, error_payload, key_of, openai_usage, whole_payload
from tests._fakewire_responses import ResponsesSSE, whole_response

OK = "ok"
# Fault kinds: an HTTP status as a string ("429", "500", "529", "400", "401", "404"),
# or one of these.
RESET = "reset"  # connection dropped before any answer
HANG = "hang"  # no answer at all
STALL = "stall"  # headers and one event, then silence
TRUNCATE = "truncate"  # a clean end of stream without the final events
ERROR_EVENT = "error_event"  # an error event inside a 200 stream (overloaded)
REFUSE = "refuse"  # a refusal / content filter
NO_FINISH = "no_finish"  # a clean end ([DONE] / message_stop) without a finish reason
LINGER = "linger"  # a complete answer, then the body is held open (never ended)


@dataclass
class Rule:
    """Faults for requests whose text contains ``match``: one per attempt, then OK."""

    match: str
    faults: list[str]
    seen: int = 0


@dataclass
class Record:
    kind: str  # "anthropic" | "openai" | "azure" | "responses"
    body: dict[str, Any]
    headers: dict[str, str]
    outcome: str
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read: int = 0
    at: float = 0.0
    path: str = ""  # the request's path and query (Azure's deployment path, api-version)
    cache_write: int = 0
    done_at: float | None = None  # when the answer ended (time.monotonic)


@dataclass
class FakeAPI:
    """Configure attributes, then ``start()``; read ``records`` afterwards."""

    latency_s: float = 0.0  # total time of a streamed answer
    ttft_s: float = 0.0  # time before the first text
    reply: str | None = None  # fixed answer text; default: derived from the request
    replies: list[str] = field(default_factory=list)  # answers in order (then default)
    chaos: dict[str, float] = field(default_factory=dict)  # fault kind → probability
    seed: int = 7
    retry_after: float | None = 0.05  # sent with 429/529 (seconds); None: no header
    retry_after_ms: float | None = None
    window_limit: int | None = None  # requests allowed per window
    window_s: float = 1.0
    window_kind: str = "sliding"  # "sliding" | "fixed" (windows from the first request)
    window_retry: str = "given"  # window 429s' retry-after: "given" (retry_after) | "until_free"
    rate_limit_headers: bool = True
    cache_read_tokens: int = 0
    prompt_cache: FakePromptCache | None = None  # learns prefixes, keeps a bill (_fakecache)
    expected_key: str | None = None  # any other key → 401 (echoing the key, masked badly)
    stream_usage: bool = True  # OpenAI: honour stream_options.include_usage
    ignore_stream: bool = False  # answer in one JSON body even when asked to stream
    rules: list[Rule] = field(default_factory=list)
    model_faults: dict[str, str] = field(default_factory=dict)  # model → fault on every call
    # response_format type → the status a server that does not take it answers with
    # (e.g. {"json_schema": 500}: a server that accepts only text and json_object)
    rejects_response_format: dict[str, int] = field(default_factory=dict)
    rejects_output_config: int | None = None  # status for a body with output_config
    raw_streams: list[bytes] = field(default_factory=list)  # next answers' bodies, verbatim
    records: list[Record] = field(default_factory=list)
    in_flight: int = 0
    peak_in_flight: int = 0
    connections_opened: int = 0  # TCP connections accepted (keep-alive reuses them)
    route_hooks: list[Callable[[web.Application], None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._lock = threading.Lock()
        self._window: list[float] = []
        self._window_start: float | None = None  # a fixed window's start
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._server: asyncio.Server | None = None
        self.port = 0

    # -- control ------------------------------------------------------------------

    def add_rule(self, match: str, *faults: str) -> None:
        self.rules.append(Rule(match, list(faults)))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeAPI:
        ready = threading.Event()

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            app = web.Application()
            app.router.add_post("/v1/messages", self._anthropic)
            app.router.add_post("/v1/chat/completions", self._openai)
            app.router.add_post("/v1/responses", self._responses)
            # Azure OpenAI: the v1 API and the deployment path (api-version required).
            app.router.add_post("/openai/v1/chat/completions", self._azure)
            app.router.add_post("/openai/v1/responses", self._responses)
            app.router.add_post("/openai/deployments/{deployment}/chat/completions", self._azure)
            app.router.add_post("/openai/responses", self._responses)
            for hook in self.route_hooks:  # more endpoints (tests/fakebatch.py)
                hook(app)
            self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.1)
            loop.run_until_complete(self._runner.setup())
            self._server = loop.run_until_complete(
                loop.create_server(self._protocol, "127.0.0.1", 0)
            )
            self.port = int(self._server.sockets[0].getsockname()[1])
            ready.set()
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=serve, name="fakeapi", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("fake API did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None:
            future = asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop)
            future.result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)

    def _protocol(self) -> asyncio.BaseProtocol:
        """aiohttp's handler for one accepted connection, counted (what keep-alive saves)."""
        assert self._runner is not None and self._runner.server is not None
        with self._lock:
            self.connections_opened += 1
        return self._runner.server()

    async def _shutdown(self) -> None:
        """End hanging handlers first, so nothing is left pending when the loop closes."""
        me = asyncio.current_task()
        tasks = [t for t in asyncio.all_tasks() if t is not me]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            self._server.close()
        if self._runner is not None:
            await self._runner.cleanup()

    # -- what it saw ----------------------------------------------------------------

    def count(self, outcome: str | None = None) -> int:
        with self._lock:
            if outcome is None:
                return len(self.records)
            return sum(1 for r in self.records if r.outcome == outcome)

    def outcomes(self) -> Counter[str]:
        with self._lock:
            return Counter(r.outcome for r in self.records)

    def billed(self) -> tuple[int, int]:
        """(input, output) tokens of every answer it gave (what a provider bills)."""
        with self._lock:
            return (
                sum(r.input_tokens for r in self.records),
                sum(r.output_tokens for r in self.records),
            )

    # -- deciding ---------------------------------------------------------------------

    def _plan(self, body: dict[str, Any]) -> str:
        return self._plan_with_wait(body)[0]

    def _plan_with_wait(self, body: dict[str, Any]) -> tuple[str, float | None]:
        """The fault for this request and, for a window 429, the seconds until a slot frees."""
        text = orjson.dumps(body.get("messages", body.get("input", []))).decode()
        with self._lock:
            if body.get("model") in self.model_faults:
                return self.model_faults[body["model"]], None
            for rule in self.rules:
                if rule.match in text:
                    i = rule.seen
                    rule.seen += 1
                    return (rule.faults[i] if i < len(rule.faults) else OK), None
            if self.window_limit is not None:
                wait = self._take_slot(time.monotonic(), self.window_limit)
                if wait is not None:
                    return "429", wait
            for kind, p in self.chaos.items():
                if self._rng.random() < p:
                    return kind, None
        return OK, None

    def _take_slot(self, now: float, limit: int) -> float | None:
        """Count one request in the window; if it is full, the seconds until it frees."""
        if self.window_kind == "fixed":
            if self._window_start is None or now >= self._window_start + self.window_s:
                start = now if self._window_start is None else self._window_start
                periods = (now - start) // self.window_s
                self._window_start = start + periods * self.window_s
                self._window = []
            if len(self._window) >= limit:
                return self._window_start + self.window_s - now
        else:
            self._window = [t for t in self._window if now - t < self.window_s]
            if len(self._window) >= limit:
                return self._window[0] + self.window_s - now
        self._window.append(now)
        return None

    def _answer_text(self, body: dict[str, Any]) -> str:
        with self._lock:
            if self.replies:
                return self.replies.pop(0)
        if self.reply is not None:
            return self.reply
        said = body.get("messages", body.get("input", [{}]))
        if isinstance(said, str):
            said = [{"content": said}]
        last = said[-1].get("content", "")
        if isinstance(last, list):
            last = " ".join(b.get("text", "") for b in last if isinstance(b, dict))
        return f"Answer to: {str(last)[:60]} (model {body.get('model')})"

    @staticmethod
    def input_tokens_of(body: dict[str, Any]) -> int:
        return len(orjson.dumps(body.get("messages", body.get("input", [])))) // 4 + 7

    @staticmethod
    def chunks(text: str) -> list[str]:
        words = text.split(" ")
        return [w + (" " if i < len(words) - 1 else "") for i, w in enumerate(words)]

    def _ratelimit_headers(self, kind: str) -> dict[str, str]:
        if not self.rate_limit_headers:
            return {}
        limit = self.window_limit or 10_000
        per_min = int(limit * 60 / self.window_s)
        with self._lock:
            remaining = max(0, limit - len(self._window))
        if kind != "anthropic":
            return {
                "x-ratelimit-limit-requests": str(per_min),
                "x-ratelimit-remaining-requests": str(remaining),
                "x-ratelimit-reset-requests": f"{int(self.window_s * 1000)}ms",
                "x-ratelimit-limit-tokens": "2000000",
                "x-ratelimit-remaining-tokens": "1999000",
                "x-ratelimit-reset-tokens": "6m0s",
            }
        reset = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + self.window_s))
        return {
            "anthropic-ratelimit-requests-limit": str(per_min),
            "anthropic-ratelimit-requests-remaining": str(remaining),
            "anthropic-ratelimit-requests-reset": reset,
            "anthropic-ratelimit-tokens-limit": "2000000",
            "anthropic-ratelimit-tokens-remaining": "1999000",
            "anthropic-ratelimit-tokens-reset": reset,
        }

    # -- the handlers ----------------------------------------------------------------------

    async def _handle(self, request: web.Request, kind: str) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        headers = {k.lower(): v for k, v in request.headers.items()}
        record = Record(kind, body, headers, OK, at=time.monotonic(), path=request.path_qs)
        with self._lock:
            self.records.append(record)
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            key = key_of(headers)
            if self.expected_key is not None and key != self.expected_key:
                record.outcome = "401"
                return self._error(kind, 401, f"invalid x-api-key: {key}")
            rejected = self._rejects_structured(kind, body)
            if rejected is not None:
                record.outcome = "structured_rejected"
                return self._error(kind, *rejected)
            with self._lock:
                raw = self.raw_streams.pop(0) if self.raw_streams else None
            if raw is not None:
                record.outcome = "raw"
                return await self._raw(request, raw)
            fault, wait = self._plan_with_wait(body)
            record.outcome = fault
            if fault == RESET:
                assert request.transport is not None
                request.transport.abort()
                raise asyncio.CancelledError  # aiohttp drops the handler quietly
            if fault == HANG:
                await asyncio.sleep(3600)
            if fault == "429" and body.get("service_tier") == "flex" and wait is None:
                # OpenAI's flex tier out of capacity: not the caller's pace.
                message = "Resource Unavailable: flex capacity is exhausted; try again later"
                return self._error(kind, 429, message)
            if fault.isdigit():
                return self._error(kind, int(fault), f"simulated {fault}", wait)
            try:
                return await self._stream(request, kind, body, record, fault)
            except ConnectionResetError:
                record.outcome = "client_gone"  # the client died mid-answer (kill -9)
                raise asyncio.CancelledError from None
        finally:
            with self._lock:
                self.in_flight -= 1

    async def _anthropic(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, "anthropic")

    async def _openai(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, "openai")

    async def _responses(self, request: web.Request) -> web.StreamResponse:
        if (bad := self._azure_query(request)) is not None:
            return bad
        return await self._handle(request, "responses")

    async def _azure(self, request: web.Request) -> web.StreamResponse:
        if (bad := self._azure_query(request)) is not None:
            return bad
        return await self._handle(request, "azure")

    def _azure_query(self, request: web.Request) -> web.Response | None:
        """Azure's paths outside /openai/v1 answer 404 without an api-version, as Azure does."""
        if request.path.startswith("/openai/") and not request.path.startswith("/openai/v1/"):
            if "api-version" not in request.query:
                return self._error("azure", 404, "Resource not found")
        return None

    def _rejects_structured(self, kind: str, body: dict[str, Any]) -> tuple[int, str] | None:
        """(status, message) when this server does not take the body's structured output."""
        if kind == "anthropic":
            if self.rejects_output_config is not None and "output_config" in body:
                return self.rejects_output_config, "output_config: Extra inputs are not permitted"
            return None
        fmt = body.get("response_format") or (body.get("text") or {}).get("format")
        kind_of = fmt.get("type") if isinstance(fmt, dict) else None
        if kind_of in self.rejects_response_format:
            allowed = [t for t in ("text", "json_object", "json_schema") if t != kind_of]
            # The wording of a pydantic-validating server (vLLM- or LM Studio-like).
            message = (
                "1 validation error for ChatCompletionRequest\nresponse_format.type\n  Input "
                f"should be {' or '.join(repr(t) for t in allowed)} [type=literal_error, "
                f"input_value={kind_of!r}, input_type=str]"
            )
            return self.rejects_response_format[kind_of], message
        return None

    async def _raw(self, request: web.Request, raw: bytes) -> web.StreamResponse:
        resp = web.StreamResponse(status=200, headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(raw)
        await resp.write_eof()
        return resp

    def _error(
        self, kind: str, status: int, message: str, wait: float | None = None
    ) -> web.Response:
        """An error answer; ``wait``: a window 429's real seconds until a slot frees."""
        headers = self._ratelimit_headers(kind)
        if wait is not None and self.window_retry == "until_free":
            headers["retry-after"] = f"{max(1, math.ceil(wait))}"  # whole seconds, as sent
        elif status in (429, 529):
            if self.retry_after is not None:
                headers["retry-after"] = f"{self.retry_after:g}"
            if self.retry_after_ms is not None:
                headers["retry-after-ms"] = f"{self.retry_after_ms:g}"
        payload, more = error_payload(kind, status, message)
        headers.update(more)
        return web.json_response(payload, status=status, headers=headers, dumps=dumps)

    async def _stream(
        self, request: web.Request, kind: str, body: dict[str, Any], record: Record, fault: str
    ) -> web.StreamResponse:
        text = self._answer_text(body)
        use = self.prompt_cache.use(kind, body) if self.prompt_cache is not None else None
        in_tokens = use.input_tokens if use else self.input_tokens_of(body)
        cached = use.read if use else self.cache_read_tokens
        written = (use.write, use.write_1h) if use else (0, 0)
        words = self.chunks(text)
        out_tokens = len(words)
        max_tokens = (
            body.get("max_tokens")
            or body.get("max_completion_tokens")
            or body.get("max_output_tokens")
            or 4096
        )
        stop = "end_turn" if kind == "anthropic" else "stop"
        if out_tokens > max_tokens:
            words = words[:max_tokens]
            out_tokens = max_tokens
            stop = "max_tokens" if kind == "anthropic" else "length"
        if fault == REFUSE:
            stop = "refusal" if kind == "anthropic" else "content_filter"
        finish = None if fault == NO_FINISH else stop
        record.input_tokens = in_tokens
        record.output_tokens = out_tokens
        record.cache_read, record.cache_write = cached, written[0]
        if not body.get("stream") or self.ignore_stream:
            if use is not None and self.prompt_cache is not None and finish is not None:
                self.prompt_cache.answered(use, out_tokens)
            record.done_at = time.monotonic()
            if kind == "responses":
                payload = whole_response(
                    body.get("model"), "".join(words), in_tokens, out_tokens, finish, cached
                )
            else:
                payload = whole_payload(
                    kind, body.get("model"), "".join(words), in_tokens, out_tokens, finish, cached
                )
            _with_writes(payload.get("usage"), kind, written)
            return web.json_response(payload, headers=self._ratelimit_headers(kind), dumps=dumps)
        headers = {
            "content-type": "text/event-stream",
            "cache-control": "no-cache",
            **self._ratelimit_headers(kind),
        }
        headers["request-id" if kind == "anthropic" else "x-request-id"] = "req_fake"
        resp = web.StreamResponse(status=200, headers=headers)
        await resp.prepare(request)
        send: SSE | ResponsesSSE = (ResponsesSSE if kind == "responses" else SSE)(
            resp, kind, body.get("model") or request.match_info.get("deployment")
        )
        await send.start(in_tokens, cached, written)
        if fault == STALL:
            await asyncio.sleep(3600)
        if self.ttft_s:
            await asyncio.sleep(self.ttft_s)
        rest = max(0.0, self.latency_s - self.ttft_s)
        step = rest / max(1, len(words) - 1)
        for i, w in enumerate(words):
            if i and step:
                await asyncio.sleep(step)
            if fault in (ERROR_EVENT, TRUNCATE) and i == len(words) // 2:
                if fault == ERROR_EVENT:
                    await send.error()
                await resp.write_eof()
                return resp
            await send.text(w)
        usage = None
        if kind == "responses" or (
            (body.get("stream_options") or {}).get("include_usage") and self.stream_usage
        ):
            usage = openai_usage(in_tokens, out_tokens, cached)
        await send.end(finish, out_tokens, usage)
        if use is not None and self.prompt_cache is not None and fault in (OK, LINGER):
            self.prompt_cache.answered(use, out_tokens)
        record.done_at = time.monotonic()
        if fault == LINGER:
            await asyncio.sleep(3600)
        # The end of the chunked body goes out as its own write, as real servers send it.
        await asyncio.sleep(0.001)
        await resp.write_eof()
        return resp


def _with_writes(usage: Any, kind: str, written: tuple[int, int]) -> None:
    """A whole Anthropic answer's cache writes (whole_payload says none)."""
    if kind == "anthropic" and isinstance(usage, dict) and written[0]:
        usage["input_tokens"] -= written[0]
        usage["cache_creation_input_tokens"] = written[0]
        usage["cache_creation"] = {
            "ephemeral_5m_input_tokens": written[0] - written[1],
            "ephemeral_1h_input_tokens": written[1],
        }
