"""Executors: how planned jobs become results, and the feed of planned jobs they consume."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Protocol, TypeVar

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from llmbatch._core.jobs import LineError
from llmbatch._io.jobfile import iter_lines, open_jobs

if TYPE_CHECKING:
    from llmbatch._budget.context import Stopper
    from llmbatch._core.results import JobResult
    from llmbatch._engine.attempts import JobRunner
    from llmbatch._engine.plan import Plan, Planner, PreparedJob
    from llmbatch._io.resume import ExistingOutput

T = TypeVar("T")


class Executor(Protocol):
    """How planned jobs become results: a streaming pool today, provider batches next."""

    async def execute(
        self,
        jobs: MemoryObjectReceiveStream[PreparedJob],
        results: MemoryObjectSendStream[JobResult],
    ) -> None: ...


class StreamingExecutor:
    """A pool of workers; each runs one job's attempts at a time, streaming every answer."""

    def __init__(self, runner: JobRunner, workers: int, stopper: Stopper) -> None:
        self.runner = runner
        self.workers = workers
        self.stopper = stopper
        self._scope: anyio.CancelScope | None = None
        self._cancelled = False

    def cancel(self) -> None:
        """A hard stop: cancel the requests in flight."""
        self._cancelled = True
        if self._scope is not None:
            self._scope.cancel()

    async def execute(
        self,
        jobs: MemoryObjectReceiveStream[PreparedJob],
        results: MemoryObjectSendStream[JobResult],
    ) -> None:
        async with jobs, results:
            with anyio.CancelScope() as self._scope:
                if self._cancelled:
                    self._scope.cancel()
                async with anyio.create_task_group() as tg:
                    for _ in range(self.workers):
                        tg.start_soon(self._worker, jobs.clone(), results.clone())

    async def _worker(
        self,
        jobs: MemoryObjectReceiveStream[PreparedJob],
        results: MemoryObjectSendStream[JobResult],
    ) -> None:
        async with jobs, results:
            async for pj in jobs:
                if self.stopper.stopping:
                    continue  # drain: not run, stays resumable
                result = await self.runner.run(pj)
                if result is not None:
                    try:
                        await results.send(result)
                    except anyio.BrokenResourceError:
                        return  # the writer is gone: the output was closed


async def feed_jobs(
    send: MemoryObjectSendStream[PreparedJob],
    plan: Plan,
    existing: ExistingOutput | None,
    planner: Planner,
    stopper: Stopper,
    notes: list[str],
) -> None:
    """Stream the jobs file again, sending each planned job not yet done (and ours to run)."""
    done = existing.done if existing else None
    invalid = plan.invalid_lines
    parser = planner.parser
    config = planner.config
    async with send:
        with open_jobs(config.jobs) as stream:
            for lineno, raw in iter_lines(stream):
                if stopper.stopping or lineno > plan.last_line:
                    return
                if lineno in invalid:
                    continue
                try:
                    job = parser.parse(raw, lineno)
                except LineError as exc:
                    # The file was rewritten under us since the check: skip, say so.
                    notes.append(f"{config.display_name}:{lineno}: {exc} (skipped)")
                    continue
                if done is not None and done.fingerprint(job.id) is not None:
                    continue
                if not planner.owns(job):
                    continue  # another shard's
                try:
                    await send.send(planner.prepare(job))
                except anyio.BrokenResourceError:
                    return  # the workers are gone (output closed, hard stop)


async def drained(recv: MemoryObjectReceiveStream[T], most: int = 1024) -> AsyncIterator[list[T]]:
    """What the pool has finished, in batches: each one waited for, plus whatever else is
    ready at that moment (up to ``most``), so the writer makes one write() of them."""
    async with recv:
        async for first in recv:
            batch = [first]
            while len(batch) < most:
                try:
                    batch.append(recv.receive_nowait())
                except (anyio.WouldBlock, anyio.EndOfStream):
                    break
            yield batch
