"""``batch fetch`` finishes the schema repairs itself: the online repair turn, as ``run`` does it.

At submit, every job that carries a schema keeps its prepared request and model
chain in its chunk's rows (``stored_request``); a batch answer that misses the
schema carries them into its ``repair`` event. At fetch, each pending repair is
rebuilt from there (``rebuild``), checked against the job's fingerprint, and run
through the same ``JobRunner`` seed as ``_batch_online`` (budget held per attempt,
rate limits, retries, ``--repair-attempts``). The line is written once, with the
batch answer's cost plus the repair's, its ``batch`` origin and the original
fingerprint; then the repair is marked done. Killed midway, the next fetch or run
repairs what has no line yet: only the request in flight is paid twice.

A repair that cannot be rebuilt here (state from an older llmbatch, a provider
not configured, a key not set) stays pending for ``llmbatch run``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from llmbatch._budget.context import Budgets, Stopper
from llmbatch._budget.ledger import RunBudget
from llmbatch._budget.open import open_ledgers
from llmbatch._core.events import AttemptEnded, Event, EventBus, JobEnded
from llmbatch._core.exceptions import sole_own_error
from llmbatch._core.jobs import Job, Request
from llmbatch._core.models import ModelRef
from llmbatch._core.results import JobResult, ResultWriter
from llmbatch._core.retry import Backoff
from llmbatch._engine.attempts import JobRunner
from llmbatch._engine.executor import StreamingExecutor, drained
from llmbatch._engine.plan import PreparedJob, fingerprint
from llmbatch._engine.takeover import BatchSeed, RepairRecorder, seed_from_repair
from llmbatch._io.resume import read_existing
from llmbatch._limits.breaker import Breaker
from llmbatch._limits.ratelimit import ModelGate, RateLimiter
from llmbatch.providers.factory import ProviderFactory, default_provider_factory

if TYPE_CHECKING:
    from llmbatch._batch.context import BatchContext
    from llmbatch._config.settings import RunConfig
    from llmbatch._core.pricing import PriceBook
    from llmbatch._io.batch_state import BatchState, LineFingerprint
    from llmbatch.providers._base import Provider


def stored_request(pj: PreparedJob) -> dict[str, Any]:
    """What fetch needs to ask a job's repair turn online: its request and its model chain."""
    r = pj.request
    req = {
        "messages": r.messages,
        "system": r.system,
        "model": None if r.model is None else [r.model.provider, r.model.model],
        "max_tokens": r.max_tokens,
        "temperature": r.temperature,
        "wire_format": r.wire_format,  # (the schema is in the row already: not twice)
        "body": r.body,
    }
    return {"req": req, "chain": [[m.provider, m.model] for m in pj.chain]}


def rebuild(e: dict[str, Any], config: RunConfig, book: PriceBook) -> PreparedJob | str:
    """The job of a ``repair`` event as ``run`` would prepare it, or why it cannot be."""
    req, chain_raw = e.get("req"), e.get("chain")
    if not isinstance(req, dict) or not chain_raw:
        return "kept by an older llmbatch, without its request"
    chain = [ModelRef(str(p), str(m)) for p, m in chain_raw]
    model = req.get("model")
    request = Request(
        messages=list(req.get("messages") or []),
        system=req.get("system"),
        model=None if model is None else ModelRef(str(model[0]), str(model[1])),
        max_tokens=req.get("max_tokens"),
        temperature=req.get("temperature"),
        schema=e.get("schema"),
        wire_format=req.get("wire_format"),
        body=req.get("body"),
    )
    if fingerprint(chain[0], request) != e.get("fp"):
        return "its kept request no longer matches the job's fingerprint"
    for ref in chain[min(int(e.get("pos") or 0), len(chain) - 1) :]:
        settings = config.providers.get(ref.provider)
        if settings is None:
            return f"provider {ref.provider!r} is not configured here (give fetch its --config)"
        env = settings.key_env()
        if env is not None and not os.environ.get(env):
            return f"{env} is not set"
        if config.max_cost is not None and book.price(ref) is None:
            return f"--max-cost needs a price for {ref}, and none is known"
    job = Job(id=str(e["id"]), line=0, request=request, metadata=e.get("meta"))
    return PreparedJob(job, request, chain, str(e["fp"]))


@dataclass(frozen=True, slots=True)
class RepairReport:
    """What the repair step of one fetch did."""

    ok: int = 0
    failed: int = 0
    cost_usd: float = 0.0  # the online repair attempts only (lines also hold the batch cost)
    left: int = 0  # pending repairs this fetch could not make (``llmbatch run`` can)
    stopped_by: str | None = None
    notes: list[str] = field(default_factory=list)


def with_submit_caps(config: RunConfig, state: BatchState) -> RunConfig:
    """Fetch's caps: its own (flags, config file), else those the last submit was given."""
    if config.max_cost is not None or config.max_total_tokens is not None:
        return config
    caps = state.caps or {}
    return replace(
        config, max_cost=caps.get("max_cost"), max_total_tokens=caps.get("max_total_tokens")
    )


async def repair_pending(
    ctx: BatchContext,
    line_fp: LineFingerprint,
    book: PriceBook,
    provider_factory: ProviderFactory | None = None,
) -> RepairReport:
    """Run the online repair turn of every pending repair that can be rebuilt here."""
    config = with_submit_caps(ctx.config, ctx.state)
    jobs: list[PreparedJob] = []
    why: dict[str, int] = {}
    for e in ctx.state.pending_repairs(line_fp).values():
        built = rebuild(e, config, book)
        if isinstance(built, str):
            why[built] = why.get(built, 0) + 1
        else:
            jobs.append(built)
    notes = [f"{n} schema repair(s) cannot be made by fetch: {w}" for w, n in why.items()]
    if not jobs:
        return RepairReport(left=sum(why.values()), notes=notes)
    run = _RepairRun(ctx, config, book, provider_factory or default_provider_factory)
    await run.run(jobs, line_fp)
    if run.runner.fatal:
        notes.insert(0, run.runner.fatal)
    elif run.runner.auth_withheld:
        notes.insert(
            0,
            f"{run.runner.auth_withheld} repair(s) were refused authentication "
            "before any answer came back; they stay pending — check the API key",
        )
    return RepairReport(
        ok=run.ok,
        failed=run.failed,
        cost_usd=run.cost,
        left=len(ctx.state.pending_repairs(line_fp)),
        stopped_by=run.stopper.stopped_by,
        notes=notes,
    )


class _RepairRun:
    """The engine's wiring, cut down to a known list of repair jobs: runner, pool, writer."""

    def __init__(
        self, ctx: BatchContext, config: RunConfig, book: PriceBook, factory: ProviderFactory
    ) -> None:
        self.ctx = ctx
        self.config = config
        self.factory = factory
        self.providers: dict[str, Provider] = {}
        self.stopper = Stopper()
        self.budget = RunBudget(config.max_cost, config.max_total_tokens)
        self.budgets = Budgets([self.budget], ctx.clock, self.stopper, config.wait_for_budget)
        self.bus = EventBus([self])
        self.gates: dict[ModelRef, RateLimiter] = {}
        self.breakers: dict[ModelRef, Breaker] = {}
        self.runner = JobRunner(
            config=config,
            clock=ctx.clock,
            bus=self.bus,
            prices=book,
            provider=self.provider,
            gates=self.gates,
            breakers=self.breakers,
            budgets=self.budgets,
            stopper=self.stopper,
            backoff=Backoff(cap=config.backoff_cap).delay,
        )
        self.ok = self.failed = 0
        self.cost = 0.0

    def provider(self, name: str) -> Provider:
        if name not in self.providers:
            self.providers[name] = self.factory(name, self.config)
        return self.providers[name]

    def emit(self, event: Event) -> None:
        """The repair attempts' cost, as they end (the lines hold the batch cost too)."""
        if isinstance(event, AttemptEnded):
            self.cost += event.cost_usd or 0.0

    def hold_spent(self, line_fp: LineFingerprint) -> None:
        """Everything this output has spent or holds counts against the caps, as in ``run``."""
        assert self.config.output is not None
        existing = read_existing(self.config.output, retry_failed=False)
        paid_cost, paid_tokens = self.ctx.state.spent(line_fp)
        self.budget.spent_cost = existing.cost_usd + paid_cost
        self.budget.spent_tokens = existing.tokens + paid_tokens
        self.budget.reserved_cost, self.budget.reserved_tokens = self.ctx.state.reserved()

    async def run(self, jobs: list[PreparedJob], line_fp: LineFingerprint) -> None:
        cfg = self.config
        self.hold_spent(line_fp)
        seeds: dict[str, BatchSeed] = {
            pj.job.id: seed_from_repair(self.ctx.state.repairs[pj.job.id]) for pj in jobs
        }
        self.runner.seeds = seeds
        # Marks the repairs whose lines are written, once the output is synced (below).
        recorder = RepairRecorder(self.ctx.state, seeds)
        self.bus.add(recorder)
        for ref in {ref for pj in jobs for ref in pj.chain}:
            self.gates[ref] = ModelGate(cfg.limits_for(ref), clock=self.ctx.clock, name=str(ref))
            self.breakers[ref] = Breaker(clock=self.ctx.clock, name=str(ref))
        workers = max(1, min(cfg.concurrency, len(jobs)))
        executor = StreamingExecutor(self.runner, workers, self.stopper)
        job_send, job_recv = anyio.create_memory_object_stream[PreparedJob](workers)
        res_send, res_recv = anyio.create_memory_object_stream[JobResult](workers * 4)
        writer = ResultWriter(cfg.output)
        try:
            self.budgets.ledgers.extend(await open_ledgers(cfg, self.ctx.clock))
            async with anyio.create_task_group() as tg:
                tg.start_soon(_feed, job_send, jobs)
                tg.start_soon(self._write, res_recv, writer)
                tg.start_soon(executor.execute, job_recv, res_send)
        except BaseExceptionGroup as group:
            own = sole_own_error(group)
            if own is not None:
                raise own from None
            raise
        finally:
            writer.close()  # synced: now the marks may say so
            recorder.flush()
            with anyio.CancelScope(shield=True):
                for p in self.providers.values():
                    await p.aclose()
                await self.budgets.aclose()

    async def _write(
        self, recv: MemoryObjectReceiveStream[JobResult], writer: ResultWriter
    ) -> None:
        """The lines, each once, then the events that mark their repairs done."""
        async for batch in drained(recv):
            writer.write([r.to_json() for r in batch])
            now = self.ctx.clock.time()
            for r in batch:
                self.ok += r.status == "ok"
                self.failed += r.status != "ok"
                self.bus.emit(JobEnded(now, r))


async def _feed(send: MemoryObjectSendStream[PreparedJob], jobs: list[PreparedJob]) -> None:
    async with send:
        for pj in jobs:
            try:
                await send.send(pj)
            except anyio.BrokenResourceError:
                return  # the pool is gone (a hard stop): the rest stays pending
