"""Run statistics, gathered from result lines as they are written.

Percentiles come from a log-bucketed histogram (about 1% resolution, a few
hundred buckets whatever the run's length), so a million-job run keeps no list
of latencies.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

from ._results import JobResult

_BUCKETS_PER_E = 100  # bucket width: 1% in value


class Histogram:
    """Counts of non-negative values in log buckets; exact count, sum and max."""

    __slots__ = ("buckets", "count", "max", "total")

    def __init__(self) -> None:
        self.buckets: Counter[int] = Counter()
        self.count = 0
        self.total = 0.0
        self.max = 0.0

    def add(self, value: float) -> None:
        value = max(0.0, value)
        self.buckets[int(math.log1p(value) * _BUCKETS_PER_E)] += 1
        self.count += 1
        self.total += value
        if value > self.max:
            self.max = value

    def percentile(self, p: float) -> float:
        if not self.count:
            return 0.0
        rank = max(1, math.ceil(self.count * p / 100))
        seen = 0
        for bucket in sorted(self.buckets):
            seen += self.buckets[bucket]
            if seen >= rank:
                # The bucket's midpoint, never above the true maximum.
                mid = math.expm1((bucket + 0.5) / _BUCKETS_PER_E)
                return min(mid, self.max)
        return self.max

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else 0.0


@dataclass(slots=True)
class ModelStats:
    jobs: int = 0
    ok: int = 0
    failed: int = 0
    cost_usd: float = 0.0
    priced: bool = True
    input_tokens: int = 0
    output_tokens: int = 0
    attempts: int = 0


@dataclass(slots=True)
class RunStats:
    """Everything the report needs, added to one result at a time."""

    ok: int = 0
    failed: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cost_usd: float = 0.0
    unpriced_jobs: int = 0
    attempts: int = 0
    repairs: int = 0
    repaired_jobs: int = 0
    fallbacks: int = 0
    latency: Histogram = field(default_factory=Histogram)
    ttft: Histogram = field(default_factory=Histogram)
    errors: Counter[str] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)
    by_model: dict[str, ModelStats] = field(default_factory=dict)
    unpriced_models: set[str] = field(default_factory=set)

    @property
    def done(self) -> int:
        return self.ok + self.failed

    def add(self, r: JobResult) -> None:
        if r.status == "ok":
            self.ok += 1
        else:
            self.failed += 1
            if r.error:
                self.failures[str(r.error.get("type", "other"))] += 1
        u = r.usage
        self.input_tokens += u.input_tokens
        self.output_tokens += u.output_tokens
        self.cache_read_tokens += u.cache_read_tokens
        self.cache_write_tokens += u.cache_write_tokens
        self.attempts += r.attempts
        self.repairs += r.repairs
        if r.repairs and r.status == "ok":
            self.repaired_jobs += 1  # repaired = made valid by a re-ask; not "re-asked in vain"
        self.fallbacks += r.fallbacks
        if r.latency_ms is not None and r.status == "ok":
            self.latency.add(r.latency_ms)
        if r.ttft_ms is not None and r.status == "ok":
            self.ttft.add(r.ttft_ms)
        for kind, n in r.attempt_errors.items():
            self.errors[kind] += n
        key = f"{r.provider}:{r.model}" if r.provider else "(none)"
        m = self.by_model.get(key)
        if m is None:
            m = self.by_model[key] = ModelStats()
        m.jobs += 1
        m.attempts += r.attempts
        m.input_tokens += u.input_tokens
        m.output_tokens += u.output_tokens
        if r.status == "ok":
            m.ok += 1
        else:
            m.failed += 1
        if r.cost_usd is None:
            if r.attempts and (u.input_tokens or u.output_tokens):
                self.unpriced_jobs += 1
                m.priced = False
                self.unpriced_models.add(key)
        else:
            self.cost_usd += r.cost_usd
            m.cost_usd += r.cost_usd

    def remove(self, r: JobResult) -> None:
        """Take back a superseded failed line (``report`` over a --retry-failed file)."""
        self.failed -= 1
        if r.error:
            self.failures[str(r.error.get("type", "other"))] -= 1
            if self.failures[str(r.error.get("type", "other"))] <= 0:
                del self.failures[str(r.error.get("type", "other"))]
        key = f"{r.provider}:{r.model}" if r.provider else "(none)"
        m = self.by_model.get(key)
        if m is not None:
            m.jobs -= 1
            m.failed -= 1
