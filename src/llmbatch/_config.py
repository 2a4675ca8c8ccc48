"""Run settings: defaults < llmbatch.toml < flags, checked once, before anything is sent."""

from __future__ import annotations

import math
import os
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson

from ._exceptions import ConfigError, UsageError
from ._keys import check_base_url
from ._models import BUILTIN_PROVIDERS, ModelRef, ModelSpecError, parse_model_spec
from ._paths import check_run_paths, resolve_output, resolve_report
from ._pricing import Price

DEFAULT_ANTHROPIC_URL = "https://api.anthropic.com"
DEFAULT_OPENAI_URL = "https://api.openai.com/v1"
# More requests in flight than any provider account allows; far past it, the
# pool itself (a task and a buffer slot per worker) is what would run out.
MAX_CONCURRENCY = 10_000


@dataclass(frozen=True, slots=True)
class ProviderSettings:
    """Where and how to reach one provider. ``kind`` is its wire format."""

    name: str
    kind: str  # "anthropic" | "openai" | "sim"
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
        return ""

    def key_env(self) -> str | None:
        """The variable holding the key; ``api_key_env = ""`` means the server needs none."""
        if self.api_key_env is not None:
            return self.api_key_env or None
        # A custom provider gets no key unless it names one: OPENAI_API_KEY belongs
        # to OpenAI's endpoint, not to whatever base_url a [providers.NAME] gives.
        return {"anthropic": "ANTHROPIC_API_KEY", "openai": "OPENAI_API_KEY"}.get(self.name)


@dataclass(frozen=True, slots=True)
class ModelLimits:
    """Client-side limits for one model (per minute)."""

    rpm: float | None = None
    tpm: float | None = None
    input_tpm: float | None = None
    output_tpm: float | None = None


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

    def __post_init__(self) -> None:
        for name in BUILTIN_PROVIDERS:
            self.providers.setdefault(name, ProviderSettings(name, name))

    @property
    def display_name(self) -> str:
        return self.jobs_display or str(self.jobs)

    def limits_for(self, ref: ModelRef) -> ModelLimits:
        """Per-model limits from config, with --rpm / --tpm filling what they leave."""
        own = self.limits.get(str(ref), ModelLimits())
        return replace(
            own,
            rpm=own.rpm if own.rpm is not None else self.rpm,
            tpm=own.tpm if own.tpm is not None else self.tpm,
        )


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


# -- flags + file → RunConfig ---------------------------------------------------


def build_run_config(
    jobs: Path,
    flags: Mapping[str, Any],
    file_config: FileConfig,
    *,
    jobs_display: str | None = None,
    stdin: bool = False,
) -> RunConfig:
    """Merge flags (those not None) over the config file, check every value."""
    merged: dict[str, Any] = dict(file_config.flags)
    merged.update({k: v for k, v in flags.items() if v is not None and v != []})
    names = file_config.provider_names
    base = file_config.path.parent if file_config.path else Path(".")

    def path_of(key: str) -> Path:
        return _relative(base, merged[key], flags.get(key) is not None)

    def model(spec: str, what: str) -> ModelRef:
        try:
            return parse_model_spec(spec, names)
        except ModelSpecError as exc:
            raise UsageError(f"{what}: {exc}") from None

    cfg = RunConfig(jobs=jobs, jobs_display=jobs_display)
    cfg.providers.update(file_config.providers)
    cfg.prices = dict(file_config.prices)
    cfg.limits = dict(file_config.limits)

    out = merged.get("output")
    if out is None and stdin:
        raise UsageError("--output is required when the jobs come from standard input or a pipe")
    if out is None:
        cfg.output = resolve_output(str(jobs.with_name(_stem(jobs) + ".results.jsonl")))
    else:
        cfg.output = resolve_output(out if out == "-" else str(path_of("output")))
    if "model" in merged:
        cfg.model = model(merged["model"], "--model")
    fallback = merged.get("fallback") or []
    if isinstance(fallback, str):
        fallback = [fallback]
    cfg.fallback = [model(s, "--fallback") for s in fallback]
    provider = merged.get("provider")
    if provider is not None:
        if provider not in names:
            raise UsageError(
                f"--provider {provider!r} is not a known provider ({', '.join(names)})"
            )
        cfg.provider = provider
    _apply_numbers(cfg, merged)
    reads: dict[str, Path | None] = {"the jobs file": jobs, "the config file": file_config.path}
    if merged.get("template") is not None and merged.get("template_file") is not None:
        raise UsageError("give --template or --template-file, not both")
    if merged.get("template_file") is not None:
        tpath = reads["--template-file"] = path_of("template_file")
        try:
            cfg.template = tpath.read_text(encoding="utf-8-sig").rstrip("\n")
        except OSError as exc:
            raise UsageError(f"cannot read template file {tpath}: {exc.strerror}") from None
    else:
        cfg.template = merged.get("template")
    if merged.get("schema") is not None:
        spath = reads["--schema"] = path_of("schema")
        cfg.schema = load_schema_file(spath)
    cfg.system = merged.get("system")
    if merged.get("report") is not None:
        cfg.report = resolve_report(path_of("report"))
    if merged.get("html") is not None:
        cfg.html = resolve_report(path_of("html"))
    keys = ("fresh", "retry_failed", "skip_invalid", "quiet", "include_input", "dry_run")
    for key in (*keys, "wait_for_budget", "no_cache", "log_prompts"):
        setattr(cfg, key, bool(merged.get(key, False)))
    if merged.get("limit") is not None:
        cfg.limit = _number(merged, "limit", int)
    _shared_settings(cfg, merged)
    from ._observe import observability_flags

    observability_flags(cfg, merged, jobs, stdin)
    check_run_paths(cfg, reads)
    return cfg


def _number(merged: Mapping[str, Any], key: str, kind: type, allow_zero: bool = False) -> Any:
    """A finite number > 0 (≥ 0 with ``allow_zero``), or None when not given."""
    flag = f"--{key.replace('_', '-')}"
    value = merged.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise UsageError(f"{flag} must be a number")
    if not math.isfinite(value):
        raise UsageError(f"{flag} must be a finite number, got {value}")
    if value < 0 or (value == 0 and not allow_zero):
        raise UsageError(f"{flag} must be > 0, got {value}")
    if kind is int and value > _MAX_INT:
        raise UsageError(f"{flag} {value} is out of range (at most {_MAX_INT})")
    return kind(value)


_MAX_INT = 2**53


def _apply_numbers(cfg: RunConfig, merged: Mapping[str, Any]) -> None:
    for key in ("concurrency", "max_attempts", "max_tokens", "max_total_tokens"):
        v = _number(merged, key, int)
        if v is not None:
            setattr(cfg, key, v)
    if cfg.concurrency > MAX_CONCURRENCY:
        raise UsageError(
            f"--concurrency {cfg.concurrency} is more requests in flight than llmbatch "
            f"allows (at most {MAX_CONCURRENCY:,}); no provider account takes that many"
        )
    for key in ("rpm", "tpm", "timeout", "idle_timeout", "backoff_cap", "max_cost"):
        v = _number(merged, key, float)
        if v is not None:
            setattr(cfg, key, v)
    v = _number(merged, "repair_attempts", int, allow_zero=True)
    if v is not None:
        cfg.repair_attempts = v
    temp = merged.get("temperature")
    if temp is not None:
        if isinstance(temp, bool) or not isinstance(temp, int | float) or not 0 <= temp < math.inf:
            raise UsageError("--temperature must be a finite number ≥ 0")
        cfg.temperature = float(temp)


def _shared_settings(cfg: RunConfig, merged: Mapping[str, Any]) -> None:
    """Rolling budgets, --shared and --shard (SPEC §10)."""
    from ._shard import parse_shard, shard_output

    cfg.budget_per_hour = _number(merged, "budget_per_hour", float)
    cfg.budget_per_day = _number(merged, "budget_per_day", float)
    cfg.tokens_per_hour = _number(merged, "tokens_per_hour", int)
    cfg.tokens_per_day = _number(merged, "tokens_per_day", int)
    scope = merged.get("budget_scope") or "default"
    if not isinstance(scope, str) or not scope.strip():
        raise UsageError("--budget-scope must be a non-empty name")
    cfg.budget_scope = scope
    if merged.get("ledger"):
        cfg.ledger = Path(merged["ledger"]).expanduser()
    url = merged.get("shared")
    if url:
        if not str(url).startswith(("redis://", "rediss://", "unix://")):
            raise UsageError(f"--shared takes redis://HOST:PORT/DB, got {url!r}")
        cfg.shared = str(url)
    if merged.get("shard"):
        cfg.shard = parse_shard(str(merged["shard"]), os.environ)
        if cfg.output is not None:
            cfg.output = shard_output(cfg.output, cfg.shard)


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".jsonl", ".ndjson", ".json"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _relative(base: Path, value: str, from_flag: bool) -> Path:
    """Paths in llmbatch.toml are relative to it; flags are relative to the shell."""
    p = Path(value)
    return p if from_flag or p.is_absolute() else base / p


def load_schema_file(path: Path) -> dict[str, Any]:
    from ._schema import check_schema

    try:
        data = orjson.loads(path.read_bytes().removeprefix(b"\xef\xbb\xbf"))
    except FileNotFoundError:
        raise UsageError(f"schema file not found: {path}") from None
    except OSError as exc:
        raise UsageError(f"cannot read schema file {path}: {exc.strerror}") from None
    except orjson.JSONDecodeError as exc:
        raise UsageError(f"{path}: not valid JSON: {exc}") from None
    check_schema(data, str(path))
    assert isinstance(data, dict)
    return data
