"""llmbatch: run JSONL files of LLM requests fast, safely and cheaply.

from llmbatch import RunConfig, run_jobs
report = run_jobs(RunConfig(jobs=Path("jobs.jsonl"), model=ModelRef("sim", "claude-haiku-4-5")))
"""

from ._config import RunConfig
from ._engine import run_jobs, run_jobs_async
from ._exceptions import (
    AuthError,
    BadRequest,
    ConfigError,
    ConnectionFailed,
    ContentFiltered,
    InputError,
    LLMBatchError,
    NotFound,
    OtherProviderError,
    OutputLocked,
    Overloaded,
    ProviderError,
    ProviderTimeout,
    RateLimited,
    ResumeConflict,
    ServerError,
    UsageError,
)
from ._models import ModelRef, parse_model_spec
from ._report import RunReport
from ._usage import Usage

__version__ = "0.1.0"

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
    "OutputLocked",
    "Overloaded",
    "ProviderError",
    "ProviderTimeout",
    "RateLimited",
    "ResumeConflict",
    "RunConfig",
    "RunReport",
    "ServerError",
    "Usage",
    "UsageError",
    "__version__",
    "parse_model_spec",
    "run_jobs",
    "run_jobs_async",
]
