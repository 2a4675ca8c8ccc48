"""Prices per million tokens, from genai-prices' bundled data or llmbatch.toml.

Lookups go to genai-prices once per model; each attempt is then priced with a
few float multiplications (genai-prices' own calculation costs ~70 µs a call).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
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
        if not self.tiers:
            return price
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
    # (input, output) per token-million when neither has tiers (most prices): a cost is
    # then two products, with no call to ``Rate.at`` (costs are figured twice a request).
    _flat: tuple[float, float] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not (self.input.tiers or self.output.tiers):
            object.__setattr__(self, "_flat", (self.input.base, self.output.base))

    def plain_cost(self, input_tokens: int, output_tokens: int) -> float:
        """What input and output tokens cost with no prompt cache (a worst case, say)."""
        n = input_tokens
        if self._flat is not None:
            return (n * self._flat[0] + output_tokens * self._flat[1]) / 1_000_000
        return (n * self.input.at(n) + output_tokens * self.output.at(n)) / 1_000_000

    def cost(self, usage: Usage) -> float:
        n = usage.input_tokens
        if not (usage.cache_read_tokens or usage.cache_write_tokens):  # most answers
            return self.plain_cost(n, usage.output_tokens)
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
_GENAI_PROVIDER = {
    "anthropic": "anthropic",
    "openai": "openai",
    "gemini": "google",
    "azure": "azure",
    "bedrock": "aws",  # Bedrock's model ids are its own: priced as AWS's
}
# ...and back, where the names differ (``llmbatch models --provider gemini|bedrock``).
_OUR_NAME = {"google": "gemini", "aws": "bedrock"}


class PriceBook:
    """Finds and caches the price of each model; ``None`` when nobody knows it.

    ``provider_ids`` names the genai-prices provider of a configured provider (an
    Azure one of any name is "azure"); ``price_as`` maps a provider's model names
    (Azure deployments; "*": any) to the model they are priced as; ``tiers`` gives
    a provider's service tier, priced at genai-prices' variant for it (flex without
    one: the batch price), and ``notes`` says once where such a stand-in was used.
    """

    def __init__(
        self,
        overrides: Mapping[str, Price] | None = None,
        provider_urls: Mapping[str, str] | None = None,
        *,
        provider_ids: Mapping[str, str] | None = None,
        price_as: Mapping[str, Mapping[str, str]] | None = None,
        tiers: Mapping[str, str] | None = None,
    ) -> None:
        self._overrides = dict(overrides or {})
        self._provider_urls = dict(provider_urls or {})
        self._provider_ids = dict(provider_ids or {})
        self._price_as = {k: dict(v) for k, v in (price_as or {}).items()}
        self._tiers = {k: v for k, v in (tiers or {}).items() if v in TIERED}
        self._cache: dict[ModelRef, Price | None] = {}
        self.notes: dict[ModelRef, str] = {}

    def tier(self, provider: str) -> str | None:
        """The priced service tier of ``provider`` ("flex", "priority"), or None."""
        return self._tiers.get(provider)

    def genai_ref(self, ref: ModelRef) -> tuple[str, str | None, str | None]:
        """(model, genai-prices provider id, provider API URL) to look ``ref`` up by."""
        table = self._price_as.get(ref.provider, {})
        model = table.get(ref.model) or table.get("*") or ref.model
        provider_id = self._provider_ids.get(ref.provider) or _GENAI_PROVIDER.get(ref.provider)
        url = None if provider_id else self._provider_urls.get(ref.provider)
        return model, provider_id, url

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
        model, provider_id, url = self.genai_ref(ref)
        tier = self._tiers.get(ref.provider)
        if tier is not None:
            price, note = tier_price(model, provider_id, url, tier)
            if note:
                self.notes[ref] = f"{ref}: {note}"
            return price
        if url is not None:
            return lookup_genai_price(model, provider_api_url=url)
        return lookup_genai_price(model, provider_id=provider_id)


# Service tiers with a price of their own; "auto" and "default" are the standard price.
TIERED = ("flex", "priority")


def variant_price(
    model: str,
    provider_id: str | None,
    url: str | None,
    context: dict[str, str],
    at: float | None = None,
) -> Price | None:
    """genai-prices' price of ``model`` under ``context`` (``{"service_tier": "flex"}``,
    ``{"processing": "batch"}``) when it has that variant, at ``at`` (default now)."""
    import datetime

    import genai_prices

    when = datetime.datetime.fromtimestamp(time.time() if at is None else at, datetime.UTC)
    where: dict[str, Any] = (
        {"provider_api_url": url} if url is not None else {"provider_id": provider_id}
    )
    try:
        calc = genai_prices.calc_price(
            genai_prices.Usage(input_tokens=0, output_tokens=0),
            model,
            genai_request_timestamp=when,
            price_context=context,
            **where,
        )
    except LookupError:
        return None
    for v in calc.model.price_variants or ():
        if dict(v.when) == context and (v.constraint is None or v.constraint.active(when)):
            kind = ", ".join(context.values())
            return price_of(
                calc.model_price, f"genai-prices {kind} ({calc.provider.id}:{calc.model.id})"
            )
    return None


def tier_price(
    model: str, provider_id: str | None, url: str | None, tier: str
) -> tuple[Price | None, str | None]:
    """(the price of ``model`` at service tier ``tier``, a note when a stand-in is used).

    Flex costs what a batch costs where genai-prices has no flex price (OpenAI's own
    rule); a tier with no price of its own and no stand-in is priced as standard.
    """
    found = variant_price(model, provider_id, url, {"service_tier": tier})
    if found is not None:
        return found, None
    if tier == "flex":
        batch = variant_price(model, provider_id, url, {"processing": "batch"})
        if batch is not None:
            return batch, "genai-prices has no flex price; the batch price is used"
    where = {"provider_api_url": url} if url is not None else {"provider_id": provider_id}
    online = lookup_genai_price(model, **where)
    if online is None:
        return None, None
    return online, f"genai-prices has no {tier} price; the standard price is used"


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
    if output_rate is None and input_rate is not None and "embed" in source:
        output_rate = Rate(0.0)  # an embedding model: input tokens only
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
