"""Anthropic ``cache_control``: one breakpoint on the last block of a job's shared prefix.

Never a fifth breakpoint, never one the job set itself moved or removed: a body
that already has four is left alone, and so is a block that already carries one.
The body's lists and blocks are copied before they change (a passthrough body is
the job's own).
"""

from __future__ import annotations

from typing import Any

from llmbatch._core.prefix import PrefixInfo

MAX_BREAKPOINTS = 4


def _blocks_with_mark(items: Any) -> int:
    if not isinstance(items, list):
        return 0
    return sum(1 for b in items if isinstance(b, dict) and "cache_control" in b)


def count_breakpoints(body: dict[str, Any]) -> int:
    """``cache_control`` markers already in a Messages body (tools, system, message blocks)."""
    n = _blocks_with_mark(body.get("tools")) + _blocks_with_mark(body.get("system"))
    for m in body.get("messages") or ():
        if isinstance(m, dict):
            n += _blocks_with_mark(m.get("content"))
    return n


def _marked_last(content: Any, mark: dict[str, str]) -> list[Any] | None:
    """``content`` as blocks with the mark on the last one; None: leave it as it is."""
    if isinstance(content, str):
        return [{"type": "text", "text": content, "cache_control": mark}]
    if not isinstance(content, list) or not content or not isinstance(content[-1], dict):
        return None
    if "cache_control" in content[-1]:
        return None  # the job's own breakpoint: not ours to move
    return [*content[:-1], {**content[-1], "cache_control": mark}]


def mark_prefix(body: dict[str, Any], info: PrefixInfo) -> bool:
    """Set the breakpoint the plan chose; False when the body does not allow it."""
    existing = count_breakpoints(body)
    if existing >= MAX_BREAKPOINTS:
        return False
    mark = {"type": "ephemeral"}
    if info.ttl == "1h" and not existing:
        # 1 h entries must come before 5 min ones: only when the job set none.
        mark["ttl"] = "1h"
    if info.end == "tools":
        tools = _marked_last(body.get("tools"), mark)
        if tools is None:
            return False
        body["tools"] = tools
        return True
    if info.end == "system":
        system = _marked_last(body.get("system"), mark)
        if system is None:
            return False
        body["system"] = system
        return True
    messages = body.get("messages")
    if not isinstance(messages, list) or len(messages) <= info.messages:
        return False
    if info.end == "messages":
        index = info.messages - 1
        content = _marked_last(messages[index].get("content"), mark)
    else:  # "template": split the last message after the template's static head
        index = info.messages
        text = messages[index].get("content")
        if not isinstance(text, str) or info.split <= 0 or info.split >= len(text):
            return False
        content = [
            {"type": "text", "text": text[: info.split], "cache_control": mark},
            {"type": "text", "text": text[info.split :]},
        ]
    if content is None:
        return False
    body["messages"] = [
        *messages[:index],
        {**messages[index], "content": content},
        *messages[index + 1 :],
    ]
    return True
