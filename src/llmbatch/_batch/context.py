"""Provider Batch APIs, the shared part: the context every command works in, retries,
recovery of interrupted creates, lookups and lost batches (``status`` and ``cancel`` are in
``_batch/status.py``).

``submit`` lives in ``_batch/submit.py``, ``fetch`` in ``_batch/fetch.py``; ``run --mode``
in ``_batch/run.py``. All of them reuse the check pass, result lines, prices and
budgets of ``run``; none copies them.
"""

from __future__ import annotations

import math
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import anyio

from llmbatch._config.settings import RunConfig
from llmbatch._core.batch_price import price_to_json
from llmbatch._core.batch_types import BatchClient, BatchInfo
from llmbatch._core.clock import SYSTEM_CLOCK, Clock
from llmbatch._core.exceptions import NotFound, ProviderError, UsageError
from llmbatch._core.models import ModelRef
from llmbatch._core.pricing import Price
from llmbatch._io.batch_state import BatchState, Chunk
from llmbatch._io.lock import OutputLock

ClientFactory = Callable[[str, RunConfig], BatchClient]
T = TypeVar("T")

CALL_ATTEMPTS = 6  # tries of one API call (create, get, download) on transient errors


def default_client_factory(name: str, config: RunConfig) -> BatchClient:
    settings = config.providers[name]
    if settings.kind == "azure":
        from llmbatch.providers.azure import AzureBatchClient

        return AzureBatchClient(settings, config)
    if settings.kind == "openai" and settings.has_batch_api():
        from llmbatch.providers.batch_openai import OpenAIBatchClient

        return OpenAIBatchClient(settings, config)
    if settings.kind == "anthropic":
        from llmbatch.providers.batch_anthropic import AnthropicBatchClient

        return AnthropicBatchClient(settings, config)
    if settings.kind == "gemini":
        from llmbatch.providers.batch_gemini import GeminiBatchClient

        return GeminiBatchClient(settings, config)
    hint = (
        f" (if it copies OpenAI's, say so: batch = true in [providers.{name}])"
        if settings.kind == "openai"
        else ""
    )
    raise UsageError(
        f"provider {name!r} has no Batch API{hint}; run these jobs with `llmbatch run`. "
        "Nothing was sent."
    )


@dataclass
class BatchContext:
    """One batch command's world: config, state, clock, clients, notes for the user."""

    config: RunConfig
    state: BatchState
    clock: Clock = SYSTEM_CLOCK
    factory: ClientFactory = default_client_factory
    clients: dict[str, BatchClient] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def client(self, provider: str) -> BatchClient:
        client = self.clients.get(provider)
        if client is None:
            client = self.clients[provider] = self.factory(provider, self.config)
        return client

    async def call(self, fn: Callable[..., Awaitable[T]], *args: Any, idempotent: bool = True) -> T:
        """One API call, retried on transient errors with jittered backoff (retry-after wins).

        A call that is not ``idempotent`` (a create) is retried only when the server
        answered with an error status: after a timeout or a dropped connection the
        batch may exist, and a blind retry could pay for it twice.
        """
        for attempt in range(1, CALL_ATTEMPTS + 1):
            try:
                return await fn(*args)
            except ProviderError as exc:
                ambiguous = not idempotent and exc.status is None
                if not exc.retryable or ambiguous or attempt == CALL_ATTEMPTS:
                    raise
                wait = exc.retry_after
                if wait is None:
                    wait = random.uniform(0, min(self.config.backoff_cap, 2.0**attempt))
                await self.clock.sleep(min(wait, self.config.backoff_cap))
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        for client in self.clients.values():
            await client.aclose()


@asynccontextmanager
async def batch_context(
    config: RunConfig,
    *,
    clock: Clock = SYSTEM_CLOCK,
    factory: ClientFactory | None = None,
    write: bool = True,
    locked: bool = False,
) -> AsyncIterator[BatchContext]:
    """The context of one command; writers hold the output lock throughout (``locked``:
    the run this is part of holds it already)."""
    if config.output is None:
        raise UsageError("batch commands need an output file (-o PATH), not stdout")
    lock = OutputLock(config.output) if write and not locked else None
    if lock is not None:
        lock.acquire()
    try:
        state = BatchState.load(config.output, writable=write)
        ctx = BatchContext(config, state, clock, factory or default_client_factory)
        try:
            yield ctx
        finally:
            with anyio.CancelScope(shield=True):  # closed even when the command is cancelled
                await ctx.aclose()
    finally:
        if lock is not None:
            lock.release()


async def recover(ctx: BatchContext) -> None:
    """Resolve intents left by an interrupted create: find the batch, or release its jobs."""
    for chunk in [c for c in ctx.state.chunks.values() if c.state == "intent"]:
        await recover_chunk(ctx, chunk)


async def recover_chunk(ctx: BatchContext, chunk: Chunk) -> BatchInfo | None:
    """Find the batch an interrupted create may have made; adopt it only when it can be
    this intent's. Proof: our key in its metadata (OpenAI; the key holds the submission's
    nonce), or its results' custom_ids, all this submission's (Anthropic, once it ended).
    One batch created after the intent that cannot be checked yet (Anthropic, in
    progress) is adopted unverified: fetch checks every line against the custom_ids
    sent, and cancel leaves it alone. Anything else is abandoned, never adopted."""
    state = ctx.state
    client = ctx.client(chunk.provider)
    known = {c.batch_id for c in state.chunks.values() if c.batch_id}
    found = await ctx.call(client.find, state.key(chunk), chunk.at, chunk.count)
    found = [b for b in found if b.id not in known]
    proven: list[BatchInfo] = []
    unknown: list[BatchInfo] = []
    for info in found:
        ours = await _is_ours(ctx, chunk, info)
        if ours:
            proven.append(info)
        elif ours is None:
            unknown.append(info)
    after = [b for b in unknown if _made_after(b.created_at, chunk.at)]
    if len(proven) == 1 or (not proven and len(after) == 1 and chunk.nonce):
        info = (proven or after)[0]
        state.append(created_event(chunk, info, adopted=True, verified=bool(proven)))
        if proven:
            ctx.notes.append(f"found batch {info.id} again, created before an interruption")
        else:
            ctx.notes.append(
                f"batch {info.id} was created after an interrupted submit and may be its "
                "(Anthropic shows a batch's requests only once it has ended); its lines are "
                "checked against the custom_ids this submission sent, and `batch cancel` "
                "leaves it alone until then"
            )
        return info
    if not proven and not unknown:
        reason = "not created: interrupted before the provider accepted it"
    else:
        ids = ", ".join(b.id for b in proven + unknown)
        reason = f"unproven: {len(proven + unknown)} unrecorded batches may be it"
        ctx.notes.append(
            f"{chunk.provider}: a create was interrupted and {ids} may be it, unproven; none "
            "is adopted (an answer is only written for the request that produced it). If one "
            f"is this output's it is orphaned: billed up to ${chunk.reserve_cost:.4f} (its "
            "worst case), never fetched here. Its jobs will be submitted again."
        )
    unsent = not proven and not unknown  # the provider never had it: it cost nothing
    state.append({"ev": "abandoned", "local": chunk.local, "reason": reason, "unsent": unsent})
    return None


def _made_after(created_at: float, intent_at: float) -> bool:
    """Created after the intent; a stamp in whole seconds is compared at that precision."""
    return created_at >= (math.floor(intent_at) if created_at.is_integer() else intent_at)


async def _is_ours(ctx: BatchContext, chunk: Chunk, info: BatchInfo) -> bool | None:
    """True: this intent's batch; False: not; None: cannot tell yet."""
    if info.metadata:  # OpenAI: our key; Gemini: "llmbatch-" + our key (displayName)
        key = ctx.state.key(chunk)
        return any(v == key or v.endswith("-" + key) for v in info.metadata.values())
    if not chunk.nonce:  # an older llmbatch's intent: its custom_ids prove nothing
        return None
    if not info.results_ready:
        return None
    items = [] if info.batch_error else await ctx.call(ctx.client(chunk.provider).results, info)
    sent = {r["cid"] for r in ctx.state.read_jobs(chunk.local)}
    return bool(items) and all(i.custom_id in sent for i in items)


async def lookup(
    ctx: BatchContext, chunk: Chunk, *, record: bool = True, clear: bool = True
) -> BatchInfo | None:
    """The provider's view of an open chunk; None (and a note) when it does not know it.

    A not-found is recorded (``record``: writers only); confirmed by a later poll, the
    batch is marked lost and its jobs go back to pending (``forget`` does it at once).
    """
    assert chunk.batch_id is not None
    try:
        info = await ctx.call(ctx.client(chunk.provider).get, chunk.batch_id)
    except NotFound:
        not_found(ctx, chunk, record=record)
        return None
    if chunk.missing and record and clear:  # (not ``clear``: its results are next)
        ctx.state.append({"ev": "seen", "local": chunk.local})
    return info


def not_found(ctx: BatchContext, chunk: Chunk, *, record: bool = True) -> None:
    """The provider says it does not know the chunk's batch: note it; the second time, lost."""
    out = ctx.state.output
    if not record:
        ctx.notes.append(
            f"{chunk.provider} does not know batch {chunk.batch_id} (deleted, past its "
            "retention, or made with another base URL or key?); `batch fetch` marks it lost "
            f"when a second poll says so, or `llmbatch batch forget {out} {chunk.batch_id}`"
        )
        return
    if chunk.missing < 1:
        ctx.state.append({"ev": "missing", "local": chunk.local})
        ctx.notes.append(
            f"{chunk.provider} does not know batch {chunk.batch_id} (deleted, past its "
            "retention, or made with another base URL or key?); if the next poll says so "
            "again it is marked lost and its jobs go back to pending "
            f"(`llmbatch batch forget {out} {chunk.batch_id}` does it now)"
        )
        return
    lose(ctx, chunk, f"{chunk.provider} does not know it (two polls)")


def lose(ctx: BatchContext, chunk: Chunk, reason: str) -> None:
    """Give up on a batch: its jobs go back to pending; say what it may have cost."""
    ctx.state.append({"ev": "lost", "local": chunk.local, "reason": reason})
    ctx.notes.append(
        f"batch {chunk.batch_id or chunk.local} is lost ({reason}): its {chunk.count} jobs go "
        "back to pending. If the provider ran it, it may have cost up to "
        f"${chunk.reserve_cost:.4f} (its worst case), never fetched here."
    )


class ChunkLine(Protocol):
    """One line of a chunk: what goes to the provider, and what fetch needs back."""

    row: dict[str, Any]
    line: bytes
    cost: float
    tokens: int


async def create_chunk(
    ctx: BatchContext,
    ref: ModelRef,
    client: BatchClient,
    chunk: Sequence[ChunkLine],
    *,
    price: Price | None,
    nonce: str,
    booked: list[dict[str, Any]],
    extra: dict[str, Any] | None = None,
) -> str:
    """One chunk's jobs and intent written, then its batch created; its batch id.

    A create that reached no provider is abandoned as unsent (its window bookings
    free again: it cost nothing); one that may have (a timeout after the provider
    took it) is looked for before giving up (``recover_chunk``). ``extra``: more
    fields for the intent (an embedding chunk's input count)."""
    state = ctx.state
    local = state.new_local()
    state.write_jobs(local, [p.row for p in chunk])
    state.append(
        {
            "ev": "intent",
            "local": local,
            "provider": ref.provider,
            "model": ref.model,
            "count": len(chunk),
            **(extra or {}),
            "bytes": sum(len(p.line) for p in chunk),
            "at": ctx.clock.time(),
            "reserve_cost": sum(p.cost for p in chunk),
            "reserve_tokens": sum(p.tokens for p in chunk),
            "price": price_to_json(price),
            "nonce": nonce,
            **({"bookings": booked} if booked else {}),
        }
    )
    record = state.chunks[local]
    try:
        info = await ctx.call(
            client.create, state.key(record), [p.line for p in chunk], idempotent=False
        )
    except ProviderError as exc:
        if exc.nothing_sent:  # no connection was made: nothing to find again
            state.append(
                {"ev": "abandoned", "local": local, "reason": "not sent: no connection",
                 "unsent": True}
            )  # fmt: skip
            raise
        if await recover_chunk(ctx, record) is None:
            raise
        return record.batch_id or ""
    state.append(created_event(record, info))
    return info.id


def created_event(
    chunk: Chunk, info: BatchInfo, adopted: bool = False, verified: bool = True
) -> dict[str, object]:
    return {
        "ev": "created",
        "local": chunk.local,
        "batch_id": info.id,
        "created_at": info.created_at,
        "expires_at": info.expires_at,
        "adopted": adopted,
        "verified": verified,
    }
