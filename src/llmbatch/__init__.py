"""llmbatch: run JSONL files of LLM requests fast, safely and cheaply.

    from pathlib import Path
    from llmbatch import ModelRef, RunConfig, run_jobs

    report = run_jobs(RunConfig(jobs=Path("jobs.jsonl"), model=ModelRef("sim", "claude-haiku-4-5")))

Names are imported on first use, so ``llmbatch --help`` loads nothing but typer.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXCEPTIONS = (
    "AuthError",
    "BadRequest",
    "ConfigError",
    "ConnectionFailed",
    "ContentFiltered",
    "InputError",
    "LLMBatchError",
    "NotFound",
    "OtherProviderError",
    "OutputError",
    "OutputLocked",
    "Overloaded",
    "ProviderError",
    "ProviderTimeout",
    "RateLimited",
    "ResumeConflict",
    "ServerError",
    "SharedStoreError",
    "UsageError",
)
_WHERE: dict[str, str] = {
    "RunConfig": "llmbatch._config.settings",
    "run_jobs": "llmbatch._run.online",
    "run_jobs_async": "llmbatch._run.online",
    "ModelRef": "llmbatch._core.models",
    "parse_model_spec": "llmbatch._core.models",
    "RunReport": "llmbatch._report.report",
    "Usage": "llmbatch._core.usage",
    **{name: "llmbatch._core.exceptions" for name in _EXCEPTIONS},
}

__all__ = [
    "AuthError",
    "BadRequest",
    "ConfigError",
    "ConnectionFailed",
    "ContentFiltered",
    "InputError",
    "LLMBatchError",
    "ModelRef",
    "NotFound",
    "OtherProviderError",
    "OutputError",
    "OutputLocked",
    "Overloaded",
    "ProviderError",
    "ProviderTimeout",
    "RateLimited",
    "ResumeConflict",
    "RunConfig",
    "RunReport",
    "ServerError",
    "SharedStoreError",
    "Usage",
    "UsageError",
    "__version__",
    "parse_model_spec",
    "run_jobs",
    "run_jobs_async",
]

if TYPE_CHECKING:
    from llmbatch._config.settings import RunConfig
    from llmbatch._core.exceptions import (
        AuthError,
        BadRequest,
        ConfigError,
        ConnectionFailed,
        ContentFiltered,
        InputError,
        LLMBatchError,
        NotFound,
        OtherProviderError,
        OutputError,
        OutputLocked,
        Overloaded,
        ProviderError,
        ProviderTimeout,
        RateLimited,
        ResumeConflict,
        ServerError,
        SharedStoreError,
        UsageError,
    )
    from llmbatch._core.models import ModelRef, parse_model_spec
    from llmbatch._core.usage import Usage
    from llmbatch._report.report import RunReport
    from llmbatch._run.online import run_jobs, run_jobs_async


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'llmbatch' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return list(__all__)
