"""Which provider class serves a configured provider (imported on first use: keys, SDKs)."""

from __future__ import annotations

from collections.abc import Callable

from llmbatch._config.settings import RunConfig
from llmbatch.providers._base import Provider

ProviderFactory = Callable[[str, RunConfig], Provider]


def default_provider_factory(name: str, config: RunConfig) -> Provider:
    settings = config.providers[name]
    if settings.kind == "sim":
        from llmbatch.providers.sim import SimProvider

        return SimProvider()
    if settings.kind == "anthropic":
        from llmbatch.providers.anthropic import AnthropicProvider

        return AnthropicProvider(settings, config)
    if settings.kind == "gemini":
        from llmbatch.providers.gemini import GeminiProvider

        return GeminiProvider(settings, config)
    from llmbatch.providers.openai import OpenAIProvider

    return OpenAIProvider(settings, config)
