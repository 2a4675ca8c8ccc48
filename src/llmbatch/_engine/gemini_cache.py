"""Gemini explicit context caching: when a ``cachedContents`` entry pays for itself.

Gemini caches prefixes implicitly (a discount when a request happens to hit,
no guarantee). An explicit entry guarantees the cached-read price on every
request that names it, but is billed twice over: its tokens once at the input
price when it is created, and storage per token-hour for as long as it lives.
The plan asks for one only when the reads it saves outweigh both.

Storage prices are not in genai-prices; they come from Google's Gemini API
pricing page (ai.google.dev/gemini-api/docs/pricing, "context caching, storage
price"): $1.00 per million tokens per hour for the Flash and Flash-Lite models,
$4.50 for the Pro models.
"""

from __future__ import annotations

import math
from dataclasses import replace

from llmbatch._core.prefix import PrefixInfo

STORAGE_FLASH_PER_MTOK_HOUR = 1.00  # Google's pricing page (not in genai-prices)
STORAGE_PRO_PER_MTOK_HOUR = 4.50
# The shortest life we give an entry, and so the least storage it is billed for
# (our floor, not the API's: an entry must outlive the slowest requests of a short run).
MIN_TTL_S = 300
TTL_MARGIN = 2.0  # the entry lives twice the expected run; it is deleted when the run ends


def storage_price(model: str) -> float:
    """USD per million cached tokens per hour of storage."""
    return STORAGE_PRO_PER_MTOK_HOUR if "pro" in model.lower() else STORAGE_FLASH_PER_MTOK_HOUR


def stored_seconds(run_seconds: float) -> float:
    """How long the estimate assumes the entry is stored: the run, at least ``MIN_TTL_S``."""
    return max(float(MIN_TTL_S), run_seconds)


def explicit_saving(
    jobs: int,
    prefix_tokens: int,
    input_price: float,
    cached_price: float,
    storage_per_hour: float,
    run_seconds: float,
) -> float:
    """USD an explicit entry saves over sending the prefix in full (negative: it costs).

    Prices are USD per million tokens (storage: per million tokens per hour).
    Saved: every job of the group reads the prefix at ``cached_price`` instead of
    ``input_price``. Paid: creating the entry (its tokens at ``input_price``) and
    storing it for ``stored_seconds(run_seconds)``.
    """
    saved = jobs * prefix_tokens * (input_price - cached_price)
    write = prefix_tokens * input_price
    storage = prefix_tokens * storage_per_hour * stored_seconds(run_seconds) / 3600.0
    return (saved - write - storage) / 1_000_000


def explicit_pays(
    jobs: int,
    prefix_tokens: int,
    input_price: float,
    cached_price: float,
    storage_per_hour: float,
    run_seconds: float,
) -> bool:
    """Whether an explicit ``cachedContents`` entry saves money on this group."""
    args = (jobs, prefix_tokens, input_price, cached_price, storage_per_hour, run_seconds)
    return explicit_saving(*args) > 0


def ttl_seconds(run_seconds: float) -> int:
    """The ``ttl`` an entry is created with: a margin over the expected run, at least the floor."""
    return max(MIN_TTL_S, math.ceil(run_seconds * TTL_MARGIN))


def with_explicit_cache(
    info: PrefixInfo, model: str, input_price: float, cached_price: float, run_seconds: float
) -> PrefixInfo:
    """``info`` with ``explicit_ttl_s`` set when an entry pays for its group (else as it was).

    Only a marked prefix (caching on, long enough for the model, shared) qualifies;
    a prefix of tools alone does not (the request's tools cannot go with a cache).
    """
    if not info.mark or info.end == "tools":
        return info
    args = (info.group_size, info.tokens, input_price, cached_price, storage_price(model))
    if not explicit_pays(*args, run_seconds):
        return info
    return replace(info, explicit_ttl_s=ttl_seconds(run_seconds))
