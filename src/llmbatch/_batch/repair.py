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

from llmbatch._core.events import AttemptEnded, Event
from llmbatch._core.jobs import Job, Request
from llmbatch._core.models import ModelRef
from llmbatch._engine.plan import PreparedJob, fingerprint
from llmbatch._engine.sinks import OutputSink
from llmbatch._engine.takeover import RepairRecorder, seed_from_repair
from llmbatch._io.resume import read_existing
from llmbatch._run.session import RunSession
from llmbatch.providers.factory import ProviderFactory

if TYPE_CHECKING:
    from llmbatch._batch.context import BatchContext
    from llmbatch._config.settings import RunConfig
    from llmbatch._core.pricing import PriceBook
    from llmbatch._io.batch_state import BatchState, LineFingerprint


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
    ok, failed, cost, session = await _run_repairs(ctx, config, jobs, line_fp, provider_factory)
    if session.fatal:
        notes.insert(0, session.fatal)
    elif session.auth_withheld:
        notes.insert(
            0,
            f"{session.auth_withheld} repair(s) were refused authentication "
            "before any answer came back; they stay pending — check the API key",
        )
    return RepairReport(
        ok=ok,
        failed=failed,
        cost_usd=cost,
        left=len(ctx.state.pending_repairs(line_fp)),
        stopped_by=session.stopped_by,
        notes=notes,
    )


class _RepairCost:
    """The repair attempts' cost, as they end (the lines hold the batch cost too)."""

    def __init__(self) -> None:
        self.cost = 0.0

    def emit(self, event: Event) -> None:
        if isinstance(event, AttemptEnded):
            self.cost += event.cost_usd or 0.0


async def _run_repairs(
    ctx: BatchContext,
    config: RunConfig,
    jobs: list[PreparedJob],
    line_fp: LineFingerprint,
    factory: ProviderFactory | None,
) -> tuple[int, int, float, RunSession]:
    """The repairs through the one engine: the run's limits (shared with ``[shared] url``),
    budgets held per attempt, the output written once per job; marks after the sync."""
    session = RunSession(config, provider_factory=factory, handle_signals=False, clock=ctx.clock)
    cost = _RepairCost()
    session.bus.add(cost)
    _hold_spent(session, ctx, line_fp)
    seeds = {pj.job.id: seed_from_repair(ctx.state.repairs[pj.job.id]) for pj in jobs}
    for pj in jobs:
        pj.seed = seeds[pj.job.id]
    # Marks the repairs whose lines are written, once the output is synced (below).
    recorder = RepairRecorder(ctx.state, seeds)
    session.bus.add(recorder)
    try:
        await session.open_services(cache=False)
        session.services.limits_for({ref for pj in jobs for ref in pj.chain})
        sink = OutputSink(config.output)
        try:
            await session.run_engine(jobs, sink, size=len(jobs))
        finally:
            sink.close()  # synced: now the marks may say so
            recorder.flush()
    finally:
        await session.close_services()
    return session.stats.ok, session.stats.failed, cost.cost, session


def _hold_spent(session: RunSession, ctx: BatchContext, line_fp: LineFingerprint) -> None:
    """Everything this output has spent or holds counts against the caps, as in ``run``."""
    assert session.config.output is not None
    existing = read_existing(session.config.output, retry_failed=False)
    paid_cost, paid_tokens = ctx.state.spent(line_fp)
    budget = session.run_budget
    budget.count_spent(existing.cost_usd + paid_cost, existing.tokens + paid_tokens)
    budget.hold_elsewhere(*ctx.state.reserved())
