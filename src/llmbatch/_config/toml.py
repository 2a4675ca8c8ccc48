"""llmbatch.toml: its provider, price and limit tables and flag defaults, read and checked."""

from __future__ import annotations

import math
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmbatch._config.provider_settings import (
    API_SHAPES,
    REGION_RE,
    SERVICE_TIERS,
    ProviderSettings,
)
from llmbatch._core.exceptions import ConfigError
from llmbatch._core.keys import check_base_url
from llmbatch._core.models import BUILTIN_PROVIDERS
from llmbatch._core.pricing import Price


@dataclass(frozen=True, slots=True)
class ModelLimits:
    """Client-side limits for one model (per minute)."""

    rpm: float | None = None
    tpm: float | None = None
    input_tpm: float | None = None
    output_tpm: float | None = None


# -- the config file ----------------------------------------------------------

# Keys of llmbatch.toml that mirror `run` flags, with the type each takes.
_FLAG_KEYS: dict[str, tuple[type, ...]] = {
    "output": (str,),
    "model": (str,),
    "fallback": (list, str),
    "provider": (str,),
    "concurrency": (int,),
    "rpm": (int, float),
    "tpm": (int, float),
    "max_attempts": (int,),
    "timeout": (int, float),
    "idle_timeout": (int, float),
    "backoff_cap": (int, float),
    "max_cost": (int, float),
    "max_total_tokens": (int,),
    "schema": (str,),
    "repair_attempts": (int,),
    "template": (str,),
    "template_file": (str,),
    "system": (str,),
    "max_tokens": (int,),
    "temperature": (int, float),
    "report": (str,),
    "html": (str,),
    "fresh": (bool,),
    "retry_failed": (bool,),
    "skip_invalid": (bool,),
    "quiet": (bool,),
    "include_input": (bool,),
    "limit": (int,),
    "budget_per_hour": (int, float),
    "budget_per_day": (int, float),
    "tokens_per_hour": (int,),
    "tokens_per_day": (int,),
    "budget_scope": (str,),
    "ledger": (str,),
    "wait_for_budget": (bool,),
    "shard": (str,),
    "cache": (str,),
    "no_cache": (bool,),
    "log_json": (str,),
    "log_prompts": (bool,),
    "otlp": (str,),
    "mode": (str,),
    "batch_deadline": (str, int, float),
    "api": (str,),
    "service_tier": (str,),
    "prompt_cache": (str,),
}
_TABLE_KEYS = ("providers", "prices", "limits", "shared")
_PROVIDER_KEYS = {
    "type",
    "base_url",
    "api_key_env",
    "max_tokens_field",
    "structured_output",
    "headers",
    "region",
    "kind",
    "api",
    "service_tier",
    "azure_path",
    "api_version",
    "price_as",
    "batch",
    "batch_purpose",
    "batch_inline",
    "batch_endpoint",
    "batch_path",
}
_PRICE_KEYS = {"input", "output", "cache_read", "cache_write"}
_LIMIT_KEYS = {"rpm", "tpm", "input_tpm", "output_tpm"}


@dataclass(slots=True)
class FileConfig:
    """llmbatch.toml, checked: flag defaults plus the provider, price and limit tables."""

    path: Path | None = None
    flags: dict[str, Any] = field(default_factory=dict)
    providers: dict[str, ProviderSettings] = field(default_factory=dict)
    prices: dict[str, Price] = field(default_factory=dict)
    limits: dict[str, ModelLimits] = field(default_factory=dict)

    @property
    def provider_names(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys([*BUILTIN_PROVIDERS, *self.providers]))


def find_config(explicit: Path | None) -> Path | None:
    if explicit is not None:
        if not explicit.is_file():
            raise ConfigError(f"config file not found: {explicit}")
        return explicit
    default = Path("llmbatch.toml")
    return default if default.is_file() else None


def load_config(explicit: Path | None) -> FileConfig:
    path = find_config(explicit)
    if path is None:
        return FileConfig()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8-sig"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    cfg = FileConfig(path=path)
    for key, value in data.items():
        if key in _TABLE_KEYS:
            continue
        if key not in _FLAG_KEYS:
            raise ConfigError(
                f"{path}: unknown key {key!r} (known: {', '.join(sorted(_FLAG_KEYS))})"
            )
        types = _FLAG_KEYS[key]
        if isinstance(value, bool) and bool not in types:
            raise ConfigError(f"{path}: {key} must be {_type_names(types)}, got {value!r}")
        if not isinstance(value, types):
            raise ConfigError(f"{path}: {key} must be {_type_names(types)}, got {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{path}: {key} must be a finite number, got {value!r}")
        cfg.flags[key] = value
    cfg.providers = _load_providers(path, data.get("providers", {}))
    cfg.prices = _load_prices(path, data.get("prices", {}))
    cfg.limits = _load_limits(path, data.get("limits", {}))
    shared = _table(path, "shared", data.get("shared", {}))
    if set(shared) - {"url"} or not isinstance(shared.get("url", ""), str):
        raise ConfigError(f'{path}: [shared] takes one key: url = "redis://HOST:PORT/DB"')
    if "url" in shared:
        cfg.flags["shared"] = shared["url"]
    return cfg


def _type_names(types: tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}
    names[list] = "a list"
    return " or ".join(names.get(t, t.__name__) for t in types)


def _table(path: Path, name: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: [{name}] must be a table")
    return value


def _entries(
    path: Path, name: str, table: Any, known: set[str], quote: bool
) -> Iterator[tuple[str, dict[str, Any]]]:
    """Each ``[name.KEY]`` sub-table, checked for unknown keys."""
    for key, entry in _table(path, name, table).items():
        where = f'{name}."{key}"' if quote else f"{name}.{key}"
        entry = _table(path, where, entry)
        unknown = set(entry) - known
        if unknown:
            raise ConfigError(
                f"{path}: unknown key {sorted(unknown)[0]!r} in [{where}] "
                f"(known: {', '.join(sorted(known))})"
            )
        yield key, entry


def _load_providers(path: Path, table: Any) -> dict[str, ProviderSettings]:
    out: dict[str, ProviderSettings] = {}
    for name, spec in _entries(path, "providers", table, _PROVIDER_KEYS, quote=False):
        where = f"{path}: [providers.{name}]"
        kind = spec.get("type", spec.get("kind", name if name in BUILTIN_PROVIDERS else None))
        if kind not in BUILTIN_PROVIDERS:
            raise ConfigError(
                f'{where} needs type = "openai", "anthropic", "gemini", "azure", "bedrock" or "sim"'
            )
        if name in BUILTIN_PROVIDERS and kind != name:
            raise ConfigError(f"{where} cannot change the type of a built-in")
        structured = spec.get("structured_output", "native")
        if structured not in ("native", "prompt"):
            raise ConfigError(f'{where} structured_output must be "native" or "prompt"')
        mtf = spec.get("max_tokens_field")
        if mtf not in (None, "max_tokens", "max_completion_tokens"):
            raise ConfigError(
                f'{where} max_tokens_field must be "max_tokens" or "max_completion_tokens"'
            )
        base_url = spec.get("base_url")
        if base_url is not None:
            if not isinstance(base_url, str):
                raise ConfigError(f"{where} base_url must be a string")
            check_base_url(base_url, where)
        key_env = spec.get("api_key_env")
        if key_env is not None and not isinstance(key_env, str):
            raise ConfigError(f"{where} api_key_env must be a string")
        out[name] = ProviderSettings(
            name=name,
            kind=kind,
            base_url=base_url,
            api_key_env=key_env,
            max_tokens_field=mtf,
            structured_output=structured,
            headers=_headers(where, spec.get("headers", {})),
            region=_region(path, name, spec.get("region")),
            **_openai_settings(where, kind, spec),
        )
    return out


def _region(path: Path, name: str, region: Any) -> str | None:
    if region is not None and (not isinstance(region, str) or not REGION_RE.fullmatch(region)):
        raise ConfigError(
            f'{path}: [providers.{name}] region must be an AWS region name, like "us-east-1"'
        )
    return region


def _headers(where: str, headers: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
        raise ConfigError(f"{where} headers must be a table of strings")
    for header, value in headers.items():
        if any(ord(c) < 32 or ord(c) == 127 for c in header + value):
            # A line break in a header would end it, or inject another; never quoted.
            raise ConfigError(
                f"{where} header {header.strip()!r} contains a line break or control character"
            )
    return tuple(headers.items())


def _choice(where: str, spec: dict[str, Any], key: str, allowed: tuple[str, ...]) -> Any:
    value = spec.get(key)
    if value is not None and value not in allowed:
        raise ConfigError(f"{where} {key} must be one of {', '.join(map(repr, allowed))}")
    return value


def _openai_settings(where: str, kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    """The keys of OpenAI-shaped providers: endpoint shape, tier, Azure, compatible batch."""
    out: dict[str, Any] = {
        "api": _choice(where, spec, "api", API_SHAPES),
        "service_tier": _choice(where, spec, "service_tier", SERVICE_TIERS),
    }
    if _choice(where, spec, "azure_path", ("v1", "deployment")) is not None:
        out["azure_path"] = spec["azure_path"]
    for key in ("api_version", "batch_purpose", "batch_endpoint", "batch_path"):
        value = spec.get(key)
        if value is not None:
            if not isinstance(value, str) or not value.strip():
                raise ConfigError(f"{where} {key} must be a non-empty string")
            out[key] = value
    for key in ("batch", "batch_inline"):
        value = spec.get(key)
        if value is not None:
            if not isinstance(value, bool):
                raise ConfigError(f"{where} {key} must be true or false")
            out[key] = value
    price_as = spec.get("price_as")
    if isinstance(price_as, str):
        out["price_as"] = (("*", price_as),)
    elif isinstance(price_as, dict) and all(isinstance(v, str) for v in price_as.values()):
        out["price_as"] = tuple(price_as.items())
    elif price_as is not None:
        raise ConfigError(
            f'{where} price_as must be a model name ("gpt-4o-mini") or a table of '
            "deployment = model"
        )
    if out.get("batch") and kind != "openai":
        raise ConfigError(f'{where} batch = true is for type = "openai" (compatible) servers')
    return out


def _load_prices(path: Path, table: Any) -> dict[str, Price]:
    out: dict[str, Price] = {}
    for spec, entry in _entries(path, "prices", table, _PRICE_KEYS, quote=True):
        if "input" not in entry or "output" not in entry:
            raise ConfigError(
                f'{path}: [prices."{spec}"] takes input, output (required), cache_read, '
                "cache_write, in USD per million tokens"
            )
        for k, v in entry.items():
            if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v < math.inf:
                raise ConfigError(f'{path}: [prices."{spec}"] {k} must be a number ≥ 0')
        out[spec] = Price.flat(
            float(entry["input"]),
            float(entry["output"]),
            None if "cache_read" not in entry else float(entry["cache_read"]),
            None if "cache_write" not in entry else float(entry["cache_write"]),
        )
    return out


def _load_limits(path: Path, table: Any) -> dict[str, ModelLimits]:
    out: dict[str, ModelLimits] = {}
    for spec, entry in _entries(path, "limits", table, _LIMIT_KEYS, quote=True):
        for k, v in entry.items():
            if isinstance(v, bool) or not isinstance(v, int | float) or not 0 < v < math.inf:
                raise ConfigError(f'{path}: [limits."{spec}"] {k} must be a number > 0')
        out[spec] = ModelLimits(**{k: float(v) for k, v in entry.items()})
    return out
