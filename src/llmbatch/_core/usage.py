"""Token usage, in one convention for every provider."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class Usage:
    """Tokens of one or more attempts.

    ``input_tokens`` counts every input token, cached ones included (OpenAI's
    ``prompt_tokens``; Anthropic's ``input_tokens`` + cache reads + cache writes),
    so that ``cache_read_tokens`` and ``cache_write_tokens`` are parts of it.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0

    def add(self, other: Usage) -> None:
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.cache_read_tokens += other.cache_read_tokens
        self.cache_write_tokens += other.cache_write_tokens

    @property
    def total(self) -> int:
        return self.input_tokens + self.output_tokens

    def to_dict(self) -> dict[str, int]:
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cache_read_tokens": self.cache_read_tokens,
            "cache_write_tokens": self.cache_write_tokens,
        }

    @classmethod
    def from_dict(cls, d: Any) -> Usage:
        if not isinstance(d, dict):
            return cls()
        return cls(
            int(d.get("input_tokens") or 0),
            int(d.get("output_tokens") or 0),
            int(d.get("cache_read_tokens") or 0),
            int(d.get("cache_write_tokens") or 0),
        )
