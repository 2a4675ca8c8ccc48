"""A job's cacheable prefix, as the providers need to know it (SPEC: prompt caching).

The plan (``_engine/prefix.py``) finds it; the adapters read it from
``Request.cache`` to mark it (Anthropic ``cache_control``) or route it (OpenAI
``prompt_cache_key``). Nothing here changes what a job asks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

# Where the prefix ends: after the tools, the system prompt, the leading messages
# (every message but the last), or inside the last message (a template's static head).
PrefixEnd = Literal["tools", "system", "messages", "template"]
Ttl = Literal["5m", "1h"]


@dataclass(frozen=True, slots=True)
class PrefixInfo:
    """One job's cacheable prefix: its group key, size, and how to mark it when sending.

    ``key`` fingerprints the model and the prefix: jobs with the same key share it.
    ``tokens`` is an estimate (about four characters a token). ``mark`` says the
    prefix is worth caching: long enough for the model and shared by at least two
    jobs of this run; only then do the adapters touch the request.
    """

    key: str
    tokens: int
    min_tokens: int
    end: PrefixEnd
    messages: int = 0  # leading messages inside the prefix
    split: int = 0  # end == "template": characters of the last message in the prefix
    group_size: int = 0  # jobs of this run sharing the key (0: not yet counted)
    mark: bool = False
    ttl: Ttl = "5m"
    cache_key: str | None = None  # OpenAI prompt_cache_key (the key spread over shards)
    extended: bool = False  # OpenAI: ask for 24 h retention
    explicit_ttl_s: int = 0  # Gemini: a cachedContents entry this long pays for itself (0: none)

    @property
    def long_enough(self) -> bool:
        return self.tokens >= self.min_tokens


def anthropic_min_tokens(model: str) -> int:
    """The shortest prefix Anthropic caches for ``model`` (its prompt-caching docs).

    Opus 4.5 / 4.6 and Haiku 4.5: 4096; Haiku 3 / 3.5 and Sonnet 4.6: 2048; the rest 1024.
    """
    m = model.lower()
    if any(s in m for s in ("opus-4-5", "opus-4-6", "haiku-4-5", "haiku-4.5", "opus-4.5")):
        return 4096
    if "haiku" in m or "sonnet-4-6" in m:
        return 2048
    return 1024


OPENAI_MIN_TOKENS = 1024


def gemini_min_tokens(model: str) -> int:
    """The shortest prefix Gemini caches for ``model`` (its context-caching docs:
    2.5 Pro and 3 Pro 4,096 tokens; 2.5 Flash and 3 Flash 1,024)."""
    return 4096 if "pro" in model.lower() else 1024


# OpenAI models that offer prompt_cache_retention "24h" (its prompt-caching guide);
# gpt-5.5 and later take only "24h" (their default).
_EXTENDED_RETENTION = frozenset(
    {
        "gpt-5.4",
        "gpt-5.3-codex",
        "gpt-5.2",
        "gpt-5.1-codex-max",
        "gpt-5.1",
        "gpt-5.1-codex",
        "gpt-5.1-codex-mini",
        "gpt-5.1-chat",
        "gpt-5.1-chat-latest",
        "gpt-5",
        "gpt-5-codex",
        "gpt-4.1",
    }
)
_DATED = re.compile(r"-\d{4}-\d{2}-\d{2}$")
_LATER = re.compile(r"gpt-5\.(\d+)")


def openai_extended_retention(model: str) -> bool:
    """Whether ``model`` takes ``prompt_cache_retention: "24h"``."""
    name = _DATED.sub("", model.lower())
    if name in _EXTENDED_RETENTION:
        return True
    later = _LATER.match(name)
    return later is not None and int(later.group(1)) >= 5
