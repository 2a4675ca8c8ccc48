"""Prices per million tokens, from genai-prices' bundled data or llmbatch.toml.

Lookups go to genai-prices once per model; each attempt is then priced with a
few float multiplications (genai-prices' own calculation costs ~70 µs a call).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from llmbatch._core.models import ModelRef, infer_provider
from llmbatch._core.usage import Usage

# (threshold in input tokens, price per MTok); the cliff model: past a threshold
# the tier's price applies to all tokens of that kind.
Tiers = tuple[tuple[int, float], ...]

# Anthropic bills a cache write kept for 1 h at twice the base input price (5 min: the
# cache_write price, 1.25 times). genai-prices has the 5-minute price only.
LONG_WRITE_FACTOR = 2.0


@dataclass(frozen=True, slots=True)
class Rate:
    base: float
    tiers: Tiers = ()

    def at(self, input_tokens: int) -> float:
        price = self.base
        for start, tier_price in self.tiers:
            if input_tokens > start:
                price = tier_price
        return price


@dataclass(frozen=True, slots=True)
class Price:
    """USD per million tokens. ``input`` applies to uncached input tokens."""

    input: Rate
    output: Rate
    cache_read: Rate
    cache_write: Rate
    source: str = "genai-prices"

    def cost(self, usage: Usage) -> float:
        n = usage.input_tokens
        uncached = max(0, n - usage.cache_read_tokens - usage.cache_write_tokens)
        long_writes = min(usage.cache_write_1h_tokens, usage.cache_write_tokens)
        return (
            uncached * self.input.at(n)
            + usage.output_tokens * self.output.at(n)
            + usage.cache_read_tokens * self.cache_read.at(n)
            + (usage.cache_write_tokens - long_writes) * self.cache_write.at(n)
            + long_writes * self.input.at(n) * LONG_WRITE_FACTOR
        ) / 1_000_000

    def uncached_cost(self, usage: Usage) -> float:
        """What ``usage`` would cost with no prompt cache: every input token at full price."""
        return self.cost(Usage(usage.input_tokens, usage.output_tokens))

    def cache_saving(self, usage: Usage) -> tuple[float, float]:
        """(saved against no caching, write premium paid) in USD; saved is net of the premium."""
        n = usage.input_tokens
        base = self.input.at(n)
        long_writes = min(usage.cache_write_1h_tokens, usage.cache_write_tokens)
        premium = (
            (usage.cache_write_tokens - long_writes) * (self.cache_write.at(n) - base)
            + long_writes * base * (LONG_WRITE_FACTOR - 1)
        ) / 1_000_000
        return self.uncached_cost(usage) - self.cost(usage), premium

    @classmethod
    def flat(
        cls,
        input: float,
        output: float,
        cache_read: float | None = None,
        cache_write: float | None = None,
        source: str = "llmbatch.toml",
    ) -> Price:
        return cls(
            Rate(input),
            Rate(output),
            Rate(input if cache_read is None else cache_read),
            Rate(input if cache_write is None else cache_write),
            source,
        )


def _rate(value: Any, fallback: Rate | None = None) -> Rate | None:
    if value is None:
        return fallback
    if isinstance(value, Decimal | int | float):
        return Rate(float(value))
    base = getattr(value, "base", None)
    tiers = getattr(value, "tiers", None)
    if base is None:
        return fallback
    return Rate(float(base), tuple((int(t.start), float(t.price)) for t in tiers or ()))


# Our provider names → genai-prices provider ids.
_GENAI_PROVIDER = {"anthropic": "anthropic", "openai": "openai", "gemini": "google"}
_OUR_NAME = {"google": "gemini"}  # genai-prices ids we call otherwise (`llmbatch models gemini`)


class PriceBook:
    """Finds and caches the price of each model; ``None`` when nobody knows it."""

    def __init__(
        self,
        overrides: Mapping[str, Price] | None = None,
        provider_urls: Mapping[str, str] | None = None,
    ) -> None:
        self._overrides = dict(overrides or {})
        self._provider_urls = dict(provider_urls or {})
        self._cache: dict[ModelRef, Price | None] = {}

    def price(self, ref: ModelRef) -> Price | None:
        try:
            return self._cache[ref]
        except KeyError:
            pass
        price = self._overrides.get(str(ref))
        if price is None:
            price = self._lookup(ref)
        self._cache[ref] = price
        return price

    def cost(self, ref: ModelRef, usage: Usage) -> float | None:
        price = self.price(ref)
        return None if price is None else price.cost(usage)

    def _lookup(self, ref: ModelRef) -> Price | None:
        if ref.provider == "sim":
            # The simulator is priced as the model it imitates.
            provider_id = _GENAI_PROVIDER.get(infer_provider(ref.model) or "")
            return lookup_genai_price(ref.model, provider_id=provider_id)
        provider_id = _GENAI_PROVIDER.get(ref.provider)
        url = self._provider_urls.get(ref.provider)
        if url is not None:
            return lookup_genai_price(ref.model, provider_api_url=url)
        return lookup_genai_price(ref.model, provider_id=provider_id)


def lookup_genai_price(
    model: str, *, provider_id: str | None = None, provider_api_url: str | None = None
) -> Price | None:
    """The list price genai-prices knows for ``model``, or None."""
    import genai_prices  # ~0.15 s to import: only when a price is first needed

    try:
        if provider_api_url is not None:
            calc = genai_prices.calc_price(
                genai_prices.Usage(input_tokens=0, output_tokens=0),
                model,
                provider_api_url=provider_api_url,
            )
        else:
            calc = genai_prices.calc_price(
                genai_prices.Usage(input_tokens=0, output_tokens=0),
                model,
                provider_id=provider_id,
            )
    except LookupError:
        return None
    return price_of(calc.model_price, f"genai-prices ({calc.provider.id}:{calc.model.id})")


def price_of(model_price: Any, source: str = "genai-prices") -> Price | None:
    """Our Price from a genai-prices ModelPrice; cache prices default to the input price."""
    input_rate = _rate(getattr(model_price, "input_mtok", None))
    output_rate = _rate(getattr(model_price, "output_mtok", None))
    if input_rate is None or output_rate is None:
        return None
    return Price(
        input_rate,
        output_rate,
        _rate(getattr(model_price, "cache_read_mtok", None), input_rate) or input_rate,
        _rate(getattr(model_price, "cache_write_mtok", None), input_rate) or input_rate,
        source,
    )


def known_models() -> list[tuple[str, str, Price]]:
    """Every (provider, model, price) in genai-prices' data, for ``llmbatch models``."""
    from genai_prices import data_snapshot

    rows: list[tuple[str, str, Price]] = []
    for provider in data_snapshot.get_snapshot().providers:
        for model in provider.models:
            prices = model.prices
            if isinstance(prices, list):  # conditional prices: the last one is current
                if not prices:
                    continue
                prices = prices[-1].prices
            price = price_of(prices)
            if price is not None:
                rows.append((_OUR_NAME.get(provider.id, provider.id), model.id, price))
    return rows
