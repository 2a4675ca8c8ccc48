"""Batch prices: genai-prices' ``processing: batch`` variants, at the batch's creation time.

Where genai-prices has no batch variant for a model, the online price stands
(never guess low) and the caller says so once. A ``[prices."provider:model"]``
override in llmbatch.toml is taken as the price in both modes.
"""

from __future__ import annotations

from typing import Any

from llmbatch._core.models import ModelRef
from llmbatch._core.pricing import Price, PriceBook, Rate, variant_price

BATCH_CONTEXT = {"processing": "batch"}


def batch_price(
    book: PriceBook, overrides: dict[str, Price], ref: ModelRef, at: float
) -> tuple[Price | None, str | None]:
    """(the price a batch created at ``at`` pays, a note when it is not a batch price)."""
    if str(ref) in overrides:
        return overrides[str(ref)], None
    model, provider_id, _ = book.genai_ref(ref)
    # A custom server's batch price is its own business: only known providers' count.
    found = variant_price(model, provider_id, None, BATCH_CONTEXT, at) if provider_id else None
    if found is not None:
        return found, None
    online = book.price(ref)
    if online is None:
        return None, f"{ref}: no price known; batch costs are not counted"
    return online, f"{ref}: genai-prices has no batch price; the online price is used"


def price_to_json(price: Price | None) -> dict[str, Any] | None:
    """A price as stored with a batch, so its results are costed as it was created."""
    if price is None:
        return None

    def rate(r: Rate) -> list[Any]:
        return [r.base, [list(t) for t in r.tiers]]

    return {
        "input": rate(price.input),
        "output": rate(price.output),
        "cache_read": rate(price.cache_read),
        "cache_write": rate(price.cache_write),
        "source": price.source,
    }


def price_from_json(data: Any) -> Price | None:
    if not isinstance(data, dict):
        return None

    def rate(v: Any) -> Rate:
        return Rate(float(v[0]), tuple((int(a), float(b)) for a, b in v[1]))

    return Price(
        rate(data["input"]),
        rate(data["output"]),
        rate(data["cache_read"]),
        rate(data["cache_write"]),
        str(data.get("source", "")),
    )
