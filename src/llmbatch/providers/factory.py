"""Which provider class serves a configured provider (imported on first use: keys, SDKs)."""

from __future__ import annotations

from collections.abc import Callable

from llmbatch._config.settings import ProviderSettings, RunConfig
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
    if settings.kind == "azure":
        from llmbatch.providers.azure import AzureProvider

        return AzureProvider(settings, config)
    if settings.kind == "gemini":
        from llmbatch.providers.gemini import GeminiProvider

        return GeminiProvider(settings, config)
    if settings.kind == "bedrock":
        from llmbatch.providers.bedrock import BedrockProvider

        return BedrockProvider(settings, config)
    from llmbatch.providers.openai import OpenAIProvider

    return OpenAIProvider(settings, config)


def check_credentials(settings: ProviderSettings) -> None:
    """Refuse (UsageError) a provider that could not authenticate, beyond a missing key
    variable (plan's check does that): e.g. Bedrock without an API key or AWS credentials."""
    if settings.kind == "bedrock":
        from llmbatch.providers.bedrock import check_credentials as check_bedrock

        check_bedrock(settings)
