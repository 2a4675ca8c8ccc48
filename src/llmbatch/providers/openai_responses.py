"""OpenAI's Responses API (``POST /responses``), an endpoint shape of the OpenAI provider.

A request goes out as ``input`` (the messages) and ``instructions`` (the system
prompt), ``max_output_tokens``, structured output as ``text.format``, and
``store: false`` (nothing kept on OpenAI's side unless a line's own body asks).
The stream is typed events: text arrives as ``response.output_text.delta``; the
answer is whole only once ``response.completed`` (or ``response.incomplete``, a
capped answer) has come. A stream that ends before either is incomplete and
retryable, never an answer.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from llmbatch._core.exceptions import (
    ConnectionFailed,
    ContentFiltered,
    ProviderError,
    error_for_status,
)
from llmbatch._core.headers import RateLimitHint
from llmbatch._core.jobs import Request, estimate_input_tokens, text_of
from llmbatch._core.usage import Usage
from llmbatch.providers._base import Answer
from llmbatch.providers._errors import redact, text_field, token_count, unexpected_shape
from llmbatch.providers._http import SSEEvent, now_ms
from llmbatch.providers._structured import (
    schema_instruction,
    schema_name,
    strict_or_note,
)

# Keys of a chat-completions body (a batch line's own) that mean the same in a Responses body.
_SAME_KEYS = (
    "temperature",
    "top_p",
    "metadata",
    "user",
    "parallel_tool_calls",
    "store",
    "service_tier",
    "reasoning",
    "prompt_cache_key",
    "prompt_cache_retention",
)


def build_responses_body(
    model: str,
    request: Request,
    *,
    structured: str = "native",
    notes: set[str] | None = None,
) -> dict[str, Any]:
    """The Responses API body for one attempt (streamed; ``store`` false unless asked)."""
    if request.wire_format == "openai" and request.body is not None:
        body = _from_chat_body(request.body, request, notes)
        if request.appended:  # repair turns after a line's own body (else in messages)
            body["input"] = list(body["input"]) + [_item(m) for m in request.appended]
    else:
        body = {"input": [_item(m) for m in request.messages]}
        if request.system is not None:
            system = request.system
            body["instructions"] = text_of(system) if isinstance(system, list) else system
        if request.temperature is not None:
            body["temperature"] = request.temperature
        body["max_output_tokens"] = request.max_tokens
    body["model"] = model
    if request.schema is not None and "format" not in (body.get("text") or {}):
        _add_structured(body, request.schema, structured, notes)
    cache = request.cache  # the prompt cache's routing key, as for chat completions
    if cache is not None and cache.cache_key is not None and "prompt_cache_key" not in body:
        body["prompt_cache_key"] = cache.cache_key
        if cache.extended:
            body.setdefault("prompt_cache_retention", "24h")
    body.setdefault("store", False)
    body["stream"] = True
    return body


def _item(message: dict[str, Any]) -> dict[str, Any]:
    content = message["content"]
    if isinstance(content, list):  # text blocks
        content = text_of(content)
    return {"role": message["role"], "content": content}


def _from_chat_body(
    chat: dict[str, Any], request: Request, notes: set[str] | None
) -> dict[str, Any]:
    """A line's own chat-completions body, said in the Responses API's words."""
    body: dict[str, Any] = {k: chat[k] for k in _SAME_KEYS if k in chat}
    items: list[dict[str, Any]] = []
    system: list[str] = []
    for m in chat.get("messages") or ():
        if m.get("role") in ("system", "developer") and not items:
            content = m.get("content")
            system.append(text_of(content) if isinstance(content, list) else str(content))
        else:
            items.append(_item(m))
    body["input"] = items
    if system:
        body["instructions"] = "\n\n".join(system)
    cap = chat.get("max_completion_tokens") or chat.get("max_tokens") or request.max_tokens
    body["max_output_tokens"] = cap
    if request.temperature is not None:
        body.setdefault("temperature", request.temperature)
    if "reasoning_effort" in chat:  # chat's name for it
        body["reasoning"] = {"effort": chat["reasoning_effort"]}
    fmt = chat.get("response_format")
    if isinstance(fmt, dict):
        if fmt.get("type") == "json_schema":
            spec = fmt.get("json_schema") or {}
            body["text"] = {"format": {"type": "json_schema", **spec}}
        else:
            body["text"] = {"format": fmt}
    dropped = sorted(
        set(chat)
        - {*_SAME_KEYS, "messages", "model", "response_format", "reasoning_effort"}
        - {"max_tokens", "max_completion_tokens", "stream", "stream_options"}
    )
    if dropped and notes is not None:
        notes.add(
            "the Responses API has no chat-completions field "
            + ", ".join(dropped)
            + ": not sent (use --api chat for these lines)"
        )
    return body


def _add_structured(
    body: dict[str, Any], schema: dict[str, Any], structured: str, notes: set[str] | None
) -> None:
    if structured in ("native", "json_schema"):
        strict = strict_or_note(schema, notes)
        body["text"] = {
            "format": {
                "type": "json_schema",
                "name": schema_name(schema),
                "schema": schema,
                "strict": strict,
            }
        }
        return
    if structured == "json_object":
        body["text"] = {"format": {"type": "json_object"}}
    instruction = schema_instruction(schema)
    prior = body.get("instructions")
    body["instructions"] = instruction if not prior else f"{prior}\n\n{instruction}"


def responses_usage(u: Any) -> Usage:
    """Usage from a Responses ``usage`` object (cached tokens are part of ``input_tokens``)."""
    if not isinstance(u, dict):
        raise unexpected_shape(f"a usage that is {type(u).__name__}")
    details = u.get("input_tokens_details") or {}
    return Usage(
        token_count(u.get("input_tokens")),
        token_count(u.get("output_tokens")),
        token_count(details.get("cached_tokens")),
        token_count(details.get("cache_write_tokens")),
    )


def reasoning_tokens(u: Any) -> int:
    """The reasoning tokens inside ``output_tokens`` (billed as output)."""
    if not isinstance(u, dict):
        return 0
    return token_count((u.get("output_tokens_details") or {}).get("reasoning_tokens"))


class ResponsesStream:
    """Reads one streamed Response (or a whole one), event by event."""

    __slots__ = (
        "_key",
        "done",
        "error",
        "finish",
        "parts",
        "reasoning",
        "refusal",
        "started",
        "ttft",
        "usage",
    )

    def __init__(self, started: float | None = None, key: str | None = None) -> None:
        self.started = time.perf_counter() if started is None else started
        self._key = key
        self.parts: list[str] = []
        self.refusal: list[str] = []
        self.usage: Usage | None = None
        self.reasoning = 0
        self.finish: str | None = None
        self.ttft: float | None = None
        self.error: ProviderError | None = None
        self.done = False

    def spent(self) -> Usage | None:
        return self.usage

    def feed(self, event: SSEEvent) -> None:
        if event.data == b"[DONE]":  # not sent by OpenAI; some gateways add it
            return
        data = orjson.loads(event.data)
        if not isinstance(data, dict):
            raise unexpected_shape(f"an event that is {type(data).__name__}, not an object")
        kind = text_field(data.get("type")) or event.event or ""
        if kind == "response.output_text.delta":
            text = text_field(data.get("delta"))
            if text:
                if self.ttft is None:
                    self.ttft = now_ms(self.started)
                self.parts.append(text)
        elif kind == "response.refusal.delta":
            text = text_field(data.get("delta"))
            if text:
                self.refusal.append(text)
        elif kind in ("response.completed", "response.incomplete", "response.failed"):
            self._final(data.get("response") or {}, streamed=True)
        elif kind == "error":
            self.error = _error_event(data, self._key)
            self.done = True

    def whole(self, raw: bytes) -> None:
        """A non-streamed Response object."""
        data = orjson.loads(raw)
        if not isinstance(data, dict):
            raise unexpected_shape("a response that is not an object")
        self._final(data, streamed=False)

    def _output(self, response: dict[str, Any]) -> None:
        """The text and refusals of a whole Response's ``output`` items."""
        for item in response.get("output") or ():
            for part in item.get("content") or () if isinstance(item, dict) else ():
                if part.get("type") == "output_text":
                    self.parts.append(text_field(part.get("text")) or "")
                elif part.get("type") == "refusal":
                    self.refusal.append(text_field(part.get("refusal")) or "")

    def _final(self, response: dict[str, Any], *, streamed: bool) -> None:
        if not self.parts and not self.refusal:
            # Whole, or a stream whose text came only in the final event (some servers).
            self._output(response)
        self.done = True
        if response.get("usage"):
            self.usage = responses_usage(response["usage"])
            self.reasoning = reasoning_tokens(response["usage"])
        status = response.get("status")
        if status == "completed":
            self.finish = "stop"
        elif status == "incomplete":
            reason = (response.get("incomplete_details") or {}).get("reason")
            self.finish = "content_filter" if reason == "content_filter" else "length"
        elif status == "failed":
            self.error = _error_event(response.get("error") or {}, self._key)
        elif not streamed and status in ("in_progress", "queued"):
            self.done = False  # a whole body that is not yet an answer

    def answer(
        self, request: Request, hint: RateLimitHint | None, request_id: str | None
    ) -> Answer:
        """The Answer, once the stream has ended; or the ProviderError of an incomplete one."""
        if self.error is not None:
            raise self.error.with_usage(self.usage)
        if not self.done or self.finish is None:
            raise ConnectionFailed(
                "the stream ended before response.completed (truncated)"
            ).with_usage(self.usage)
        usage = self.usage
        if usage is None:
            text = "".join(self.parts)
            usage = Usage(estimate_input_tokens(request), max(1, len(text) // 4))
        if self.finish == "content_filter" or self.refusal:
            reason = "".join(self.refusal) or "incomplete: content_filter"
            raise ContentFiltered(f"the answer was filtered or refused: {reason}").with_usage(usage)
        return Answer(
            text="".join(self.parts),
            usage=usage,
            stop_reason=self.finish,
            latency_ms=now_ms(self.started),
            ttft_ms=self.ttft,
            request_id=request_id,
            limits=hint,
        )


_CODES = {
    "rate_limit_exceeded": 429,
    "server_error": 500,
    "vector_store_timeout": 500,
    "invalid_prompt": 400,
    "invalid_request_error": 400,
    "overloaded": 529,
}


def _error_event(err: dict[str, Any], key: str | None) -> ProviderError:
    """An ``error`` event or a failed response's ``error``: transient unless it says not."""
    message = redact(str(err.get("message") or "error in stream"), key)
    code = err.get("code")
    status = _CODES.get(str(code), 500) if not isinstance(code, int) else code
    out = error_for_status(status, message, body_type=str(err.get("type") or code or ""))
    out.status = None
    return out
