"""Anthropic Messages API, streamed.

Headers and version follow the installed ``anthropic`` SDK (2.x): the key goes
in ``Authorization: Bearer``, ``anthropic-version`` is the SDK's pinned
version, and ``ANTHROPIC_BASE_URL`` holds no ``/v1``. The 2.x API takes no
``temperature``: a ``--temperature`` or job temperature is not sent to Anthropic
(the report says so once).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import orjson

from llmbatch._core.exceptions import (
    ConnectionFailed,
    ContentFiltered,
    ProviderError,
    error_for_status,
)
from llmbatch._core.headers import RateLimitHint
from llmbatch._core.jobs import Request
from llmbatch._core.usage import Usage
from llmbatch.providers._base import Answer
from llmbatch.providers._errors import Attempt, redact, text_field, token_count, unexpected_shape
from llmbatch.providers._http import HttpProvider, SSEEvent, now_ms
from llmbatch.providers._prefix import mark_prefix
from llmbatch.providers._structured import ANTHROPIC_MODES, StructuredModes, schema_instruction

if TYPE_CHECKING:
    from llmbatch._config.settings import ProviderSettings, RunConfig

ANTHROPIC_VERSION = "2026-10-21"  # anthropic 2.14's ANTHROPIC_API_VERSION


def _content_to_anthropic(content: Any) -> Any:
    """OpenAI-style content blocks → Anthropic's (text passes through)."""
    if isinstance(content, str):
        return content
    blocks = []
    for block in content:
        if isinstance(block, dict) and block.get("type") == "text":
            blocks.append({"type": "text", "text": block.get("text", "")})
        elif isinstance(block, dict) and block.get("type") == "image_url":
            url = (block.get("image_url") or {}).get("url", "")
            blocks.append({"type": "image", "source": {"type": "url", "url": url}})
        else:
            blocks.append(block)
    return blocks


def build_anthropic_body(
    model: str, request: Request, structured: str = "native", notes: set[str] | None = None
) -> dict[str, Any]:
    """The wire body for one attempt. A Message Batches ``params`` body passes through."""
    if request.wire_format == "anthropic" and request.body is not None:
        body = dict(request.body)
        body["model"] = model
        body.setdefault("max_tokens", request.max_tokens)
        if request.appended:
            body["messages"] = list(body["messages"]) + request.appended
    else:
        body = {
            "model": model,
            "max_tokens": request.max_tokens or 1024,
            "messages": [
                {"role": m["role"], "content": _content_to_anthropic(m["content"])}
                for m in request.messages
                if m["role"] in ("user", "assistant")
            ],
        }
        if request.system is not None:
            body["system"] = request.system
    if (body.pop("temperature", None) is not None or request.temperature is not None) and (
        notes is not None
    ):
        notes.add("temperature is not sent to Anthropic: its 2.x Messages API takes none")
    native = structured in ("native", "output_config")
    if request.schema is not None and native and "output_config" not in body:
        body["output_config"] = {"format": {"type": "json_schema", "schema": request.schema}}
    elif request.schema is not None and structured == "prompt":
        body["system"] = _with_schema_instruction(body.get("system"), request.schema)
    if request.cache is not None and request.cache.mark:
        mark_prefix(body, request.cache)
    body["stream"] = True
    return body


def _with_schema_instruction(system: Any, schema: dict[str, Any]) -> Any:
    note = schema_instruction(schema)
    if system is None:
        return note
    if isinstance(system, str):
        return system + "\n\n" + note
    return [*system, {"type": "text", "text": note}]


class AnthropicProvider(HttpProvider):
    def __init__(self, settings: ProviderSettings, config: RunConfig) -> None:
        super().__init__(settings, config)
        self.url = self.base_url + "/v1/messages"
        self.headers = {
            "content-type": "application/json",
            "accept": "text/event-stream",
            "anthropic-version": ANTHROPIC_VERSION,
            "user-agent": "llmbatch/0.1",
            **dict(settings.headers),
        }
        if self.api_key:  # a keyless custom provider sends no credential at all
            self.headers["authorization"] = f"Bearer {self.api_key}"

        self.structured = StructuredModes(ANTHROPIC_MODES, settings.structured_output, self.notes)

    async def _send(self, model: str, request: Request, attempt: Attempt) -> Answer:
        mode = self.structured.mode
        body = build_anthropic_body(model, request, mode, self.notes)
        ours = request.schema is not None and mode != "prompt"
        if ours and request.body is not None and "output_config" in request.body:
            ours = False  # the line's own output_config: not ours to change
        stream = AnthropicStream(time.perf_counter(), self.api_key)
        attempt.spent = stream.spent
        try:
            hint, request_id = await self._exchange(self.url, body, self.headers, stream)
        except ProviderError as err:
            self.structured.adapt(err, mode if ours else None)
            raise
        return stream.answer(hint, request_id)


class AnthropicStream:
    """Reads one streamed message (or a whole one), event by event."""

    __slots__ = (
        "_key",
        "cache_read",
        "cache_write",
        "cache_write_1h",
        "done",
        "error",
        "output",
        "parts",
        "raw_in",
        "started",
        "stop_reason",
        "ttft",
    )

    def __init__(self, started: float, key: str | None = None) -> None:
        self.started = started
        self._key = key
        self.parts: list[str] = []
        self.raw_in = self.cache_read = self.cache_write = self.cache_write_1h = self.output = 0
        self.stop_reason: str | None = None
        self.ttft: float | None = None
        self.error: ProviderError | None = None
        self.done = False

    def spent(self) -> Usage | None:
        if not (self.raw_in or self.output):
            return None
        return self._total()

    def _total(self) -> Usage:
        return _usage(
            self.raw_in, self.cache_read, self.cache_write, self.output, self.cache_write_1h
        )

    def feed(self, event: SSEEvent) -> None:
        kind = event.event
        if kind == "ping":
            return
        data = orjson.loads(event.data)
        if not isinstance(data, dict):
            raise unexpected_shape(f"an event that is {type(data).__name__}, not an object")
        if kind is None:
            kind = data.get("type")
        if kind == "content_block_delta":
            delta = data.get("delta") or {}
            text = text_field(delta.get("text"))
            if text is None:
                text = text_field(delta.get("partial_json"))
            if text:
                if self.ttft is None:
                    self.ttft = now_ms(self.started)
                self.parts.append(text)
        elif kind == "message_start":
            self._usage((data.get("message") or {}).get("usage") or {})
        elif kind == "message_delta":
            self.stop_reason = text_field((data.get("delta") or {}).get("stop_reason")) or (
                self.stop_reason
            )
            self._usage(data.get("usage") or {})
        elif kind == "message_stop":
            self.done = True
        elif kind == "error":
            err = data.get("error") or {}
            self.error = _stream_error(err, redact(str(err.get("message") or ""), self._key))
            self.done = True

    def whole(self, raw: bytes) -> None:
        """A non-streamed message."""
        data = orjson.loads(raw)
        if not isinstance(data, dict):
            raise unexpected_shape(f"a message that is {type(data).__name__}, not an object")
        for block in data.get("content") or ():
            if isinstance(block, dict) and block.get("type") == "text":
                self.parts.append(text_field(block.get("text")) or "")
        self.ttft = now_ms(self.started)
        self._usage(data.get("usage") or {})
        self.stop_reason = text_field(data.get("stop_reason"))
        self.done = True

    def _usage(self, u: dict[str, Any]) -> None:
        # Absent fields keep what an earlier event said (message_delta repeats only some).
        if u.get("input_tokens") is not None:
            self.raw_in = token_count(u["input_tokens"])
        if u.get("cache_read_input_tokens") is not None:
            self.cache_read = token_count(u["cache_read_input_tokens"])
        if u.get("cache_creation_input_tokens") is not None:
            self.cache_write = token_count(u["cache_creation_input_tokens"])
        if u.get("output_tokens") is not None:
            self.output = token_count(u["output_tokens"])
        creation = u.get("cache_creation")
        if isinstance(creation, dict) and creation.get("ephemeral_1h_input_tokens") is not None:
            self.cache_write_1h = token_count(creation["ephemeral_1h_input_tokens"])

    def answer(self, hint: RateLimitHint | None, request_id: str | None) -> Answer:
        """The Answer, once the body has ended; or the ProviderError of an incomplete one."""
        usage = self._total()
        if self.error is not None:
            raise self.error.with_usage(self.spent())
        if not self.done:
            raise ConnectionFailed("the stream ended before message_stop (truncated)").with_usage(
                usage
            )
        if self.stop_reason is None:
            raise ConnectionFailed("the stream ended without a finish reason").with_usage(usage)
        if self.stop_reason == "refusal":
            raise ContentFiltered("the model refused to answer (stop_reason: refusal)").with_usage(
                usage
            )
        return Answer(
            text="".join(self.parts),
            usage=usage,
            stop_reason=self.stop_reason,
            latency_ms=now_ms(self.started),
            ttft_ms=self.ttft,
            request_id=request_id,
            limits=hint,
        )


def _usage(raw_in: int, cache_read: int, cache_write: int, output: int, write_1h: int = 0) -> Usage:
    # Anthropic's input_tokens excludes cache reads and writes; ours includes them.
    return Usage(
        raw_in + cache_read + cache_write,
        output,
        cache_read,
        cache_write,
        min(write_1h, cache_write),
    )


_STREAM_ERROR_STATUS = {
    "overloaded_error": 529,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
}


def _stream_error(err: dict[str, Any], message: str) -> ProviderError:
    """An ``event: error`` inside a 200 stream, classed by its type."""
    kind = str(err.get("type") or "")
    status = _STREAM_ERROR_STATUS.get(kind, 500)
    out = error_for_status(status, message or kind or "error event in stream", body_type=kind)
    out.status = None  # the HTTP status was 200; the type says what went wrong
    return out
