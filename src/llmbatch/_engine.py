"""The engine: a producer, a pool of workers and one writer, in one anyio task group.

    jobs ─producer─▶ [bounded stream] ─▶ N workers ─▶ [bounded stream] ─▶ writer ─▶ output
                                           │
               _run_job: budget → limits → send → retry / repair / fallback

``_run_job`` is the one place where limits, retries, fallback, repair and budget
meet. Memory stays flat: the jobs file is streamed twice (check, then run) and
only a done-set of fixed-size hashes is kept.
"""

from __future__ import annotations

import random
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ._breaker import Breaker
from ._budget import BudgetLedger, Hold, Refusal, RunBudget
from ._clock import SYSTEM_CLOCK
from ._config import RunConfig
from ._exceptions import (
    LLMBatchError,
    ProviderError,
    ProviderTimeout,
    SharedStoreError,
)
from ._history import append_history
from ._jobs import Job, LineError, Request, estimate_input_tokens, iter_lines, open_jobs
from ._lock import OutputLock
from ._models import ModelRef
from ._plan import Plan, Planner, PreparedJob
from ._progress import NoProgress, ProgressSink
from ._ratelimit import ModelGate
from ._report import RunReport, build_report
from ._results import (
    ExistingOutput,
    JobResult,
    ResultWriter,
    backup_output,
    cut_torn_tail,
)
from ._schema import validate_answer
from ._stats import RunStats
from ._usage import Usage
from ._windows import open_ledgers, rfc3339
from .providers._base import Answer, Provider

if TYPE_CHECKING:
    from ._redis_limit import RedisLimiter

ProviderFactory = Callable[[str, RunConfig], Provider]

AUTH_FAILURES_TO_STOP = 3


@dataclass(frozen=True, slots=True)
class Reservation:
    cost: float  # worst case: input as UTF-8 bytes (never short) + max_tokens
    budget_tokens: int
    input_tokens: int  # what the providers' limiters count: an estimate + max_tokens
    output_tokens: int


class Engine:
    def __init__(
        self,
        config: RunConfig,
        *,
        progress: ProgressSink | None = None,
        provider_factory: ProviderFactory | None = None,
        handle_signals: bool = True,
    ) -> None:
        self.config = config
        self.progress = progress or NoProgress()
        self._factory = provider_factory
        self._handle_signals = handle_signals
        self.planner = Planner(config)
        self.parser = self.planner.parser
        self.prices = self.planner.prices
        self.stats = RunStats()
        self.existing: ExistingOutput | None = None  # the output as it was, once planned
        self.budget = RunBudget(config.max_cost, config.max_total_tokens)
        self.providers: dict[str, Provider] = {}
        self.gates: dict[ModelRef, ModelGate | RedisLimiter] = {}
        self.breakers: dict[ModelRef, Breaker] = {}
        self.stopped_by: str | None = None
        self.stop_signal: int | None = None
        self.fatal: str | None = None
        self.notes: list[str] = []
        self._stopping = False
        self._auth_failures = 0
        self._work_scope: anyio.CancelScope | None = None
        self._waits: set[anyio.CancelScope] = set()
        self._signals = 0
        self._todo = 0
        self.ledgers: list[BudgetLedger] = []  # rolling windows (SQLite or Redis)
        self.resets_at: float | None = None
        self._told_waiting = False

    # -- the run ------------------------------------------------------------------

    async def run(self) -> RunReport:
        lock = OutputLock(self.config.output) if self.config.output is not None else None
        if lock is not None:
            lock.acquire()
        try:
            return await self._run()
        finally:
            if lock is not None:
                lock.release()

    async def _run(self) -> RunReport:
        cfg = self.config
        plan = self.planner.plan()
        self.planner.check(plan)
        started_wall = time.time()
        started = time.monotonic()
        existing = self.existing = self.planner.existing
        if cfg.output is not None:
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
        if existing is not None:
            self.budget.spent_cost = existing.cost_usd
            self.budget.spent_tokens = existing.tokens
        cost_before = existing.cost_usd if existing else 0.0
        self.ledgers = await open_ledgers(cfg, SYSTEM_CLOCK)
        shared = None
        if cfg.shared:
            from ._redis import connect as redis_connect
            from ._redis_limit import RedisLimiter, SharedBreaker, limiter_prefix

            shared = await redis_connect(cfg.shared)
        for ref in plan.models:
            gate = ModelGate(cfg.limits_for(ref))
            self.gates[ref] = gate
            self.breakers[ref] = Breaker()
            if shared is not None:
                prefix = limiter_prefix(cfg.providers[ref.provider], ref.model)
                breaker = self.breakers[ref] = SharedBreaker()
                self.gates[ref] = RedisLimiter(
                    gate, cfg.limits_for(ref), shared, prefix, breaker=breaker
                )
        writer = ResultWriter(cfg.output)
        self._todo = plan.todo
        self.progress.start(plan.todo)
        try:
            await self._run_pool(plan, writer)
        except BaseExceptionGroup as group:
            # Our own errors surface as themselves, not wrapped by the task group.
            own = [e for e in group.exceptions if isinstance(e, LLMBatchError)]
            if own and len(own) == len(group.exceptions):
                raise own[0] from None
            raise
        finally:
            writer.close()
            self.progress.update(self.stats, self.stats.cost_usd, None)
            self.progress.stop()
            for provider in self.providers.values():
                with anyio.CancelScope(shield=True):
                    await provider.aclose()
            if shared is not None:
                with anyio.CancelScope(shield=True):
                    await shared.aclose()
            for ledger in self.ledgers:
                try:
                    await ledger.aclose()
                except SharedStoreError as exc:
                    self.notes.append(str(exc))
        wall = time.monotonic() - started
        not_run = max(0, plan.todo - self.stats.done)
        for provider in self.providers.values():
            self.notes.extend(f"{provider.name}: {note}" for note in sorted(provider.notes))
        if self.fatal:
            self.notes.insert(0, self.fatal)
        limits = {str(ref): gate.describe() for ref, gate in self.gates.items() if gate.stats.sent}
        report = build_report(
            self.stats,
            skipped_done=plan.skipped_done,
            not_run=not_run,
            cost_before=cost_before,
            wall_s=wall,
            stopped_by=self.stopped_by,
            invalid_lines=sorted(plan.invalid_lines),
            limits=limits,
            output=str(cfg.output) if cfg.output else None,
            notes=self.notes,
            failed_earlier=0 if (existing is None or cfg.retry_failed) else existing.failed,
        )
        report = replace(report, resets_at=rfc3339(self.resets_at))
        if cfg.output is not None:
            append_history(
                cfg.output,
                {
                    "started": started_wall,
                    "ended": time.time(),
                    "wall_s": round(wall, 3),
                    "jobs_done": self.stats.done,
                    "ok": self.stats.ok,
                    "failed": self.stats.failed,
                    "not_run": not_run,
                    "cost_usd": round(self.stats.cost_usd, 8),
                    "stopped_by": self.stopped_by,
                    "exit_code": exit_code_for(report, self.stop_signal),
                },
            )
        return report

    async def _run_pool(self, plan: Plan, writer: ResultWriter) -> None:
        cfg = self.config
        n = max(1, cfg.concurrency)
        job_send, job_recv = anyio.create_memory_object_stream[Job](n)
        result_send, result_recv = anyio.create_memory_object_stream[JobResult](n * 4)
        async with anyio.create_task_group() as outer:
            if self._handle_signals and threading.current_thread() is threading.main_thread():
                outer.start_soon(self._watch_signals)
            outer.start_soon(self._tick)
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._produce, job_send, plan)
                tg.start_soon(self._write, result_recv, writer)
                self._work_scope = anyio.CancelScope()
                tg.start_soon(self._workers, job_recv, result_send, n)
            outer.cancel_scope.cancel()

    async def _workers(
        self,
        job_recv: MemoryObjectReceiveStream[Job],
        result_send: MemoryObjectSendStream[JobResult],
        n: int,
    ) -> None:
        assert self._work_scope is not None
        async with job_recv, result_send:
            with self._work_scope:
                async with anyio.create_task_group() as tg:
                    for _ in range(n):
                        tg.start_soon(self._worker, job_recv.clone(), result_send.clone())

    async def _produce(self, send: MemoryObjectSendStream[Job], plan: Plan) -> None:
        done = self.existing.done if self.existing else None
        invalid = plan.invalid_lines
        async with send:
            with open_jobs(self.config.jobs) as stream:
                for lineno, raw in iter_lines(stream):
                    if self._stopping or lineno > plan.last_line:
                        return
                    if lineno in invalid:
                        continue
                    try:
                        job = self.parser.parse(raw, lineno)
                    except LineError as exc:
                        # The file was rewritten under us since the check: skip, say so.
                        self.notes.append(f"{self.config.display_name}:{lineno}: {exc} (skipped)")
                        continue
                    if done is not None and done.fingerprint(job.id) is not None:
                        continue
                    if not self.planner.owns(job):
                        continue  # another --shard's job
                    try:
                        await send.send(job)
                    except anyio.BrokenResourceError:
                        return  # the workers are gone (output closed, hard stop)

    async def _worker(
        self, recv: MemoryObjectReceiveStream[Job], send: MemoryObjectSendStream[JobResult]
    ) -> None:
        async with recv, send:
            async for job in recv:
                if self._stopping:
                    continue  # drain: not run, stays resumable
                result = await self._run_job(self.planner.prepare(job))
                if result is not None:
                    try:
                        await send.send(result)
                    except anyio.BrokenResourceError:
                        return  # the writer is gone: the output was closed

    async def _write(
        self, recv: MemoryObjectReceiveStream[JobResult], writer: ResultWriter
    ) -> None:
        stats = self.stats
        async with recv:
            async for first in recv:
                batch = [first]
                while len(batch) < 1024:
                    try:
                        batch.append(recv.receive_nowait())
                    except (anyio.WouldBlock, anyio.EndOfStream):
                        break
                try:
                    writer.write([r.to_json() for r in batch])
                except BrokenPipeError:
                    # `-o - | head`: nobody reads any more. Stop at once, as SIGPIPE would.
                    self.stop("output_closed")
                    if self._work_scope is not None:
                        self._work_scope.cancel()
                    return
                for r in batch:
                    stats.add(r)

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
                    self.stop("signal")
                    sys.stderr.write(
                        "\nllmbatch: stopping: no new requests; waiting for those in flight "
                        "(press Ctrl-C again to cancel them)\n"
                    )
                else:
                    sys.stderr.write("\nllmbatch: cancelling requests in flight\n")
                    if self._work_scope is not None:
                        self._work_scope.cancel()
                    return

    def stop(self, reason: str) -> None:
        if self.stopped_by is None:
            self.stopped_by = reason
        self._stopping = True
        # Jobs waiting (backoff, rate limits) wake now; requests in flight go on.
        for scope in list(self._waits):
            scope.cancel()

    @contextmanager
    def _interruptible(self) -> Iterator[anyio.CancelScope]:
        """A wait that a stop ends early (check ``cancelled_caught``)."""
        with anyio.CancelScope() as scope:
            if self._stopping:
                scope.cancel()
            self._waits.add(scope)
            try:
                yield scope
            finally:
                self._waits.discard(scope)

    # -- one job: the heart -----------------------------------------------------

    def _provider(self, name: str) -> Provider:
        provider = self.providers.get(name)
        if provider is None:
            factory = self._factory or default_provider_factory
            provider = self.providers[name] = factory(name, self.config)
        return provider

    def _reservation(self, ref: ModelRef, request: Request) -> Reservation:
        """What one attempt holds before it is sent: its worst case for the budget, and
        the providers' own count (input estimate + max_tokens) for the rate limits."""
        out_tokens = request.max_tokens or self.config.max_tokens
        worst_in = estimate_input_tokens(request, conservative=True)
        price = self.prices.price(ref)
        cost = 0.0 if price is None else price.cost(Usage(worst_in, out_tokens))
        return Reservation(cost, worst_in + out_tokens, estimate_input_tokens(request), out_tokens)

    async def _run_job(self, pj: PreparedJob) -> JobResult | None:
        cfg = self.config
        job = pj.job
        usage = Usage()
        cost: float | None = 0.0
        attempts = 0
        repairs = 0
        fallbacks = 0
        attempt_errors: Counter[str] = Counter()
        last_error: dict[str, Any] | None = None
        last_text: str | None = None
        last_ref = pj.chain[0]
        schema = pj.request.schema

        def result(status: str, ref: ModelRef, **kw: Any) -> JobResult:
            return JobResult(
                id=job.id,
                status=status,
                output=kw.get("output"),
                parsed=kw.get("parsed"),
                provider=ref.provider,
                model=ref.model,
                usage=usage,
                cost_usd=cost,
                latency_ms=kw.get("latency_ms"),
                ttft_ms=kw.get("ttft_ms"),
                attempts=attempts,
                error=kw.get("error"),
                metadata=job.metadata,
                stop_reason=kw.get("stop_reason"),
                fingerprint=pj.fingerprint,
                attempt_errors=dict(attempt_errors),
                repairs=repairs,
                fallbacks=fallbacks,
            )

        for position, ref in enumerate(pj.chain):
            breaker = self.breakers[ref]
            has_next = position + 1 < len(pj.chain)
            if has_next and not breaker.allow():
                continue  # the model is failing for everyone: go straight to the fallback
            if position > 0:
                fallbacks += 1
            last_ref = ref
            provider = self._provider(ref.provider)
            gate = self.gates[ref]
            request = pj.request
            tries = 0
            repairs_left = cfg.repair_attempts
            while tries < cfg.max_attempts:
                if self._stopping and attempts == 0:
                    return None
                if self._stopping and self.stopped_by == "signal":
                    return None  # mid-retry at a signal: not written, runs again on resume
                res = self._reservation(ref, request)
                hold = self.budget.reserve_now(res.cost, res.budget_tokens)
                windows = await self._reserve_windows(hold, res)
                if not isinstance(hold, Hold) or windows is None:
                    if isinstance(hold, Hold):
                        self.budget.settle_now(hold, 0.0, 0)
                    else:
                        self.stop("budget")
                    if attempts == 0:
                        return None
                    return result(
                        "failed",
                        ref,
                        output=last_text,
                        error={
                            "type": "budget",
                            "message": "the budget cap was reached before this job finished",
                            "status": None,
                        },
                    )
                with self._interruptible() as waiting:
                    await gate.acquire(res.input_tokens, res.output_tokens)
                if waiting.cancelled_caught:
                    self.budget.settle_now(hold, 0.0, 0)
                    await self._settle_windows(windows, 0.0, 0)
                    gate.settle(res.input_tokens, res.output_tokens, 0, 0)
                    continue  # stopped while waiting for a slot: the checks above decide
                tries += 1
                attempts += 1
                err: ProviderError | None = None
                answer: Answer | None = None
                try:
                    with anyio.fail_after(cfg.timeout):
                        answer = await provider.send(ref.model, request, cfg.timeout)
                except ProviderError as exc:
                    err = exc
                except TimeoutError:
                    err = ProviderTimeout(f"no complete answer within --timeout {cfg.timeout:g} s")
                if err is not None:
                    spent = getattr(err, "usage", None)
                    spent_cost = 0.0
                    if isinstance(spent, Usage):
                        usage.add(spent)
                        c = self.prices.cost(ref, spent)
                        spent_cost = c or 0.0
                        cost = None if (c is None or cost is None) else cost + c
                    self.budget.settle_now(hold, spent_cost, _tokens(spent))
                    await self._settle_windows(windows, spent_cost, _tokens(spent))
                    gate.settle(res.input_tokens, res.output_tokens, 0, 0)
                    attempt_errors[err.error_type] += 1
                    last_error = err.to_dict()
                    if err.error_type == "rate_limited":
                        gate.on_rate_limited(err.retry_after, getattr(err, "limits", None))
                    if err.error_type == "auth":
                        self._auth_failures += 1
                        if self._auth_failures >= AUTH_FAILURES_TO_STOP and not self._stopping:
                            self.fatal = (
                                f"stopped after {self._auth_failures} authentication failures "
                                f"in a row from {ref.provider}: {err.message} — check the API "
                                "key and retry."
                            )
                            self.stop("auth")
                    if not err.retryable:
                        return result("failed", ref, output=last_text, error=last_error)
                    breaker.record_failure()
                    if tries >= cfg.max_attempts:
                        break
                    if has_next and not breaker.allow():
                        break
                    delay = self._backoff(tries, err.retry_after)
                    gate.stats.backoff_s += delay
                    with self._interruptible():
                        await anyio.sleep(delay)
                    continue

                # An answer.
                assert answer is not None
                self._auth_failures = 0
                breaker.record_success()
                gate.on_success(answer.limits)
                usage.add(answer.usage)
                c = self.prices.cost(ref, answer.usage)
                cost = None if (c is None or cost is None) else cost + c
                self.budget.settle_now(hold, c or 0.0, answer.usage.total)
                await self._settle_windows(windows, c or 0.0, answer.usage.total)
                gate.settle(
                    res.input_tokens,
                    res.output_tokens,
                    answer.usage.input_tokens,
                    answer.usage.output_tokens,
                )
                last_text = answer.text
                common = {
                    "output": answer.text,
                    "latency_ms": answer.latency_ms,
                    "ttft_ms": answer.ttft_ms,
                    "stop_reason": answer.stop_reason,
                }
                if schema is None:
                    return result("ok", ref, **common)
                parsed, problem = validate_answer(answer.text, schema)
                if problem is None:
                    return result("ok", ref, parsed=parsed, **common)
                if repairs_left > 0:
                    repairs_left -= 1
                    repairs += 1
                    request = repair_request(request, answer.text, problem)
                    tries = 0  # a repair is a new question, with its own retries
                    continue
                error = {
                    "type": "schema_invalid",
                    "message": f"the answer does not match the schema: {problem}",
                    "status": None,
                }
                return result("failed", ref, error=error, **common)
        return result("failed", last_ref, output=last_text, error=last_error)

    async def _reserve_windows(
        self, hold: Hold | Refusal, res: Reservation
    ) -> list[tuple[BudgetLedger, Hold]] | None:
        """Hold ``res`` in every rolling window (waiting while holds in flight may free
        room, or with --wait-for-budget until the window frees); None: stopped."""
        holds: list[tuple[BudgetLedger, Hold]] = []
        if not isinstance(hold, Hold):
            return holds
        for ledger in self.ledgers:
            while True:
                try:
                    got = await ledger.reserve(res.cost, res.budget_tokens)
                except SharedStoreError as exc:
                    self.fatal = f"{exc}; budgets fail closed: no new requests"
                    self.stop("shared_store")
                    break
                if isinstance(got, Hold):
                    holds.append((ledger, got))
                    break
                if not await self._wait_for_window(got):
                    break
            if len(holds) < self.ledgers.index(ledger) + 1:
                await self._settle_windows(holds, 0.0, 0)
                return None
        return holds

    async def _wait_for_window(self, refusal: Refusal) -> bool:
        """Wait after a refusal when that can help; False (and stop) when it cannot."""
        delay: float | None = None
        if refusal.may_fit_later:
            delay = 0.1 + random.uniform(0, 0.1)
        elif self.config.wait_for_budget and refusal.resets_at is not None:
            delay = min(60.0, max(0.5, refusal.resets_at - time.time()))
            if not self._told_waiting:
                self._told_waiting = True
                sys.stderr.write(f"llmbatch: {refusal.message}; waiting (--wait-for-budget)\n")
        if delay is None or self._stopping:
            if refusal.reason == "budget_window":
                self.resets_at = refusal.resets_at
                if self.stopped_by is None:
                    self.notes.append(refusal.message)
            self.stop(refusal.reason)
            return False
        with self._interruptible():
            await anyio.sleep(delay)
        return not self._stopping

    async def _settle_windows(
        self, holds: list[tuple[BudgetLedger, Hold]] | None, cost: float, tokens: int
    ) -> None:
        for ledger, hold in holds or ():
            try:
                await ledger.settle(hold, cost, tokens)
            except SharedStoreError as exc:
                self.fatal = f"{exc}; budgets fail closed: no new requests"
                self.stop("shared_store")

    def _backoff(self, tries: int, retry_after: float | None) -> float:
        """Exponential with full jitter, capped; the server's retry-after wins."""
        if retry_after is not None and retry_after >= 0:
            return min(retry_after, self.config.backoff_cap) + random.uniform(0, 0.25)
        ceiling = min(self.config.backoff_cap, 0.5 * (2 ** (tries - 1)))
        return random.uniform(0, ceiling)


def _tokens(usage: object) -> int:
    return usage.total if isinstance(usage, Usage) else 0


REPAIR_INSTRUCTION = (
    "Your previous answer is not valid against the required JSON Schema: {problem}. "
    "Answer again with only the corrected JSON value, no prose and no code fences."
)


def repair_request(request: Request, bad_answer: str, problem: str) -> Request:
    """The same question with the invalid answer and the validation error as a follow-up turn."""
    turns = [
        {"role": "assistant", "content": bad_answer or "(empty answer)"},
        {"role": "user", "content": REPAIR_INSTRUCTION.format(problem=problem)},
    ]
    return Request(
        messages=request.messages + turns,
        system=request.system,
        model=request.model,
        max_tokens=request.max_tokens,
        temperature=request.temperature,
        schema=request.schema,
        wire_format=request.wire_format,
        body=request.body,
        appended=(request.appended or []) + turns,
    )


def exit_code_for(report: RunReport, stop_signal: int | None) -> int:
    if report.stopped_by == "signal" and stop_signal is not None:
        return 128 + stop_signal
    if report.stopped_by == "output_closed":
        return 128 + signal.SIGPIPE
    return report.exit_code


def default_provider_factory(name: str, config: RunConfig) -> Provider:
    settings = config.providers[name]
    if settings.kind == "sim":
        from .providers.sim import SimProvider

        return SimProvider()
    if settings.kind == "anthropic":
        from .providers.anthropic import AnthropicProvider

        return AnthropicProvider(settings, config)
    from .providers.openai import OpenAIProvider

    return OpenAIProvider(settings, config)


async def run_jobs_async(
    config: RunConfig,
    *,
    progress: ProgressSink | None = None,
    provider_factory: ProviderFactory | None = None,
    handle_signals: bool = True,
) -> RunReport:
    engine = Engine(
        config, progress=progress, provider_factory=provider_factory, handle_signals=handle_signals
    )
    return await engine.run()


def run_jobs(
    config: RunConfig,
    *,
    progress: ProgressSink | None = None,
    provider_factory: ProviderFactory | None = None,
    handle_signals: bool = False,
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
        )
    )
