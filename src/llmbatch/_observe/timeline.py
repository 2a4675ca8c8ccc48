"""What the HTML report charts, gathered from the event stream or from a results file.

Memory stays bounded whatever the run's size: the time series has at most
``MAX_BUCKETS`` buckets (their width doubles, merging pairs, as the run grows),
histograms are the log-bucketed ``_stats.Histogram``, and only the ``TOP_N``
slowest and the first ``FAILED_N`` failed jobs are kept.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmbatch._core.events import (
    AttemptEnded,
    AttemptFigures,
    Event,
    JobEnded,
    RunEnded,
    RunStarted,
)
from llmbatch._core.results import JobResult
from llmbatch._io.resume import iter_result_lines
from llmbatch._observe.stats import Bin, Histogram

MAX_BUCKETS = 64
FIRST_BUCKET_S = 0.125  # a power of two, so widths stay 0.25, 0.5, 1, 2, 4… s
TOP_N = 20
FAILED_N = 50
MESSAGE_CHARS = 300

# The time series' fields, in bucket-row order.
FIELDS = (
    "started",  # attempts sent
    "ended",  # attempts answered or failed
    "ok",
    "rate_limited",  # 429s
    "other_errors",
    "jobs_done",
    "input_tokens",
    "output_tokens",
    "cost_usd",
)
(_STARTED, _ENDED, _OK, _429, _OTHER, _DONE, _IN, _OUT, _COST) = range(len(FIELDS))


@dataclass(frozen=True, slots=True)
class JobRow:
    """One job in the slowest or failed list."""

    id: str
    model: str | None  # "provider:model"
    latency_ms: float | None
    ttft_ms: float | None
    attempts: int
    cost_usd: float | None
    error_type: str | None = None
    message: str | None = None

    @classmethod
    def of(cls, r: JobResult) -> JobRow:
        error = r.error
        message = None if error is None else error.message
        return cls(
            id=r.id,
            model=f"{r.provider}:{r.model}" if r.provider else r.model,
            latency_ms=r.latency_ms,
            ttft_ms=r.ttft_ms,
            attempts=r.attempts,
            cost_usd=r.cost_usd,
            error_type=None if r.status == "ok" else (error.type if error else "other"),
            message=None if message is None else str(message)[:MESSAGE_CHARS],
        )


@dataclass(frozen=True, slots=True)
class Series:
    """Per-bucket totals since the run started; bucket ``i`` covers [i·bucket_s, (i+1)·bucket_s)."""

    bucket_s: float
    started: tuple[int, ...]
    ended: tuple[int, ...]
    ok: tuple[int, ...]
    rate_limited: tuple[int, ...]
    other_errors: tuple[int, ...]
    jobs_done: tuple[int, ...]
    input_tokens: tuple[int, ...]
    output_tokens: tuple[int, ...]
    cost_usd: tuple[float, ...]

    def __len__(self) -> int:
        return len(self.started)

    @property
    def duration_s(self) -> float:
        return len(self) * self.bucket_s

    def to_dict(self) -> dict[str, Any]:
        """Compact JSON form, for the run history (``<output>.runs.jsonl``)."""
        out: dict[str, Any] = {"bucket_s": self.bucket_s}
        for name in FIELDS:
            values = getattr(self, name)
            out[name] = [round(v, 8) for v in values] if name == "cost_usd" else list(values)
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Series | None:
        """The series a history record holds, or None if it holds none (or a broken one)."""
        try:
            width = float(d["bucket_s"])
            cols: dict[str, Any] = {
                name: tuple(float(v) if name == "cost_usd" else int(v) for v in d[name])
                for name in FIELDS
            }
        except (KeyError, TypeError, ValueError):
            return None
        if width <= 0 or len({len(c) for c in cols.values()}) != 1:
            return None
        return cls(bucket_s=width, **cols)


@dataclass(frozen=True, slots=True)
class Timeline:
    """Everything the HTML report draws beyond the run report itself."""

    series: Series | None  # None: no timestamps (a results file from a run that kept none)
    latency: tuple[Bin, ...]  # ok jobs, ms
    ttft: tuple[Bin, ...]
    slowest: tuple[JobRow, ...]
    failed: tuple[JobRow, ...]  # the first FAILED_N
    failed_total: int
    source: str  # "events" | "results"
    started_ts: float | None = None  # wall clock, when known
    series_note: str | None = None


class _Buckets:
    """The adaptive time series: at most MAX_BUCKETS rows; the width doubles when full."""

    __slots__ = ("end", "hi", "last", "lo", "rows", "t0", "width")

    def __init__(self) -> None:
        self.t0: float | None = None
        self.width = FIRST_BUCKET_S
        self.rows: list[list[float]] = []
        self.end: float | None = None
        # The last row handed out and the times it spans (``lo <= ts < hi``): most
        # timestamps fall in it (three a job), found then without an index.
        self.lo = self.hi = 0.0
        self.last: list[float] = []

    def row(self, ts: float) -> list[float]:
        if self.lo <= ts < self.hi:
            return self.last
        t0 = self.t0
        if t0 is None:
            t0 = self.t0 = ts
        i = int((ts - t0) / self.width) if ts > t0 else 0
        while i >= MAX_BUCKETS:
            self._widen()
            i = int((ts - t0) / self.width)
        rows = self.rows
        while len(rows) <= i:
            rows.append([0.0] * len(FIELDS))
        self.lo = t0 + i * self.width
        self.hi = self.lo + self.width
        self.last = rows[i]
        return self.last

    def _widen(self) -> None:
        rows = self.rows
        merged = []
        for i in range(0, len(rows), 2):
            pair = rows[i : i + 2]
            merged.append([sum(col) for col in zip(*pair, strict=False)])
        self.rows = merged
        self.width *= 2
        self.lo = self.hi = 0.0  # the rows moved: the next row() finds its own

    def freeze(self) -> Series | None:
        if self.t0 is None:
            return None
        if self.end is not None:
            self.row(self.end)  # the series spans the whole run, idle tail included
        cols = list(zip(*self.rows, strict=True)) if self.rows else [() for _ in FIELDS]
        values: dict[str, Any] = {
            name: tuple(round(v, 8) for v in col)
            if name == "cost_usd"
            else tuple(int(v) for v in col)
            for name, col in zip(FIELDS, cols, strict=True)
        }
        return Series(bucket_s=self.width, **values)


class _Jobs:
    """Histograms, the slowest jobs and the first failed ones, one finished job at a time."""

    def __init__(
        self, superseding: bool = False, fed: tuple[Histogram, Histogram] | None = None
    ) -> None:
        # ``fed``: the run's own latency and TTFT histograms, which its statistics fill
        # from the same results: read, not filled twice.
        self._fill = fed is None
        self.latency, self.ttft = fed or (Histogram(), Histogram())
        self._slowest: list[tuple[float, int, JobRow]] = []
        self._seq = 0
        # In a results file a failed line may be superseded by a later line for its id
        # (--retry-failed), so every failed id is remembered there; a live run needs not.
        self._superseding = superseding
        self._failed: dict[str, JobRow | None] = {}
        self._failed_list: list[JobRow] = []
        self._failed_total = 0

    def add(self, r: JobResult) -> None:
        if self._superseding and r.id in self._failed:
            del self._failed[r.id]
            self._failed_total -= 1
        if r.status != "ok":
            self._failed_total += 1
            if self._superseding:
                self._failed[r.id] = JobRow.of(r) if len(self._failed) < FAILED_N else None
            elif len(self._failed_list) < FAILED_N:
                self._failed_list.append(JobRow.of(r))
            return
        if r.latency_ms is not None:
            if self._fill:
                self.latency.add(r.latency_ms)
            self._keep_if_slow(r, r.latency_ms)
        if r.ttft_ms is not None and self._fill:
            self.ttft.add(r.ttft_ms)

    def _keep_if_slow(self, r: JobResult, latency: float) -> None:
        heap = self._slowest
        if len(heap) < TOP_N:
            self._seq += 1
            heapq.heappush(heap, (latency, -self._seq, JobRow.of(r)))
        elif latency > heap[0][0]:
            self._seq += 1
            heapq.heapreplace(heap, (latency, -self._seq, JobRow.of(r)))

    def merge(self, other: _Jobs) -> None:
        """Add another live run's jobs (gathered where they ran: a Ray worker). Histograms
        this one reads from its run's statistics are theirs to merge (``RunStats.merge``)."""
        if self._fill:
            self.latency.merge(other.latency)
            self.ttft.merge(other.ttft)
        self._failed_total += other._failed_total
        room = FAILED_N - len(self._failed_list)
        self._failed_list.extend(other._failed_list[: max(0, room)])
        for latency, _, row in other._slowest:
            heap = self._slowest
            self._seq += 1
            if len(heap) < TOP_N:
                heapq.heappush(heap, (latency, -self._seq, row))
            elif latency > heap[0][0]:
                heapq.heapreplace(heap, (latency, -self._seq, row))

    def failed(self) -> tuple[JobRow, ...]:
        if self._superseding:
            return tuple(row for row in self._failed.values() if row is not None)[:FAILED_N]
        return tuple(self._failed_list)

    def freeze(
        self, series: Series | None, source: str, started: float | None, note: str | None
    ) -> Timeline:
        return Timeline(
            series=series,
            latency=self.latency.linear_bins(),
            ttft=self.ttft.linear_bins(),
            slowest=tuple(row for _, _, row in sorted(self._slowest, reverse=True)),
            failed=self.failed(),
            failed_total=self._failed_total,
            source=source,
            started_ts=started,
            series_note=note,
        )


# The histograms, slowest and failed jobs of some results, built where they ran (a Ray
# worker) for ``TimelineRecorder.add_jobs``.
JobsDigest = _Jobs


class TimelineRecorder:
    """An EventSink that gathers a run's Timeline; call ``timeline()`` after the run."""

    def __init__(self, histograms: tuple[Histogram, Histogram] | None = None) -> None:
        """``histograms``: latency and TTFT histograms that the run's statistics fill from
        the same ``JobEnded`` events (``RunStats.latency``, ``.ttft``), to read instead."""
        self._buckets = _Buckets()
        self._jobs = _Jobs(fed=histograms)
        self._started: float | None = None
        self.saw_run = False  # a JobEnded or RunEnded came: the engine feeds this sink

    def emit(self, event: Event) -> None:
        if isinstance(event, AttemptEnded):
            self.count_attempt(AttemptFigures.of(event))
        elif isinstance(event, JobEnded):
            self.count_job(event.ts, event.result)
        elif isinstance(event, RunStarted):
            self._started = event.ts
            if self._buckets.t0 is None:
                self._buckets.t0 = event.ts
        elif isinstance(event, RunEnded):
            self.saw_run = True
            self._buckets.end = event.ts

    def count_job(self, ts: float, result: JobResult) -> None:
        """One job's result, as written (``CountingSink``)."""
        self.saw_run = True
        self._buckets.row(ts)[_DONE] += 1
        self._jobs.add(result)

    def count_attempt(self, f: AttemptFigures) -> None:
        """One attempt, from its figures (``CountingSink``)."""
        row = self._buckets.row(f.ts)
        row[_ENDED] += 1
        if f.outcome == "ok":
            row[_OK] += 1
        elif f.outcome == "rate_limited":
            row[_429] += 1
        else:
            row[_OTHER] += 1
        row[_IN] += f.input_tokens
        row[_OUT] += f.output_tokens
        row[_COST] += f.cost_usd or 0.0
        # Counted from the attempt's end, so the runner need not build AttemptStarted.
        self._buckets.row(f.started_ts)[_STARTED] += 1

    def add_jobs(self, ts: float, count: int, jobs: JobsDigest) -> None:
        """``count`` jobs ended at ``ts``, run elsewhere (``run --ray``): ``jobs`` is
        what their results gave (a ``JobsDigest``, gathered by the worker)."""
        self.saw_run = True
        self._buckets.row(ts)[_DONE] += count
        self._jobs.merge(jobs)

    def timeline(self) -> Timeline:
        return self._jobs.freeze(self._buckets.freeze(), "events", self._started, None)


def timeline_from_results(path: Path, *, start: int | None = None) -> Timeline:
    """The Timeline a results file alone gives (the last line of an id wins).

    Result lines carry no timestamps; the time series comes from the run history
    beside the file, when the last run recorded one there. With ``start`` (a byte
    offset: where one run began appending) only that run's lines count, and no
    series is read.
    """
    jobs = _Jobs(superseding=True)
    for _lineno, offset, obj, _length in iter_result_lines(path):
        if obj is not None and (start is None or offset >= start):
            jobs.add(JobResult.from_line(obj))
    if start is not None:
        return jobs.freeze(None, "results", None, None)
    series, started, note = _series_from_history(path)
    return jobs.freeze(series, "results", started, note)


def _series_from_history(path: Path) -> tuple[Series | None, float | None, str | None]:
    from llmbatch._io.history import read_history

    runs = read_history(path)
    for i in range(len(runs) - 1, -1, -1):
        raw = runs[i].get("timeline")
        series = Series.from_dict(raw) if isinstance(raw, dict) else None
        if series is not None:
            started = runs[i].get("started")
            note = f"the last run of {len(runs)} on this output" if len(runs) > 1 else None
            return series, float(started) if isinstance(started, int | float) else None, note
    return None, None, None
