"""Prefix groups at plan time: which jobs share a cacheable prefix, and how to mark it.

Each job offers up to three nested prefixes, shortest first: the tools and system
prompt; those plus every message but the last (a few-shot block); those plus a
template's static head (the text before its first ``{field}``). The check pass
counts every candidate over the jobs this run will send; when the jobs are fed,
each takes the longest candidate that at least two jobs share, marked for caching
when it is long enough for the model (``PrefixInfo.mark``).

The time-to-live and OpenAI cache-key spread follow from a rough pace: each of
``--concurrency`` workers finishes a request every ``EXPECTED_LATENCY_S``.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

import orjson

from llmbatch._core.jobs import Request, text_of
from llmbatch._core.models import ModelRef
from llmbatch._core.prefix import (
    OPENAI_MIN_TOKENS,
    PrefixEnd,
    PrefixInfo,
    Ttl,
    anthropic_min_tokens,
    gemini_min_tokens,
    openai_extended_retention,
)

EXPECTED_LATENCY_S = 2.0  # a typical answer's time, for the pace estimates below
ANTHROPIC_SHORT_TTL_S = 300.0  # past this, a group's cache entry is written for 1 h
OPENAI_KEY_RPM = 15  # requests a minute per prefix and prompt_cache_key before overflow
OPENAI_MIN_PER_KEY = 16  # each extra key costs one cold request: keep it worth it


def _chars(content: Any) -> int:
    return len(content) if isinstance(content, str) else len(text_of(content))


def min_tokens_for(kind: str, model: str) -> int:
    if kind == "anthropic":
        return anthropic_min_tokens(model)
    return gemini_min_tokens(model) if kind == "gemini" else OPENAI_MIN_TOKENS


def candidates(
    ref: ModelRef,
    kind: str,
    request: Request,
    template_head: str | None = None,
    system: Any = None,
) -> list[PrefixInfo]:
    """The job's nested prefixes, shortest first (none: nothing could be cached).

    ``system``: the run's ``--system``, for a request that has none of its own.
    """
    body = request.body
    system = request.system if request.system is not None else system
    tools = body.get("tools") if body else None
    messages = request.messages
    if not tools and system is None and len(messages) < 2 and not template_head:
        return []  # one question and nothing before it: the common case, no hashing
    h = hashlib.blake2b(str(ref).encode(), digest_size=8)
    chars = 0
    out: list[PrefixInfo] = []
    min_tokens = min_tokens_for(kind, ref.model)

    def add(end: PrefixEnd, messages: int = 0, split: int = 0) -> None:
        tokens = math.ceil(chars / 4) + 4 * messages
        out.append(PrefixInfo(h.hexdigest(), tokens, min_tokens, end, messages, split))

    if tools:
        raw = orjson.dumps(tools, option=orjson.OPT_SORT_KEYS)
        h.update(b"T" + raw)
        chars += len(raw)
    if system is not None:
        h.update(b"S" + (system.encode() if isinstance(system, str) else orjson.dumps(system)))
        chars += _chars(system)
    if chars:
        add("system" if system is not None else "tools")
    # System turns inside "messages" move when sent to Anthropic: no prefix through them.
    plain = all(m.get("role") in ("user", "assistant") for m in messages[:-1])
    if len(messages) > 1 and plain:
        for m in messages[:-1]:
            h.update(b"M" + orjson.dumps([m.get("role"), m.get("content")]))
            chars += _chars(m.get("content"))
        add("messages", len(messages) - 1)
    if template_head and (len(messages) == 1 or plain):
        last = messages[-1].get("content") if messages else None
        if isinstance(last, str) and last.startswith(template_head) and last != template_head:
            h.update(b"H" + template_head.encode())
            chars += len(template_head)
            add("template", len(messages) - 1, len(template_head))
    return out


@dataclass(slots=True)
class GroupCount:
    jobs: int
    tokens: int
    min_tokens: int


@dataclass(slots=True)
class PrefixGroups:
    """Candidate prefixes counted over the jobs to send; then each job's choice."""

    concurrency: int = 16
    enabled: bool = True
    batch: bool = False  # --mode batch / auto: a batch may take hours (1 h entries)
    counts: dict[str, GroupCount] = field(default_factory=dict)
    todo: int = 0
    _chosen: Counter[str] = field(default_factory=Counter)

    def count(self, cands: list[PrefixInfo]) -> None:
        self.todo += 1
        for c in cands:
            g = self.counts.get(c.key)
            if g is None:
                self.counts[c.key] = GroupCount(1, c.tokens, c.min_tokens)
            else:
                g.jobs += 1

    def choose(
        self, cands: list[PrefixInfo], kind: str, model: str, job_id: str, routed: bool
    ) -> PrefixInfo | None:
        """The job's group: the longest candidate shared by two jobs or more (None: none is).

        ``routed``: the provider takes ``prompt_cache_key`` (OpenAI itself, Azure).
        """
        best: PrefixInfo | None = None
        for c in cands:
            g = self.counts.get(c.key)
            if g is None or g.jobs < 2:
                continue
            marked = self.enabled and c.long_enough
            if best is not None and best.mark and not marked:
                continue  # a longer prefix too short to cache: keep the cacheable one
            best = replace(c, group_size=g.jobs, mark=marked)
        if best is None or not best.mark:
            return best
        if kind == "anthropic":
            return replace(best, ttl=self.ttl(best.group_size))
        if kind == "openai" and routed:
            shards = self.key_shards(best.group_size)
            shard = int(hashlib.blake2b(job_id.encode(), digest_size=4).hexdigest(), 16) % shards
            return replace(
                best,
                cache_key=f"llmbatch-{best.key}-{shard}",
                extended=openai_extended_retention(model),
            )
        return best

    def run_seconds(self) -> float:
        """A rough length of the run: waves of ``concurrency`` requests, one latency each."""
        return math.ceil(self.todo / max(1, self.concurrency)) * EXPECTED_LATENCY_S

    def ttl(self, group_size: int) -> Ttl:
        del group_size  # a group's requests spread over the whole run, in file order
        long_run = self.batch or self.run_seconds() > ANTHROPIC_SHORT_TTL_S
        return "1h" if long_run else "5m"

    def key_shards(self, group_size: int) -> int:
        """Keys to spread a group over: its pace over 15 a minute, each key worth its miss."""
        workers = min(self.concurrency, group_size)
        per_minute = workers * 60.0 / EXPECTED_LATENCY_S
        wanted = math.ceil(per_minute / OPENAI_KEY_RPM)
        return max(1, min(wanted, group_size // OPENAI_MIN_PER_KEY))
