"""``batch submit``: the check pass of ``run``, then the jobs not yet done go to the
providers' Batch APIs, split by (provider, model) into chunks under their limits.

Each chunk holds its worst case against ``--max-cost`` / ``--max-total-tokens``
(persisted with the chunk, released when it is fetched) and is booked at it in the
rolling windows (where, persisted with the chunk: once it has ended, its real
cost replaces the booking, ``_batch/windows.py``); when only part of the work
fits, what fits is submitted and the report says ``stopped_by: budget``.
"""

from __future__ import annotations

import secrets
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from llmbatch._batch.context import (
    BatchContext,
    ClientFactory,
    batch_context,
    created_event,
    recover,
    recover_chunk,
)
from llmbatch._batch.lines import custom_id, request_body
from llmbatch._batch.repair import stored_request
from llmbatch._batch.submitted import SubmitReport as SubmitReport
from llmbatch._batch.submitted import SubmittedBatch
from llmbatch._batch.warmup import warm_up, warms_group
from llmbatch._batch.windows import fit_windows, settle_windows
from llmbatch._budget.ledger import BudgetLedger, Hold, Refusal, RunBudget
from llmbatch._config.modes import Mode
from llmbatch._config.settings import RunConfig
from llmbatch._core.batch_price import batch_price, price_to_json
from llmbatch._core.batch_types import BatchClient
from llmbatch._core.clock import SYSTEM_CLOCK, Clock
from llmbatch._core.exceptions import ProviderError
from llmbatch._core.jobs import LineError, estimate_input_tokens
from llmbatch._core.models import ModelRef
from llmbatch._core.pricing import Price
from llmbatch._core.usage import Usage
from llmbatch._engine.plan import Plan, Planner, PreparedJob
from llmbatch._io.jobfile import iter_lines, open_jobs
from llmbatch._io.resume import cut_torn_tail
from llmbatch._run.session import RunSession

NONCE_CHARS = 8  # hex: a submission's own mark, "_" + nonce at the end of every custom_id
_BYTES_MARGIN = 0.98  # framing (JSON array, multipart) must not push a chunk over the limit


@dataclass(slots=True)
class _Pending:
    """One job ready to go: its line in the batch, and what fetch needs to write its result."""

    row: dict[str, Any]  # cid, id, fp, meta, schema
    line: bytes
    cost: float
    tokens: int


class _Submitter:
    def __init__(
        self,
        ctx: BatchContext,
        planner: Planner,
        plan: Plan,
        batch_size: int | None,
        leave_online: bool = False,
        cached: Callable[[PreparedJob], bool] | None = None,
    ) -> None:
        self.ctx = ctx
        self.cached = cached  # answered by the response cache: never submitted
        self.from_cache = 0
        # Prompt caching: the first job of each marked prefix group, answered online first.
        self.warmups: list[PreparedJob] = []
        self._warm_groups: set[str] = set()
        self.planner = planner
        self.plan = plan
        self.batch_size = batch_size
        self.wire_notes: set[str] = set()
        self.prices: dict[ModelRef, Price | None] = {}
        self.skipped_open = 0
        self.not_submitted = 0
        self.stopped_by: str | None = None
        self.batches: list[SubmittedBatch] = []
        self.jobs = 0
        self.leave_online = leave_online
        self.left_online = 0
        self.nonce = secrets.token_hex(NONCE_CHARS // 2)
        self.window_refusal: Refusal | None = None

    def collect(self, spool: Path) -> dict[ModelRef, Path]:
        """Stream the jobs file again; spool every job not done and not in an open batch,
        ready to send, to one file per (provider, model): memory stays flat."""
        cfg = self.ctx.config
        in_open = self.ctx.state.held_job_ids(self.line_fp)
        files: dict[ModelRef, BinaryIO] = {}
        used: dict[ModelRef, set[str]] = {}
        try:
            with open_jobs(cfg.jobs) as stream:
                for lineno, raw in iter_lines(stream):
                    if lineno > self.plan.last_line:
                        break
                    if lineno in self.plan.invalid_lines:
                        continue
                    try:
                        job = self.planner.parser.parse(raw, lineno)
                    except LineError:
                        continue
                    if self.is_done(job.id):
                        continue
                    if job.id in in_open:
                        self.skipped_open += 1
                        continue
                    pj = self.planner.prepare(job)
                    if self.cached is not None and self.cached(pj):
                        self.from_cache += 1  # the run answers it from the cache, for $0
                        continue
                    position = self.position(pj)
                    if position == 0 and self._warms(pj):
                        continue
                    if position is None:
                        continue  # no model of its chain left has a Batch API: online
                    ref = pj.chain[position]
                    out = files.get(ref)
                    if out is None:
                        out = files[ref] = (spool / f"{len(files)}.spool").open("wb")
                    item = self.pending(ref, pj, used.setdefault(ref, set()))
                    item.row["pos"], item.row["n"] = position, len(pj.chain)
                    out.write(orjson.dumps([item.row, item.cost, item.tokens, item.line.decode()]))
                    out.write(b"\n")
        finally:
            for f in files.values():
                f.close()
        return {ref: Path(f.name) for ref, f in files.items()}

    def _warms(self, pj: PreparedJob) -> bool:
        """Whether the job goes online first, to write its group's prefix to the cache."""
        group = warms_group(pj)
        if group is None or group in self._warm_groups:
            return False
        self._warm_groups.add(group)
        self.warmups.append(pj)
        return True

    def line_fp(self, job_id: str) -> int | None:
        existing = self.planner.existing
        return None if existing is None else existing.done.fingerprint(job_id)

    def is_done(self, job_id: str) -> bool:
        return self.line_fp(job_id) is not None

    def position(self, pj: PreparedJob) -> int | None:
        """Where in its chain the job's batch goes: past models that failed for good,
        at the first with a Batch API. None: it is left for the online part."""
        state = self.ctx.state
        start = 0
        if state.position_fps.get(pj.job.id) == pj.fingerprint:  # not if the job changed
            start = min(state.positions.get(pj.job.id, 0), len(pj.chain) - 1)
        for i in range(start, len(pj.chain)):
            if self.ctx.config.providers[pj.chain[i].provider].has_batch_api():
                return i
        if self.leave_online or start > 0:  # (one its batches moved on: not the file's fault)
            self.left_online += 1
            return None
        self.ctx.client(pj.chain[start].provider)  # no Batch API: refused before any call
        raise AssertionError("unreachable")

    def price(self, ref: ModelRef) -> Price | None:
        if ref not in self.prices:
            price, note = batch_price(
                self.planner.prices, self.ctx.config.prices, ref, self.ctx.clock.time()
            )
            self.prices[ref] = price
            if note:
                self.ctx.notes.append(note)
        return self.prices[ref]

    def pending(self, ref: ModelRef, pj: PreparedJob, used: set[str]) -> _Pending:
        """One job as it goes into its batch, with its worst case at the batch price."""
        settings = self.ctx.config.providers[ref.provider]
        price = self.price(ref)
        body = request_body(settings, ref.model, pj.request, self.wire_notes, self.ctx.config)
        cid = custom_id(pj.job.id, used, self.nonce)
        worst_in = estimate_input_tokens(pj.request, conservative=True)
        out = pj.request.max_tokens or self.ctx.config.max_tokens
        cost = 0.0 if price is None else price.cost(Usage(worst_in, out))
        row = {"cid": cid, "id": pj.job.id, "fp": pj.fingerprint, "meta": pj.job.metadata}
        if pj.request.schema is not None:
            row["schema"] = pj.request.schema
            row.update(stored_request(pj))  # for the repair turn, should the answer miss it
        line = self.ctx.client(ref.provider).encode(cid, body)
        return _Pending(row, line, cost, worst_in + out)

    def chunks(self, spooled: Path, client: BatchClient) -> Iterator[list[_Pending]]:
        """Read a spool back as chunks under the provider's limits and ``--batch-size``."""
        limit = min(client.max_requests, self.batch_size or client.max_requests)
        max_bytes = int(client.max_bytes * _BYTES_MARGIN)
        chunk: list[_Pending] = []
        size = 0
        with spooled.open("rb") as f:
            for raw in f:
                row, cost, tokens, text = orjson.loads(raw)
                item = _Pending(row, text.encode(), cost, tokens)
                if chunk and (len(chunk) >= limit or size + len(item.line) + 1 > max_bytes):
                    yield chunk
                    chunk, size = [], 0
                chunk.append(item)
                size += len(item.line) + 1
        if chunk:
            yield chunk

    def fit(self, budget: RunBudget, chunk: list[_Pending]) -> list[_Pending]:
        """The head of ``chunk`` that the budget holds room for; the rest waits."""
        for i, item in enumerate(chunk):
            if not isinstance(budget.reserve_now(item.cost, item.tokens), Hold):
                self.stopped_by = "budget"
                self.not_submitted += len(chunk) - i
                return chunk[:i]
        return chunk

    async def fit_windows(
        self, windows: list[BudgetLedger], chunk: list[_Pending]
    ) -> tuple[list[_Pending], list[dict[str, Any]]]:
        """The head of ``chunk`` the rolling windows have room for, booked there at its
        worst case now, and where (for the chunk's intent: its real cost replaces it)."""
        prefix = f"batch-{self.ctx.state.uid}-{self.nonce}"
        n, booked, refusal = await fit_windows(windows, [(p.cost, p.tokens) for p in chunk], prefix)
        if refusal is not None:
            self.window_refusal = refusal
        if n < len(chunk):
            self.stopped_by = "budget_window"
            self.not_submitted += len(chunk) - n
        return chunk[:n], booked

    async def create(
        self,
        ref: ModelRef,
        client: BatchClient,
        chunk: list[_Pending],
        booked: list[dict[str, Any]],
    ) -> None:
        state = self.ctx.state
        local = state.new_local()
        state.write_jobs(local, [p.row for p in chunk])
        state.append(
            {
                "ev": "intent",
                "local": local,
                "provider": ref.provider,
                "model": ref.model,
                "count": len(chunk),
                "bytes": sum(len(p.line) for p in chunk),
                "at": self.ctx.clock.time(),
                "reserve_cost": sum(p.cost for p in chunk),
                "reserve_tokens": sum(p.tokens for p in chunk),
                "price": price_to_json(self.prices.get(ref)),
                "nonce": self.nonce,
                **({"bookings": booked} if booked else {}),
            }
        )
        record = state.chunks[local]
        try:
            info = await self.ctx.call(
                client.create, state.key(record), [p.line for p in chunk], idempotent=False
            )
        except ProviderError as exc:
            if exc.nothing_sent:  # no connection was made: nothing to find again
                state.append(
                    {
                        "ev": "abandoned",
                        "local": local,
                        "reason": "not sent: no connection",
                        "unsent": True,
                    }
                )
                raise
            # It may exist anyway (a timeout after the provider took it): look before giving up.
            if await recover_chunk(self.ctx, record) is None:
                raise
            info_id = record.batch_id or ""
        else:
            state.append(created_event(record, info))
            info_id = info.id
        self.batches.append(SubmittedBatch(ref.provider, ref.model, info_id, len(chunk)))
        self.jobs += len(chunk)


async def submit(
    config: RunConfig,
    *,
    batch_size: int | None = None,
    clock: Clock = SYSTEM_CLOCK,
    client_factory: ClientFactory | None = None,
    leave_online: bool = False,
    session: RunSession | None = None,
) -> SubmitReport:
    """Check every job as ``run`` does (nothing sent on a problem), then submit the rest.

    ``session``: the run this submit is part of (``run --mode batch|auto``), which
    holds the output lock and has the cache and the rolling-window ledgers open;
    without one, submit opens them itself.
    """
    # Whatever --mode says, what is planned here goes by batch (its prefixes cached for 1 h).
    planner = Planner(replace(config, mode=Mode.BATCH))
    locked = session is not None
    async with batch_context(config, clock=clock, factory=client_factory, locked=locked) as ctx:
        plan = planner.plan()
        planner.check(plan)
        own = session is None
        if session is None:
            session = RunSession(config, handle_signals=False, clock=clock)
        if not session.services_open:
            await session.open_services()  # after the check: a refused submit opens nothing
        try:
            return await _submit(ctx, session, planner, plan, batch_size, leave_online)
        finally:
            if own:
                await session.close_services()


async def _submit(
    ctx: BatchContext,
    session: RunSession,
    planner: Planner,
    plan: Plan,
    batch_size: int | None,
    leave_online: bool,
) -> SubmitReport:
    config = ctx.config
    existing = planner.existing
    if existing is not None and existing.torn_at is not None:
        cut_torn_tail(existing)
    await recover(ctx)
    # Batches ended since their bookings were made: their real cost frees room first.
    await settle_windows(ctx.state, config.shared, ctx.notes)
    caps = {"max_cost": config.max_cost, "max_total_tokens": config.max_total_tokens}
    if (ctx.state.caps or {"max_cost": None, "max_total_tokens": None}) != caps:
        ctx.state.append({"ev": "caps", **caps})  # fetch's repairs keep to them
    sub = _Submitter(ctx, planner, plan, batch_size, leave_online, session.is_cached)
    ctx.state.dir.mkdir(parents=True, exist_ok=True)
    windows = [x for x in session.budgets.ledgers if not isinstance(x, RunBudget)]
    with tempfile.TemporaryDirectory(dir=ctx.state.dir, prefix="spool-") as spool:
        spools = sub.collect(Path(spool))
        budget = _budget(ctx, sub, config)
        if sub.warmups and config.output is not None:
            warmed = await warm_up(session, sub.warmups, budget, windows, config.output)
            ctx.notes.append(
                f"prompt caching: {warmed} job(s) answered online first, one per shared "
                "prefix, so the batch reads the prefix from the provider's cache"
            )
        await _send(ctx, sub, spools, budget, windows)
    ctx.notes.extend(sorted(sub.wire_notes))
    if sub.from_cache:
        ctx.notes.append(
            f"{sub.from_cache} job(s) have answers in the response cache; they were not "
            "submitted (`llmbatch run` writes them for $0)"
        )
    if sub.left_online:
        ctx.notes.append(
            f"{sub.left_online} job(s) have no model with a Batch API left; they run "
            "online (`llmbatch run`, or the online part of `run --mode`)"
        )
    stuck = len(ctx.state.pending_job_ids(sub.line_fp))
    if stuck and not sub.jobs and sub.stopped_by is None:
        ctx.notes.append(
            f"{stuck} job(s) came back from earlier batches and cannot go by batch now "
            "(answered by the response cache, no model of their chain with a Batch API, or "
            f"no longer in the jobs file): run them online (`llmbatch run JOBS -o {config.output}`)"
        )
    return SubmitReport(
        stuck=stuck,
        batches=sub.batches,
        jobs=sub.jobs,
        skipped_done=plan.skipped_done,
        skipped_open=sub.skipped_open,
        left_online=sub.left_online,
        not_submitted=sub.not_submitted,
        stopped_by=sub.stopped_by,
        reserved_cost=ctx.state.reserved()[0],
        notes=ctx.notes,
        from_cache=sub.from_cache,
        window_message=sub.window_refusal.message if sub.window_refusal else None,
    )


def _budget(ctx: BatchContext, sub: _Submitter, config: RunConfig) -> RunBudget:
    """The caps as they stand: this output's lines, the batches' bills, what they hold."""
    existing = sub.planner.existing
    budget = RunBudget(config.max_cost, config.max_total_tokens)
    if existing is not None:
        budget.count_spent(existing.cost_usd, existing.tokens)
    spent_cost, spent_tokens = ctx.state.spent(sub.line_fp)  # billed, in no result line
    budget.count_spent(spent_cost, spent_tokens)
    budget.hold_elsewhere(*ctx.state.reserved())
    return budget


async def _send(
    ctx: BatchContext,
    sub: _Submitter,
    spools: dict[ModelRef, Path],
    budget: RunBudget,
    windows: list[BudgetLedger],
) -> None:
    """Create the chunks in order, each holding its worst case; stop where the budget ends."""
    for ref in sorted(spools, key=str):
        client = ctx.client(ref.provider)
        for chunk in sub.chunks(spools[ref], client):
            if sub.stopped_by is not None:
                sub.not_submitted += len(chunk)
                continue
            chunk = sub.fit(budget, chunk)
            booked: list[dict[str, Any]] = []
            if chunk and windows:
                chunk, booked = await sub.fit_windows(windows, chunk)
            if chunk:
                await sub.create(ref, client, chunk, booked)
