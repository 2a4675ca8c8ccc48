"""Google's Gemini API (generativelanguage.googleapis.com), streamed.

As in the ``google-genai`` SDK: the key goes in the ``x-goog-api-key`` header
(never ``?key=``: a URL ends up in logs), from ``GOOGLE_API_KEY`` or
``GEMINI_API_KEY``; the base URL (``GEMINI_BASE_URL``) holds no ``/v1beta``.
Answers stream from ``:streamGenerateContent?alt=sse``: each event is a whole
``GenerateContentResponse`` and no event marks the end, so an answer is complete
only when a candidate carried its ``finishReason``; a body that ends before
that is an incomplete answer, retried, never written.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import orjson

from llmbatch._core.exceptions import (
    ConnectionFailed,
    ContentFiltered,
    ProviderError,
    RateLimited,
    error_for_status,
)
from llmbatch._core.headers import RateLimitHint, parse_retry_after
from llmbatch._core.jobs import Request
from llmbatch._core.usage import Usage
from llmbatch.providers._base import Answer
from llmbatch.providers._errors import Attempt, redact, text_field, token_count, unexpected_shape
from llmbatch.providers._http import HttpProvider, SSEEvent, now_ms
from llmbatch.providers._structured import GEMINI_MODES, StructuredModes
from llmbatch.providers.gemini_cache import ExplicitCaches, entry_key, split_body
from llmbatch.providers.gemini_wire import build_gemini_body, stream_url

if TYPE_CHECKING:
    from llmbatch._config.settings import ProviderSettings, RunConfig

# finishReasons that mean the answer was withheld: a content filter, not an answer.
FILTERED = frozenset(
    {"SAFETY", "PROHIBITED_CONTENT", "BLOCKLIST", "SPII", "RECITATION", "IMAGE_SAFETY"}
)
_STOP_WORDS = {"STOP": "stop", "MAX_TOKENS": "max_tokens"}

# google.rpc.Code names → the HTTP status they travel with (an error inside a stream,
# or a batch item, carries the name only).
RPC_STATUS = {
    "INVALID_ARGUMENT": 400,
    "FAILED_PRECONDITION": 400,
    "OUT_OF_RANGE": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "ABORTED": 409,
    "RESOURCE_EXHAUSTED": 429,
    "CANCELLED": 499,
    "UNKNOWN": 500,
    "INTERNAL": 500,
    "DATA_LOSS": 500,
    "UNIMPLEMENTED": 501,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}
CREATE_FAILED = (
    "gemini: a cachedContents entry could not be created; its prefix group was sent in full"
)
CACHE_GONE = "gemini: a cachedContents entry was gone; its prefix group was sent in full"
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)s\s*$")


def gemini_headers(settings: ProviderSettings, key: str | None) -> dict[str, str]:
    headers = {
        "content-type": "application/json",
        "user-agent": "llmbatch/0.1",
        **dict(settings.headers),
    }
    if key:
        headers["x-goog-api-key"] = key
    return headers


class GeminiProvider(HttpProvider):
    def __init__(self, settings: ProviderSettings, config: RunConfig) -> None:
        super().__init__(settings, config)
        self.headers = gemini_headers(settings, self.api_key)
        self.headers["accept"] = "text/event-stream"
        self.structured = StructuredModes(GEMINI_MODES, settings.structured_output, self.notes)
        self.prompt_cache = config.prompt_cache
        self.caches = ExplicitCaches(self.base_url, self.headers, self.proxy)

    async def _send(self, model: str, request: Request, attempt: Attempt) -> Answer:
        mode = self.structured.mode
        body = build_gemini_body(model, request, mode, self.notes)
        info = request.cache
        if info is None or not info.explicit_ttl_s or self.prompt_cache == "off":
            return await self._send_body(model, request, body, attempt)
        split = split_body(model, body, info)
        if split is None:
            return await self._send_body(model, request, body, attempt)
        cached, rest = split
        key = entry_key(cached)
        name = await self.caches.name_for(self._get_session(), key, cached, info.explicit_ttl_s)
        if name is None:
            self.notes.add(CREATE_FAILED)
            return await self._send_body(model, request, body, attempt)
        try:
            return await self._send_body(model, request, {**rest, "cachedContent": name}, attempt)
        except ProviderError as err:
            if not cache_gone(err):
                raise
        self.caches.forget(key)  # expired or deleted: this group goes in full from now on
        self.notes.add(CACHE_GONE)
        return await self._send_body(model, request, body, attempt)

    async def _send_body(
        self, model: str, request: Request, body: dict[str, Any], attempt: Attempt
    ) -> Answer:
        mode = self.structured.mode
        stream = GeminiStream(time.perf_counter(), self.api_key)
        attempt.spent = stream.spent
        url = stream_url(self.base_url, model)
        try:
            hint, _ = await self._exchange(url, body, self.headers, stream)
        except ProviderError as err:
            ours = request.schema is not None and mode != "prompt"
            self.structured.adapt(err, mode if ours else None)
            raise
        return stream.answer(hint)

    async def aclose(self) -> None:
        """Delete the run's ``cachedContents`` entries, then close the connections."""
        if self.caches.created and self._session is not None:
            await self.caches.delete_all(self._session)
        await super().aclose()

    def _http_error(
        self,
        status: int,
        raw: bytes,
        headers: Mapping[str, str],
        hint: RateLimitHint | None,
        request_id: str | None,
    ) -> ProviderError:
        return http_error(status, raw, headers, self.api_key, hint, request_id)


def cache_gone(err: ProviderError) -> bool:
    """Whether a request naming a ``cachedContents`` entry failed because the entry is gone."""
    status = err.status or 0
    return status in (400, 403, 404) and "cache" in str(err).lower()


class GeminiStream:
    """Reads one streamed answer (or a whole one): each event a GenerateContentResponse."""

    __slots__ = (
        "_key",
        "blocked",
        "done",
        "error",
        "finish",
        "parts",
        "response_id",
        "started",
        "ttft",
        "usage",
    )

    def __init__(self, started: float, key: str | None = None) -> None:
        self.started = started
        self._key = key
        self.parts: list[str] = []
        self.usage: Usage | None = None
        self.finish: str | None = None
        self.blocked: str | None = None  # promptFeedback.blockReason
        self.response_id: str | None = None
        self.ttft: float | None = None
        self.error: ProviderError | None = None
        self.done = False  # only an error ends it early: the answer ends with the body

    def spent(self) -> Usage | None:
        return self.usage

    def feed(self, event: SSEEvent) -> None:
        self.chunk(orjson.loads(event.data))

    def whole(self, raw: bytes) -> None:
        """A non-streamed answer: one response, or the JSON array of a stream without SSE."""
        data = orjson.loads(raw)
        for item in data if isinstance(data, list) else [data]:
            self.chunk(item)
        self.done = True

    def chunk(self, data: Any) -> None:
        if not isinstance(data, dict):
            raise unexpected_shape(f"a chunk that is {type(data).__name__}, not an object")
        if data.get("error"):
            self.error = rpc_error(data["error"], self._key)
            self.done = True
            return
        self.response_id = text_field(data.get("responseId")) or self.response_id
        candidates = data.get("candidates") or []
        if not isinstance(candidates, list):
            raise unexpected_shape("candidates that are not a list")
        for cand in candidates[:1]:  # candidateCount > 1: the result holds the first
            for part in (cand.get("content") or {}).get("parts") or ():
                text = text_field(part.get("text"))
                if text and not part.get("thought"):
                    if self.ttft is None:
                        self.ttft = now_ms(self.started)
                    self.parts.append(text)
            finish = text_field(cand.get("finishReason"))
            if finish:
                self.finish = finish
        feedback = data.get("promptFeedback") or {}
        blocked = text_field(feedback.get("blockReason"))
        if blocked:
            self.blocked = blocked
        if data.get("usageMetadata"):
            self.usage = usage_of(data["usageMetadata"])  # cumulative: the last one holds

    def answer(self, hint: RateLimitHint | None) -> Answer:
        """The Answer, once the body has ended; or the ProviderError of an incomplete one."""
        if self.error is not None:
            raise self.error.with_usage(self.usage)
        verdict = finish_verdict(self.finish, self.blocked, self.usage)
        if verdict is not None:
            raise verdict
        assert self.finish is not None
        return Answer(
            text="".join(self.parts),
            usage=self.usage or Usage(),
            stop_reason=stop_word(self.finish),
            latency_ms=now_ms(self.started),
            ttft_ms=self.ttft,
            request_id=self.response_id,
            limits=hint,
        )


def stop_word(finish: str) -> str:
    """Our stop reason: ``stop`` and ``max_tokens`` (what truncation checks read), else lower."""
    return _STOP_WORDS.get(finish, finish.lower())


def finish_verdict(
    finish: str | None, blocked: str | None, usage: Usage | None
) -> ProviderError | None:
    """The error of an answer that ended as no answer: blocked, filtered, or incomplete."""
    if blocked:
        return ContentFiltered(f"the prompt was blocked (blockReason: {blocked})").with_usage(usage)
    if finish is None:
        return ConnectionFailed(
            "the stream ended without a finishReason (incomplete answer)"
        ).with_usage(usage)
    if finish in FILTERED:
        return ContentFiltered(f"the answer was filtered (finishReason: {finish})").with_usage(
            usage
        )
    return None


def usage_of(u: Any) -> Usage:
    """``usageMetadata`` in our convention: prompt tokens include cached ones (cache reads);
    thinking tokens are billed as output."""
    if not isinstance(u, dict):
        raise unexpected_shape("usageMetadata that is not an object")
    prompt = token_count(u.get("promptTokenCount")) + token_count(u.get("toolUsePromptTokenCount"))
    out = token_count(u.get("candidatesTokenCount")) + token_count(u.get("thoughtsTokenCount"))
    return Usage(prompt, out, token_count(u.get("cachedContentTokenCount")), 0)


def parse_duration(value: Any) -> float | None:
    """Seconds from a protobuf Duration in JSON ("37s", "1.5s")."""
    m = _DURATION.match(value) if isinstance(value, str) else None
    return float(m.group(1)) if m else None


def rpc_error(
    err: Any, key: str | None, status: int | None = None, headers: Mapping[str, str] | None = None
) -> ProviderError:
    """A ``google.rpc.Status``-shaped error (``{code, message, status, details}``) as ours."""
    if not isinstance(err, dict):
        return error_for_status(status or 500, redact(str(err)[:500], key) or f"HTTP {status}")
    name = str(err.get("status") or "")
    code = err.get("code")
    http = status or RPC_STATUS.get(name) or (code if isinstance(code, int) else None) or 500
    if name == "RESOURCE_EXHAUSTED":
        http = 429
    message = redact(str(err.get("message") or name or f"HTTP {http}"), key)
    reasons = {d.get("reason") for d in err.get("details") or () if isinstance(d, dict)}
    if "API_KEY_INVALID" in reasons:
        http = 401  # Google answers a bad key with 400 INVALID_ARGUMENT: it is an auth error
    out = error_for_status(http, message, body_type=name or None)
    out.status = status
    wait = parse_retry_after(headers) if headers is not None else None  # type: ignore[arg-type]
    if wait is None:
        for detail in err.get("details") or ():
            if isinstance(detail, dict) and str(detail.get("@type", "")).endswith("RetryInfo"):
                wait = parse_duration(detail.get("retryDelay"))
    out.retry_after = wait
    if isinstance(out, RateLimited):
        out.retryable = True
    return out


def http_error(
    status: int,
    raw: bytes,
    headers: Mapping[str, str],
    key: str | None,
    hint: RateLimitHint | None = None,
    request_id: str | None = None,
) -> ProviderError:
    """The ProviderError of an error answer (its body a ``{"error": Status}``, or anything)."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        obj = raw.decode("utf-8", "replace").strip()[:500] or f"HTTP {status}"
    if isinstance(obj, list) and obj and isinstance(obj[0], dict):
        obj = obj[0]  # a stream without SSE answers its error in an array
    err = obj.get("error", obj) if isinstance(obj, dict) else obj
    out = rpc_error(err, key, status, headers)
    out.request_id = request_id
    out.limits = hint
    return out


def preview(
    settings: ProviderSettings, model: str, request: Request, notes: set[str]
) -> tuple[str, dict[str, Any]]:
    """(URL, body) of the first attempt, for ``--dry-run`` (the key goes in no URL)."""
    body = build_gemini_body(model, request, settings.structured_output, notes)
    return stream_url(settings.resolved_base_url(), model), body
