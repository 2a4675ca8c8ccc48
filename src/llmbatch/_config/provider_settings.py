"""Provider settings: where and how to reach one provider (``ProviderSettings``), with the
default URLs, key variables, API shapes and service tiers it falls back on."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from llmbatch._core.exceptions import ConfigError

DEFAULT_ANTHROPIC_URL = "https://api.anthropic.com"
DEFAULT_OPENAI_URL = "https://api.openai.com/v1"
DEFAULT_GEMINI_URL = "https://generativelanguage.googleapis.com"  # no /v1beta, as in google-genai
BEDROCK_URL = "https://bedrock-runtime.{region}.amazonaws.com"
BEDROCK_TOKEN_ENV = "AWS_BEARER_TOKEN_BEDROCK"  # a Bedrock API key, sent as a bearer token
REGION_RE = re.compile(r"[a-z]{2}(-[a-z]+)+-\d+")
AZURE_API_VERSION = "2024-10-21"  # the legacy deployment path's default (GA, with Batch)
API_SHAPES = ("chat", "responses")  # the OpenAI endpoint shapes (--api)
SERVICE_TIERS = ("auto", "default", "flex", "priority")


@dataclass(frozen=True, slots=True)
class ProviderSettings:
    """Where and how to reach one provider. ``kind`` is its wire format."""

    name: str
    kind: str  # "anthropic" | "openai" | "gemini" | "azure" | "bedrock" | "sim"
    base_url: str | None = None
    api_key_env: str | None = None
    # OpenAI-compatible servers differ: "max_tokens" (most) or "max_completion_tokens" (OpenAI).
    max_tokens_field: str | None = None
    structured_output: str = "native"  # "native" | "prompt"
    headers: tuple[tuple[str, str], ...] = ()
    region: str | None = None  # bedrock: the AWS region (else AWS_REGION, AWS_DEFAULT_REGION)
    # OpenAI and Azure (llmbatch.toml; --api and --service-tier set them for all):
    api: str | None = None  # "chat" | "responses"; None: --api, else chat
    service_tier: str | None = None  # "flex" | "auto" | "default" | "priority"
    # Azure: "v1" ({endpoint}/openai/v1/...) or "deployment" (/openai/deployments/D/...)
    azure_path: str = "v1"
    api_version: str | None = None  # the deployment path's ?api-version=
    price_as: tuple[tuple[str, str], ...] = ()  # deployment ("*": any) → model priced as
    # An OpenAI-compatible Batch API (batch = true) and how it differs from OpenAI's.
    batch: bool = False
    batch_purpose: str = "batch"  # the file upload's purpose (Together: "batch-api")
    batch_inline: bool = False  # requests in the create body, no file (Mistral)
    batch_endpoint: str | None = None  # the lines' url / the create's endpoint
    batch_path: str = "/batches"  # the batches collection under base_url

    def has_batch_api(self) -> bool:
        """Whether ``batch submit`` and ``--mode batch`` can send this provider's jobs."""
        if self.kind == "openai":
            return self.name == "openai" or self.batch
        return self.kind in ("anthropic", "azure", "gemini")

    def resolved_base_url(self) -> str:
        if self.kind == "azure":
            return _azure_base_url(self.base_url, self.azure_path)
        if self.base_url:
            return self.base_url.rstrip("/")
        if self.kind == "bedrock":
            return bedrock_base_url(self)
        if self.kind == "anthropic":
            return (os.environ.get("ANTHROPIC_BASE_URL") or DEFAULT_ANTHROPIC_URL).rstrip("/")
        if self.kind == "openai":
            return (os.environ.get("OPENAI_BASE_URL") or DEFAULT_OPENAI_URL).rstrip("/")
        if self.kind == "gemini":
            url = os.environ.get("GEMINI_BASE_URL") or os.environ.get("GOOGLE_GEMINI_BASE_URL")
            return (url or DEFAULT_GEMINI_URL).rstrip("/")
        return ""

    @property
    def sends_temperature(self) -> bool:
        """Whether a request's temperature reaches the model (the adapters agree; a test holds
        them to it): Anthropic's 2.x Messages API takes none, so it is not sent there."""
        return self.kind != "anthropic"

    def key_env(self) -> str | None:
        """The variable holding the key; ``api_key_env = ""`` means the server needs none."""
        if self.api_key_env is not None:
            return self.api_key_env or None
        # A custom provider gets no key unless it names one: OPENAI_API_KEY belongs
        # to OpenAI's endpoint, not to whatever base_url a [providers.NAME] gives.
        if self.kind == "azure":
            # Entra ID: a bearer token instead of the key, when one is given.
            if os.environ.get("AZURE_OPENAI_AD_TOKEN") and not os.environ.get(
                "AZURE_OPENAI_API_KEY"
            ):
                return "AZURE_OPENAI_AD_TOKEN"
            return "AZURE_OPENAI_API_KEY"
        if self.name == "gemini":
            return gemini_key_env()
        if self.kind == "bedrock":
            # A Bedrock API key when one is set; otherwise SigV4 credentials sign each
            # request (llmbatch[aws]), and there is no key to ask for.
            return BEDROCK_TOKEN_ENV if os.environ.get(BEDROCK_TOKEN_ENV) else None
        return {"anthropic": "ANTHROPIC_API_KEY", "openai": "OPENAI_API_KEY"}.get(self.name)

    def priced_as(self, model: str) -> str | None:
        """The model a deployment is priced as (``price_as``), or None."""
        table = dict(self.price_as)
        return table.get(model) or table.get("*")


def _azure_base_url(base_url: str | None, path: str) -> str:
    """``{endpoint}/openai/v1`` (v1) or ``{endpoint}/openai`` (deployment path)."""
    endpoint = (base_url or os.environ.get("AZURE_OPENAI_ENDPOINT") or "").rstrip("/")
    if not endpoint:
        return ""
    for tail in ("/openai/v1", "/openai"):
        endpoint = endpoint.removesuffix(tail)
    return endpoint + ("/openai/v1" if path == "v1" else "/openai")


def gemini_key_env() -> str:
    """GOOGLE_API_KEY when set (google-genai's precedence), else GEMINI_API_KEY."""
    return "GOOGLE_API_KEY" if os.environ.get("GOOGLE_API_KEY") else "GEMINI_API_KEY"


def aws_region(settings: ProviderSettings) -> str | None:
    """The AWS region of a bedrock provider: its ``region``, else AWS_REGION, AWS_DEFAULT_REGION."""
    return settings.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")


def bedrock_base_url(settings: ProviderSettings) -> str:
    """``BEDROCK_BASE_URL``, else the region's bedrock-runtime endpoint."""
    env = os.environ.get("BEDROCK_BASE_URL")
    if env:
        return env.rstrip("/")
    region = aws_region(settings)
    if not region:
        raise ConfigError(
            f"provider {settings.name} (Bedrock) needs a region: set AWS_REGION (or "
            f'region = "us-east-1" in [providers.{settings.name}]). Nothing was sent.'
        )
    if not REGION_RE.fullmatch(region):
        raise ConfigError(f"provider {settings.name}: {region!r} is not an AWS region name")
    return BEDROCK_URL.format(region=region)
