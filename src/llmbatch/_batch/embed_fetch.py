"""Embedding batches fetched: each answered pack's vectors become its rows, through the
online run's sink (``EmbedSink``: Parquet parts or JSON lines, ``--npy`` at close).

Per pack (one line of the batch): an answer's vectors (decoded by the batch client
with ``numpy.frombuffer``) and the vectors the cache gave at submit make the pack's
slot matrix; each row takes its slot's vector. The answered texts go into the
response cache, as online. A permanent error writes the pack's rows as failed;
expired, canceled and transient errors hand its lines back (a round against
``--max-attempts``): ``run --mode`` sends them online, ``batch submit`` again.
Cost at the price stored with the batch (the batch price).

Idempotent and kill-safe: a chunk is marked closed only after its rows are on
disk (the open Parquet part closed); a rerun skips every pack whose lines the
output holds already, and writes the others.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from llmbatch._batch.close import missing_reason
from llmbatch._batch.context import BatchContext, lookup, not_found
from llmbatch._batch.windows import settle_windows
from llmbatch._core.batch_price import price_from_json
from llmbatch._core.batch_types import BatchInfo, ItemResult
from llmbatch._core.embed import EmbedPack, decode_vector
from llmbatch._core.events import AttemptEnded, EventBus, JobEnded
from llmbatch._core.exceptions import NotFound
from llmbatch._core.models import ModelRef
from llmbatch._core.results import JobResult, ResultError
from llmbatch._core.states import Status
from llmbatch._core.usage import Usage
from llmbatch._engine.embed import EmbedCounts
from llmbatch._engine.embed_sink import EmbedSink
from llmbatch._io.batch_state import Chunk


@dataclass(slots=True)
class EmbedFetchTotals:
    packs: int = 0  # batch requests answered (ok or failed for good)
    ok_rows: int = 0
    failed_rows: int = 0
    ok_lines: int = 0
    failed_lines: int = 0
    returned: int = 0  # lines handed back unanswered
    cost_usd: float = 0.0
    online_cost_usd: float = 0.0
    closed: int = 0
    refused: int = 0  # result lines whose custom_id this output did not send


class EmbedFetcher:
    """Polls the output's open embedding batches and writes what ended."""

    def __init__(
        self,
        ctx: BatchContext,
        sink: EmbedSink,
        counts: EmbedCounts,
        done: Callable[[str], bool],
        bus: EventBus | None = None,
    ) -> None:
        self.ctx = ctx
        self.sink = sink
        self.counts = counts
        self.done = done
        self.bus = bus
        self.online = ctx.config.price_book(tiers=False)
        self.written: set[str] = set()
        self.totals = EmbedFetchTotals()
        self._spent = [0.0, 0]  # the batch being closed: cost and tokens billed

    def is_written(self, row: dict[str, Any]) -> bool:
        return any(i in self.written or self.done(i) for i in row["ids"])

    async def poll(self) -> int:
        """Fetch every ended batch; return how many are still open."""
        ctx = self.ctx
        still = 0
        for chunk in ctx.state.open_chunks():
            if chunk.batch_id is None:
                continue
            info = await lookup(ctx, chunk, clear=False)
            if info is not None and not info.results_ready and chunk.missing:
                ctx.state.append({"ev": "seen", "local": chunk.local})
            if info is not None and info.results_ready:
                client = ctx.client(chunk.provider)
                try:
                    stream = (
                        None if info.batch_error else await ctx.call(client.stream_results, info)
                    )
                except NotFound:
                    not_found(ctx, chunk)
                else:
                    if stream is None:
                        self.close(chunk, info, ())
                    else:
                        with stream:  # the spooled file goes once its rows are written
                            self.close(chunk, info, stream)
                    continue
            if ctx.state.chunks[chunk.local].is_open:
                still += 1
        # The batches that ended: their real cost replaces their window bookings.
        await settle_windows(ctx.state, ctx.config.shared, ctx.notes)
        return still

    def close(self, chunk: Chunk, info: BatchInfo, items: Iterable[ItemResult]) -> None:
        """One ended batch: rows written and flushed, then the chunk marked closed.

        ``items`` come one at a time (a results file read a line at a time): each
        pack's rows go to the sink as its line is read, and the vectors go with it.
        """
        state = self.ctx.state
        rows = {r["cid"]: r for r in state.read_jobs(chunk.local)}
        sent = set(rows)
        returned: dict[str, str] = {}
        seen = foreign = 0
        self._spent = [0.0, 0]  # what this batch billed: it replaces its window booking
        for item in items:
            seen += 1
            if item.custom_id not in sent:
                foreign += 1  # never written: a line of ours comes only from ``rows``
                continue
            row = rows.pop(item.custom_id, None)
            if row is None or self.is_written(row):
                continue
            err = item.error if item.kind == "error" else None
            if item.kind in ("expired", "canceled"):
                returned.update(dict.fromkeys(row["ids"], item.kind))
            elif err is not None and err.retryable:
                returned.update(dict.fromkeys(row["ids"], err.error_type))
            else:
                self._write(chunk, info, row, item)
                item.vectors = None  # written: not held while the next line is read
        if foreign:
            self.totals.refused += foreign
            self.ctx.notes.append(
                f"batch {info.id}: refused {foreign} result line(s) whose custom_id this "
                "output did not send; nothing was written for them"
            )
            if not chunk.verified and foreign == seen:  # none of ours: nothing was written
                state.append({"ev": "abandoned", "local": chunk.local, "reason": "not ours"})
                return
        why = missing_reason(info)
        for row in rows.values():  # in no results file: a failed batch, canceled, expired
            if not self.is_written(row):
                returned.update(dict.fromkeys(row["ids"], why))
        self.sink.flush()  # the rows are on disk before the chunk is marked fetched
        if info.batch_error:
            self.ctx.notes.append(
                f"batch {info.id} failed as a whole ({info.batch_error}): its lines go back "
                "to pending"
            )
        self.totals.returned += len(returned)
        counts = {"total": info.total, "succeeded": info.succeeded, "failed": info.failed}
        state.append(
            {
                "ev": "closed",
                "local": chunk.local,
                "status": info.status,
                "counts": counts,
                "returned": returned,
                "spent": self._spent,
            }
        )
        self.totals.closed += 1

    def _write(self, chunk: Chunk, info: BatchInfo, row: dict[str, Any], item: ItemResult) -> None:
        """One pack's rows: its vectors, or failed rows with the error."""
        ref = ModelRef(chunk.provider, chunk.model)
        pack = _pack_of(ref, row)
        usage = item.usage or Usage()
        price = price_from_json(chunk.price)
        cost = None if price is None else price.cost(usage)
        error = None
        if item.kind == "ok":
            error = _check_shape(item.vectors, len(row["send"]), pack.dimensions)
            pack.vectors = item.vectors
            c = self.counts
            c.requests += 1
            c.texts_sent += len(row["send"])
            c.tokens += usage.input_tokens
        elif item.error is not None:
            error = ResultError.of(item.error)
        else:
            error = ResultError("other", f"request {item.kind}")
        result = JobResult(
            id=row["cid"],
            status=Status.OK if error is None else Status.FAILED,
            output=None,
            parsed=None,
            provider=ref.provider,
            model=ref.model,
            usage=usage,
            cost_usd=cost,
            latency_ms=None,
            ttft_ms=None,
            attempts=1,
            error=error,
            metadata=pack,
            batch={"id": info.id, "custom_id": row["cid"]},
        )
        self.counts.inputs += len(row["ids"])
        self.sink.write([result])
        self.written.update(row["ids"])
        t = self.totals
        t.packs += 1
        lines = len(set(row["ids"]))
        if error is None:
            t.ok_rows += len(row["ids"])
            t.ok_lines += lines
        else:
            t.failed_rows += len(row["ids"])
            t.failed_lines += lines
        online = self.online.cost(ref, usage)
        self._spent[0] += cost or 0.0
        self._spent[1] += usage.total
        t.cost_usd += cost or 0.0
        t.online_cost_usd += (cost or 0.0) if online is None else online
        self._emit(chunk, result, usage, cost)

    def _emit(self, chunk: Chunk, result: JobResult, usage: Usage, cost: float | None) -> None:
        """The pack as one of the run's attempts and jobs (report, events, history)."""
        if self.bus is None:
            return
        now = self.ctx.clock.time()
        outcome = "ok" if result.error is None else result.error.type
        self.bus.emit(
            AttemptEnded(
                ts=now,
                started_ts=chunk.at,
                job_id=result.id,
                provider=chunk.provider,
                model=chunk.model,
                n=1,
                outcome=outcome,
                http_status=200 if outcome == "ok" else None,
                latency_ms=None,
                ttft_ms=None,
                input_tokens=usage.input_tokens,
                output_tokens=0,
                cost_usd=cost,
                retry_after_s=None,
                backoff_s=None,
            )
        )
        self.bus.emit(JobEnded(now, result))


def _pack_of(ref: ModelRef, row: dict[str, Any]) -> EmbedPack:
    """The pack as submit built it, from its row in the chunk's jobs file."""
    pack = EmbedPack(0, ref, row.get("dims"))
    texts = [""] * int(row["n"])
    for slot, text in zip(row["send"], row["texts"], strict=True):
        texts[slot] = text
    pack.texts = texts
    pack.known = {int(k): decode_vector(v) for k, v in (row.get("known") or {}).items()}
    pack.ids, pack.index, pack.slot = row["ids"], row["index"], row["slot"]
    pack.metadata = row["meta"]
    return pack


def _check_shape(vectors: Any, sent: int, dims: int | None) -> ResultError | None:
    if vectors is None or vectors.shape[0] != sent:
        got = 0 if vectors is None else vectors.shape[0]
        return ResultError("other", f"{got} embeddings for {sent} inputs")
    if dims is not None and vectors.shape[1] != dims:
        return ResultError("other", f"vectors of {vectors.shape[1]} dimensions; {dims} asked for")
    return None
