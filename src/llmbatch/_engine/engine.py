"""The engine: wiring from a checked plan to an executor, one writer and the event stream.

    jobs ─producer─▶ [bounded stream] ─▶ Executor ─▶ [bounded stream] ─▶ writer ─▶ output
                                           │                                 │
                        JobRunner (_attempts): budget → limits → send →     JobEnded
                        retry / repair / fallback; AttemptEnded per request  ─▶ EventBus

The executor (``_executor``) decides how planned jobs become results (``StreamingExecutor``: a
pool of workers, each running one job's attempts at a time). Statistics, the
report, progress and every other watcher read the same events. Memory stays
flat: the jobs file is streamed twice (check, then run) and only a done-set of
fixed-size hashes is kept.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from llmbatch._budget.context import Budgets, Stopper
from llmbatch._budget.ledger import BudgetLedger, RunBudget
from llmbatch._budget.open import open_ledgers
from llmbatch._budget.windows import rfc3339
from llmbatch._cache.store import open_cache
from llmbatch._config.settings import RunConfig
from llmbatch._core.clock import SYSTEM_CLOCK, Clock
from llmbatch._core.events import EventBus, EventSink, JobEnded, RunEnded, RunStarted
from llmbatch._core.exceptions import OutputError, SharedStoreError, sole_own_error
from llmbatch._core.models import ModelRef
from llmbatch._core.results import JobResult, ResultWriter
from llmbatch._core.retry import Backoff
from llmbatch._engine.attempts import JobRunner
from llmbatch._engine.executor import Executor as Executor  # re-exported: the seam's home was here
from llmbatch._engine.executor import StreamingExecutor, drained, feed_jobs
from llmbatch._engine.plan import Plan, Planner, PreparedJob
from llmbatch._engine.takeover import take_over_batches
from llmbatch._io.history import append_history, history_record
from llmbatch._io.lock import OutputLock
from llmbatch._io.resume import ExistingOutput, backup_output, cut_torn_tail
from llmbatch._limits.breaker import Breaker
from llmbatch._limits.ratelimit import ModelGate, RateLimiter
from llmbatch._observe.progress import NoProgress, ProgressSink
from llmbatch._observe.sinks import build_sinks, close_sinks
from llmbatch._observe.stats import RunStats
from llmbatch._observe.timeline import TimelineRecorder
from llmbatch._report.report import RunReport, build_report
from llmbatch.providers._base import Provider
from llmbatch.providers.factory import ProviderFactory, default_provider_factory


class Engine:
    def __init__(
        self,
        config: RunConfig,
        *,
        progress: ProgressSink | None = None,
        provider_factory: ProviderFactory | None = None,
        handle_signals: bool = True,
        sinks: Sequence[EventSink] = (),
        ledgers: Sequence[BudgetLedger] = (),
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.config = config
        self.progress = progress or NoProgress()
        self._factory = provider_factory or default_provider_factory
        self._handle_signals = handle_signals
        self.clock = clock
        self.planner = Planner(config)
        self.stats = RunStats()
        self.timeline = TimelineRecorder()  # charts for --html, and a series for the history
        self.bus = EventBus([self.stats, self.timeline, *sinks])
        self.stopper = Stopper()
        self.run_budget = RunBudget(config.max_cost, config.max_total_tokens)
        self.budgets = Budgets(
            [self.run_budget, *ledgers], clock, self.stopper, config.wait_for_budget
        )
        self.providers: dict[str, Provider] = {}
        self.gates: dict[ModelRef, RateLimiter] = {}
        self.breakers: dict[ModelRef, Breaker] = {}
        self.runner = JobRunner(
            config=config,
            clock=clock,
            bus=self.bus,
            prices=self.planner.prices,
            provider=self._provider,
            gates=self.gates,
            breakers=self.breakers,
            budgets=self.budgets,
            stopper=self.stopper,
            backoff=Backoff(cap=config.backoff_cap).delay,
        )
        self.executor = StreamingExecutor(self.runner, 1, self.stopper)
        self.notes: list[str] = []
        self._shared: Any = None  # a Redis client with --shared
        self.stop_signal: int | None = None
        self._signals = 0
        self._todo = 0

    @property
    def fatal(self) -> str | None:
        return self.budgets.store_error or self.runner.fatal

    @property
    def stopped_by(self) -> str | None:
        return self.stopper.stopped_by

    def stop(self, reason: str) -> None:
        self.stopper.stop(reason)

    def _provider(self, name: str) -> Provider:
        provider = self.providers.get(name)
        if provider is None:
            provider = self.providers[name] = self._factory(name, self.config)
        return provider

    # -- the run ------------------------------------------------------------------

    async def run(self) -> RunReport:
        lock = OutputLock(self.config.output) if self.config.output is not None else None
        if lock is not None:
            lock.acquire()
        sinks: list[EventSink] = []
        try:
            sinks = build_sinks(self.config)  # --log-json, --otlp
            for sink in sinks:
                self.bus.add(sink)
            return await self._run()
        finally:
            close_sinks(sinks)
            if lock is not None:
                lock.release()

    async def _run(self) -> RunReport:
        cfg = self.config
        plan = self.planner.plan()
        self.planner.check(plan)
        self.runner.cache = open_cache(cfg)  # after the check: a refused run opens nothing
        started_wall = self.clock.time()
        started = self.clock.monotonic()
        existing = self.planner.existing
        self._prepare_output(existing)
        if existing is not None:
            self.run_budget.spent_cost = existing.cost_usd
            self.run_budget.spent_tokens = existing.tokens
        take_over_batches(self.config, existing, self.runner, self.run_budget, self.bus)
        self.budgets.ledgers.extend(await open_ledgers(cfg, self.clock))
        await self._open_limits(plan)
        self.executor.workers = max(1, min(cfg.concurrency, plan.todo))
        self.bus.emit(
            RunStarted(
                started_wall,
                plan.todo,
                plan.skipped_done,
                tuple(sorted(str(m) for m in plan.models)),
                cfg.concurrency,
                str(cfg.output) if cfg.output else None,
                cfg.display_name,
            )
        )
        writer = ResultWriter(cfg.output)
        self._todo = plan.todo
        self.progress.start(plan.todo)
        try:
            await self._run_pool(plan, writer, existing)
        except BaseExceptionGroup as group:
            # Our own errors surface as themselves, not wrapped by the task group.
            own = sole_own_error(group)
            if own is not None:
                raise own from None
            raise
        finally:
            writer.close()
            self.progress.update(self.stats, self.stats.cost_usd, None)
            self.progress.stop()
            await self._close()
        report = self._report(plan, existing, self.clock.monotonic() - started)
        code = exit_code_for(report, self.stop_signal)
        if cfg.output is not None:
            series = self.timeline.timeline().series
            record = history_record(
                report,
                self.stats,
                started_wall,
                self.clock.time(),
                self.stopper.stopped_by,
                code,
                series,
            )
            append_history(cfg.output, record)
        self.bus.emit(RunEnded(self.clock.time(), report, code))
        return report

    def _prepare_output(self, existing: ExistingOutput | None) -> None:
        cfg = self.config
        if cfg.output is None:
            return
        if cfg.fresh:
            backup = backup_output(cfg.output)
            if backup is not None:
                self.notes.append(f"--fresh: the old output was moved to {backup}")
        elif existing is not None and existing.torn_at is not None:
            cut_torn_tail(existing)
            self.notes.append(
                f"cut a torn last line ({existing.torn_bytes} bytes) left by an "
                "interrupted run; that job runs again"
            )

    async def _open_limits(self, plan: Plan) -> None:
        """A gate and a breaker per model: in-process, or shared in Redis (--shared)."""
        cfg = self.config
        if cfg.shared:
            from llmbatch._budget.redis import connect as redis_connect

            self._shared = await redis_connect(cfg.shared)
        for ref in plan.models:
            name = str(ref)
            emit = self.bus.emit
            gate = ModelGate(cfg.limits_for(ref), clock=self.clock, name=name, on_change=emit)
            self.gates[ref] = gate
            self.breakers[ref] = Breaker(clock=self.clock, name=name, on_change=emit)
            if self._shared is not None:
                from llmbatch._limits.redis_limit import RedisLimiter, SharedBreaker, limiter_prefix

                prefix = limiter_prefix(cfg.providers[ref.provider], ref.model)
                breaker = self.breakers[ref] = SharedBreaker()
                self.gates[ref] = RedisLimiter(
                    gate, cfg.limits_for(ref), self._shared, prefix, breaker=breaker
                )

    async def _close(self) -> None:
        for provider in self.providers.values():
            with anyio.CancelScope(shield=True):
                await provider.aclose()
        if self._shared is not None:
            with anyio.CancelScope(shield=True):
                await self._shared.aclose()
        try:
            await self.budgets.aclose()
        except SharedStoreError as exc:
            self.notes.append(str(exc))
        if self.runner.cache is not None:
            self.runner.cache.close()

    def _report(self, plan: Plan, existing: ExistingOutput | None, wall: float) -> RunReport:
        cfg = self.config
        if self.runner.auth_withheld and self.stopper.stopped_by is None:
            self.stopper.stop("auth")  # too few jobs to reach the threshold: still say so
            self.runner.fatal = self.runner.fatal or (
                f"{self.runner.auth_withheld} job(s) were refused authentication before any "
                "answer came back; they were not recorded — check the API key"
            )
        notes = list(self.notes)
        for provider in self.providers.values():
            notes.extend(f"{provider.name}: {note}" for note in sorted(provider.notes))
        if self.fatal:
            notes.insert(0, self.fatal)
        described = {str(ref): gate.describe() for ref, gate in self.gates.items()}
        limits = {name: d for name, d in described.items() if d.get("sent")}
        report = build_report(
            self.stats,
            skipped_done=plan.skipped_done,
            not_run=max(0, plan.todo - self.stats.done),
            cost_before=existing.cost_usd if existing else 0.0,
            wall_s=wall,
            stopped_by=self.stopper.stopped_by,
            invalid_lines=sorted(plan.invalid_lines),
            limits=limits,
            output=str(cfg.output) if cfg.output else None,
            notes=notes,
            failed_earlier=0 if (existing is None or cfg.retry_failed) else existing.failed,
        )
        return replace(report, resets_at=rfc3339(self.runner.resets_at))

    async def _run_pool(
        self, plan: Plan, writer: ResultWriter, existing: ExistingOutput | None
    ) -> None:
        n = self.executor.workers
        job_send, job_recv = anyio.create_memory_object_stream[PreparedJob](n)
        result_send, result_recv = anyio.create_memory_object_stream[JobResult](n * 4)
        async with anyio.create_task_group() as outer:
            if self._handle_signals and threading.current_thread() is threading.main_thread():
                outer.start_soon(self._watch_signals)
            outer.start_soon(self._tick)
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._produce, job_send, plan, existing)
                tg.start_soon(self._write, result_recv, writer)
                tg.start_soon(self.executor.execute, job_recv, result_send)
            outer.cancel_scope.cancel()

    async def _produce(
        self, send: MemoryObjectSendStream[PreparedJob], plan: Plan, existing: ExistingOutput | None
    ) -> None:
        await feed_jobs(send, plan, existing, self.planner, self.stopper, self.notes)

    async def _write(
        self, recv: MemoryObjectReceiveStream[JobResult], writer: ResultWriter
    ) -> None:
        async for batch in drained(recv):
            try:
                writer.write([r.to_json() for r in batch])
            except BrokenPipeError:
                # `-o - | head`: nobody reads any more. Stop at once, as SIGPIPE would.
                self.stopper.stop("output_closed")
                self.executor.cancel()
                return
            except OutputError as exc:  # disk full: stop; what was written resumes
                self.runner.fatal = str(exc)
                self.stopper.stop("output_error")
                self.executor.cancel()
                return
            now = self.clock.time()
            for r in batch:
                self.bus.emit(JobEnded(now, r))

    async def _tick(self) -> None:
        while True:
            spent = self.stats.cost_usd
            done = self.stats.done
            projected = spent / done * self._todo if done else None
            self.progress.update(self.stats, spent, projected)
            self.progress.tick()
            await anyio.sleep(0.25)

    async def _watch_signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                self._signals += 1
                if self._signals == 1:
                    self.stop_signal = int(signum)
                    self.stopper.stop("signal")
                    sys.stderr.write(
                        "\nllmbatch: stopping: no new requests; waiting for those in flight "
                        "(press Ctrl-C again to cancel them)\n"
                    )
                else:
                    sys.stderr.write("\nllmbatch: cancelling requests in flight\n")
                    self.executor.cancel()
                    return


def exit_code_for(report: RunReport, stop_signal: int | None) -> int:
    if report.stopped_by == "signal" and stop_signal is not None:
        return 128 + stop_signal
    if report.stopped_by == "output_closed":
        return 128 + signal.SIGPIPE
    return report.exit_code


async def run_jobs_async(
    config: RunConfig,
    *,
    progress: ProgressSink | None = None,
    provider_factory: ProviderFactory | None = None,
    handle_signals: bool = True,
    sinks: Sequence[EventSink] = (),
) -> RunReport:
    engine = Engine(
        config,
        progress=progress,
        provider_factory=provider_factory,
        handle_signals=handle_signals,
        sinks=sinks,
    )
    return await engine.run()


def run_jobs(
    config: RunConfig,
    *,
    progress: ProgressSink | None = None,
    provider_factory: ProviderFactory | None = None,
    handle_signals: bool = False,
    sinks: Sequence[EventSink] = (),
) -> RunReport:
    """Run every job in ``config.jobs``; return the report. Blocks until done.

    :raises InputError: invalid job lines (nothing was sent).
    :raises UsageError: bad settings, missing keys, resume conflicts (nothing was sent).
    """
    return anyio.run(
        lambda: run_jobs_async(
            config,
            progress=progress,
            provider_factory=provider_factory,
            handle_signals=handle_signals,
            sinks=sinks,
        )
    )
