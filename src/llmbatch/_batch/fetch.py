"""``batch fetch``: download ended batches and append one result line per job, as ``run``
writes them, plus ``"batch": {"id", "custom_id"}``.

Idempotent: a job that already has a line is never written again, and a chunk is
marked closed only after its lines are written. Expired, canceled and
transiently failed requests go back to pending (``--max-attempts`` caps the
rounds; then the next model of the job's chain, or a failed line); permanent
errors get failed lines. Answers that miss the job's schema are kept in the
batch state, unwritten, then repaired online by fetch itself (``_batch_repair``),
or, where it cannot rebuild the request, by the next ``run`` on the output
(``_batch_online``; ``run --mode batch|auto`` leaves them to its online part).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from llmbatch._batch.close import BatchCloser, Closing, missing_reason
from llmbatch._batch.context import (
    BatchContext,
    ClientFactory,
    batch_context,
    lookup,
    not_found,
    recover,
)
from llmbatch._batch.repair import RepairReport, repair_pending
from llmbatch._batch.status import pending_jobs
from llmbatch._batch.windows import settle_windows
from llmbatch._config.settings import RunConfig
from llmbatch._core.batch_types import BatchInfo, ItemResult
from llmbatch._core.clock import SYSTEM_CLOCK, Clock
from llmbatch._core.events import AttemptEnded, EventBus, JobEnded
from llmbatch._core.exceptions import NotFound
from llmbatch._core.results import ResultWriter
from llmbatch._io.batch_state import Chunk
from llmbatch._io.resume import cut_torn_tail, read_existing
from llmbatch._run.session import RunSession
from llmbatch.providers.factory import ProviderFactory


@dataclass(frozen=True, slots=True)
class FetchReport:
    """What ``batch fetch`` wrote, and what the same work would have cost online."""

    ok: int
    failed: int
    returned: int  # back to pending: the next submit or run picks them up
    still_open: int  # batches still in progress
    closed: int  # batches fetched this time
    cost_usd: float  # everything the fetched batches billed, unanswered requests included
    online_cost_usd: float
    batch_jobs: int
    notes: list[str] = field(default_factory=list)
    repair_pending: int = 0  # answers that missed the schema, awaiting the online repair
    repaired: int = 0  # lines the online repair step wrote (counted in ok / failed)
    repair_cost_usd: float = 0.0  # what its online attempts cost
    stopped_by: str | None = None  # the repair step's stop: "budget", "budget_window", ...
    refused: int = 0  # result lines whose custom_id this output did not send: not written
    pending: int = 0  # jobs handed back unanswered (all batches so far): submit them again

    @property
    def exit_code(self) -> int:
        """3 budget, 4 a batch still open, 6 jobs pending (submit again), 1 failed, 0 done."""
        if self.stopped_by == "budget":
            return 3
        if self.still_open or self.stopped_by == "budget_window":
            return 4
        if self.pending:
            return 6
        return 1 if self.failed or self.repair_pending or self.stopped_by or self.refused else 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "jobs": {
                "ok": self.ok,
                "failed": self.failed,
                "returned_to_pending": self.returned,
                "repair_pending": self.repair_pending,
                "repaired_online": self.repaired,
                "pending": self.pending,
                "refused_lines": self.refused,
            },
            "repair_cost_usd": round(self.repair_cost_usd, 6),
            "stopped_by": self.stopped_by,
            "batches": {"fetched": self.closed, "still_open": self.still_open},
            "batch": {
                "jobs": self.batch_jobs,
                "cost_usd": round(self.cost_usd, 6),
                "online_cost_usd": round(self.online_cost_usd, 6),
            },
            "notes": self.notes,
        }


class _Fetcher:
    def __init__(self, ctx: BatchContext, max_attempts: int, bus: EventBus | None = None) -> None:
        cfg = ctx.config
        assert cfg.output is not None
        self.ctx = ctx
        existing = read_existing(cfg.output, retry_failed=False)
        if existing.torn_at is not None:
            cut_torn_tail(existing)
        self.done = existing.done
        self.output = cfg.output
        self.closer = BatchCloser(ctx.state, cfg.price_book(tiers=False), max_attempts)
        self.totals = self.closer.totals
        self.closed = 0
        self.refused = 0
        self.bus = bus  # the run's events: batch answers count as its jobs

    def line_fp(self, job_id: str) -> int | None:
        """The fingerprint of the job's line (0 for one written now), None: no line."""
        return 0 if job_id in self.closer.written else self.done.fingerprint(job_id)

    def is_done(self, job_id: str) -> bool:
        return (
            job_id in self.closer.written
            or job_id in self.ctx.state.repairs
            or self.done.fingerprint(job_id) is not None
        )

    def _emit(self, chunk: Chunk, out: Closing) -> None:
        """The batch's requests as the run's attempts, then its lines as the run's jobs."""
        assert self.bus is not None
        now = self.ctx.clock.time()
        emit = self.bus.emit
        for job_id, usage, cost, outcome in out.spent:
            emit(
                AttemptEnded(
                    ts=now,
                    started_ts=chunk.at,
                    job_id=job_id,
                    provider=chunk.provider,
                    model=chunk.model,
                    n=self.ctx.state.total_rounds[job_id] or 1,
                    outcome=outcome,
                    http_status=200 if outcome == "ok" else None,
                    latency_ms=None,
                    ttft_ms=None,
                    input_tokens=usage.input_tokens,
                    output_tokens=usage.output_tokens,
                    cost_usd=cost,
                    retry_after_s=None,
                    backoff_s=None,
                )
            )
        for r in out.results:
            emit(JobEnded(now, r))

    async def poll(self) -> int:
        """Fetch every ended batch; return how many are still open."""
        still = 0
        for chunk in self.ctx.state.open_chunks():
            if chunk.batch_id is None:
                continue
            client = self.ctx.client(chunk.provider)
            info = await lookup(self.ctx, chunk, clear=False)
            if info is not None and not info.results_ready and chunk.missing:
                self.ctx.state.append({"ev": "seen", "local": chunk.local})
            if info is not None and info.results_ready:
                try:
                    items = [] if info.batch_error else await self.ctx.call(client.results, info)
                except NotFound:
                    not_found(self.ctx, chunk)
                else:
                    self.close(chunk, info, items)
                    continue
            if self.ctx.state.chunks[chunk.local].is_open:  # not lost meanwhile
                still += 1
        return still

    def close(self, chunk: Chunk, info: BatchInfo, items: list[ItemResult]) -> None:
        listed = self.ctx.state.read_jobs(chunk.local)
        rows = {r["cid"]: r for r in listed}
        by_id = {r["id"]: r for r in listed}
        foreign = [i.custom_id for i in items if i.custom_id not in rows]
        if foreign and not self.refuse(chunk, info, foreign, len(items)):
            return
        out = Closing()
        for item in items:
            row = rows.pop(item.custom_id, None)
            if row is not None and not self.is_done(row["id"]):
                self.closer.item(out, chunk, info, row, item)
        why = missing_reason(info)
        for row in rows.values():  # in no results file: a failed batch, or lost
            if not self.is_done(row["id"]):
                out.returned[row["id"]] = why
        self.closer.settle_rounds(out, chunk, info, by_id)
        if info.batch_error:
            self.ctx.notes.append(batch_failed_note(chunk, info, out))
        self.record(chunk, info, out)

    def refuse(self, chunk: Chunk, info: BatchInfo, foreign: list[str], total: int) -> bool:
        """Result lines whose custom_id this output did not send: never written, said loudly.
        A batch adopted unverified with none of ours is not ours: abandoned (False)."""
        self.refused += len(foreign)
        sample = ", ".join(foreign[:3]) + (", …" if len(foreign) > 3 else "")
        self.ctx.notes.append(
            f"batch {info.id}: refused {len(foreign)} result line(s) whose custom_id this "
            f"output did not send ({sample}); nothing was written for them"
        )
        if chunk.verified or len(foreign) < total:
            return True
        self.ctx.state.append(
            {"ev": "abandoned", "local": chunk.local, "reason": f"not ours: {info.id}"}
        )
        self.ctx.notes.append(
            f"batch {info.id} is not this output's (found after an interrupted submit, none "
            f"of its custom_ids were sent from here): its {chunk.count} jobs go back to pending"
        )
        return False

    def record(self, chunk: Chunk, info: BatchInfo, out: Closing) -> None:
        """Lines, then repairs, then ``closed``: each reaches the disk before the next.

        A power cut must not leave a closed chunk whose answers were never kept.
        """
        writer = ResultWriter(self.output)
        try:
            writer.write([r.to_json() for r in out.results])
        finally:
            writer.close()
        if self.bus is not None:
            self._emit(chunk, out)
        state = self.ctx.state
        state.append_many(out.repairs)
        self.totals.returned += sum(1 for r in out.returned.values() if r != "fallback")
        self.totals.fallbacks += len(out.advanced)
        counts = {"total": info.total, "succeeded": info.succeeded, "failed": info.failed}
        event: dict[str, Any] = {
            "ev": "closed",
            "local": chunk.local,
            "status": info.status,
            "counts": counts,
            "returned": out.returned,
        }
        if out.advanced:
            event["advanced"] = out.advanced
        if out.billed:
            event["billed"] = out.billed
        # What the batch billed (answers and billed errors): it replaces the window booking.
        spent = [(c or 0.0, u.total) for _id, u, c, _o in out.spent]
        event["spent"] = [sum(c for c, _ in spent), sum(t for _, t in spent)]
        state.append(event)
        self.closed += 1


async def fetch(
    config: RunConfig,
    *,
    wait: bool = False,
    poll: float = 60.0,
    max_attempts: int | None = None,
    clock: Clock = SYSTEM_CLOCK,
    client_factory: ClientFactory | None = None,
    repair: bool = True,
    provider_factory: ProviderFactory | None = None,
    session: RunSession | None = None,
) -> FetchReport:
    """Fetch every ended batch (with ``wait``, poll until none is open), then make the
    schema repairs online (unless ``repair`` is off: ``run --mode`` leaves them to its run).

    ``session``: the run this fetch is part of (``run --mode batch|auto``): it holds
    the output lock, and every line written counts as one of its jobs (report, events).
    """
    locked = session is not None
    async with batch_context(config, clock=clock, factory=client_factory, locked=locked) as ctx:
        await recover(ctx)
        bus = session.bus if session is not None else None
        f = _Fetcher(ctx, max_attempts or config.max_attempts, bus)
        if not ctx.state.chunks:
            ctx.notes.append(f"no batches recorded for {config.output}")
        still = await _poll(ctx, f, wait=wait, poll=poll, clock=clock, session=session)
        fixed = RepairReport()
        refused = f.refused
        if repair and ctx.state.pending_repairs(f.line_fp):
            fixed = await repair_pending(ctx, f.line_fp, f.closer.online, provider_factory)
            ctx.notes.extend(fixed.notes)
        _say(ctx, f)
        t = f.totals
        return FetchReport(
            ok=t.ok + fixed.ok,
            failed=t.failed + fixed.failed,
            returned=t.returned,
            still_open=still,
            closed=f.closed,
            cost_usd=t.cost_usd,
            online_cost_usd=t.online_cost_usd,
            batch_jobs=t.batch_jobs,
            notes=ctx.notes,
            repair_pending=len(ctx.state.pending_repairs(f.line_fp)),
            repaired=fixed.ok + fixed.failed,
            repair_cost_usd=fixed.cost_usd,
            stopped_by=fixed.stopped_by,
            refused=refused,
            pending=pending_jobs(ctx),  # the output read again: repairs wrote lines too
        )


async def _poll(
    ctx: BatchContext,
    f: _Fetcher,
    *,
    wait: bool,
    poll: float,
    clock: Clock,
    session: RunSession | None,
) -> int:
    """Fetch what ended (with ``wait``, every ``poll`` seconds until none is open, or a
    signal stops the run); how many batches are still open."""
    while True:
        still = await f.poll()
        # The batches that ended: their real cost replaces their window bookings.
        await settle_windows(ctx.state, ctx.config.shared, ctx.notes)
        if not still or not wait:
            return still
        if session is None:
            await clock.sleep(poll)
            continue
        with session.stopper.interruptible():
            await clock.sleep(poll)
        if session.stopper.stopping:
            return still


def _say(ctx: BatchContext, f: _Fetcher) -> None:
    """Notes on what waits for the online part of the work."""
    t = f.totals
    pending = len(ctx.state.pending_repairs(f.line_fp))
    if pending:
        ctx.notes.append(
            f"{pending} batch answer(s) missed the schema; they are kept (billed once) and "
            f"repaired online by `llmbatch run JOBS -o {f.output}` (`run --mode batch|auto` "
            "does it at once); nothing else is asked again"
        )
    if t.billed_unanswered:
        ctx.notes.append(
            f"{t.billed_unanswered} request(s) were billed without an answer; their cost "
            "counts against --max-cost, and the jobs go back to pending"
        )
    if t.fallbacks:
        ctx.notes.append(
            f"{t.fallbacks} job(s) go on to the next model of their chain "
            "(the next submit, or the online part of a run)"
        )


def batch_failed_note(chunk: Chunk, info: BatchInfo, out: Closing) -> str:
    """What a whole failed batch means for its jobs: back to pending, or failed for good,
    and for a batch too large for the provider's token limit, what fixes it."""
    back = sum(1 for r in out.returned.values() if r != "fallback")
    gave_up = len(out.results)
    parts = []
    if back:
        parts.append(f"{back} job(s) go back to pending")
    if gave_up:
        parts.append(f"{gave_up} failed for good (out of batch rounds, --max-attempts)")
    if out.advanced:
        parts.append(f"{len(out.advanced)} go on to their next model")
    text = f"batch {info.id} failed as a whole ({info.batch_error}): " + "; ".join(parts)
    if "token_limit" in (info.batch_error or ""):
        smaller = max(1, chunk.count // 2)
        text += (
            f". It holds more tokens than {chunk.provider} lets one model have queued: a "
            f"smaller --batch-size (e.g. `batch submit … --batch-size {smaller}`) fixes "
            "it, or split the jobs file; the same batch again fails the same way"
        )
    return text
