"""``llmbatch.Result``: one result line as a frozen type."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import orjson

from llmbatch._core.results import JobResult, ResultError
from llmbatch._core.usage import Usage


@dataclass(frozen=True, slots=True)
class Result:
    """One finished job: the fields of its result line (SPEC §3).

    ``status`` is ``"ok"`` or ``"failed"``; a failed job carries ``error``
    (``{"type", "message", "status"}``) and no ``output``. ``to_dict()`` is the
    line exactly as the output file holds it.
    """

    id: str
    status: str
    output: str | None
    parsed: Any
    provider: str | None
    model: str | None
    usage: Usage
    cost_usd: float | None
    latency_ms: float | None
    ttft_ms: float | None
    attempts: int
    error: ResultError | None
    metadata: Any
    stop_reason: str | None = None
    fingerprint: str | None = None
    attempt_errors: dict[str, int] = field(default_factory=dict)
    repairs: int = 0
    fallbacks: int = 0
    input: Any = None
    cache: dict[str, Any] | None = None
    batch: dict[str, str] | None = None
    prefix_group: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @classmethod
    def of(cls, result: JobResult) -> Result:
        return cls(**{f.name: getattr(result, f.name) for f in _FIELDS})

    def job_result(self) -> JobResult:
        return JobResult(**{f.name: getattr(self, f.name) for f in _FIELDS})

    def to_json(self) -> bytes:
        """The result line's bytes (newline included), as the output file holds them."""
        return self.job_result().to_json()

    def to_dict(self) -> dict[str, Any]:
        """The result line as a dict: what ``json.loads`` of its output line gives."""
        line: dict[str, Any] = orjson.loads(self.to_json())
        return line


_FIELDS = fields(JobResult)
