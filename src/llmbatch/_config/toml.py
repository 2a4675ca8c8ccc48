"""llmbatch.toml: its provider, price and limit tables and flag defaults, read and checked."""

from __future__ import annotations

import math
import os
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmbatch._core.exceptions import ConfigError
from llmbatch._core.keys import check_base_url
from llmbatch._core.models import BUILTIN_PROVIDERS
from llmbatch._core.pricing import Price

DEFAULT_ANTHROPIC_URL = "https://api.anthropic.com"
DEFAULT_OPENAI_URL = "https://api.openai.com/v1"
DEFAULT_GEMINI_URL = "https://generativelanguage.googleapis.com"  # no /v1beta, as in google-genai


@dataclass(frozen=True, slots=True)
class ProviderSettings:
    """Where and how to reach one provider. ``kind`` is its wire format."""

    name: str
    kind: str  # "anthropic" | "openai" | "gemini" | "sim"
    base_url: str | None = None
    api_key_env: str | None = None
    # OpenAI-compatible servers differ: "max_tokens" (most) or "max_completion_tokens" (OpenAI).
    max_tokens_field: str | None = None
    structured_output: str = "native"  # "native" | "prompt"
    headers: tuple[tuple[str, str], ...] = ()

    def resolved_base_url(self) -> str:
        if self.base_url:
            return self.base_url.rstrip("/")
        if self.kind == "anthropic":
            return (os.environ.get("ANTHROPIC_BASE_URL") or DEFAULT_ANTHROPIC_URL).rstrip("/")
        if self.kind == "openai":
            return (os.environ.get("OPENAI_BASE_URL") or DEFAULT_OPENAI_URL).rstrip("/")
        if self.kind == "gemini":
            url = os.environ.get("GEMINI_BASE_URL") or os.environ.get("GOOGLE_GEMINI_BASE_URL")
            return (url or DEFAULT_GEMINI_URL).rstrip("/")
        return ""

    def key_env(self) -> str | None:
        """The variable holding the key; ``api_key_env = ""`` means the server needs none."""
        if self.api_key_env is not None:
            return self.api_key_env or None
        # A custom provider gets no key unless it names one: OPENAI_API_KEY belongs
        # to OpenAI's endpoint, not to whatever base_url a [providers.NAME] gives.
        if self.name == "gemini":
            return gemini_key_env()
        return {"anthropic": "ANTHROPIC_API_KEY", "openai": "OPENAI_API_KEY"}.get(self.name)


def gemini_key_env() -> str:
    """GOOGLE_API_KEY when set (google-genai's precedence), else GEMINI_API_KEY."""
    return "GOOGLE_API_KEY" if os.environ.get("GOOGLE_API_KEY") else "GEMINI_API_KEY"


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
        kind = spec.get("type", name if name in BUILTIN_PROVIDERS else None)
        if kind not in BUILTIN_PROVIDERS:
            raise ConfigError(
                f'{path}: [providers.{name}] needs type = "openai", "anthropic" or "sim"'
            )
        if name in BUILTIN_PROVIDERS and kind != name:
            raise ConfigError(f"{path}: [providers.{name}] cannot change the type of a built-in")
        structured = spec.get("structured_output", "native")
        if structured not in ("native", "prompt"):
            raise ConfigError(
                f'{path}: [providers.{name}] structured_output must be "native" or "prompt"'
            )
        mtf = spec.get("max_tokens_field")
        if mtf not in (None, "max_tokens", "max_completion_tokens"):
            raise ConfigError(
                f'{path}: [providers.{name}] max_tokens_field must be "max_tokens" '
                'or "max_completion_tokens"'
            )
        base_url = spec.get("base_url")
        if base_url is not None:
            if not isinstance(base_url, str):
                raise ConfigError(f"{path}: [providers.{name}] base_url must be a string")
            check_base_url(base_url, f"{path}: [providers.{name}]")
        key_env = spec.get("api_key_env")
        if key_env is not None and not isinstance(key_env, str):
            raise ConfigError(f"{path}: [providers.{name}] api_key_env must be a string")
        headers = spec.get("headers", {})
        if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
            raise ConfigError(f"{path}: [providers.{name}] headers must be a table of strings")
        for header, value in headers.items():
            if any(ord(c) < 32 or ord(c) == 127 for c in header + value):
                # A line break in a header would end it, or inject another; never quoted.
                raise ConfigError(
                    f"{path}: [providers.{name}] header {header.strip()!r} contains a line "
                    "break or control character"
                )
        out[name] = ProviderSettings(
            name=name,
            kind=kind,
            base_url=base_url,
            api_key_env=key_env,
            max_tokens_field=mtf,
            structured_output=structured,
            headers=tuple(headers.items()),
        )
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
