"""Run statistics, gathered from result lines as they are written.

Percentiles come from a log-bucketed histogram (about 1% resolution, a few
hundred buckets whatever the run's length), so a million-job run keeps no list
of latencies.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

from llmbatch._core.events import AttemptEnded, AttemptFigures, Event, JobEnded
from llmbatch._core.models import ModelRef
from llmbatch._core.pricing import PriceBook
from llmbatch._core.results import JobResult

_BUCKETS_PER_E = 100  # bucket width: 1% in value
_log1p = math.log1p


def _model_key(provider: str | None, model: str | None) -> str:
    """A model's name in ``by_model`` and ``unpriced_models``: ``provider:model``."""
    return f"{provider}:{model}" if provider else "(none)"


class Histogram:
    """Counts of non-negative values in log buckets; exact count, sum and max."""

    __slots__ = ("buckets", "count", "max", "total")

    def __init__(self) -> None:
        self.buckets: Counter[int] = Counter()
        self.count = 0
        self.total = 0.0
        self.max = 0.0

    def add(self, value: float) -> None:
        if not value > 0.0:  # negative, zero or NaN: counted as 0, as max(0.0, value) did
            value = 0.0
        buckets = self.buckets
        bucket = int(_log1p(value) * _BUCKETS_PER_E)
        buckets[bucket] = buckets.get(bucket, 0) + 1
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

    def merge(self, other: Histogram) -> None:
        """Add another histogram's counts (one gathered elsewhere: a Ray worker)."""
        self.buckets.update(other.buckets)
        self.count += other.count
        self.total += other.total
        self.max = max(self.max, other.max)

    def linear_bins(self, target: int = 30) -> tuple[Bin, ...]:
        """About ``target`` equal bins with round edges, up to about p99; the rest in the last."""
        if not self.count:
            return ()
        top = self.percentile(99)
        low = self.percentile(0.5)
        # No narrower than 0.1: result lines keep latencies to 0.1 ms.
        step = nice_step(max((top - (0 if low < top / 4 else low)) / target, 0.1))
        start = 0.0 if low < top / 4 else math.floor(low / step) * step
        n = max(1, math.floor((top - start) / step) + 1)
        overflow = self.max >= start + n * step
        if overflow:
            n += 1  # the last bin takes everything from its lower edge up
        counts = [0] * n
        for bucket, c in self.buckets.items():
            value = min(math.expm1((bucket + 0.5) / _BUCKETS_PER_E), self.max)
            counts[min(n - 1, max(0, int((value - start) / step)))] += c
        return tuple(
            Bin(start + i * step, start + (i + 1) * step, c, overflow and i == n - 1)
            for i, c in enumerate(counts)
        )


@dataclass(frozen=True, slots=True)
class Bin:
    """One bar of a histogram: values in [lo, hi), or from lo up when ``open_ended``."""

    lo: float
    hi: float
    count: int
    open_ended: bool = False


def nice_step(raw: float) -> float:
    """The smallest of 1, 2, 2.5, 5 times a power of ten at or above ``raw``."""
    if raw <= 0:
        return 1.0
    power = 10.0 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if m * power >= raw * (1 - 1e-9):
            return m * power
    return 10 * power


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
class PrefixGroupStats:
    """One shared prompt prefix: how often the provider's cache answered for it, and the money."""

    jobs: int = 0
    hits: int = 0  # jobs that read the prefix from the cache
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    write_premium_usd: float = 0.0  # paid over the input price to write the cache
    saved_usd: float = 0.0  # against the same answers with no cache, net of the premium

    def to_dict(self, key: str) -> dict[str, object]:
        return {
            "group": key,
            "jobs": self.jobs,
            "hit_rate": round(self.hits / self.jobs, 4) if self.jobs else 0.0,
            "cache_read_tokens": self.cache_read_tokens,
            "cache_write_tokens": self.cache_write_tokens,
            "write_premium_usd": round(self.write_premium_usd, 6),
            "saved_usd": round(self.saved_usd, 6),
        }


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
    cache_hits: int = 0
    cache_saved_usd: float = 0.0
    latency: Histogram = field(default_factory=Histogram)
    ttft: Histogram = field(default_factory=Histogram)
    errors: Counter[str] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)
    by_model: dict[str, ModelStats] = field(default_factory=dict)
    unpriced_models: set[str] = field(default_factory=set)
    # Prompt caching: per prefix group (a result's ``prefix_group``), priced with ``prices``.
    prices: PriceBook | None = None
    prefix_groups: dict[str, PrefixGroupStats] = field(default_factory=dict)
    prompt_cache_saved_usd: float = 0.0
    prompt_cache_premium_usd: float = 0.0
    # ``by_model``'s entries by (provider, model): found without formatting the key.
    _pairs: dict[tuple[str | None, str | None], ModelStats] = field(
        default_factory=dict, repr=False, compare=False
    )

    @property
    def done(self) -> int:
        return self.ok + self.failed

    def emit(self, event: Event) -> None:
        """The engine's event stream: attempts as they end, jobs as they are written."""
        if isinstance(event, AttemptEnded):
            self.add_attempt(event)
        elif isinstance(event, JobEnded):
            self.count_job(event.ts, event.result)

    def _model(self, provider: str | None, model: str | None) -> ModelStats:
        m = self._pairs.get((provider, model))
        if m is not None:
            return m
        key = _model_key(provider, model)
        m = self.by_model.get(key)
        if m is None:
            m = self.by_model[key] = ModelStats()
        self._pairs[provider, model] = m
        return m

    def add_attempt(self, e: AttemptEnded) -> None:
        """One request sent: counted under the model it went to, written or not."""
        self.count_attempt(AttemptFigures.of(e))

    def count_job(self, ts: float, result: JobResult) -> None:
        """A result as it was written (``CountingSink``): its attempts were counted as
        they ended."""
        self.add(result, with_attempts=False)

    def count_attempt(self, f: AttemptFigures) -> None:
        """:meth:`add_attempt` from the attempt's figures (``CountingSink``: the runner
        builds no AttemptEnded for the statistics)."""
        self.attempts += 1
        if f.outcome != "ok":
            self.errors[f.outcome] += 1
        m = self._model(f.provider, f.model)
        m.attempts += 1
        self._spend(m, f.provider, f.model, f.input_tokens, f.output_tokens, f.cost_usd)

    def _spend(
        self,
        m: ModelStats,
        provider: str | None,
        model: str | None,
        input_tokens: int,
        output_tokens: int,
        cost: float | None,
    ) -> None:
        self.input_tokens += input_tokens
        self.output_tokens += output_tokens
        m.input_tokens += input_tokens
        m.output_tokens += output_tokens
        if cost is None:
            if input_tokens or output_tokens:
                m.priced = False
                self.unpriced_models.add(_model_key(provider, model))
        else:
            self.cost_usd += cost
            m.cost_usd += cost

    def add(self, r: JobResult, *, with_attempts: bool = True) -> None:
        """One result line; ``with_attempts``: also count its attempts and spend (when
        reading a results file; a live run counts those from its attempt events)."""
        ok = r.status == "ok"
        if ok:
            self.ok += 1
        else:
            self.failed += 1
            if r.error:
                self.failures[r.error.type] += 1
        u = r.usage
        if u.cache_read_tokens or u.cache_write_tokens or r.prefix_group is not None:
            self.cache_read_tokens += u.cache_read_tokens
            self.cache_write_tokens += u.cache_write_tokens
            self._prompt_cache(r)
        if r.repairs:
            self.repairs += r.repairs
            if ok:
                self.repaired_jobs += 1  # made valid by a re-ask; not "re-asked in vain"
        self.fallbacks += r.fallbacks
        if r.cache and r.cache.get("hit"):
            self.cache_hits += 1
            self.cache_saved_usd += float(r.cache.get("saved_usd") or 0.0)
        if ok:
            if r.latency_ms is not None:
                self.latency.add(r.latency_ms)
            if r.ttft_ms is not None:
                self.ttft.add(r.ttft_ms)
        m = self._model(r.provider, r.model)
        m.jobs += 1
        if ok:
            m.ok += 1
        else:
            m.failed += 1
        if r.cost_usd is None and r.attempts and (u.input_tokens or u.output_tokens):
            self.unpriced_jobs += 1
        if with_attempts:
            self.add_spend(r)

    def add_spend(self, r: JobResult) -> None:
        """A result line's attempts and spend (``add`` counts the rest): for results read
        back, or run elsewhere (``run --ray``'s workers)."""
        m = self._model(r.provider, r.model)
        self.attempts += r.attempts
        m.attempts += r.attempts
        for kind, n in r.attempt_errors.items():
            self.errors[kind] += n
        u = r.usage
        self._spend(m, r.provider, r.model, u.input_tokens, u.output_tokens, r.cost_usd)

    def _prompt_cache(self, r: JobResult) -> None:
        u = r.usage
        saved = premium = 0.0
        if (u.cache_read_tokens or u.cache_write_tokens) and self.prices and r.provider and r.model:
            price = self.prices.price(ModelRef(r.provider, r.model))
            if price is not None:
                saved, premium = price.cache_saving(u)
        self.prompt_cache_saved_usd += saved
        self.prompt_cache_premium_usd += premium
        if r.prefix_group is None:
            return
        g = self.prefix_groups.get(r.prefix_group)
        if g is None:
            g = self.prefix_groups[r.prefix_group] = PrefixGroupStats()
        g.jobs += 1
        g.hits += u.cache_read_tokens > 0
        g.cache_read_tokens += u.cache_read_tokens
        g.cache_write_tokens += u.cache_write_tokens
        g.saved_usd += saved
        g.write_premium_usd += premium

    def merge(self, other: RunStats) -> None:
        """Add what ``other`` counted (results run elsewhere: ``run --ray``'s workers)."""
        for name in _SUMS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.latency.merge(other.latency)
        self.ttft.merge(other.ttft)
        self.errors.update(other.errors)
        self.failures.update(other.failures)
        self.unpriced_models |= other.unpriced_models
        for key, m in other.by_model.items():
            mine = self.by_model.get(key)
            if mine is None:
                mine = self.by_model[key] = ModelStats()
            for name in _MODEL_SUMS:
                setattr(mine, name, getattr(mine, name) + getattr(m, name))
            mine.priced = mine.priced and m.priced
        for key, g in other.prefix_groups.items():
            group = self.prefix_groups.get(key)
            if group is None:
                group = self.prefix_groups[key] = PrefixGroupStats()
            for name in _GROUP_SUMS:
                setattr(group, name, getattr(group, name) + getattr(g, name))

    def remove(self, r: JobResult) -> None:
        """Take back a superseded failed line (``report`` over a --retry-failed file)."""
        self.failed -= 1
        if r.error:
            self.failures[r.error.type] -= 1
            if self.failures[r.error.type] <= 0:
                del self.failures[r.error.type]
        key = _model_key(r.provider, r.model)
        m = self.by_model.get(key)
        if m is not None:
            m.jobs -= 1
            m.failed -= 1


# What ``RunStats.merge`` adds up, field by field.
_SUMS = (
    "ok",
    "failed",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "cost_usd",
    "unpriced_jobs",
    "attempts",
    "repairs",
    "repaired_jobs",
    "fallbacks",
    "cache_hits",
    "cache_saved_usd",
    "prompt_cache_saved_usd",
    "prompt_cache_premium_usd",
)
_MODEL_SUMS = ("jobs", "ok", "failed", "cost_usd", "input_tokens", "output_tokens", "attempts")
_GROUP_SUMS = (
    "jobs",
    "hits",
    "cache_read_tokens",
    "cache_write_tokens",
    "write_premium_usd",
    "saved_usd",
)
