"""Which provider class serves a configured provider (imported on first use: keys, SDKs)."""

from __future__ import annotations

from collections.abc import Callable

from ._config import RunConfig
from .providers._base import Provider

ProviderFactory = Callable[[str, RunConfig], Provider]


def default_provider_factory(name: str, config: RunConfig) -> Provider:
    settings = config.providers[name]
    if settings.kind == "sim":
        from .providers.sim import SimProvider

        return SimProvider()
    if settings.kind == "anthropic":
        from .providers.anthropic import AnthropicProvider

        return AnthropicProvider(settings, config)
    from .providers.openai import OpenAIProvider

    return OpenAIProvider(settings, config)
