"""Run settings: defaults < llmbatch.toml < flags, checked once, before anything is sent.

``RunConfig`` itself is in ``_config/run_config.py``; it and the llmbatch.toml types are
importable from here too."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import orjson

from llmbatch._config.modes import MODES, Mode, parse_duration
from llmbatch._config.paths import check_run_paths
from llmbatch._config.provider_settings import API_SHAPES, SERVICE_TIERS
from llmbatch._config.provider_settings import DEFAULT_ANTHROPIC_URL as DEFAULT_ANTHROPIC_URL
from llmbatch._config.provider_settings import DEFAULT_OPENAI_URL as DEFAULT_OPENAI_URL
from llmbatch._config.provider_settings import ProviderSettings as ProviderSettings
from llmbatch._config.run_config import RunConfig as RunConfig
from llmbatch._config.toml import FileConfig as FileConfig
from llmbatch._config.toml import ModelLimits as ModelLimits
from llmbatch._config.toml import find_config as find_config
from llmbatch._config.toml import load_config as load_config
from llmbatch._core.exceptions import UsageError
from llmbatch._core.keys import check_otlp_url
from llmbatch._core.models import ModelRef, ModelSpecError, parse_model_spec
from llmbatch._io.paths import file_kind, resolve_output, resolve_report

# More requests in flight than any provider account allows; far past it, the
# pool itself (a task and a buffer slot per worker) is what would run out.
MAX_CONCURRENCY = 10_000


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
    base = file_config.path.parent if file_config.path else Path(".")

    def path_of(key: str) -> Path:
        return _relative(base, merged[key], flags.get(key) is not None)

    cfg = RunConfig(jobs=jobs, jobs_display=jobs_display)
    cfg.providers.update(file_config.providers)
    cfg.prices = dict(file_config.prices)
    cfg.limits = dict(file_config.limits)
    _output(cfg, merged, stdin, path_of)
    _models(cfg, merged, file_config.provider_names)
    _apply_numbers(cfg, merged)
    reads: dict[str, Path | None] = {"the jobs file": jobs, "the config file": file_config.path}
    _read_files(cfg, merged, path_of, reads)
    keys = ("fresh", "retry_failed", "skip_invalid", "quiet", "include_input", "dry_run")
    for key in (*keys, "wait_for_budget", "no_cache", "log_prompts"):
        setattr(cfg, key, bool(merged.get(key, False)))
    if merged.get("limit") is not None:
        cfg.limit = _number(merged, "limit", int)
    _shared_settings(cfg, merged)
    _batch_settings(cfg, merged)
    _openai_settings(cfg, merged)
    prompt_cache = merged.get("prompt_cache") or "auto"
    if prompt_cache not in ("auto", "off"):
        raise UsageError(f"--prompt-cache {prompt_cache!r}: auto or off")
    cfg.prompt_cache = prompt_cache
    _columns(cfg, merged)
    _npy(cfg, merged, path_of)
    observability_flags(cfg, merged, jobs, stdin)
    check_run_paths(cfg, reads, {"--npy": cfg.npy})
    return cfg


def _output(
    cfg: RunConfig, merged: Mapping[str, Any], stdin: bool, path_of: Callable[[str], Path]
) -> None:
    """The results file: given, or JOBS.results.jsonl beside the jobs (none for a pipe)."""
    out = merged.get("output")
    if out is None and stdin:
        raise UsageError("--output is required when the jobs come from standard input or a pipe")
    if out is None and str(cfg.jobs).startswith("hf:/"):
        raise UsageError("--output is required when the jobs come from hf://datasets/…")
    if out is None:
        jobs = cfg.jobs
        tail = ".vectors.parquet" if merged.get("embed") else ".results.jsonl"
        cfg.output = resolve_output(str(jobs.with_name(_stem(jobs) + tail)))
    else:
        cfg.output = resolve_output(out if out == "-" else str(path_of("output")))


def _npy(cfg: RunConfig, merged: Mapping[str, Any], path_of: Callable[[str], Path]) -> None:
    """``--npy PATH``: a ``.npy`` file built from the output (so the output must be a file)."""
    value = merged.get("npy")
    if value is None or value is False:
        return
    if not isinstance(value, str | os.PathLike) or not str(value):
        raise UsageError("--npy takes a PATH ending in .npy (e.g. --npy vectors.npy)")
    path = path_of("npy")
    if path.suffix.lower() != ".npy":
        raise UsageError(f"--npy {value}: the matrix's PATH must end in .npy. Nothing was sent.")
    if file_kind(path) == "directory":
        raise UsageError(f"--npy {value} is a directory; give a file path. Nothing was sent.")
    if cfg.output is None:
        raise UsageError(
            "--npy reads the ids and vectors back from the output: give a file --output, not "
            "standard output. Nothing was sent."
        )
    cfg.npy = path


def _columns(cfg: RunConfig, merged: Mapping[str, Any]) -> None:
    """Embeddings (``embed``, ``--dimensions``) and which columns of a Parquet/CSV/hf:// source
    make a job (``--id-column``, ``--prompt-column``, ``--include-columns``)."""
    from llmbatch._io.columnar import Columns

    cfg.embed = bool(merged.get("embed", False))
    if merged.get("dimensions") is not None:
        cfg.dimensions = _number(merged, "dimensions", int)
        if cfg.dimensions < 1:
            raise UsageError("--dimensions must be a positive integer")
    if merged.get("inputs_per_request") is not None:
        cfg.inputs_per_request = _number(merged, "inputs_per_request", int)
    include = merged.get("include_columns") or ()
    if isinstance(include, str):
        include = [c.strip() for c in include.split(",") if c.strip()]
    id_col, prompt_col = merged.get("id_column"), merged.get("prompt_column")
    given = cfg.jobs_display or ""
    source = given if given.startswith("hf://") else None
    if id_col or prompt_col or include or cfg.embed or source:
        cfg.columns = Columns(id_col, prompt_col, tuple(include), cfg.embed, source)


def _models(cfg: RunConfig, merged: Mapping[str, Any], names: tuple[str, ...]) -> None:
    """--model, --fallback and --provider, checked against the known providers."""

    def model(spec: str, what: str) -> ModelRef:
        try:
            return parse_model_spec(spec, names)
        except ModelSpecError as exc:
            raise UsageError(f"{what}: {exc}") from None

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


def _read_files(
    cfg: RunConfig,
    merged: Mapping[str, Any],
    path_of: Callable[[str], Path],
    reads: dict[str, Path | None],
) -> None:
    """Template and schema (read now, noted in ``reads``), report and HTML paths, --system."""
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
    from llmbatch._io.shard import parse_shard, shard_output

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


def _batch_settings(cfg: RunConfig, merged: Mapping[str, Any]) -> None:
    """--mode and --batch-deadline (a duration such as 2h, or seconds)."""
    mode = merged.get("mode") or "online"
    if mode not in MODES:
        raise UsageError(f"--mode {mode!r}: one of {', '.join(MODES)}")
    cfg.mode = Mode(mode)
    deadline = merged.get("batch_deadline")
    if isinstance(deadline, str):
        cfg.batch_deadline = parse_duration(deadline)
    elif deadline is not None:
        cfg.batch_deadline = _number(merged, "batch_deadline", float)


def _openai_settings(cfg: RunConfig, merged: Mapping[str, Any]) -> None:
    """--api and --service-tier; flex gets a longer default --timeout (its answers queue)."""
    for key, allowed in (("api", API_SHAPES), ("service_tier", SERVICE_TIERS)):
        value = merged.get(key)
        if value is not None and value not in allowed:
            flag = "--" + key.replace("_", "-")
            raise UsageError(f"{flag} {value!r}: one of {', '.join(allowed)}")
        setattr(cfg, key, value)
    flex = cfg.service_tier == "flex" or any(
        s.service_tier == "flex" for s in cfg.providers.values()
    )
    if flex and merged.get("timeout") is None:
        cfg.timeout = FLEX_TIMEOUT_S


# Flex answers may wait in OpenAI's queue: its SDK docs suggest a 15-minute timeout.
FLEX_TIMEOUT_S = 900.0


def _stem(path: Path) -> str:
    name = path.name
    for compressed in (".gz", ".bz2", ".xz"):  # jobs.jsonl.gz → jobs.results.jsonl
        name = name.removesuffix(compressed)
    for suffix in (".jsonl", ".ndjson", ".json"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def _relative(base: Path, value: str, from_flag: bool) -> Path:
    """Paths in llmbatch.toml are relative to it; flags are relative to the shell."""
    p = Path(value)
    return p if from_flag or p.is_absolute() else base / p


def load_schema_file(path: Path) -> dict[str, Any]:
    from llmbatch._core.schema import check_schema

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


def observability_flags(cfg: RunConfig, merged: dict[str, Any], jobs: Path, stdin: bool) -> None:
    """--cache, --log-json, --otlp into ``cfg``, checked before anything is sent."""
    if merged.get("cache") is not None:
        cfg.cache_path = Path(merged["cache"]).expanduser()
    cfg.log_json = merged.get("log_json")  # checked with every other path (_paths)
    otlp = merged.get("otlp")
    if otlp is not None:
        check_otlp_url(str(otlp))
    cfg.otlp = otlp
