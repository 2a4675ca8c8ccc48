"""The engine: prepared jobs in, results out, through one pool of workers.

    source ──next()──▶ worker × concurrency ──▶ JobRunner ──▶ buffer ──▶ sink.write ──▶ JobEnded
                          (budget → slot → send → retry / repair / fall back)

Every mode runs through here: ``run`` (the jobs file), ``run --mode batch|auto``
(what the batches left), ``batch fetch`` (its schema repairs) and the Python API
(requests in memory). The engine owns nothing it did not open: providers,
limits, budgets, the cache and the event bus come in ``Services``; what is
around a run (lock, check pass, report, history) is the run's (``_run``).

The per-job path is short on purpose: workers pull from one shared iterator (no
stream hop), admission is synchronous when there is room, and results finished
in one turn of the event loop reach the sink in one write, before the next turn
— so a kill loses no answer that was written, and only those in flight are paid
again.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import anyio

from llmbatch._budget.context import Budgets, Stopper
from llmbatch._cache.store import ResponseCache
from llmbatch._core.clock import Clock
from llmbatch._core.events import EventBus, JobEnded
from llmbatch._core.exceptions import OutputError
from llmbatch._core.jobs import Request
from llmbatch._core.models import ModelRef
from llmbatch._core.pricing import PriceBook
from llmbatch._core.results import JobResult
from llmbatch._core.retry import Backoff
from llmbatch._core.stops import StopReason
from llmbatch._engine.answers import AnswerCache
from llmbatch._engine.attempts import JobRunner
from llmbatch._engine.feed import WAIT
from llmbatch._engine.plan import PreparedJob
from llmbatch._engine.policy import RetryPolicy
from llmbatch._engine.settings import EngineSettings
from llmbatch._engine.warmup import PrefixWarmup
from llmbatch._limits.breaker import Breaker
from llmbatch._limits.ratelimit import RateLimiter
from llmbatch.providers._base import Provider

_PREFETCH = 256  # jobs looked up in the response cache at once
_TURN = 64  # jobs a worker runs at most before the loop turns
_WRITE_AT = 1024  # results kept for one write at most


class ResultSink(Protocol):
    """Where results go. ``write`` may raise ``OutputError`` or ``BrokenPipeError``."""

    def write(self, results: Sequence[JobResult]) -> None: ...

    def close(self) -> None: ...


@dataclass(slots=True)
class Services:
    """What outlives one engine run and is opened once: a CLI run opens it for one
    run, a ``Runner`` (Python API) keeps it across calls."""

    clock: Clock
    bus: EventBus
    prices: PriceBook
    provider: Callable[[str], Provider]  # by provider name, opened on first use
    budgets: Budgets
    stopper: Stopper
    # A gate and a breaker for a model not seen before (in-process, or shared in Redis).
    open_limits: Callable[[ModelRef], tuple[RateLimiter, Breaker]]
    cache: ResponseCache | None = None
    cache_key: Callable[[ModelRef, Request, str], str | bytes] | None = None
    gates: dict[ModelRef, RateLimiter] = field(default_factory=dict)
    breakers: dict[ModelRef, Breaker] = field(default_factory=dict)

    def limits_for(self, refs: Iterable[ModelRef]) -> None:
        for ref in refs:
            if ref not in self.gates:
                self.gates[ref], self.breakers[ref] = self.open_limits(ref)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one engine run did; the run around it turns this into a report and exit code."""

    written: int
    stopped_by: StopReason | None
    fatal: str | None
    resets_at: float | None  # a full rolling window frees enough then (wall clock)
    auth_withheld: int  # jobs left unwritten because the key looked wrong


class Engine:
    """Runs a source of prepared jobs into a sink; one instance, one run."""

    def __init__(self, settings: EngineSettings, services: Services) -> None:
        self.settings = settings
        self.services = services
        self.stopper = services.stopper
        self.runner = JobRunner(
            settings=settings,
            clock=services.clock,
            bus=services.bus,
            prices=services.prices,
            provider=services.provider,
            gates=services.gates,
            breakers=services.breakers,
            budgets=services.budgets,
            stopper=services.stopper,
            policy=RetryPolicy(settings.max_attempts, Backoff(cap=settings.backoff_cap).delay),
            answers=AnswerCache(services.cache, services.cache_key, services.clock, services.bus),
            warmup=PrefixWarmup(services.clock),
        )
        self.workers = 0
        self.written = 0
        self._buffer: list[JobResult] = []
        self._sink: ResultSink | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._scope: anyio.CancelScope | None = None
        self._cancelled = False

    @property
    def fatal(self) -> str | None:
        return self.services.budgets.store_error or self.runner.fatal

    def stop(self, reason: StopReason) -> None:
        """No new requests; those in flight finish and are written."""
        self.stopper.stop(reason)

    def cancel(self) -> None:
        """A hard stop: cancel the requests in flight too."""
        self._cancelled = True
        if self._scope is not None:
            self._scope.cancel()

    async def run(
        self, source: Iterable[PreparedJob], sink: ResultSink, *, size: int | None = None
    ) -> Outcome:
        """Run every job ``source`` yields (``size``: how many, if known) into ``sink``."""
        jobs = iter(source)
        # An open-ended source (``JobFeed``) says WAIT while it has no job yet: its jobs
        # are looked up in the response cache one by one, as they come.
        waiter: Callable[[], Awaitable[None]] | None = getattr(source, "wait_for_jobs", None)
        if self.services.cache is not None:
            self.services.cache.new_jobs()
            if waiter is None:
                jobs = self._prefetched(jobs)
        self._sink = sink
        self._loop = asyncio.get_running_loop()
        n = self.settings.concurrency if size is None else min(self.settings.concurrency, size)
        self.workers = max(1, n)
        try:
            with anyio.CancelScope() as self._scope:
                if self._cancelled:
                    self._scope.cancel()
                async with anyio.create_task_group() as tg:
                    for _ in range(self.workers):
                        tg.start_soon(self._worker, jobs, waiter)
        finally:
            self._flush()
        r = self.runner
        return Outcome(
            self.written, self.stopper.stopped_by, self.fatal, r.resets_at, r.auth_withheld
        )

    def _prefetched(self, jobs: Iterator[PreparedJob]) -> Iterator[PreparedJob]:
        """The source in chunks, each looked up in the response cache with one query."""
        while chunk := list(itertools.islice(jobs, _PREFETCH)):
            self.runner.answers.prefetch(chunk)
            yield from chunk

    async def _worker(
        self, jobs: Iterator[PreparedJob], waiter: Callable[[], Awaitable[None]] | None
    ) -> None:
        stopper = self.stopper
        run = self.runner.run
        gates = self.services.gates
        known: list[ModelRef] | None = None  # the last chain with limits (chains are shared)
        turn = 0
        for pj in jobs:
            if stopper.stopping:
                return  # not run: stays resumable
            if pj is WAIT and waiter is not None:  # an open-ended source, none there yet
                with stopper.interruptible():
                    await waiter()
                continue
            chain = pj.chain
            if chain is not known:
                if any(ref not in gates for ref in chain):
                    self.services.limits_for(chain)
                known = chain
            result = await run(pj)
            if result is not None:
                self._keep(result)
            turn += 1
            if turn == _TURN:
                # Jobs answered at once (cache hits) never wait: the loop still turns, so
                # results are written, a signal is heard and the progress drawn.
                turn = 0
                await asyncio.sleep(0)

    def _keep(self, result: JobResult) -> None:
        buffer = self._buffer
        buffer.append(result)
        n = len(buffer)
        if n == 1 and self._loop is not None:
            # Written once this turn of the loop is over: everything that finished in it
            # goes in one write(), before any new request is sent.
            self._loop.call_soon(self._flush)
        elif n >= _WRITE_AT:  # a turn of cache hits: written as it goes, memory flat
            self._flush()

    def _flush(self) -> None:
        batch = self._buffer
        if not batch or self._sink is None:
            return
        self._buffer = []
        try:
            self._sink.write(batch)
        except BrokenPipeError:
            # `-o - | head`: nobody reads any more. Stop at once, as SIGPIPE would.
            self._output_failed(StopReason.OUTPUT_CLOSED, None)
            return
        except OutputError as exc:  # disk full: stop; what was written resumes
            self._output_failed(StopReason.OUTPUT_ERROR, str(exc))
            return
        self.written += len(batch)
        now = self.services.clock.time()
        bus = self.services.bus
        if bus.has_readers:  # a JobEnded only for the sinks that read events
            for r in batch:
                bus.emit_to_readers(JobEnded(now, r))
        if bus.counters:
            count = bus.count_job
            for r in batch:
                count(now, r)

    def _output_failed(self, reason: StopReason, message: str | None) -> None:
        if message is not None:
            self.runner.fatal = message
        self.stopper.stop(reason)
        self.cancel()
        self._sink = None  # nothing more goes there
