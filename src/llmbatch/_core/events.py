"""The run's event stream: one typed record for each thing that happens.

The engine emits; everything that watches a run consumes the same events —
the statistics behind the report, the progress display, the run history, the
JSON event log (``--log-json``), OpenTelemetry spans (``--otlp``) and the HTML
report's time series. Events are frozen; a sink must not block (it is called
on the event loop) and must not raise (a failing sink is dropped with one
warning, it never ends a run).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, TypeGuard

from llmbatch._core.states import BreakerState

if TYPE_CHECKING:
    from llmbatch._core.results import JobResult


class RunSummary(Protocol):
    """What a watcher reads of the run's report at its end (``RunReport`` is one)."""

    @property
    def ok(self) -> int: ...
    @property
    def failed(self) -> int: ...
    @property
    def not_run(self) -> int: ...
    @property
    def input_tokens(self) -> int: ...
    @property
    def output_tokens(self) -> int: ...
    @property
    def cost_usd(self) -> float: ...
    @property
    def stopped_by(self) -> str | None: ...

    def to_dict(self) -> dict[str, Any]: ...


@dataclass(frozen=True, slots=True)
class RunStarted:
    ts: float  # wall clock, seconds since the epoch
    total: int  # jobs to run this time
    skipped_done: int
    models: tuple[str, ...]  # "provider:model", primaries and fallbacks
    concurrency: int
    output: str | None
    jobs: str


@dataclass(frozen=True, slots=True)
class AttemptStarted:
    """A request is about to be sent (its rate-limit slot and budget are held)."""

    ts: float
    job_id: str
    provider: str
    model: str
    n: int  # attempt number within the job, over all models, from 1


@dataclass(frozen=True, slots=True)
class AttemptEnded:
    """One request that was sent, with its outcome: exactly one per request."""

    ts: float  # when it ended
    started_ts: float
    job_id: str
    provider: str
    model: str
    n: int
    outcome: str  # "ok" or an error.type (SPEC §3); "ok" means an answer came back
    http_status: int | None
    latency_ms: float | None
    ttft_ms: float | None
    input_tokens: int
    output_tokens: int
    cost_usd: float | None  # None: price unknown
    retry_after_s: float | None
    backoff_s: float | None  # the wait chosen before the next attempt, if any
    message: str | None = None  # the error message (redacted), if any
    finish_reason: str | None = None
    repair: bool = False  # this attempt re-asked after a schema miss
    request_id: str | None = None
    # Only with --log-prompts: the messages sent (never a key).
    prompt: Any = None


@dataclass(frozen=True, slots=True)
class LimitChanged:
    ts: float
    model: str  # "provider:model"
    rpm_before: float | None
    rpm_after: float | None
    reason: str  # "rate_limited", "recovering", "headers", ...


@dataclass(frozen=True, slots=True)
class BreakerChanged:
    ts: float
    model: str
    state: BreakerState
    consecutive_failures: int


@dataclass(frozen=True, slots=True)
class BudgetStopped:
    ts: float
    reason: str  # "budget" | "budget_window"
    message: str
    resets_at: float | None = None  # wall clock, for rolling windows


@dataclass(frozen=True, slots=True)
class CacheHit:
    ts: float
    job_id: str
    provider: str
    model: str
    saved_usd: float | None


@dataclass(frozen=True, slots=True)
class JobEnded:
    ts: float
    result: JobResult


@dataclass(frozen=True, slots=True)
class RunEnded:
    ts: float
    report: RunSummary
    exit_code: int


Event = (
    RunStarted
    | AttemptStarted
    | AttemptEnded
    | LimitChanged
    | BreakerChanged
    | BudgetStopped
    | CacheHit
    | JobEnded
    | RunEnded
)


class EventSink(Protocol):
    """Anything that watches a run."""

    def emit(self, event: Event) -> None: ...


class AttemptFigures(NamedTuple):
    """What the run's statistics and timeline need of one attempt (``CountingSink``)."""

    ts: float  # when it ended
    started_ts: float
    provider: str
    model: str
    outcome: str  # "ok" or an error.type, as AttemptEnded's
    input_tokens: int
    output_tokens: int
    cost_usd: float | None

    @classmethod
    def of(cls, e: AttemptEnded) -> AttemptFigures:
        return cls(e.ts, e.started_ts, e.provider, e.model, e.outcome,
                   e.input_tokens, e.output_tokens, e.cost_usd)  # fmt: skip


class CountingSink(Protocol):
    """A sink that needs only an attempt's figures and a job's result (the run's
    statistics, its timeline): the engine calls ``count_attempt`` and ``count_job``
    instead of building an ``AttemptEnded`` or a ``JobEnded`` for it. It still takes
    both through ``emit`` (from batch fetches, replays)."""

    def emit(self, event: Event) -> None: ...

    def count_attempt(self, f: AttemptFigures) -> None: ...

    def count_job(self, ts: float, result: JobResult) -> None: ...


class ListSink:
    """Keeps every event: for tests."""

    wants_started = True

    def __init__(self) -> None:
        self.events: list[Event] = []

    def emit(self, event: Event) -> None:
        self.events.append(event)

    def of(self, kind: type[Any]) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]


def _counts(sink: EventSink) -> TypeGuard[CountingSink]:
    return hasattr(sink, "count_attempt")


@dataclass
class EventBus:
    """Fans each event out to every sink; a sink that raises is dropped, once, loudly."""

    sinks: list[EventSink] = field(default_factory=list)
    # Whether any sink reads AttemptStarted (``wants_started = True`` on the sink class):
    # the runner builds that event only then.
    wants_started: bool = False
    # The sinks that count attempts and jobs from their figures (``CountingSink``), and
    # whether any other sink reads events: AttemptEnded and JobEnded are built only then.
    counters: list[CountingSink] = field(default_factory=list, init=False)
    readers: list[EventSink] = field(default_factory=list, init=False)
    has_readers: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        self._wanted()

    def _wanted(self) -> None:
        self.wants_started = any(getattr(s, "wants_started", False) for s in self.sinks)
        self.counters = [s for s in self.sinks if _counts(s)]
        self.readers = [s for s in self.sinks if not _counts(s)]
        self.has_readers = bool(self.readers)

    def add(self, sink: EventSink) -> None:
        self.sinks.append(sink)
        self._wanted()

    def remove(self, sink: EventSink) -> None:
        self.sinks.remove(sink)
        self._wanted()

    def emit(self, event: Event) -> None:
        for sink in list(self.sinks):
            try:
                sink.emit(event)
            except Exception as exc:  # a watcher must never end a run
                self._drop(sink, exc)

    def emit_to_readers(self, event: AttemptEnded | JobEnded) -> None:
        """An attempt's or a job's event, to the sinks that do not count it by its figures."""
        for sink in self.readers:
            try:
                sink.emit(event)
            except Exception as exc:
                self._drop(sink, exc)

    def count_attempt(self, f: AttemptFigures) -> None:
        """An attempt's figures, to the counting sinks (see ``emit_to_readers``)."""
        for sink in self.counters:
            try:
                sink.count_attempt(f)
            except Exception as exc:
                self._drop(sink, exc)

    def count_job(self, ts: float, result: JobResult) -> None:
        """A job's result, to the counting sinks (see ``emit_to_readers``)."""
        for sink in self.counters:
            try:
                sink.count_job(ts, result)
            except Exception as exc:
                self._drop(sink, exc)

    def _drop(self, sink: EventSink, exc: Exception) -> None:
        """A watcher must never end a run: one that raised is turned off, loudly."""
        if sink in self.sinks:
            self.sinks.remove(sink)
        self._wanted()
        sys.stderr.write(
            f"llmbatch: warning: {type(sink).__name__} failed and was turned off: "
            f"{type(exc).__name__}: {exc}\n"
        )
