"""The price book of a run: llmbatch.toml's prices, custom URLs, Azure's ``price_as``, tiers."""

from __future__ import annotations

from llmbatch._config.settings import RunConfig
from llmbatch._core.pricing import PriceBook

_BUILTIN_URLS = ("anthropic", "openai", "sim", "azure")


def price_book(config: RunConfig, *, tiers: bool = True) -> PriceBook:
    """Prices as ``config`` asks for them; ``tiers=False``: the standard online price."""
    providers = config.providers
    return PriceBook(
        config.prices,
        {
            name: s.base_url
            for name, s in providers.items()
            if s.base_url and name not in _BUILTIN_URLS and s.kind != "azure"
        },
        provider_ids={name: "azure" for name, s in providers.items() if s.kind == "azure"},
        price_as={name: dict(s.price_as) for name, s in providers.items() if s.price_as},
        tiers={
            name: tier
            for name in providers
            if tiers and (tier := config.tier_for(name)) is not None
        },
    )
