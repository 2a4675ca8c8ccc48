"""Batch prices: genai-prices' ``processing: batch`` variants, at the batch's creation time.

Where genai-prices has no batch variant for a model, the online price stands
(never guess low) and the caller says so once. A ``[prices."provider:model"]``
override in llmbatch.toml is taken as the price in both modes.
"""

from __future__ import annotations

import datetime
from typing import Any

from llmbatch._core.models import ModelRef
from llmbatch._core.pricing import Price, PriceBook, Rate, price_of

BATCH_CONTEXT = {"processing": "batch"}
_GENAI_PROVIDER = {"anthropic": "anthropic", "openai": "openai", "gemini": "google"}


def batch_price(
    book: PriceBook, overrides: dict[str, Price], ref: ModelRef, at: float
) -> tuple[Price | None, str | None]:
    """(the price a batch created at ``at`` pays, a note when it is not a batch price)."""
    if str(ref) in overrides:
        return overrides[str(ref)], None
    found = _genai_batch_price(ref, at)
    if found is not None:
        return found, None
    online = book.price(ref)
    if online is None:
        return None, f"{ref}: no price known; batch costs are not counted"
    return online, f"{ref}: genai-prices has no batch price; the online price is used"


def _genai_batch_price(ref: ModelRef, at: float) -> Price | None:
    import genai_prices

    provider_id = _GENAI_PROVIDER.get(ref.provider)
    if provider_id is None:  # a custom server: its batch price is its own business
        return None
    when = datetime.datetime.fromtimestamp(at, datetime.UTC)
    try:
        calc = genai_prices.calc_price(
            genai_prices.Usage(input_tokens=0, output_tokens=0),
            ref.model,
            provider_id=provider_id,
            genai_request_timestamp=when,
            price_context=BATCH_CONTEXT,
        )
    except LookupError:
        return None
    if not any(_applies(v, when) for v in calc.model.price_variants or ()):
        return None
    return price_of(calc.model_price, f"genai-prices batch ({calc.provider.id}:{calc.model.id})")


def _applies(variant: Any, when: datetime.datetime) -> bool:
    if dict(variant.when) != BATCH_CONTEXT:
        return False
    return variant.constraint is None or bool(variant.constraint.active(when))


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
