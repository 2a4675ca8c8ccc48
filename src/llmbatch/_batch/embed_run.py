"""``run|embed EMB --mode batch|auto`` (and ``batch submit|fetch``) for embedding jobs.

One ``EmbedRun`` session from start to end, as ``_batch.run`` does for chat jobs:
the check pass (nothing sent on a problem), then the packs by batch
(``_batch.embed_submit``), a wait (until ``--batch-deadline`` in ``auto``: then
cancel, fetch what ended), the fetches (``_batch.embed_fetch``) into the output,
and the online run over what is left (handed back, out of rounds, no batch for
the provider, answered by the cache) — it skips every line the batches wrote.
One lock, one set of services (cache, rolling windows), one event stream, one
report with its ``batch`` block.
"""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Any

from llmbatch._batch.context import ClientFactory, batch_context, default_client_factory
from llmbatch._batch.embed_fetch import EmbedFetcher, EmbedFetchTotals
from llmbatch._batch.embed_submit import embeddings_client_factory, submit_embeddings
from llmbatch._batch.run import (
    cancel_all,
    check_batch_mode,
    locked_and_watched,
    start_fresh,
    submitted_at,
)
from llmbatch._batch.submitted import SubmitReport
from llmbatch._config.settings import RunConfig
from llmbatch._core.clock import SYSTEM_CLOCK, Clock
from llmbatch._core.events import EventSink
from llmbatch._core.exceptions import UsageError
from llmbatch._core.stops import StopReason
from llmbatch._engine.embed_sink import EmbedSink
from llmbatch._engine.plan import Plan
from llmbatch._io.batch_state import BatchState
from llmbatch._io.resume import cut_torn_tail
from llmbatch._io.vectors import cut_torn_parts, parts_dir
from llmbatch._report.batch import BatchPart
from llmbatch._report.report import RunReport
from llmbatch._run.embed import EmbedRun, backup_output_name

if TYPE_CHECKING:
    from collections.abc import Sequence

    from llmbatch._observe.progress import ProgressSink
    from llmbatch.providers.factory import ProviderFactory


class EmbedBatchRun(EmbedRun):
    """An embedding run whose services open once for the batch phase and the online part."""

    batch_part: BatchPart | None = None
    batches_open = False  # a signal ended the wait: their lines must not go online

    async def open_services(self, *, cache: bool = True) -> None:
        if not self.services_open:
            await super().open_services(cache=cache)

    def finish(self, **kw: Any) -> RunReport:
        return super().finish(**kw, batch=self.batch_part)

    async def _run_packs(self, plan: Any) -> None:
        if not self.batches_open and not self.stopper.stopping:
            await super()._run_packs(plan)

    def check(self) -> None:
        """The check pass, as ``run`` makes it: exit 2 before anything is sent."""
        plan = self.check_pass()
        check = Plan(problems=plan.problems, models={ref for ref, _ in plan.groups})
        self.planner.check(check)
        for ref in check.models:
            self.refuse_unembeddable(ref)

    def open_cache(self) -> None:
        if not self.config.no_cache:
            from llmbatch._cache.store import open_cache

            self.state.cache = open_cache(self.config)
            self.state.cache_key = self._embed_key

    def close_cache(self) -> None:
        if self.state.cache is not None:
            self.state.cache.close()
            self.state.cache = None

    def cut_torn(self) -> None:
        """A killed run's torn part or line goes before fetch writes (its rows run again)."""
        existing, out = self.existing, self.config.output
        if existing is None or existing.torn_at is None or out is None:
            return
        if self.parquet:
            cut_torn_parts(out)
        else:
            cut_torn_tail(existing)

    def sink(self) -> EmbedSink:
        return EmbedSink(self.config.output, self.state, parquet=self.parquet, npy=self.config.npy)

    def fetcher(self, ctx: Any, sink: EmbedSink) -> EmbedFetcher:
        done = self.existing.done if self.existing else None

        def is_done(job_id: str) -> bool:
            return done is not None and done.fingerprint(job_id) is not None

        return EmbedFetcher(ctx, sink, self.state.counts, is_done, self.bus)


def _fresh(config: RunConfig, tell: Any) -> RunConfig:
    """``--fresh``: the output, its parts, its matrix and its batch state moved aside."""
    assert config.output is not None
    out = config.output
    if parts_dir(out).exists():
        parts_dir(out).rename(backup_output_name(out))
    matrix = config.npy
    if matrix is not None and matrix.exists():
        matrix.rename(f"{matrix}.{time.strftime('%Y%m%d-%H%M%S')}.bak")
    return start_fresh(config, tell)


async def run_embed_batches(
    config: RunConfig,
    *,
    mode: str,
    deadline: float | None = None,
    poll: float = 60.0,
    batch_size: int | None = None,
    clock: Clock = SYSTEM_CLOCK,
    client_factory: ClientFactory | None = None,
    progress: ProgressSink | None = None,
    provider_factory: ProviderFactory | None = None,
    handle_signals: bool = True,
    say: Any = None,
    sinks: Sequence[EventSink] = (),
) -> tuple[RunReport, EmbedBatchRun]:
    """Embeddings: the bulk by batch, the wait (to the deadline in ``auto``), the rest online."""
    check_batch_mode(mode, deadline)
    if config.output is None:
        raise UsageError("--mode batch|auto needs an output file (-o PATH), not stdout")
    tell = say or _stderr
    if config.fresh:
        config = _fresh(config, tell)
    run = EmbedBatchRun(
        config,
        progress=progress,
        provider_factory=provider_factory,
        handle_signals=handle_signals,
        sinks=sinks,
        clock=clock,
    )
    factory = embeddings_client_factory(client_factory or default_client_factory)
    report = await locked_and_watched(
        run, lambda: _batches_then_online(run, deadline, poll, batch_size, factory, tell)
    )
    return report, run


async def _batches_then_online(
    run: EmbedBatchRun,
    deadline: float | None,
    poll: float,
    batch_size: int | None,
    factory: ClientFactory,
    tell: Any,
) -> RunReport:
    config, clock = run.config, run.clock
    run.check()
    await run.open_services(cache=False)
    run.open_cache()
    sink: EmbedSink | None = None
    try:
        run.cut_torn()
        async with batch_context(config, clock=clock, factory=factory, locked=True) as ctx:
            sub = await submit_embeddings(ctx, run, batch_size=batch_size)
        run.notes.extend(sub.notes)
        tell(f"submitted {sub.jobs} lines in {len(sub.batches)} batch(es); waiting for them")
        sink = run.sink()
        totals, canceled = await _wait(run, sink, deadline, poll, factory, tell)
    except BaseException:
        run.close_cache()
        await run.close_services()
        raise
    finally:
        if sink is not None:
            sink.close()  # merged into the output: the online part reads its ids
    run.close_cache()
    assert config.output is not None
    run.batches_open = bool(BatchState.load(config.output).open_chunks())
    _stop_if_held(run, sub)
    run.batch_part = BatchPart(
        totals.packs, totals.cost_usd, totals.online_cost_usd, canceled, sub.stopped_by == "budget"
    )
    return await run.run_locked()


def _stop_if_held(run: EmbedBatchRun, sub: SubmitReport) -> None:
    if sub.stopped_by is not None:
        # What was submitted is fetched; the rest would be refused online the same way.
        run.notes.append(sub.window_message or "the budget cap held the rest of the lines back")
        run.stop(StopReason(sub.stopped_by))


async def _wait(
    run: EmbedBatchRun,
    sink: EmbedSink,
    deadline: float | None,
    poll: float,
    factory: ClientFactory,
    tell: Any,
) -> tuple[EmbedFetchTotals, int]:
    """Fetch until every batch has ended, or cancel at the deadline and fetch what ended."""
    config, clock, stopper = run.config, run.clock, run.stopper
    started = submitted_at(config, clock)
    async with batch_context(config, clock=clock, factory=factory, locked=True) as ctx:
        fetcher = run.fetcher(ctx, sink)
        canceled: int | None = None  # set once the deadline has canceled the open batches
        step = poll
        while not stopper.stopping:
            still = await fetcher.poll()
            run.notes.extend(ctx.notes)
            ctx.notes.clear()
            if not still:
                break
            waited = clock.time() - started
            if canceled is None and deadline is not None and waited >= deadline:
                canceled = await cancel_all(config, clock, factory)
                tell(f"batch deadline reached: canceled {canceled} batch(es); the rest runs online")
                step = 1.0
            elif canceled is None:
                tell(f"{still} batch(es) in progress; {fetcher.totals.ok_rows} vectors so far")
                step = poll if deadline is None else max(0.0, min(poll, deadline - waited))
            else:
                step *= 2  # after a cancel: 1 s, 2 s, 4 s, ... apart (at most the poll)
            with stopper.interruptible():
                await clock.sleep(min(step, poll))
        return fetcher.totals, canceled or 0


def _stderr(message: str) -> None:
    sys.stderr.write(f"llmbatch: {message}\n")
    sys.stderr.flush()
