"""A ``Runner``'s keyword arguments → the same ``RunConfig`` (and checks) as the CLI's flags."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from llmbatch._config.settings import FileConfig, ProviderSettings, RunConfig, build_run_config
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
