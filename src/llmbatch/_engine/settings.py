"""The few settings the engine reads: frozen, and apart from the whole run config."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from llmbatch._config.settings import RunConfig


@dataclass(frozen=True, slots=True)
class EngineSettings:
    concurrency: int = 16
    max_attempts: int = 6
    repair_attempts: int = 2
    timeout: float = 300.0  # one attempt, from its send to its last byte
    backoff_cap: float = 60.0
    max_tokens: int = 1024  # a job's output cap when it sets none (for reservations)
    log_prompts: bool = False

    @classmethod
    def from_config(cls, config: RunConfig) -> EngineSettings:
        return cls(
            concurrency=config.concurrency,
            max_attempts=config.max_attempts,
            repair_attempts=config.repair_attempts,
            timeout=config.timeout,
            backoff_cap=config.backoff_cap,
            max_tokens=config.max_tokens,
            log_prompts=config.log_prompts,
        )
