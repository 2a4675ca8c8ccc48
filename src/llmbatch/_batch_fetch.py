"""``batch fetch``: download ended batches and append one result line per job, as ``run``
writes them, plus ``"batch": {"id", "custom_id"}``.

Idempotent: a job that already has a line is never written again, and a chunk is
marked closed only after its lines are written. Expired, canceled and
transiently failed requests go back to pending (``--max-attempts`` caps the
rounds; then they get a failed line); permanent errors get failed lines.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ._batch import BatchContext, ClientFactory, batch_context, lookup, recover
from ._batch_price import price_from_json
from ._batch_state import UNCOUNTED, Chunk
from ._batch_types import BatchInfo, ItemResult
from ._clock import SYSTEM_CLOCK, Clock
from ._config import RunConfig
from ._models import ModelRef
from ._pricing import PriceBook
from ._results import JobResult, ResultWriter
from ._resume import cut_torn_tail, read_existing
from ._schema import validate_answer
from ._usage import Usage

# What a request that never got an answer counts as, once its rounds run out.
_GIVE_UP_TYPE = {"expired": "timeout", "missing": "other", "batch_failed": "server_error"}


@dataclass(slots=True)
class FetchTotals:
    ok: int = 0
    failed: int = 0
    returned: int = 0
    batch_jobs: int = 0
    cost_usd: float = 0.0
    online_cost_usd: float = 0.0
    schema_misses: int = 0


@dataclass(frozen=True, slots=True)
class FetchReport:
    """What ``batch fetch`` wrote, and what the same work would have cost online."""

    ok: int
    failed: int
    returned: int  # back to pending: the next submit or run picks them up
    still_open: int  # batches still in progress
    closed: int  # batches fetched this time
    cost_usd: float
    online_cost_usd: float
    batch_jobs: int
    notes: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        if self.still_open:
            return 4
        return 1 if self.failed else 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "jobs": {"ok": self.ok, "failed": self.failed, "returned_to_pending": self.returned},
            "batches": {"fetched": self.closed, "still_open": self.still_open},
            "batch": {
                "jobs": self.batch_jobs,
                "cost_usd": round(self.cost_usd, 6),
                "online_cost_usd": round(self.online_cost_usd, 6),
            },
            "notes": self.notes,
        }


class _Fetcher:
    def __init__(self, ctx: BatchContext, max_attempts: int) -> None:
        cfg = ctx.config
        assert cfg.output is not None
        self.ctx = ctx
        self.max_attempts = max_attempts
        existing = read_existing(cfg.output, retry_failed=False)
        if existing.torn_at is not None:
            cut_torn_tail(existing)
        self.done = existing.done
        self.written: set[str] = set()
        self.output = cfg.output
        urls = {
            n: s.base_url
            for n, s in cfg.providers.items()
            if s.base_url and n not in ("anthropic", "openai", "sim")
        }
        self.online = PriceBook(cfg.prices, urls)
        self.totals = FetchTotals()
        self.closed = 0

    def is_done(self, job_id: str) -> bool:
        return job_id in self.written or self.done.fingerprint(job_id) is not None

    async def poll(self) -> int:
        """Fetch every ended batch; return how many are still open."""
        still = 0
        for chunk in self.ctx.state.open_chunks():
            if chunk.batch_id is None:
                continue
            client = self.ctx.client(chunk.provider)
            info = await lookup(self.ctx, chunk)
            if info is None or not info.results_ready:
                still += 1
                continue
            items = [] if info.batch_error else await self.ctx.call(client.results, info)
            self.close(chunk, info, items)
        return still

    def close(self, chunk: Chunk, info: BatchInfo, items: list[ItemResult]) -> None:
        listed = self.ctx.state.read_jobs(chunk.local)
        rows = {r["cid"]: r for r in listed}
        by_id = {r["id"]: r for r in listed}
        ref = ModelRef(chunk.provider, chunk.model)
        lines: list[bytes] = []
        returned: dict[str, str] = {}
        for item in items:
            row = rows.pop(item.custom_id, None)
            if row is None or self.is_done(row["id"]):
                continue
            if item.kind in ("expired", "canceled"):
                returned[row["id"]] = item.kind
            elif item.kind == "error" and item.error is not None and item.error.retryable:
                returned[row["id"]] = item.error.error_type
            else:
                lines.append(self.line(ref, chunk, info, row, item))
        why = _missing_reason(info)
        for row in rows.values():  # in no results file: a failed batch, or lost
            if not self.is_done(row["id"]):
                returned[row["id"]] = why
        if info.batch_error:
            self.ctx.notes.append(
                f"batch {info.id} failed ({info.batch_error}); its jobs go back to pending"
            )
        for job_id, reason in list(returned.items()):
            if reason not in UNCOUNTED and self.ctx.state.rounds[job_id] + 1 >= self.max_attempts:
                del returned[job_id]
                lines.append(self.give_up(ref, info, by_id[job_id], reason))
        # Lines reach the disk (close fsyncs) before the chunk is marked closed: a power
        # cut must not leave a closed chunk whose answers were never written.
        writer = ResultWriter(self.output)
        try:
            writer.write(lines)
        finally:
            writer.close()
        self.totals.returned += len(returned)
        counts = {"total": info.total, "succeeded": info.succeeded, "failed": info.failed}
        self.ctx.state.append(
            {
                "ev": "closed",
                "local": chunk.local,
                "status": info.status,
                "counts": counts,
                "returned": returned,
            }
        )
        self.closed += 1

    def line(
        self, ref: ModelRef, chunk: Chunk, info: BatchInfo, row: dict[str, Any], item: ItemResult
    ) -> bytes:
        usage = item.usage or Usage()
        price = price_from_json(chunk.price)
        cost = None if price is None else price.cost(usage)
        online = self.online.cost(ref, usage)
        parsed: Any = None
        error: dict[str, Any] | None = item.error.to_dict() if item.error is not None else None
        schema = row.get("schema")
        if error is None and schema is not None:
            parsed, problem = validate_answer(item.text or "", schema)
            if problem is not None:
                # Repairs go through the online attempt loop; `run --retry-failed` does them.
                parsed = None
                self.totals.schema_misses += 1
                error = {
                    "type": "schema_invalid",
                    "message": f"the answer does not match the schema: {problem}",
                    "status": None,
                }
        t = self.totals
        t.batch_jobs += 1
        t.cost_usd += cost or 0.0
        t.online_cost_usd += online if online is not None else (cost or 0.0)
        if error is None:
            t.ok += 1
        else:
            t.failed += 1
        result = JobResult(
            id=row["id"],
            status="ok" if error is None else "failed",
            output=item.text,
            parsed=parsed,
            provider=ref.provider,
            model=ref.model,
            usage=usage,
            cost_usd=cost,
            latency_ms=None,
            ttft_ms=None,
            attempts=self.ctx.state.rounds[row["id"]] + 1,
            error=error,
            metadata=row.get("meta"),
            stop_reason=item.stop_reason,
            fingerprint=row.get("fp"),
            attempt_errors={error["type"]: 1} if error is not None else {},
        )
        self.written.add(row["id"])
        return with_batch(result, info.id, row["cid"])

    def give_up(self, ref: ModelRef, info: BatchInfo, row: dict[str, Any], reason: str) -> bytes:
        """A failed line for a job whose rounds ran out without an answer."""
        rounds = self.ctx.state.rounds[row["id"]] + 1
        error = {
            "type": _GIVE_UP_TYPE.get(reason, reason if reason in _KNOWN else "other"),
            "message": f"no answer after {rounds} batch round(s) (last: {reason})",
            "status": None,
        }
        self.totals.failed += 1
        result = JobResult(
            id=row["id"],
            status="failed",
            output=None,
            parsed=None,
            provider=ref.provider,
            model=ref.model,
            usage=Usage(),
            cost_usd=0.0,
            latency_ms=None,
            ttft_ms=None,
            attempts=rounds,
            error=error,
            metadata=row.get("meta"),
            fingerprint=row.get("fp"),
        )
        self.written.add(row["id"])
        return with_batch(result, info.id, row["cid"])


def _missing_reason(info: BatchInfo) -> str:
    """Why a request is in no results file: its batch failed, was canceled, or expired."""
    if info.batch_error:
        return "batch_failed"
    if info.status in ("cancelled", "canceled", "cancelling"):
        return "canceled"
    if info.status == "expired":
        return "expired"
    return "missing"


_KNOWN = {"rate_limited", "overloaded", "server_error", "timeout", "connection"}


def with_batch(result: JobResult, batch_id: str, cid: str) -> bytes:
    """A result line as ``run`` writes it, plus where the answer came from."""
    result.batch = {"id": batch_id, "custom_id": cid}
    return result.to_json()


async def fetch(
    config: RunConfig,
    *,
    wait: bool = False,
    poll: float = 60.0,
    max_attempts: int | None = None,
    clock: Clock = SYSTEM_CLOCK,
    client_factory: ClientFactory | None = None,
) -> FetchReport:
    """Fetch every ended batch; with ``wait``, poll until none is open."""
    async with batch_context(config, clock=clock, factory=client_factory) as ctx:
        await recover(ctx)
        f = _Fetcher(ctx, max_attempts or config.max_attempts)
        if not ctx.state.chunks:
            ctx.notes.append(f"no batches recorded for {config.output}")
        while True:
            still = await f.poll()
            if not still or not wait:
                break
            await clock.sleep(poll)
        t = f.totals
        if t.schema_misses:
            ctx.notes.append(
                f"{t.schema_misses} answer(s) missed the schema (failed lines, billed); "
                "`llmbatch run JOBS -o OUTPUT --retry-failed` asks them again online, with repairs"
            )
        return FetchReport(
            ok=t.ok,
            failed=t.failed,
            returned=t.returned,
            still_open=still,
            closed=f.closed,
            cost_usd=t.cost_usd,
            online_cost_usd=t.online_cost_usd,
            batch_jobs=t.batch_jobs,
            notes=ctx.notes,
        )
