"""What one ended batch becomes: result lines, jobs back to pending, repairs, bills.

Per request: an answer becomes a line as ``run`` writes it (plus ``"batch"``);
an answer that misses the job's schema is kept, unwritten, for the online repair
(``_batch_online``); expired, canceled and transiently failed requests go back
to pending; a model that failed for good, or ran out of rounds, hands the job to
the next model of its chain; other permanent errors become failed lines. What a
request was billed without giving an answer is recorded, for the budget.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from llmbatch._core.batch_price import price_from_json
from llmbatch._core.batch_types import BatchInfo, ItemResult
from llmbatch._core.exceptions import ProviderError
from llmbatch._core.models import ModelRef
from llmbatch._core.pricing import Price, PriceBook
from llmbatch._core.results import JobResult, ResultError
from llmbatch._core.schema import validate_answer
from llmbatch._core.states import Status
from llmbatch._core.usage import Usage
from llmbatch._io.batch_state import UNCOUNTED, BatchState, Chunk

# What a request that never got an answer counts as, once its rounds run out.
_GIVE_UP_TYPE = {"expired": "timeout", "missing": "other", "batch_failed": "server_error"}
_KNOWN = {"rate_limited", "overloaded", "server_error", "timeout", "connection"}


@dataclass(slots=True)
class FetchTotals:
    ok: int = 0
    failed: int = 0
    returned: int = 0
    batch_jobs: int = 0
    cost_usd: float = 0.0
    online_cost_usd: float = 0.0
    repair_pending: int = 0
    billed_unanswered: int = 0  # requests billed that came back without an answer
    fallbacks: int = 0


@dataclass(slots=True)
class Closing:
    """What one batch's close writes: lines, then repairs, then the ``closed`` event."""

    results: list[JobResult] = field(default_factory=list)  # one line each, ``batch`` set
    repairs: list[dict[str, Any]] = field(default_factory=list)
    returned: dict[str, str] = field(default_factory=dict)  # job id → why
    advanced: dict[str, list[Any]] = field(default_factory=dict)  # id → [next position, fp]
    billed: dict[str, list[float]] = field(default_factory=dict)  # id → [cost, tokens, online]
    # Every request of the batch that was billed: (job id, usage, cost, outcome), for the
    # run's attempt events (a batch request is an attempt like any other).
    spent: list[tuple[str, Usage, float | None, str]] = field(default_factory=list)


def model_level(err: ProviderError) -> bool:
    """A permanent error that belongs to the model (unknown, not served), not to the job."""
    if err.error_type == "not_found":
        return True
    return err.error_type == "bad_request" and "model" in err.message.lower()


def has_next(row: dict[str, Any]) -> bool:
    return int(row.get("pos") or 0) + 1 < int(row.get("n") or 1)


def next_model(row: dict[str, Any]) -> list[Any]:
    """Where the job goes on in its chain, and which job that is (its fingerprint)."""
    return [int(row.get("pos") or 0) + 1, row.get("fp")]


class BatchCloser:
    """Turns each ended batch's items into a Closing; keeps the totals of a fetch."""

    def __init__(self, state: BatchState, online: PriceBook, max_attempts: int) -> None:
        self.state = state
        self.online = online
        self.max_attempts = max_attempts
        self.totals = FetchTotals()
        self.written: set[str] = set()

    def item(
        self, out: Closing, chunk: Chunk, info: BatchInfo, row: dict[str, Any], item: ItemResult
    ) -> None:
        """One request's outcome, into ``out``."""
        job_id = row["id"]
        if item.kind in ("expired", "canceled"):
            out.returned[job_id] = item.kind
            return
        err = item.error if item.kind == "error" else None
        if err is not None and (err.retryable or (model_level(err) and has_next(row))):
            if item.usage is not None and item.usage.total:
                self.bill(out, chunk, job_id, item.usage)
            if err.retryable:
                out.returned[job_id] = err.error_type
            else:
                out.advanced[job_id] = next_model(row)
                out.returned[job_id] = "fallback"
            return
        self.answer(out, chunk, info, row, item)

    def bill(self, out: Closing, chunk: Chunk, job_id: str, usage: Usage) -> None:
        """A request billed without an answer: its cost is spent all the same."""
        price = price_from_json(chunk.price)
        cost = 0.0 if price is None else price.cost(usage)
        online = self.online.cost(ModelRef(chunk.provider, chunk.model), usage)
        online = cost if online is None else online
        out.billed[job_id] = [cost, usage.total, online]
        out.spent.append((job_id, usage, cost, "billed_error"))
        self.totals.cost_usd += cost
        self.totals.online_cost_usd += online
        self.totals.billed_unanswered += 1

    def answer(
        self, out: Closing, chunk: Chunk, info: BatchInfo, row: dict[str, Any], item: ItemResult
    ) -> None:
        """An answer (or a permanent error): a line, or a repair to make online."""
        ref = ModelRef(chunk.provider, chunk.model)
        usage = item.usage or Usage()
        price: Price | None = price_from_json(chunk.price)
        cost = None if price is None else price.cost(usage)
        online = self.online.cost(ref, usage)
        t = self.totals
        outcome = item.error.error_type if item.error is not None else "ok"
        out.spent.append((row["id"], usage, cost, outcome))
        t.batch_jobs += 1
        t.cost_usd += cost or 0.0
        t.online_cost_usd += online if online is not None else (cost or 0.0)
        parsed: Any = None
        error = ResultError.of(item.error) if item.error is not None else None
        schema = row.get("schema")
        if error is None and schema is not None:
            parsed, problem = validate_answer(item.text or "", schema)
            if problem is not None:
                out.repairs.append(self.repair_event(chunk, info, row, item, cost, problem))
                t.repair_pending += 1
                return
        if error is None:
            t.ok += 1
        else:
            t.failed += 1
        result = self.result(ref, row, error, usage, cost)
        result.output, result.parsed, result.stop_reason = item.text, parsed, item.stop_reason
        out.results.append(with_batch(result, info.id, row["cid"]))

    def repair_event(
        self,
        chunk: Chunk,
        info: BatchInfo,
        row: dict[str, Any],
        item: ItemResult,
        cost: float | None,
        problem: str,
    ) -> dict[str, Any]:
        """A paid answer that missed the schema, kept for the online repair turn."""
        return {
            "ev": "repair",
            "id": row["id"],
            "fp": row.get("fp"),
            "pos": int(row.get("pos") or 0),
            "provider": chunk.provider,
            "model": chunk.model,
            "batch": {"id": info.id, "custom_id": row["cid"]},
            "text": item.text or "",
            "problem": problem,
            "usage": (item.usage or Usage()).to_dict(),
            "cost": cost,
            "rounds": self.state.total_rounds[row["id"]] + 1,
            "meta": row.get("meta"),
            **{
                k: row[k] for k in ("req", "chain", "schema") if k in row
            },  # fetch repairs from these
        }

    def result(
        self,
        ref: ModelRef,
        row: dict[str, Any],
        error: ResultError | None,
        usage: Usage,
        cost: float | None,
    ) -> JobResult:
        self.written.add(row["id"])
        return JobResult(
            id=row["id"],
            status=Status.OK if error is None else Status.FAILED,
            output=None,
            parsed=None,
            provider=ref.provider,
            model=ref.model,
            usage=usage,
            cost_usd=cost,
            latency_ms=None,
            ttft_ms=None,
            attempts=self.state.total_rounds[row["id"]] + 1,
            error=error,
            metadata=row.get("meta"),
            fingerprint=row.get("fp"),
            attempt_errors={error.type: 1} if error is not None else {},
            fallbacks=int(row.get("pos") or 0),
        )

    def settle_rounds(
        self, out: Closing, chunk: Chunk, info: BatchInfo, by_id: dict[str, dict[str, Any]]
    ) -> None:
        """Jobs whose rounds on this model ran out: the next model, or a failed line."""
        for job_id, reason in list(out.returned.items()):
            if reason in UNCOUNTED or self.state.rounds[job_id] + 1 < self.max_attempts:
                continue
            row = by_id[job_id]
            if has_next(row):
                out.advanced[job_id] = next_model(row)
                out.returned[job_id] = "fallback"
                continue
            del out.returned[job_id]
            out.results.append(self.give_up(chunk, info, row, reason))

    def give_up(self, chunk: Chunk, info: BatchInfo, row: dict[str, Any], reason: str) -> JobResult:
        """A failed line for a job whose rounds ran out without an answer."""
        rounds = self.state.total_rounds[row["id"]] + 1
        error = ResultError(
            _GIVE_UP_TYPE.get(reason, reason if reason in _KNOWN else "other"),
            f"no answer after {rounds} batch round(s) (last: {reason})",
        )
        self.totals.failed += 1
        ref = ModelRef(chunk.provider, chunk.model)
        result = self.result(ref, row, error, Usage(), 0.0)
        result.attempt_errors = {}
        return with_batch(result, info.id, row["cid"])


def missing_reason(info: BatchInfo) -> str:
    """Why a request is in no results file: its batch failed, was canceled, or expired."""
    if info.batch_error:
        return "batch_failed"
    if info.status in ("cancelled", "canceled", "cancelling"):
        return "canceled"
    if info.status == "expired":
        return "expired"
    return "missing"


def with_batch(result: JobResult, batch_id: str, cid: str) -> JobResult:
    """A result as ``run`` writes it, plus where the answer came from."""
    result.batch = {"id": batch_id, "custom_id": cid}
    return result
