"""Provider Batch APIs, the shared part: the context every command works in, retries,
recovery of interrupted creates, ``status`` and ``cancel``.

``submit`` lives in ``_batch_submit``, ``fetch`` in ``_batch_fetch``; ``run --mode``
in ``_batch_run``. All of them reuse the check pass, result lines, prices and
budgets of ``run``; none copies them.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import anyio

from llmbatch._config.settings import RunConfig
from llmbatch._core.batch_types import BatchClient, BatchInfo
from llmbatch._core.clock import SYSTEM_CLOCK, Clock
from llmbatch._core.exceptions import NotFound, ProviderError, UsageError
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
    state = ctx.state
    client = ctx.client(chunk.provider)
    known = {c.batch_id for c in state.chunks.values() if c.batch_id}
    found = await ctx.call(client.find, state.key(chunk), chunk.at, chunk.count)
    found = [b for b in found if b.id not in known]
    if len(found) == 1:
        info = found[0]
        state.append(created_event(chunk, info, adopted=True))
        ctx.notes.append(f"found batch {info.id} again, created before an interruption")
        return info
    if not found:
        reason = "not created: interrupted before the provider accepted it"
    else:
        ids = ", ".join(b.id for b in found)
        reason = f"ambiguous: {len(found)} unrecorded batches match"
        ctx.notes.append(
            f"{chunk.provider}: a create was interrupted and {ids} all match it; one of "
            "them may be orphaned (billed, never fetched here). Cancel it in the provider "
            "console if it is not someone else's. Its jobs will be submitted again."
        )
    state.append({"ev": "abandoned", "local": chunk.local, "reason": reason})
    return None


async def lookup(ctx: BatchContext, chunk: Chunk) -> BatchInfo | None:
    """The provider's view of an open chunk; None (and a note) when it does not know it."""
    assert chunk.batch_id is not None
    try:
        return await ctx.call(ctx.client(chunk.provider).get, chunk.batch_id)
    except NotFound:
        # Not dropped: it may exist under another key, and resubmitting could pay twice.
        ctx.notes.append(
            f"{chunk.provider} does not know batch {chunk.batch_id} (deleted, or made with "
            "another API key?); it stays open here and its jobs are not resubmitted"
        )
        return None


def created_event(chunk: Chunk, info: BatchInfo, adopted: bool = False) -> dict[str, object]:
    return {
        "ev": "created",
        "local": chunk.local,
        "batch_id": info.id,
        "created_at": info.created_at,
        "expires_at": info.expires_at,
        "adopted": adopted,
    }


# -- status and cancel -----------------------------------------------------------------


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
            info = await lookup(ctx, c)
            rows.append(
                _live_row(c, info)
                if info
                else replace(_recorded_row(c), state="not found", in_progress=True)
            )
        else:
            rows.append(_recorded_row(c))
    return rows


async def batch_cancel(ctx: BatchContext) -> list[BatchRow]:
    """Ask the provider to cancel every open batch; a later fetch keeps what finished."""
    await recover(ctx)
    rows: list[BatchRow] = []
    for c in ctx.state.open_chunks():
        assert c.batch_id is not None
        client = ctx.client(c.provider)
        info = await ctx.call(client.get, c.batch_id)
        if not info.ended:
            info = await ctx.call(client.cancel, c.batch_id)
        rows.append(_live_row(c, info))
    return rows
