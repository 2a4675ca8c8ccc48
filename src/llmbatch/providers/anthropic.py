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

from .._exceptions import ConnectionFailed, ContentFiltered, ProviderError, error_for_status
from .._jobs import Request
from .._usage import Usage
from ._base import Answer
from ._http import WHOLE_ANSWER, HttpProvider, now_ms

if TYPE_CHECKING:
    from .._config import ProviderSettings, RunConfig

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
    if request.schema is not None and structured == "native" and "output_config" not in body:
        body["output_config"] = {"format": {"type": "json_schema", "schema": request.schema}}
    elif request.schema is not None and structured == "prompt":
        body["system"] = _with_schema_instruction(body.get("system"), request.schema)
    body["stream"] = True
    return body


def _with_schema_instruction(system: Any, schema: dict[str, Any]) -> Any:
    note = (
        "Answer with only a JSON value that validates against this JSON Schema, "
        "no prose and no code fences:\n" + orjson.dumps(schema).decode()
    )
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
            "authorization": f"Bearer {self.api_key}",
            "user-agent": "llmbatch/0.1",
            **dict(settings.headers),
        }

    async def send(self, model: str, request: Request, time_limit: float) -> Answer:
        started = time.perf_counter()
        body = build_anthropic_body(model, request, self.settings.structured_output, self.notes)
        parts: list[str] = []
        usage = Usage()
        raw_in = cache_read = cache_write = 0
        stop_reason: str | None = None
        ttft: float | None = None
        hint = None
        request_id = None
        finished = False
        loads = orjson.loads
        try:
            async for event, h, rid in self._stream(self.url, body, self.headers):
                if event is None:
                    hint, request_id = h, rid
                    continue
                kind = event.event
                if kind == "ping":
                    continue
                data = loads(event.data)
                if kind == WHOLE_ANSWER:
                    for block in data.get("content") or ():
                        if isinstance(block, dict) and block.get("type") == "text":
                            parts.append(block.get("text", ""))
                    ttft = now_ms(started)
                    u = data.get("usage") or {}
                    raw_in = int(u.get("input_tokens") or 0)
                    cache_read = int(u.get("cache_read_input_tokens") or 0)
                    cache_write = int(u.get("cache_creation_input_tokens") or 0)
                    usage.output_tokens = int(u.get("output_tokens") or 0)
                    stop_reason = data.get("stop_reason")
                    finished = True
                    continue
                if kind is None:
                    kind = data.get("type")
                if kind == "content_block_delta":
                    delta = data.get("delta") or {}
                    text = delta.get("text")
                    if text is None:
                        text = delta.get("partial_json")
                    if text:
                        if ttft is None:
                            ttft = now_ms(started)
                        parts.append(text)
                elif kind == "message_start":
                    u = (data.get("message") or {}).get("usage") or {}
                    raw_in = int(u.get("input_tokens") or 0)
                    cache_read = int(u.get("cache_read_input_tokens") or 0)
                    cache_write = int(u.get("cache_creation_input_tokens") or 0)
                    usage.output_tokens = int(u.get("output_tokens") or 0)
                elif kind == "message_delta":
                    stop_reason = (data.get("delta") or {}).get("stop_reason") or stop_reason
                    u = data.get("usage") or {}
                    if u.get("output_tokens") is not None:
                        usage.output_tokens = int(u["output_tokens"])
                    if u.get("input_tokens") is not None:
                        raw_in = int(u["input_tokens"])
                    if u.get("cache_read_input_tokens") is not None:
                        cache_read = int(u["cache_read_input_tokens"])
                    if u.get("cache_creation_input_tokens") is not None:
                        cache_write = int(u["cache_creation_input_tokens"])
                elif kind == "message_stop":
                    finished = True
                elif kind == "error":
                    err = data.get("error") or {}
                    raise _stream_error(err, self._redact(str(err.get("message") or "")))
        except ProviderError as exc:
            if raw_in or usage.output_tokens:
                exc.usage = _usage(raw_in, cache_read, cache_write, usage.output_tokens)
            raise
        except orjson.JSONDecodeError as exc:
            raise ConnectionFailed(f"a stream event was not valid JSON: {exc}") from exc
        usage = _usage(raw_in, cache_read, cache_write, usage.output_tokens)
        if not finished:
            raise ConnectionFailed("the stream ended before message_stop (truncated)").with_usage(
                usage
            )
        if stop_reason == "refusal":
            raise ContentFiltered("the model refused to answer (stop_reason: refusal)").with_usage(
                usage
            )
        return Answer(
            text="".join(parts),
            usage=usage,
            stop_reason=stop_reason,
            latency_ms=now_ms(started),
            ttft_ms=ttft,
            request_id=request_id,
            limits=hint,
        )


def _usage(raw_in: int, cache_read: int, cache_write: int, output: int) -> Usage:
    # Anthropic's input_tokens excludes cache reads and writes; ours includes them.
    return Usage(raw_in + cache_read + cache_write, output, cache_read, cache_write)


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
