"""The fake API's wire formats: error bodies, whole answers, and the SSE events of a stream.

Kept apart from ``fakeapi.py`` (which decides what to answer) so the shapes the
official SDKs must parse (``test_fakeapi.py``) are in one place.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from aiohttp import web

_ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}
_OPENAI_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    404: "invalid_request_error",
    429: "requests",
    500: "server_error",
}


def dumps(obj: Any) -> str:
    return orjson.dumps(obj).decode()


def error_payload(kind: str, status: int, message: str) -> tuple[dict[str, Any], dict[str, str]]:
    """(body, headers) of an error answer as each provider sends it."""
    if kind == "anthropic":
        payload: dict[str, Any] = {
            "type": "error",
            "error": {"type": _ANTHROPIC_ERROR_TYPES.get(status, "api_error"), "message": message},
            "request_id": "req_fake",
        }
        return payload, {"request-id": "req_fake"}
    if kind == "azure":  # Azure's error bodies carry the status as the code, no type
        return {"error": {"code": str(status), "message": message}}, {"apim-request-id": "req_fake"}
    err_type = _OPENAI_ERROR_TYPES.get(status, "server_error")
    payload = {"error": {"message": message, "type": err_type, "param": None, "code": None}}
    return payload, {"x-request-id": "req_fake"}


def whole_payload(
    kind: str,
    model: Any,
    text: str,
    in_tokens: int,
    out_tokens: int,
    stop: str | None,
    cached: int,
) -> dict[str, Any]:
    """A non-streamed answer."""
    if kind == "anthropic":
        return {
            "id": "msg_fake",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": text}],
            "stop_reason": stop,
            "stop_sequence": None,
            "usage": {
                "input_tokens": in_tokens - cached,
                "output_tokens": out_tokens,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": cached,
            },
        }
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "finish_reason": stop,
                "logprobs": None,
            }
        ],
        "usage": openai_usage(in_tokens, out_tokens, cached),
    }


def openai_usage(in_tokens: int, out_tokens: int, cached: int) -> dict[str, Any]:
    return {
        "prompt_tokens": in_tokens,
        "completion_tokens": out_tokens,
        "total_tokens": in_tokens + out_tokens,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


def key_of(headers: dict[str, str]) -> str | None:
    auth = headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:]
    return headers.get("x-api-key") or headers.get("api-key")


class SSE:
    """Writes one provider's stream events to a prepared response."""

    def __init__(self, resp: web.StreamResponse, kind: str, model: Any) -> None:
        self.resp = resp
        self.kind = kind
        self.model = model

    async def event(self, name: str, data: dict[str, Any]) -> None:
        await self.resp.write(
            b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"
        )

    async def raw(self, data: dict[str, Any]) -> None:
        await self.resp.write(b"data: " + orjson.dumps(data) + b"\n\n")

    async def chunk(self, delta: dict[str, Any], finish: str | None) -> None:
        await self.raw(
            {
                "id": "chatcmpl-fake",
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": self.model,
                "choices": [
                    {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
                ],
            }
        )

    async def start(self, in_tokens: int, cached: int, written: tuple[int, int] = (0, 0)) -> None:
        """What comes before the first text; ``written``: cache writes (all, of them 1 h)."""
        if self.kind != "anthropic":
            await self.chunk({"role": "assistant", "content": ""}, None)
            return
        usage: dict[str, Any] = {
            "input_tokens": in_tokens - cached - written[0],
            "cache_creation_input_tokens": written[0],
            "cache_read_input_tokens": cached,
            "output_tokens": 1,
        }
        if written[0]:
            usage["cache_creation"] = {
                "ephemeral_5m_input_tokens": written[0] - written[1],
                "ephemeral_1h_input_tokens": written[1],
            }
        message = {
            "id": "msg_fake",
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": usage,
        }
        await self.event("message_start", {"type": "message_start", "message": message})
        block = {"type": "text", "text": ""}
        await self.event(
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": block},
        )
        await self.event("ping", {"type": "ping"})

    async def text(self, text: str) -> None:
        if self.kind == "anthropic":
            delta = {"type": "text_delta", "text": text}
            await self.event(
                "content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta}
            )
        else:
            await self.chunk({"content": text}, None)

    async def error(self) -> None:
        """An overloaded error inside a 200 stream."""
        if self.kind == "anthropic":
            err = {"type": "overloaded_error", "message": "Overloaded"}
            await self.event("error", {"type": "error", "error": err})
        else:
            await self.raw(
                {"error": {"message": "server overloaded", "type": "server_error", "code": None}}
            )

    async def end(self, stop: str | None, out_tokens: int, usage: dict[str, Any] | None) -> None:
        """The final events; ``stop`` None ends the stream cleanly without a finish reason."""
        if self.kind == "anthropic":
            await self.event("content_block_stop", {"type": "content_block_stop", "index": 0})
            await self.event(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": stop, "stop_sequence": None},
                    "usage": {"output_tokens": out_tokens},
                },
            )
            await self.event("message_stop", {"type": "message_stop"})
            return
        if stop is not None:
            await self.chunk({}, stop)
        if usage is not None:
            await self.raw(
                {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion.chunk",
                    "created": int(time.time()),
                    "model": self.model,
                    "choices": [],
                    "usage": usage,
                }
            )
        await self.resp.write(b"data: [DONE]\n\n")
