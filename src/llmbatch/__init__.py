"""llmbatch: run JSONL files of LLM requests fast, safely and cheaply.

    import llmbatch

    results = llmbatch.run(["What is 2 + 2?"], model="sim:claude-haiku-4-5")

    async with llmbatch.Runner(model="sim:claude-haiku-4-5", max_cost=1.0) as runner:
        async for result in runner.stream(requests):
            ...

Files as the CLI runs them (resume, lock, history, cache; the ``run`` command is this call):

    result = llmbatch.run_file("jobs.jsonl", model="sim:claude-haiku-4-5", max_cost=1.0)
    result.report, result.exit_code

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
_EVENTS = (
    "AttemptEnded",
    "AttemptStarted",
    "BreakerChanged",
    "BudgetStopped",
    "CacheHit",
    "EventSink",
    "JobEnded",
    "LimitChanged",
    "RunEnded",
    "RunStarted",
)
_WHERE: dict[str, str] = {
    "run": "llmbatch._api.runner",
    "Runner": "llmbatch._api.runner",
    "run_file": "llmbatch._api.files",
    "arun_file": "llmbatch._api.files",
    "FileRunResult": "llmbatch._api.files",
    "Request": "llmbatch._api.requests",
    "Result": "llmbatch._api.results",
    "ResultError": "llmbatch._core.results",
    "Provider": "llmbatch.providers._base",
    "Answer": "llmbatch.providers._base",
    "ProviderRequest": "llmbatch._core.jobs",
    **{name: "llmbatch._core.events" for name in _EVENTS},
    "RunConfig": "llmbatch._config.run_config",
    "run_jobs": "llmbatch._run.online",
    "run_jobs_async": "llmbatch._run.online",
    "ModelRef": "llmbatch._core.models",
    "parse_model_spec": "llmbatch._core.models",
    "RunReport": "llmbatch._report.report",
    "Usage": "llmbatch._core.usage",
    **{name: "llmbatch._core.exceptions" for name in _EXCEPTIONS},
}

__all__ = [
    "Answer",
    "AttemptEnded",
    "AttemptStarted",
    "AuthError",
    "BadRequest",
    "BreakerChanged",
    "BudgetStopped",
    "CacheHit",
    "ConfigError",
    "ConnectionFailed",
    "ContentFiltered",
    "EventSink",
    "FileRunResult",
    "InputError",
    "JobEnded",
    "LLMBatchError",
    "LimitChanged",
    "ModelRef",
    "NotFound",
    "OtherProviderError",
    "OutputError",
    "OutputLocked",
    "Overloaded",
    "Provider",
    "ProviderError",
    "ProviderRequest",
    "ProviderTimeout",
    "RateLimited",
    "Request",
    "Result",
    "ResultError",
    "ResumeConflict",
    "RunConfig",
    "RunEnded",
    "RunReport",
    "RunStarted",
    "Runner",
    "ServerError",
    "SharedStoreError",
    "Usage",
    "UsageError",
    "__version__",
    "arun_file",
    "parse_model_spec",
    "run",
    "run_file",
    "run_jobs",
    "run_jobs_async",
]

if TYPE_CHECKING:
    from llmbatch._api.files import FileRunResult, arun_file, run_file
    from llmbatch._api.requests import Request
    from llmbatch._api.results import Result
    from llmbatch._api.runner import Runner, run
    from llmbatch._config.run_config import RunConfig
    from llmbatch._core.events import (
        AttemptEnded,
        AttemptStarted,
        BreakerChanged,
        BudgetStopped,
        CacheHit,
        EventSink,
        JobEnded,
        LimitChanged,
        RunEnded,
        RunStarted,
    )
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
    from llmbatch._core.jobs import Request as ProviderRequest
    from llmbatch._core.models import ModelRef, parse_model_spec
    from llmbatch._core.results import ResultError
    from llmbatch._core.usage import Usage
    from llmbatch._report.report import RunReport
    from llmbatch._run.online import run_jobs, run_jobs_async
    from llmbatch.providers._base import Answer, Provider


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'llmbatch' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return list(__all__)
