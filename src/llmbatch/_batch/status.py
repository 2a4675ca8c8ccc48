"""``batch status`` and ``batch cancel``: one ``BatchRow`` per batch of an output, live
from the provider for open ones, and the jobs handed back waiting to be submitted again."""

from __future__ import annotations

from dataclasses import dataclass, replace

from llmbatch._batch.context import BatchContext, lookup, lose, recover
from llmbatch._batch.windows import settle_windows
from llmbatch._core.batch_types import BatchInfo
from llmbatch._io.batch_state import Chunk
from llmbatch._io.resume import read_existing


@dataclass(frozen=True, slots=True)
class BatchRow:
    """One line of ``batch status``."""

    provider: str
    model: str
    id: str
    state: str  # the provider's status, or ours for chunks never created
    in_progress: bool
    fetched: bool
    total: int
    succeeded: int
    failed: int
    created_at: float | None
    expires_at: float | None

    def to_dict(self) -> dict[str, object]:
        return {
            "provider": self.provider,
            "model": self.model,
            "id": self.id,
            "state": self.state,
            "in_progress": self.in_progress,
            "fetched": self.fetched,
            "counts": {"total": self.total, "succeeded": self.succeeded, "failed": self.failed},
            "created_at": self.created_at,
            "expires_at": self.expires_at,
        }


def _live_row(c: Chunk, info: BatchInfo) -> BatchRow:
    return BatchRow(
        c.provider,
        c.model,
        info.id,
        info.status,
        not info.ended,
        False,
        info.total,
        info.succeeded,
        info.failed,
        info.created_at,
        info.expires_at,
    )


def _recorded_row(c: Chunk) -> BatchRow:
    n = c.counts
    creating = c.state == "intent" or c.batch_id is None
    return BatchRow(
        c.provider,
        c.model,
        c.batch_id or "(being created)",
        "creating" if creating else (c.status or "ended"),
        creating,
        c.state == "closed",
        n.get("total", c.count),
        n.get("succeeded", 0),
        n.get("failed", 0),
        c.created_at or c.at,
        c.expires_at,
    )


async def batch_status(ctx: BatchContext) -> list[BatchRow]:
    """One row per batch; open ones are asked for their state. Writes nothing."""
    rows: list[BatchRow] = []
    for c in ctx.state.chunks.values():
        if c.state == "abandoned":
            continue
        if c.state == "open" and c.batch_id is not None:
            info = await lookup(ctx, c, record=False)
            rows.append(
                _live_row(c, info)
                if info
                else replace(_recorded_row(c), state="not found", in_progress=True)
            )
        elif c.state == "lost":
            rows.append(replace(_recorded_row(c), state="lost", in_progress=False))
        else:
            rows.append(_recorded_row(c))
    return rows


def pending_jobs(ctx: BatchContext) -> int:
    """Jobs the output's batches handed back unanswered, waiting to be submitted again."""
    if ctx.config.output is None or not ctx.state.exists:
        return 0
    done = read_existing(ctx.config.output, retry_failed=False).done
    return len(ctx.state.pending_job_ids(done.fingerprint))


async def batch_cancel(ctx: BatchContext, *, release_unproven: bool = False) -> list[BatchRow]:
    """Ask the provider to cancel every open batch; a later fetch keeps what finished.

    A batch adopted unverified (after an interrupted create) is left alone: it may be
    someone else's (``release_unproven``, at ``--batch-deadline``: given up as lost, its
    jobs go on online). A batch the provider does not know is noted (lost when confirmed).
    """
    await recover(ctx)
    rows: list[BatchRow] = []
    for c in ctx.state.open_chunks():
        assert c.batch_id is not None
        if not c.verified and release_unproven:
            lose(ctx, c, "unproven at the batch deadline, not canceled; its jobs go online")
            rows.append(replace(_recorded_row(c), state="lost"))
            continue
        if not c.verified:
            rows.append(replace(_recorded_row(c), state="not canceled (unproven)"))
            ctx.notes.append(
                f"batch {c.batch_id} was not canceled: it was found after an interrupted "
                "submit and is not yet proven this output's; cancel it in the provider's "
                "console if it is yours"
            )
            continue
        info = await lookup(ctx, c)
        if info is None:
            lost = ctx.state.chunks[c.local].state == "lost"
            rows.append(replace(_recorded_row(c), state="lost" if lost else "not found"))
            continue
        if not info.ended:
            info = await ctx.call(ctx.client(c.provider).cancel, c.batch_id)
        rows.append(_live_row(c, info))
    await settle_windows(ctx.state, ctx.config.shared, ctx.notes)
    return rows
