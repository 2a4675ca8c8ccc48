"""``batch forget OUTPUT BATCH_ID``: drop a batch the provider no longer knows (deleted,
past its retention, created with another base URL or key); its jobs go back to pending.

``fetch`` does the same by itself once two polls got "not found"; ``forget`` does it
at once, and refuses while the provider still knows the batch (unless ``force``).
"""

from __future__ import annotations

from llmbatch._batch.context import BatchContext, lose
from llmbatch._core.exceptions import NotFound, UsageError
from llmbatch._io.batch_state import Chunk


async def forget(ctx: BatchContext, batch_id: str, *, force: bool = False) -> Chunk:
    """``batch forget``: drop a batch the provider no longer knows; its jobs go back to pending."""
    state = ctx.state
    chunk = next(
        (c for c in state.open_chunks() if batch_id in (c.batch_id, c.local)),
        None,
    )
    if chunk is None:
        ids = ", ".join(c.batch_id or c.local for c in state.open_chunks()) or "none"
        raise UsageError(
            f"no open batch {batch_id!r} recorded for {state.output} (open: {ids}). "
            "Nothing was changed."
        )
    if not force and chunk.batch_id is not None:
        try:
            info = await ctx.call(ctx.client(chunk.provider).get, chunk.batch_id)
        except NotFound:
            info = None
        if info is not None:
            what = "fetch it" if info.ended else "cancel it (`batch cancel`), then fetch"
            raise UsageError(
                f"{chunk.provider} still knows batch {chunk.batch_id} ({info.status}): {what}; "
                "forgetting it could pay for its jobs twice (--force forgets it anyway). "
                "Nothing was changed."
            )
    lose(ctx, chunk, "forgotten by `batch forget`")
    return chunk
