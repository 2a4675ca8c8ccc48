"""Token usage, in one convention for every provider."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class Usage:
    """Tokens of one or more attempts.

    ``input_tokens`` counts every input token, cached ones included (OpenAI's
    ``prompt_tokens``; Anthropic's ``input_tokens`` + cache reads + cache writes),
    so that ``cache_read_tokens`` and ``cache_write_tokens`` are parts of it;
    ``uncached_input_tokens`` is the rest. ``cache_write_1h_tokens`` is the part of
    the writes kept for an hour (Anthropic bills those higher), and
    ``reasoning_tokens`` the part of ``output_tokens`` spent thinking.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cache_write_1h_tokens: int = 0
    reasoning_tokens: int = 0

    def add(self, other: Usage) -> None:
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.cache_read_tokens += other.cache_read_tokens
        self.cache_write_tokens += other.cache_write_tokens
        self.cache_write_1h_tokens += other.cache_write_1h_tokens
        self.reasoning_tokens += other.reasoning_tokens

    @property
    def uncached_input_tokens(self) -> int:
        return max(0, self.input_tokens - self.cache_read_tokens - self.cache_write_tokens)

    @property
    def total(self) -> int:
        return self.input_tokens + self.output_tokens

    def to_dict(self) -> dict[str, int]:
        out = {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cache_read_tokens": self.cache_read_tokens,
            "cache_write_tokens": self.cache_write_tokens,
        }
        # Extra fields, only when there is something to say.
        if self.cache_write_1h_tokens:
            out["cache_write_1h_tokens"] = self.cache_write_1h_tokens
        if self.reasoning_tokens:
            out["reasoning_tokens"] = self.reasoning_tokens
        return out

    def to_compact_dict(self) -> dict[str, int]:
        """:meth:`to_dict` without the fields that are 0 (input and output always):
        what the response cache stores; :meth:`from_dict` reads both."""
        out = {"input_tokens": self.input_tokens, "output_tokens": self.output_tokens}
        if self.cache_read_tokens or self.cache_write_tokens:
            out["cache_read_tokens"] = self.cache_read_tokens
            out["cache_write_tokens"] = self.cache_write_tokens
        if self.cache_write_1h_tokens:
            out["cache_write_1h_tokens"] = self.cache_write_1h_tokens
        if self.reasoning_tokens:
            out["reasoning_tokens"] = self.reasoning_tokens
        return out

    @classmethod
    def from_dict(cls, d: Any) -> Usage:
        if not isinstance(d, dict):
            return cls()
        return cls(
            int(d.get("input_tokens") or 0),
            int(d.get("output_tokens") or 0),
            int(d.get("cache_read_tokens") or 0),
            int(d.get("cache_write_tokens") or 0),
            int(d.get("cache_write_1h_tokens") or 0),
            int(d.get("reasoning_tokens") or 0),
        )
