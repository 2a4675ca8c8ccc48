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

from .._exceptions import ConnectionFailed, ContentFiltered, ProviderError, error_for_status
from .._jobs import Request, estimate_input_tokens, text_of
from .._usage import Usage
from ._base import Answer
from ._http import WHOLE_ANSWER, HttpProvider, now_ms

if TYPE_CHECKING:
    from .._config import ProviderSettings, RunConfig

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
    """The wire body for one attempt. A Batch API ``body`` passes through."""
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
        if structured == "native":
            strict = fits_strict(request.schema)
            if not strict and notes is not None:
                notes.add(
                    f"schema {_schema_name(request.schema)!r} does not fit OpenAI strict mode "
                    "(every property required, additionalProperties false, no bounds or "
                    "formats): sent with strict: false, and validated here"
                )
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {
                    "name": _schema_name(request.schema),
                    "schema": request.schema,
                    "strict": strict,
                },
            }
        else:
            note = (
                "Answer with only a JSON value that validates against this JSON Schema, "
                "no prose and no code fences:\n" + orjson.dumps(request.schema).decode()
            )
            body["messages"] = [{"role": "system", "content": note}, *body["messages"]]
    body["stream"] = True
    body["stream_options"] = {"include_usage": True}
    return body


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

    async def send(self, model: str, request: Request, time_limit: float) -> Answer:
        started = time.perf_counter()
        body = build_openai_body(
            model,
            request,
            max_tokens_field=self.max_tokens_field,
            structured=self.settings.structured_output,
            notes=self.notes,
        )
        parts: list[str] = []
        usage: Usage | None = None
        finish: str | None = None
        refusal: list[str] = []
        ttft: float | None = None
        hint = None
        request_id = None
        done = False
        loads = orjson.loads
        try:
            async for event, h, rid in self._stream(self.url, body, self.headers):
                if event is None:
                    hint, request_id = h, rid
                    continue
                if done:
                    continue  # read on to the end, so the connection goes back to the pool
                if event.data == b"[DONE]":
                    done = True
                    continue
                chunk = loads(event.data)
                if event.event == WHOLE_ANSWER:
                    # Non-streamed: choices[].message instead of choices[].delta.
                    for choice in chunk.get("choices") or ():
                        choice["delta"] = choice.get("message") or {}
                    done = True
                if "error" in chunk and chunk["error"]:
                    raise _stream_error(chunk["error"], self._redact)
                for choice in chunk.get("choices") or ():
                    if choice.get("index", 0) != 0:
                        continue  # n > 1: the result holds the first choice
                    delta = choice.get("delta") or {}
                    text = delta.get("content")
                    if text:
                        if ttft is None:
                            ttft = now_ms(started)
                        parts.append(text)
                    if delta.get("refusal"):
                        refusal.append(delta["refusal"])
                    if choice.get("finish_reason"):
                        finish = choice["finish_reason"]
                u = chunk.get("usage")
                if u:
                    cached = (u.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
                    usage = Usage(
                        int(u.get("prompt_tokens") or 0),
                        int(u.get("completion_tokens") or 0),
                        int(cached),
                        0,
                    )
        except ProviderError as exc:
            if usage is not None:
                exc.usage = usage
            raise
        except orjson.JSONDecodeError as exc:
            raise ConnectionFailed(f"a stream chunk was not valid JSON: {exc}") from exc
        if not done:
            raise ConnectionFailed("the stream ended before [DONE] (truncated)").with_usage(usage)
        if usage is None:
            # A server that ignores include_usage: estimate, so budgets still hold.
            text = "".join(parts)
            usage = Usage(estimate_input_tokens(request), max(1, len(text) // 4))
        if finish == "content_filter" or refusal:
            reason = "".join(refusal) or "finish_reason: content_filter"
            raise ContentFiltered(f"the answer was filtered or refused: {reason}").with_usage(usage)
        return Answer(
            text="".join(parts),
            usage=usage,
            stop_reason=finish,
            latency_ms=now_ms(started),
            ttft_ms=ttft,
            request_id=request_id,
            limits=hint,
        )


def _stream_error(err: Any, redact: Any) -> ProviderError:
    if not isinstance(err, dict):
        return error_for_status(500, redact(str(err)))
    message = redact(str(err.get("message") or "error in stream"))
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
