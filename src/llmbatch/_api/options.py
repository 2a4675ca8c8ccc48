"""API keyword arguments → the same ``RunConfig`` (and checks) as the CLI's flags.

``build_config``: a ``Runner``'s (requests in memory); ``file_flags`` and
``configured``: ``run_file``'s (a jobs file, with ``llmbatch.toml`` as the CLI reads it).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from llmbatch._config.settings import (
    FileConfig,
    ProviderSettings,
    RunConfig,
    build_run_config,
    load_config,
)
from llmbatch._core.exceptions import UsageError
from llmbatch._core.models import BUILTIN_PROVIDERS, ModelRef
from llmbatch._core.schema import check_schema
from llmbatch.providers._base import Provider

# What a run of requests in memory "reads": no file (check_run_paths compares paths).
REQUESTS = Path(os.devnull)


def custom_providers(provider: Provider | Mapping[str, Provider] | None) -> dict[str, Provider]:
    """``provider=``: one object (every job goes to it) or a mapping name → object."""
    if provider is None:
        return {}
    if isinstance(provider, Mapping):
        return {str(name): p for name, p in provider.items()}
    name = getattr(provider, "name", None)
    if not isinstance(name, str) or not name:
        raise UsageError("provider=: a Provider needs a non-empty str `name`")
    return {name: provider}


def build_config(
    *,
    model: str | ModelRef | None,
    fallback: Sequence[str | ModelRef],
    schema: dict[str, Any] | None,
    output: str | Path | None,
    cache: bool | str | Path,
    shared: str | None,
    customs: Mapping[str, Provider],
    one_provider: bool,
    options: Mapping[str, Any],
) -> RunConfig:
    """The run's config, checked like the CLI's flags (``options``: any other flag, by its
    Python name: ``rpm``, ``budget_per_hour``, ``include_input``, …)."""
    file_config = FileConfig(
        providers={
            name: ProviderSettings(name, "sim", api_key_env="")
            for name in customs
            if name not in BUILTIN_PROVIDERS
        }
    )
    flags: dict[str, Any] = {k: v for k, v in options.items() if v is not None}
    for key in ("schema", "output", "jobs", "cache", "no_cache", "template_file"):
        if key in flags:
            raise UsageError(f"{key}= is not an option here")
    flags["output"] = "-"
    if shared is not None:
        flags["shared"] = shared
    if one_provider:
        (name,) = customs
        if isinstance(model, str) and ":" not in model:
            model = ModelRef(name, model)
        flags["provider"] = name
        if model is None:
            model = ModelRef(name, "default")
    if model is not None:
        flags["model"] = str(model)
    if fallback:
        flags["fallback"] = [str(f) for f in fallback]
    cfg = build_run_config(REQUESTS, flags, file_config, jobs_display="requests")
    cfg.quiet = True
    if schema is not None:
        check_schema(schema, "schema=")
        cfg.schema = schema
    if output is not None:
        from llmbatch._io.paths import resolve_output

        cfg.output = resolve_output(str(Path(output).expanduser()))
    else:
        cfg.output = None
    if cache is False:
        cfg.no_cache = True
    elif cache is not True:
        cfg.cache_path = Path(cache).expanduser()
    return cfg


def add_custom_providers(file_config: FileConfig, customs: Mapping[str, Provider]) -> None:
    """Custom provider objects under a name llmbatch does not know: known from here on."""
    for name in customs:
        if name not in BUILTIN_PROVIDERS and name not in file_config.providers:
            file_config.providers[name] = ProviderSettings(name, "sim", api_key_env="")


def file_flags(
    *,
    output: str | Path | None,
    model: str | ModelRef | None,
    fallback: Sequence[str | ModelRef],
    schema: str | Path | dict[str, Any] | None,
    cache: bool | str | Path | None,
    customs: Mapping[str, Provider],
    one_provider: bool,
    options: Mapping[str, Any],
) -> dict[str, Any]:
    """``run_file``'s keyword arguments as the ``run`` command's flags (a dict ``schema``
    is not a flag: the caller sets it on the config)."""
    flags: dict[str, Any] = {k: v for k, v in options.items() if v is not None}
    for key in ("jobs", "dry_run"):
        if key in flags:
            raise UsageError(f"{key}= is not an option here")
    if output is not None:
        flags["output"] = str(output)
    if one_provider:
        (name,) = customs
        if isinstance(model, str) and ":" not in model:
            model = ModelRef(name, model)
        flags["provider"] = name
        if model is None and "model" not in flags:
            model = ModelRef(name, "default")
    if model is not None:
        flags["model"] = str(model)
    if fallback:
        flags["fallback"] = [str(f) for f in fallback]
    if isinstance(schema, str | Path):
        flags["schema"] = str(schema)
    if cache is False:
        flags["no_cache"] = True
    elif cache is not None and cache is not True:
        flags["cache"] = str(cache)
    for key, value in list(flags.items()):
        if isinstance(value, Path):
            flags[key] = str(value)
    return flags


@contextmanager
def configured(
    jobs: str | Path,
    flags: Mapping[str, Any],
    config_file: str | Path | None,
    customs: Mapping[str, Provider] | None = None,
) -> Iterator[RunConfig]:
    """Flags over llmbatch.toml (``config_file``, else ./llmbatch.toml if present), for JOBS
    (``-`` or a pipe is spooled to a temporary file, removed after)."""
    from llmbatch._io.jobfile import spool_stdin, spooled_jobs_source

    file_config = load_config(Path(config_file) if config_file is not None else None)
    add_custom_providers(file_config, customs or {})
    jobs = str(jobs)
    # A pipe (`-`, `<(cmd)`, /dev/stdin) can be read once: it is spooled, and read twice.
    source = spooled_jobs_source(jobs)
    stdin = source is not None
    if source is not None:
        path, display = spool_stdin(source), "<stdin>" if jobs == "-" else jobs
    else:
        path, display = Path(jobs), jobs
    try:
        yield build_run_config(path, flags, file_config, jobs_display=display, stdin=stdin)
    finally:
        if stdin:
            path.unlink(missing_ok=True)
