"""The jobs of ``batch submit`` on their way to a Batch API: ``Submitter`` spools the jobs
not yet done per (provider, model), reads them back as chunks under the provider's limits,
fits each chunk into the budgets and creates its batch."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from llmbatch._batch.context import BatchContext, create_chunk
from llmbatch._batch.lines import custom_id, request_body
from llmbatch._batch.repair import stored_request
from llmbatch._batch.submitted import SubmittedBatch
from llmbatch._batch.warmup import warms_group
from llmbatch._batch.windows import fit_windows
from llmbatch._budget.ledger import BudgetLedger, Hold, Refusal, RunBudget
from llmbatch._core.batch_price import batch_price
from llmbatch._core.batch_types import BatchClient
from llmbatch._core.jobs import LineError, estimate_input_tokens
from llmbatch._core.models import ModelRef
from llmbatch._core.pricing import Price
from llmbatch._core.usage import Usage
from llmbatch._engine.plan import Plan, Planner, PreparedJob
from llmbatch._io.jobfile import iter_lines, open_jobs

NONCE_CHARS = 8  # hex: a submission's own mark, "_" + nonce at the end of every custom_id
_BYTES_MARGIN = 0.98  # framing (JSON array, multipart) must not push a chunk over the limit


@dataclass(slots=True)
class Pending:
    """One job ready to go: its line in the batch, and what fetch needs to write its result."""

    row: dict[str, Any]  # cid, id, fp, meta, schema
    line: bytes
    cost: float
    tokens: int


class Submitter:
    """One submission's jobs: spooled, read back as chunks, fitted to the budgets, created."""

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

    def pending(self, ref: ModelRef, pj: PreparedJob, used: set[str]) -> Pending:
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
        return Pending(row, line, cost, worst_in + out)

    def chunks(self, spooled: Path, client: BatchClient) -> Iterator[list[Pending]]:
        """Read a spool back as chunks under the provider's limits and ``--batch-size``."""
        limit = min(client.max_requests, self.batch_size or client.max_requests)
        max_bytes = int(client.max_bytes * _BYTES_MARGIN)
        chunk: list[Pending] = []
        size = 0
        with spooled.open("rb") as f:
            for raw in f:
                row, cost, tokens, text = orjson.loads(raw)
                item = Pending(row, text.encode(), cost, tokens)
                if chunk and (len(chunk) >= limit or size + len(item.line) + 1 > max_bytes):
                    yield chunk
                    chunk, size = [], 0
                chunk.append(item)
                size += len(item.line) + 1
        if chunk:
            yield chunk

    def fit(self, budget: RunBudget, chunk: list[Pending]) -> list[Pending]:
        """The head of ``chunk`` that the budget holds room for; the rest waits."""
        for i, item in enumerate(chunk):
            if not isinstance(budget.reserve_now(item.cost, item.tokens), Hold):
                self.stopped_by = "budget"
                self.not_submitted += len(chunk) - i
                return chunk[:i]
        return chunk

    async def fit_windows(
        self, windows: list[BudgetLedger], chunk: list[Pending]
    ) -> tuple[list[Pending], list[dict[str, Any]]]:
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
        chunk: list[Pending],
        booked: list[dict[str, Any]],
    ) -> None:
        info_id = await create_chunk(
            self.ctx, ref, client, chunk,
            price=self.prices.get(ref), nonce=self.nonce, booked=booked,
        )  # fmt: skip
        self.batches.append(SubmittedBatch(ref.provider, ref.model, info_id, len(chunk)))
        self.jobs += len(chunk)
