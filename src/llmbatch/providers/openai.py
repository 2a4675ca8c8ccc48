"""OpenAI Chat Completions, streamed, and any server that speaks it (vLLM, Ollama, llama.cpp,
Together, Groq, OpenRouter, gateways).

``OPENAI_BASE_URL`` includes ``/v1``, as in the SDK. Streams ask for
``stream_options.include_usage`` so the last chunk carries usage. The output cap
goes out as ``max_completion_tokens`` to api.openai.com (the o-series refuses
``max_tokens``) and as ``max_tokens`` elsewhere (what most compatible servers
read); ``max_tokens_field`` in ``[providers.NAME]`` overrides.

``OpenAIWire`` says where a provider of this wire format is asked and in which
shape: Chat Completions or the Responses API (``--api``, built in
``openai_responses``), OpenAI's URLs or Azure's (``azure``), with the
``service_tier`` asked for. A flex tier's "resource unavailable" 429 is marked
``teaches_limit = False``: retried, but the rate limiter does not learn from it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import orjson

from llmbatch._config.provider_settings import AZURE_API_VERSION
from llmbatch._core.exceptions import (
    ConnectionFailed,
    ContentFiltered,
    ProviderError,
    RateLimited,
    error_for_status,
)
from llmbatch._core.headers import RateLimitHint
from llmbatch._core.jobs import Request, estimate_input_tokens, text_of
from llmbatch._core.models import ModelRef
from llmbatch._core.pricing import TIERED
from llmbatch._core.usage import Usage
from llmbatch.providers._base import Answer
from llmbatch.providers._errors import Attempt, redact, text_field, token_count, unexpected_shape
from llmbatch.providers._http import HttpProvider, SSEEvent, now_ms, parse_error_body
from llmbatch.providers._structured import (
    OPENAI_MODES,
    StructuredModes,
    schema_instruction,
    schema_name,
    strict_or_note,
)
from llmbatch.providers.openai_responses import ResponsesStream, build_responses_body

if TYPE_CHECKING:
    from llmbatch._config.settings import ProviderSettings, RunConfig


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
        strict = strict_or_note(schema, notes)
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": schema_name(schema), "schema": schema, "strict": strict},
        }
        return
    if structured == "json_object":
        body["response_format"] = {"type": "json_object"}
    body["messages"] = [
        {"role": "system", "content": schema_instruction(schema)},
        *body["messages"],
    ]


@dataclass(frozen=True, slots=True)
class OpenAIWire:
    """Where and in which shape one OpenAI-shaped provider is asked: the URL of a model,
    the body of a request. Shared by the provider, ``batch submit`` and ``--dry-run``."""

    kind: str  # "openai" | "azure"
    base_url: str
    api: str  # "chat" | "responses"
    service_tier: str | None
    max_tokens_field: str
    azure_path: str = "v1"
    api_version: str = AZURE_API_VERSION

    @classmethod
    def of(cls, settings: ProviderSettings, config: RunConfig) -> OpenAIWire:
        base = settings.resolved_base_url()
        return cls(
            kind=settings.kind,
            base_url=base,
            api=config.api_for(settings.name),
            service_tier=config.tier_for(settings.name),
            max_tokens_field=settings.max_tokens_field
            or (
                "max_completion_tokens"
                if "api.openai.com" in base or settings.kind == "azure"
                else "max_tokens"
            ),
            azure_path=settings.azure_path,
            api_version=settings.api_version
            or os.environ.get("OPENAI_API_VERSION")
            or AZURE_API_VERSION,
        )

    @property
    def deployment_path(self) -> bool:
        return self.kind == "azure" and self.azure_path == "deployment"

    def url(self, model: str) -> str:
        tail = "/responses" if self.api == "responses" else "/chat/completions"
        if self.deployment_path:
            if self.api == "chat":
                tail = f"/deployments/{quote(model, safe='')}" + tail
            return f"{self.base_url}{tail}?api-version={self.api_version}"
        return self.base_url + tail

    def body(
        self, model: str, request: Request, structured: str, notes: set[str] | None
    ) -> dict[str, Any]:
        if self.api == "responses":
            body = build_responses_body(model, request, structured=structured, notes=notes)
        else:
            body = build_openai_body(
                model,
                request,
                max_tokens_field=self.max_tokens_field,
                structured=structured,
                notes=notes,
            )
        if self.service_tier is not None:
            body.setdefault("service_tier", self.service_tier)
        return body


class OpenAIProvider(HttpProvider):
    """OpenAI and the servers that speak its wire format (chat completions or Responses)."""

    def __init__(self, settings: ProviderSettings, config: RunConfig) -> None:
        super().__init__(settings, config)
        self.wire = OpenAIWire.of(settings, config)
        self.max_tokens_field = self.wire.max_tokens_field
        self.headers = {
            "content-type": "application/json",
            "accept": "text/event-stream",
            "user-agent": "llmbatch/0.1",
            **dict(settings.headers),
            **self.auth_headers(),
        }
        self.structured = StructuredModes(OPENAI_MODES, settings.structured_output, self.notes)
        self._config = config
        self._priced: set[str] = set()  # models whose tier price was looked at

    @property
    def url(self) -> str:
        """The URL of a model-less endpoint (OpenAI's own: the model is in the body)."""
        return self.wire.url("")

    def auth_headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def _note_tier_price(self, model: str) -> None:
        """Say once per model when its tier (flex) is priced at a stand-in price."""
        if model in self._priced or self.wire.service_tier not in TIERED:
            return
        self._priced.add(model)
        book = self._config.price_book()
        ref = ModelRef(self.name, model)
        if book.price(ref) is not None and ref in book.notes:
            self.notes.add(f"{model}: {book.notes[ref].partition(': ')[2]}")

    async def _send(self, model: str, request: Request, attempt: Attempt) -> Answer:
        self._note_tier_price(model)
        mode = self.structured.mode
        body = self.wire.body(model, request, mode, self.notes)
        ours = request.schema is not None and mode != "prompt"
        if ours and request.body is not None and "response_format" in request.body:
            ours = False  # the line's own response_format: not ours to change
        stream: OpenAIStream | ResponsesStream
        if self.wire.api == "responses":
            stream = ResponsesStream(time.perf_counter(), self.api_key)
        else:
            stream = OpenAIStream(time.perf_counter(), self.api_key)
        attempt.spent = stream.spent
        try:
            hint, request_id = await self._exchange(
                self.wire.url(model), body, self.headers, stream
            )
        except ProviderError as err:
            self.structured.adapt(err, mode if ours else None)
            raise
        return stream.answer(request, hint, request_id)

    def _http_error(
        self,
        status: int,
        raw: bytes,
        headers: Mapping[str, str],
        hint: RateLimitHint | None,
        request_id: str | None,
    ) -> ProviderError:
        err = super()._http_error(status, raw, headers, hint, request_id)
        if isinstance(err, RateLimited) and self.wire.service_tier == "flex":
            err.teaches_limit = not resource_unavailable(raw)
        return err


def resource_unavailable(raw: bytes) -> bool:
    """A flex 429 that says OpenAI has no capacity now (not that our pace is too fast)."""
    message, body_type, code = parse_error_body(raw)
    words = " ".join(str(x) for x in (message, body_type, code) if x).lower()
    return "resource unavailable" in words or "resource_unavailable" in words


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
