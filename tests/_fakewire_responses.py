"""The fake's OpenAI Responses API wire format: the Response object and its stream events.

Shapes follow OpenAI's API reference for ``POST /v1/responses`` (streamed: typed
events with a ``sequence_number``; ``response.completed`` / ``response.incomplete``
carry the whole Response with ``usage``) and the installed ``openai`` SDK's types;
``test_openai_shapes.py`` checks that the SDK parses them.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from aiohttp import web

MSG_ID = "msg_fake"
RESP_ID = "resp_fake"


def responses_usage(
    in_tokens: int, out_tokens: int, cached: int, reasoning: int = 0
) -> dict[str, Any]:
    return {
        "input_tokens": in_tokens,
        "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
        "output_tokens": out_tokens,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": in_tokens + out_tokens,
    }


def message_item(text: str, status: str = "completed") -> dict[str, Any]:
    part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
    return {
        "id": MSG_ID,
        "type": "message",
        "role": "assistant",
        "status": status,
        "content": [part],
    }


def response_obj(
    model: Any,
    status: str,
    output: list[dict[str, Any]],
    usage: dict[str, Any] | None,
    *,
    incomplete: str | None = None,
    error: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A Response object (the body of a whole answer, and of the lifecycle events)."""
    return {
        "id": RESP_ID,
        "object": "response",
        "created_at": int(time.time()),
        "status": status,
        "error": error,
        "incomplete_details": {"reason": incomplete} if incomplete else None,
        "instructions": None,
        "max_output_tokens": None,
        "model": model,
        "output": output,
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None},
        "store": False,
        "temperature": 1.0,
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": 1.0,
        "truncation": "disabled",
        "usage": usage,
        "user": None,
        "metadata": {},
    }


def whole_response(
    model: Any, text: str, in_tokens: int, out_tokens: int, stop: str | None, cached: int
) -> dict[str, Any]:
    """A non-streamed answer; ``stop`` "length" is an incomplete (capped) one."""
    usage = responses_usage(in_tokens, out_tokens, cached)
    if stop == "length":
        return response_obj(
            model,
            "incomplete",
            [message_item(text, "incomplete")],
            usage,
            incomplete="max_output_tokens",
        )
    if stop is None:
        return response_obj(model, "in_progress", [], None)
    return response_obj(model, "completed", [message_item(text)], usage)


class ResponsesSSE:
    """Writes one streamed Response (the same calls as ``_fakewire.SSE``)."""

    def __init__(self, resp: web.StreamResponse, kind: str, model: Any) -> None:
        self.resp = resp
        self.model = model
        self.seq = 0
        self.parts: list[str] = []
        self.in_tokens = 0
        self.cached = 0

    async def event(self, data: dict[str, Any]) -> None:
        data["sequence_number"] = self.seq
        self.seq += 1
        name = data["type"].encode()
        await self.resp.write(b"event: " + name + b"\ndata: " + orjson.dumps(data) + b"\n\n")

    async def start(self, in_tokens: int, cached: int, written: tuple[int, int] = (0, 0)) -> None:
        self.in_tokens, self.cached = in_tokens, cached
        shell = response_obj(self.model, "in_progress", [], None)
        await self.event({"type": "response.created", "response": shell})
        await self.event({"type": "response.in_progress", "response": shell})
        item = {**message_item("", "in_progress"), "content": []}
        await self.event({"type": "response.output_item.added", "output_index": 0, "item": item})
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        await self.event(
            {
                "type": "response.content_part.added",
                "item_id": MSG_ID,
                "output_index": 0,
                "content_index": 0,
                "part": part,
            }
        )

    async def text(self, text: str) -> None:
        self.parts.append(text)
        await self.event(
            {
                "type": "response.output_text.delta",
                "item_id": MSG_ID,
                "output_index": 0,
                "content_index": 0,
                "delta": text,
                "logprobs": [],
            }
        )

    async def error(self) -> None:
        """An error event inside a 200 stream (the server is overloaded)."""
        await self.event(
            {"type": "error", "code": "server_error", "message": "server overloaded", "param": None}
        )

    async def end(self, stop: str | None, out_tokens: int, usage: dict[str, Any] | None) -> None:
        """The final events; ``stop`` None ends the stream without response.completed."""
        text = "".join(self.parts)
        if stop == "content_filter":
            await self.event(
                {
                    "type": "response.refusal.delta",
                    "item_id": MSG_ID,
                    "output_index": 0,
                    "content_index": 0,
                    "delta": "I can't help with that.",
                }
            )
        await self.event(
            {
                "type": "response.output_text.done",
                "item_id": MSG_ID,
                "output_index": 0,
                "content_index": 0,
                "text": text,
                "logprobs": [],
            }
        )
        if stop is None:
            return
        status = "incomplete" if stop == "length" else "completed"
        item = message_item(text, status)
        await self.event({"type": "response.output_item.done", "output_index": 0, "item": item})
        used = responses_usage(self.in_tokens, out_tokens, self.cached)
        final = response_obj(
            self.model,
            status,
            [item],
            used,
            incomplete="max_output_tokens" if stop == "length" else None,
        )
        await self.event({"type": f"response.{status}", "response": final})
