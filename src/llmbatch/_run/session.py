"""The run around the engine: everything that is not running jobs.

``RunSession`` owns, for one command: the output lock, the event sinks
(``--log-json``, ``--otlp``, statistics, the timeline), the services the engine
uses (providers, limits local or shared, budgets with their ledgers, the cache),
signals and live progress. It runs the engine once or several times (``run``:
the jobs file; ``run --mode batch``: what the batches left; ``batch fetch``: its
repairs), then builds one report, writes the history line and emits the final
event. One function, :func:`exit_code_for`, maps the report to the exit code.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any, TypedDict

import anyio

from llmbatch._budget.context import Budgets, Stopper
from llmbatch._budget.ledger import BudgetLedger, RunBudget
from llmbatch._budget.open import open_ledgers
from llmbatch._budget.windows import rfc3339
from llmbatch._cache.key import KeyMaker
from llmbatch._cache.store import open_cache
from llmbatch._config.settings import RunConfig
from llmbatch._core.clock import SYSTEM_CLOCK, Clock
from llmbatch._core.events import EventBus, EventSink, RunEnded, RunStarted
from llmbatch._core.exceptions import SharedStoreError, sole_own_error
from llmbatch._core.jobs import Request
from llmbatch._core.models import ModelRef
from llmbatch._core.stops import StopReason
from llmbatch._engine.engine import Engine, Outcome, ResultSink, Services
from llmbatch._engine.plan import PreparedJob
from llmbatch._engine.settings import EngineSettings
from llmbatch._io.lock import OutputLock
from llmbatch._limits.breaker import Breaker
from llmbatch._limits.ratelimit import ModelGate, RateLimiter
from llmbatch._observe.progress import NoProgress, ProgressSink
from llmbatch._observe.sinks import build_sinks, close_sinks
from llmbatch._observe.stats import RunStats
from llmbatch._observe.timeline import TimelineRecorder
from llmbatch._report.batch import BatchPart
from llmbatch._report.report import RunReport, build_report
from llmbatch.providers._base import Provider
from llmbatch.providers.factory import ProviderFactory, default_provider_factory


class SessionOptions(TypedDict, total=False):
    """What a session takes besides its config (and what wraps it passes through)."""

    progress: ProgressSink | None
    provider_factory: ProviderFactory | None
    handle_signals: bool
    sinks: Sequence[EventSink]
    ledgers: Sequence[BudgetLedger]
    clock: Clock


class RunSession:
    """One command's run: services opened once, the engine run over one or more sources."""

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
        self.stats = RunStats()
        # Charts for --html and a series for the history; its histograms are the stats'.
        self.timeline = TimelineRecorder((self.stats.latency, self.stats.ttft))
        self.bus = EventBus([self.stats, self.timeline, *sinks])
        self.stopper = Stopper()
        self.run_budget = RunBudget(config.max_cost, config.max_total_tokens)
        self.budgets = Budgets(
            [self.run_budget, *ledgers], clock, self.stopper, config.wait_for_budget
        )
        self.providers: dict[str, Provider] = {}
        self.settings = EngineSettings.from_config(config)
        self.services = Services(
            clock=clock,
            bus=self.bus,
            prices=config.price_book(),
            provider=self._provider,
            budgets=self.budgets,
            stopper=self.stopper,
            open_limits=self._open_limits,
        )
        self.stats.prices = self.services.prices  # prompt-cache savings, per prefix group
        self.notes: list[str] = []
        self.fatal: str | None = None
        self.resets_at: float | None = None
        self.stop_signal: int | None = None
        self._shared: Any = None  # a Redis client with --shared
        self._lock: OutputLock | None = None
        self._observers: list[EventSink] = []
        self._keys = KeyMaker(config)  # the response cache's keys
        self._engine: Engine | None = None
        self._signals = 0
        self._todo = 0
        self.auth_withheld = 0
        self.workers = 0  # the last engine run's pool size
        self.services_open = False
        self._watching = False  # a signal watcher runs around the whole session
        self.started_wall = clock.time()
        self._started = clock.monotonic()

    # -- what the engine uses -----------------------------------------------------

    def _provider(self, name: str) -> Provider:
        provider = self.providers.get(name)
        if provider is None:
            provider = self.providers[name] = self._factory(name, self.config)
        return provider

    def _open_limits(self, ref: ModelRef) -> tuple[RateLimiter, Breaker]:
        """A gate and a breaker for a model: in-process, or shared in Redis (--shared)."""
        cfg = self.config
        name, emit = str(ref), self.bus.emit
        gate = ModelGate(cfg.limits_for(ref), clock=self.clock, name=name, on_change=emit)
        if self._shared is None:
            return gate, Breaker(clock=self.clock, name=name, on_change=emit)
        from llmbatch._limits.redis_limit import RedisLimiter, SharedBreaker, limiter_prefix

        prefix = limiter_prefix(cfg.providers[ref.provider], ref.model)
        breaker = SharedBreaker()
        return RedisLimiter(
            gate, cfg.limits_for(ref), self._shared, prefix, breaker=breaker
        ), breaker

    def _cache_key(self, ref: ModelRef, request: Request, job_id: str) -> bytes:
        return self._keys(ref, request, job_id)

    def is_cached(self, pj: PreparedJob) -> bool:
        """Whether the response cache holds an answer for the job (any model of its chain)."""
        cache = self.services.cache
        if cache is None:
            return False
        return any(cache.contains(self._cache_key(ref, pj.request, pj.job.id)) for ref in pj.chain)

    # -- opening and closing ------------------------------------------------------

    def lock(self) -> None:
        """Take the output lock and start the event sinks (``--log-json``, ``--otlp``)."""
        cfg = self.config
        if cfg.output is not None:
            self._lock = OutputLock(cfg.output)
            self._lock.acquire()
        self._observers = build_sinks(cfg)
        for sink in self._observers:
            self.bus.add(sink)

    async def open_services(self, *, cache: bool = True) -> None:
        """Open what the engine uses: the cache, rolling-window ledgers, shared limits."""
        cfg = self.config
        self.services_open = True
        if cache:
            self.services.cache = open_cache(cfg)
            self.services.cache_key = self._keys
        self.budgets.add(await open_ledgers(cfg, self.clock))
        if cfg.shared:
            from llmbatch._budget.redis import connect as redis_connect

            self._shared = await redis_connect(cfg.shared)

    async def close_services(self) -> None:
        """Close providers, shared connections, ledgers and the cache (notes kept)."""
        with anyio.CancelScope(shield=True):
            for provider in self.providers.values():
                await provider.aclose()
            if self._shared is not None:
                await self._shared.aclose()
                self._shared = None
        try:
            await self.budgets.aclose()
        except SharedStoreError as exc:
            self.notes.append(str(exc))
        if self.services.cache is not None:
            self.services.cache.close()
            self.services.cache = None

    def unlock(self) -> None:
        """Stop the event sinks and let go of the output (after the final event)."""
        close_sinks(self._observers)
        self._observers = []
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    # -- running ------------------------------------------------------------------

    def started(self, total: int, skipped_done: int, models: Iterable[ModelRef]) -> None:
        """The run's first event; progress starts counting ``total`` jobs."""
        cfg = self.config
        self._todo = total
        self.bus.emit(
            RunStarted(
                self.started_wall,
                total,
                skipped_done,
                tuple(sorted(str(m) for m in models)),
                cfg.concurrency,
                str(cfg.output) if cfg.output else None,
                cfg.display_name,
            )
        )
        self.progress.start(total)

    async def run_engine(
        self, source: Iterable[PreparedJob], sink: ResultSink, *, size: int | None = None
    ) -> Outcome:
        """One engine run over ``source`` into ``sink``, with signals and progress watched."""
        engine = self._engine = Engine(self.settings, self.services)
        try:
            async with anyio.create_task_group() as outer:
                if self.handles_signals and not self._watching:
                    outer.start_soon(self._watch_signals)
                outer.start_soon(self._tick)
                outcome = await engine.run(source, sink, size=size)
                outer.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            own = sole_own_error(group)  # our own errors surface as themselves
            if own is not None:
                raise own from None
            raise
        finally:
            self._engine = None
            self.workers = engine.workers
        self.fatal = self.fatal or outcome.fatal
        self.resets_at = self.resets_at or outcome.resets_at
        self.auth_withheld += outcome.auth_withheld
        return outcome

    def stop(self, reason: StopReason) -> None:
        self.stopper.stop(reason)

    @property
    def stopped_by(self) -> StopReason | None:
        return self.stopper.stopped_by

    def finish(
        self,
        *,
        skipped_done: int = 0,
        not_run: int = 0,
        cost_before: float = 0.0,
        invalid_lines: Sequence[int] = (),
        failed_earlier: int = 0,
        batch: BatchPart | None = None,
    ) -> RunReport:
        """The report of everything this session ran; emits RunEnded (history, sinks)."""
        self.progress.update(self.stats, self.stats.cost_usd, None)
        self.progress.stop()
        if self.auth_withheld and self.stopper.stopped_by is None:
            self.stopper.stop(StopReason.AUTH)  # too few jobs to reach the threshold
            self.fatal = self.fatal or (
                f"{self.auth_withheld} job(s) were refused authentication before any "
                "answer came back; they were not recorded — check the API key"
            )
        report = self.report(
            skipped_done=skipped_done,
            not_run=not_run,
            cost_before=cost_before,
            invalid_lines=invalid_lines,
            failed_earlier=failed_earlier,
            batch=batch,
        )
        code = exit_code_for(report, self.stop_signal)
        self._history(report, code)
        self.bus.emit(RunEnded(self.clock.time(), report, code))
        return report

    def report(
        self,
        *,
        skipped_done: int = 0,
        not_run: int = 0,
        cost_before: float = 0.0,
        invalid_lines: Sequence[int] = (),
        failed_earlier: int = 0,
        batch: BatchPart | None = None,
    ) -> RunReport:
        """The report of what this session ran so far; no side effect (``finish`` has them)."""
        notes = list(self.notes)
        for provider in self.providers.values():
            notes.extend(f"{provider.name}: {note}" for note in sorted(provider.notes))
        if self.fatal:
            notes.insert(0, self.fatal)
        report = build_report(
            self.stats,
            skipped_done=skipped_done,
            not_run=not_run,
            cost_before=cost_before,
            wall_s=self.clock.monotonic() - self._started,
            stopped_by=self.stopper.stopped_by,
            invalid_lines=sorted(invalid_lines),
            limits=self.limits_in_force(),
            output=str(self.config.output) if self.config.output else None,
            notes=notes,
            failed_earlier=failed_earlier,
        )
        report = replace(report, resets_at=rfc3339(self.resets_at), batch=batch)
        return report

    def limits_in_force(self) -> dict[str, dict[str, Any]]:
        """Each model's limiter as the report says it: those that sent anything."""
        described = {str(ref): gate.describe() for ref, gate in self.services.gates.items()}
        return {name: dict(d) for name, d in described.items() if d.get("sent")}

    def cancel(self) -> None:
        """A hard stop of the engine run in flight (its requests too), if any."""
        if self._engine is not None:
            self._engine.cancel()

    def _history(self, report: RunReport, code: int) -> None:
        output = self.config.output
        if output is None:
            return
        from llmbatch._io.history import append_history
        from llmbatch._report.history import history_record

        series = self.timeline.timeline().series
        record = history_record(
            report,
            self.stats,
            self.started_wall,
            self.clock.time(),
            self.stopper.stopped_by,
            code,
            series,
        )
        append_history(output, record)

    async def _tick(self) -> None:
        while True:
            spent = self.stats.cost_usd
            done = self.stats.done
            projected = spent / done * self._todo if done else None
            self.progress.update(self.stats, spent, projected)
            self.progress.tick()
            await anyio.sleep(0.25)

    @property
    def handles_signals(self) -> bool:
        return self._handle_signals and threading.current_thread() is threading.main_thread()

    async def watch_signals(self) -> None:
        """SIGINT/SIGTERM over the whole session (engine runs and the waits between them:
        ``run --mode batch`` waiting for its batches); cancel the task to stop watching."""
        self._watching = True
        try:
            await self._watch_signals()
        finally:
            self._watching = False

    async def _watch_signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                self._signals += 1
                if self._signals == 1:
                    self.stop_signal = int(signum)
                    self.stopper.stop(StopReason.SIGNAL)
                    sys.stderr.write(
                        "\nllmbatch: stopping: no new requests; waiting for those in flight "
                        "(press Ctrl-C again to cancel them)\n"
                    )
                else:
                    sys.stderr.write("\nllmbatch: cancelling requests in flight\n")
                    if self._engine is not None:
                        self._engine.cancel()
                    return


def exit_code_for(report: RunReport, stop_signal: int | None) -> int:
    """The one place a run's outcome becomes its exit code (SPEC §6)."""
    if report.stopped_by == StopReason.SIGNAL and stop_signal is not None:
        return 128 + stop_signal
    if report.stopped_by == StopReason.OUTPUT_CLOSED:
        return 128 + signal.SIGPIPE
    return report.exit_code
