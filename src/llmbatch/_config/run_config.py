"""``RunConfig``: everything one ``run`` needs, once checked, and what follows from it per
provider and model (endpoint shape, service tier, limits, prices)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from llmbatch._config.modes import Mode
from llmbatch._config.provider_settings import ProviderSettings
from llmbatch._config.toml import ModelLimits
from llmbatch._core.models import BUILTIN_PROVIDERS, ModelRef
from llmbatch._core.pricing import Price, PriceBook


@dataclass(slots=True)
class RunConfig:
    """Everything one ``run`` needs. Build it with :func:`build_run_config` or by hand."""

    jobs: Path
    output: Path | None = None  # None: results go to stdout
    jobs_display: str | None = None
    model: ModelRef | None = None
    fallback: list[ModelRef] = field(default_factory=list)
    provider: str | None = None  # send every job to this provider (e.g. "sim")
    concurrency: int = 16
    rpm: float | None = None
    tpm: float | None = None
    max_attempts: int = 6
    timeout: float = 300.0
    idle_timeout: float = 120.0
    backoff_cap: float = 60.0
    max_cost: float | None = None
    max_total_tokens: int | None = None
    schema: dict[str, Any] | None = None
    repair_attempts: int = 2
    template: str | None = None
    system: str | None = None
    max_tokens: int = 1024
    temperature: float | None = None
    report: Path | None = None
    html: Path | None = None  # the HTML report (--html)
    fresh: bool = False
    retry_failed: bool = False
    skip_invalid: bool = False
    quiet: bool = False
    include_input: bool = False  # result lines carry the job's input
    columns: Any = None  # columnar jobs (``_io.columnar.Columns``): which columns make a job
    dimensions: int | None = None  # embeddings: vector size asked of the model (None: its own)
    embed: bool = False  # ``llmbatch embed``: the jobs are texts to embed
    inputs_per_request: int | None = None  # embeddings: fewer than the provider's cap
    npy: Path | None = None  # embeddings: also this float32 .npy matrix, row i = output row i
    dry_run: bool = False  # print the request bodies; send nothing
    limit: int | None = None  # run only the first N jobs not yet done
    cache_path: Path | None = None  # None: $XDG_CACHE_HOME/llmbatch/cache.sqlite
    no_cache: bool = False
    log_json: str | None = None  # a path, or "-" for stderr
    log_prompts: bool = False
    otlp: str | None = None  # OTLP/HTTP endpoint
    providers: dict[str, ProviderSettings] = field(default_factory=dict)
    prices: dict[str, Price] = field(default_factory=dict)
    limits: dict[str, ModelLimits] = field(default_factory=dict)
    # Rolling budgets, shared limits, shards (SPEC §10).
    budget_per_hour: float | None = None
    budget_per_day: float | None = None
    tokens_per_hour: int | None = None
    tokens_per_day: int | None = None
    budget_scope: str = "default"
    ledger: Path | None = None  # None: default_ledger_path()
    wait_for_budget: bool = False
    shared: str | None = None  # redis://HOST:PORT/DB
    shard: tuple[int, int] | None = None  # (index, count), index from 0
    # Provider Batch APIs (SPEC §9): "online" | "batch" | "auto", and auto's deadline (s).
    mode: Mode = Mode.ONLINE
    batch_deadline: float | None = None
    # OpenAI-shaped providers (SPEC §15): endpoint shape and service tier for all of them;
    # a [providers.NAME] api / service_tier wins for its own.
    api: str | None = None  # "chat" | "responses"
    service_tier: str | None = None  # "flex" | "auto" | "default" | "priority"
    prompt_cache: str = "auto"  # "auto": mark and route shared prefixes; "off": leave them

    def __post_init__(self) -> None:
        for name in BUILTIN_PROVIDERS:
            self.providers.setdefault(name, ProviderSettings(name, name))

    @property
    def display_name(self) -> str:
        return self.jobs_display or str(self.jobs)

    def api_for(self, provider: str) -> str:
        """The endpoint shape an OpenAI-shaped provider speaks: "chat" or "responses"."""
        return self.providers[provider].api or self.api or "chat"

    def tier_for(self, provider: str) -> str | None:
        """The service tier asked of ``provider`` (OpenAI-shaped ones only), or None."""
        settings = self.providers[provider]
        if settings.kind not in ("openai", "azure"):
            return None
        return settings.service_tier or self.service_tier

    def limits_for(self, ref: ModelRef) -> ModelLimits:
        """Per-model limits from config, with --rpm / --tpm filling what they leave."""
        own = self.limits.get(str(ref), ModelLimits())
        return replace(
            own,
            rpm=own.rpm if own.rpm is not None else self.rpm,
            tpm=own.tpm if own.tpm is not None else self.tpm,
        )

    def price_book(self, *, tiers: bool = True) -> PriceBook:
        """Prices for this run: llmbatch.toml's, else genai-prices' (by base URL for
        providers of our own naming; Azure ones as Azure, deployments by ``price_as``),
        at each provider's service tier; ``tiers=False``: the standard online price."""
        providers = self.providers
        return PriceBook(
            self.prices,
            {
                name: s.base_url
                for name, s in providers.items()
                if s.base_url and name not in BUILTIN_PROVIDERS and s.kind not in _OWN_IDS
            },
            # Azure and Bedrock providers of any name are priced as Azure's and AWS's.
            provider_ids={
                name: _OWN_IDS[s.kind] for name, s in providers.items() if s.kind in _OWN_IDS
            },
            price_as={name: dict(s.price_as) for name, s in providers.items() if s.price_as},
            tiers={
                name: tier
                for name in providers
                if tiers and (tier := self.tier_for(name)) is not None
            },
        )


# Provider types priced by genai-prices' id for them, whatever their name or URL.
_OWN_IDS = {"azure": "azure", "bedrock": "aws"}
