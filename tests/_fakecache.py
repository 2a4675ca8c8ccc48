"""The fake API's prompt cache: it learns prefixes, reports reads and writes, keeps a bill.

Anthropic: a prefix ending at a block marked ``cache_control`` is written when a
request carrying it has been answered (if it reaches ``min_tokens``), and read by
any later request whose blocks up to a breakpoint are the same, within its life
(5 min, or 1 h with ``"ttl": "1h"``; every read renews it). OpenAI: no markers;
every answered prompt of ``min_tokens`` or more is remembered at 128-token steps
(under its ``prompt_cache_key``), and a later prompt reads the longest step it
shares. Token counts: four bytes of JSON a token. Ages use ``clock`` (a FakeClock's
``monotonic`` in tests that travel in time).

The bill says what a provider would charge for every answer, and what the same
answers would have cost with no cache at all.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

STEP = 128  # OpenAI caches in 128-token steps past the first 1024


@dataclass(frozen=True)
class FakePrices:
    """USD per million tokens; a 1 h Anthropic write costs ``long_write_factor`` × input."""

    input: float
    output: float
    cache_read: float
    cache_write: float
    long_write_factor: float = 2.0


@dataclass
class Bill:
    charged: float = 0.0
    no_cache: float = 0.0
    answers: int = 0
    read_tokens: int = 0
    write_tokens: int = 0

    @property
    def saved(self) -> float:
        return self.no_cache - self.charged


@dataclass
class CacheUse:
    """What one request found and will leave behind once answered."""

    input_tokens: int
    read: int = 0
    write: int = 0
    write_1h: int = 0
    store: list[tuple[str, float]] = field(default_factory=list)  # (hash, life in s)


def _tok(raw: bytes) -> int:
    return len(raw) // 4


def _strip(block: Any) -> Any:
    if isinstance(block, dict) and "cache_control" in block:
        return {k: v for k, v in block.items() if k != "cache_control"}
    return block


def _life(mark: Any) -> float:
    return 3600.0 if isinstance(mark, dict) and mark.get("ttl") == "1h" else 300.0


@dataclass
class FakePromptCache:
    prices: FakePrices | None = None
    min_tokens: int = 1024
    clock: Callable[[], float] = time.monotonic
    entries: dict[str, float] = field(default_factory=dict)  # hash → expiry
    bill: Bill = field(default_factory=Bill)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    # -- looking ----------------------------------------------------------------------

    def use(self, kind: str, body: dict[str, Any]) -> CacheUse:
        return self._anthropic(body) if kind == "anthropic" else self._openai(body)

    def _fresh(self, digest: str, now: float, life: float | None = None) -> bool:
        expiry = self.entries.get(digest)
        if expiry is None or expiry < now:
            return False
        if life is not None:
            self.entries[digest] = max(expiry, now + life)  # a read renews the entry
        return True

    def _anthropic(self, body: dict[str, Any]) -> CacheUse:
        blocks: list[Any] = []
        for tool in body.get("tools") or ():
            blocks.append(tool)
        system = body.get("system")
        if isinstance(system, str):
            blocks.append({"type": "text", "text": system})
        elif isinstance(system, list):
            blocks.extend(system)
        for m in body.get("messages") or ():
            content = m.get("content")
            if isinstance(content, str):
                content = [{"type": "text", "text": content}]
            blocks.append({"role": m.get("role")})
            blocks.extend(content or ())
        h = hashlib.blake2b(str(body.get("model")).encode(), digest_size=12)
        cum = 0
        points: list[tuple[str, int, float]] = []  # (hash, tokens up to here, life)
        for b in blocks:
            raw = orjson.dumps(_strip(b), option=orjson.OPT_SORT_KEYS)
            h.update(raw)
            cum += _tok(raw)
            if isinstance(b, dict) and "cache_control" in b:
                points.append((h.hexdigest(), cum, _life(b["cache_control"])))
        use = CacheUse(cum + 7)
        if not points:
            return use
        now = self.clock()
        with self._lock:
            for digest, tokens, life in reversed(points):
                if tokens >= self.min_tokens and self._fresh(digest, now, life):
                    use.read = tokens
                    break
        last_digest, last_tokens, last_life = points[-1]
        if last_tokens >= self.min_tokens and last_tokens > use.read:
            use.write = last_tokens - use.read
            use.write_1h = use.write if last_life > 300 else 0
        use.store = [(d, life) for d, t, life in points if t >= self.min_tokens and t > use.read]
        return use

    def _openai(self, body: dict[str, Any]) -> CacheUse:
        raw = orjson.dumps([body.get("tools"), body.get("messages")])
        total = _tok(raw)
        use = CacheUse(total + 7)
        if total < self.min_tokens:
            return use
        salt = f"{body.get('model')}|{body.get('prompt_cache_key')}|".encode()
        steps = range(self.min_tokens, total + 1, STEP)
        digests = [hashlib.blake2b(salt + raw[: t * 4], digest_size=12).hexdigest() for t in steps]
        now = self.clock()
        with self._lock:
            for t, digest in reversed(list(zip(steps, digests, strict=True))):
                if self._fresh(digest, now, 300.0):
                    use.read = t
                    break
        use.store = [(d, 300.0) for d in digests]
        return use

    # -- after the answer ---------------------------------------------------------------

    def answered(self, use: CacheUse, output_tokens: int) -> None:
        """The answer is complete: its prefixes are cached from now, and it is billed."""
        now = self.clock()
        with self._lock:
            for digest, life in use.store:
                self.entries[digest] = max(self.entries.get(digest, 0.0), now + life)
            b = self.bill
            b.answers += 1
            b.read_tokens += use.read
            b.write_tokens += use.write
            p = self.prices
            if p is None:
                return
            uncached = use.input_tokens - use.read - use.write
            short_writes = use.write - use.write_1h
            b.charged += (
                uncached * p.input
                + use.read * p.cache_read
                + short_writes * p.cache_write
                + use.write_1h * p.input * p.long_write_factor
                + output_tokens * p.output
            ) / 1_000_000
            b.no_cache += (use.input_tokens * p.input + output_tokens * p.output) / 1_000_000
