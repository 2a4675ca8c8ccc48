"""OpenAI Chat Completions, streamed, and any server that speaks it (vLLM, Ollama, llama.cpp,
Together, Groq, OpenRouter, gateways).

``OPENAI_BASE_URL`` includes ``/v1``, as in the SDK. Streams ask for
``stream_options.include_usage`` so the last chunk carries usage. The output cap
goes out as ``max_completion_tokens`` to api.openai.com (the o-series refuses
``max_tokens``) and as ``max_tokens`` elsewhere (what most compatible servers
read); ``max_tokens_field`` in ``[providers.NAME]`` overrides.
"""

from __future__ import annotations

import re
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
from llmbatch._core.jobs import Request, estimate_input_tokens, text_of
from llmbatch._core.usage import Usage
from llmbatch.providers._base import Answer
from llmbatch.providers._errors import Attempt, redact, text_field, token_count, unexpected_shape
from llmbatch.providers._http import HttpProvider, SSEEvent, now_ms
from llmbatch.providers._structured import OPENAI_MODES, StructuredModes, schema_instruction

if TYPE_CHECKING:
    from llmbatch._config.settings import ProviderSettings, RunConfig

# OpenAI strict structured outputs accept a subset of JSON Schema.
_STRICT_UNSUPPORTED = {
    "minLength",
    "maxLength",
    "pattern",
    "format",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
    "minItems",
    "maxItems",
    "uniqueItems",
    "patternProperties",
    "minProperties",
    "maxProperties",
}


def fits_strict(schema: Any) -> bool:
    """Does ``schema`` follow OpenAI strict mode's rules (all required, no extras, no bounds)?"""
    if isinstance(schema, list):
        return all(fits_strict(s) for s in schema)
    if not isinstance(schema, dict):
        return True
    if _STRICT_UNSUPPORTED & schema.keys():
        return False
    if schema.get("type") == "object" or "properties" in schema:
        props = schema.get("properties", {})
        if schema.get("additionalProperties") is not False:
            return False
        if set(schema.get("required", [])) != set(props):
            return False
    for key in ("properties", "$defs", "definitions"):
        if isinstance(schema.get(key), dict) and not all(
            fits_strict(s) for s in schema[key].values()
        ):
            return False
    for key in ("items", "anyOf", "allOf", "oneOf"):
        if key in schema and not fits_strict(schema[key]):
            return False
    return True


def _schema_name(schema: dict[str, Any]) -> str:
    title = schema.get("title")
    if isinstance(title, str):
        name = re.sub(r"[^A-Za-z0-9_-]", "_", title)[:64]
        if name:
            return name
    return "output"


def build_openai_body(
    model: str,
    request: Request,
    *,
    max_tokens_field: str = "max_tokens",
    structured: str = "native",
    notes: set[str] | None = None,
) -> dict[str, Any]:
    """The wire body for one attempt. A Batch API ``body`` passes through.

    ``structured`` is how a schema goes out: "native" or "json_schema"
    (``response_format`` json_schema), "json_object" (JSON mode, the schema in a
    system message) or "prompt" (the schema in a system message only).
    """
    if request.wire_format == "openai" and request.body is not None:
        body = dict(request.body)
        body["model"] = model
        if "max_tokens" not in body and "max_completion_tokens" not in body:
            body[max_tokens_field] = request.max_tokens
        if request.temperature is not None:
            body.setdefault("temperature", request.temperature)
        if request.appended:
            body["messages"] = list(body["messages"]) + request.appended
    else:
        messages: list[dict[str, Any]] = []
        if request.system is not None:
            system = request.system
            if isinstance(system, list):  # Anthropic text blocks
                system = text_of(system)
            messages.append({"role": "system", "content": system})
        messages.extend({"role": m["role"], "content": m["content"]} for m in request.messages)
        body = {"model": model, "messages": messages, max_tokens_field: request.max_tokens}
        if request.temperature is not None:
            body["temperature"] = request.temperature
    if request.schema is not None and "response_format" not in body:
        _add_structured(body, request.schema, structured, notes)
    cache = request.cache
    if cache is not None and cache.cache_key is not None and "prompt_cache_key" not in body:
        body["prompt_cache_key"] = cache.cache_key
        if cache.extended:
            body.setdefault("prompt_cache_retention", "24h")
    body["stream"] = True
    body["stream_options"] = {"include_usage": True}
    return body


def _add_structured(
    body: dict[str, Any], schema: dict[str, Any], structured: str, notes: set[str] | None
) -> None:
    if structured in ("native", "json_schema"):
        strict = fits_strict(schema)
        if not strict and notes is not None:
            notes.add(
                f"schema {_schema_name(schema)!r} does not fit OpenAI strict mode "
                "(every property required, additionalProperties false, no bounds or "
                "formats): sent with strict: false, and validated here"
            )
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": _schema_name(schema), "schema": schema, "strict": strict},
        }
        return
    if structured == "json_object":
        body["response_format"] = {"type": "json_object"}
    body["messages"] = [
        {"role": "system", "content": schema_instruction(schema)},
        *body["messages"],
    ]


class OpenAIProvider(HttpProvider):
    def __init__(self, settings: ProviderSettings, config: RunConfig) -> None:
        super().__init__(settings, config)
        self.url = self.base_url + "/chat/completions"
        self.max_tokens_field = settings.max_tokens_field or (
            "max_completion_tokens" if "api.openai.com" in self.base_url else "max_tokens"
        )
        self.headers = {
            "content-type": "application/json",
            "accept": "text/event-stream",
            "user-agent": "llmbatch/0.1",
            **dict(settings.headers),
        }
        if self.api_key:
            self.headers["authorization"] = f"Bearer {self.api_key}"
        self.structured = StructuredModes(OPENAI_MODES, settings.structured_output, self.notes)

    async def _send(self, model: str, request: Request, attempt: Attempt) -> Answer:
        mode = self.structured.mode
        body = build_openai_body(
            model,
            request,
            max_tokens_field=self.max_tokens_field,
            structured=mode,
            notes=self.notes,
        )
        ours = request.schema is not None and mode != "prompt"
        if ours and request.body is not None and "response_format" in request.body:
            ours = False  # the line's own response_format: not ours to change
        stream = OpenAIStream(time.perf_counter(), self.api_key)
        attempt.spent = stream.spent
        try:
            hint, request_id = await self._exchange(self.url, body, self.headers, stream)
        except ProviderError as err:
            self.structured.adapt(err, mode if ours else None)
            raise
        return stream.answer(request, hint, request_id)


class OpenAIStream:
    """Reads one streamed chat completion (or a whole one), event by event."""

    __slots__ = ("_key", "done", "error", "finish", "parts", "refusal", "started", "ttft", "usage")

    def __init__(self, started: float, key: str | None = None) -> None:
        self.started = started
        self._key = key
        self.parts: list[str] = []
        self.refusal: list[str] = []
        self.usage: Usage | None = None
        self.finish: str | None = None
        self.ttft: float | None = None
        self.error: ProviderError | None = None
        self.done = False

    def spent(self) -> Usage | None:
        return self.usage

    def feed(self, event: SSEEvent) -> None:
        if event.data == b"[DONE]":
            self.done = True
            return
        self._chunk(orjson.loads(event.data), "delta")

    def whole(self, raw: bytes) -> None:
        """A non-streamed completion: choices[].message instead of choices[].delta."""
        self._chunk(orjson.loads(raw), "message")
        self.done = True

    def _chunk(self, chunk: Any, key: str) -> None:
        if not isinstance(chunk, dict):
            raise unexpected_shape(f"a chunk that is {type(chunk).__name__}, not an object")
        if chunk.get("error"):
            self.error = _stream_error(chunk["error"], self._key)
            self.done = True
            return
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue  # n > 1: the result holds the first choice
            delta = choice.get(key) or {}
            text = text_field(delta.get("content"))
            if text:
                if self.ttft is None:
                    self.ttft = now_ms(self.started)
                self.parts.append(text)
            refusal = text_field(delta.get("refusal"))
            if refusal:
                self.refusal.append(refusal)
            finish = text_field(choice.get("finish_reason"))
            if finish:
                self.finish = finish
        u = chunk.get("usage")
        if u:
            details = u.get("prompt_tokens_details") or {}
            out_details = u.get("completion_tokens_details") or {}
            # OpenAI's prompt_tokens includes the cached ones, as our input_tokens does.
            self.usage = Usage(
                token_count(u.get("prompt_tokens")),
                token_count(u.get("completion_tokens")),
                token_count(details.get("cached_tokens")),
                0,
                reasoning_tokens=token_count(out_details.get("reasoning_tokens")),
            )

    def answer(
        self, request: Request, hint: RateLimitHint | None, request_id: str | None
    ) -> Answer:
        """The Answer, once the body has ended; or the ProviderError of an incomplete one."""
        if self.error is not None:
            raise self.error.with_usage(self.usage)
        if not self.done:
            raise ConnectionFailed("the stream ended before [DONE] (truncated)").with_usage(
                self.usage
            )
        usage = self.usage
        if usage is None:
            # A server that ignores include_usage: estimate, so budgets still hold.
            text = "".join(self.parts)
            usage = Usage(estimate_input_tokens(request), max(1, len(text) // 4))
        if self.finish is None:
            raise ConnectionFailed("the stream ended without a finish reason").with_usage(usage)
        if self.finish == "content_filter" or self.refusal:
            reason = "".join(self.refusal) or "finish_reason: content_filter"
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


def _stream_error(err: Any, key: str | None) -> ProviderError:
    if not isinstance(err, dict):
        return error_for_status(500, redact(str(err), key))
    message = redact(str(err.get("message") or "error in stream"), key)
    kind = str(err.get("type") or "")
    code = err.get("code")
    status = code if isinstance(code, int) else None
    if status is None:
        status = {
            "rate_limit_exceeded": 429,
            "server_error": 500,
            "invalid_request_error": 400,
            "overloaded": 529,
        }.get(kind, 500)
    out = error_for_status(status, message, body_type=kind)
    out.status = None
    return out
