"""``run --mode batch|auto``: the Batch APIs for the bulk, the online engine for the rest.

- ``batch``: submit, wait (polling) until every batch has ended, fetch, then
  finish what is left (expired, canceled, transiently failed) online.
- ``auto``: the same, but at ``--batch-deadline`` the open batches are canceled,
  what finished is fetched, and the rest runs online.

One ``FileRun`` session from start to end: the online part is the ordinary run,
resumed on the same output, so it skips every job the batches answered. It
starts only once no batch of this output is open: a job is never sent online
while its batch is.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from llmbatch._batch.context import ClientFactory, batch_context
from llmbatch._batch.fetch import FetchReport, fetch
from llmbatch._batch.status import batch_cancel
from llmbatch._batch.submit import submit
from llmbatch._config.modes import MODES
from llmbatch._config.modes import parse_duration as parse_duration
from llmbatch._config.settings import RunConfig
from llmbatch._core.clock import SYSTEM_CLOCK, Clock
from llmbatch._core.events import EventSink
from llmbatch._core.exceptions import UsageError
from llmbatch._core.stops import StopReason
from llmbatch._io.batch_state import BatchState
from llmbatch._report.batch import BatchPart
from llmbatch._report.report import RunReport
from llmbatch._run.online import FileRun
from llmbatch._run.session import RunSession

if TYPE_CHECKING:
    from llmbatch._observe.progress import ProgressSink
    from llmbatch.providers.factory import ProviderFactory


def refuse_if_batches_open(output: Path | None) -> None:
    """``run --mode online`` must not send jobs that sit in an open batch of this output."""
    if output is None:
        return
    state = BatchState.load(output)
    open_chunks = state.open_chunks()
    if open_chunks:
        raise UsageError(
            f"{len(open_chunks)} batch(es) of {output} are still open; their jobs must not "
            f"also go online. Run `llmbatch batch fetch {output}` (or `batch cancel`) first, "
            "or `run --mode auto`. Nothing was sent."
        )


class _Totals:
    def __init__(self) -> None:
        self.jobs = 0
        self.cost = 0.0
        self.online = 0.0

    def add(self, rep: FetchReport) -> None:
        self.jobs += rep.batch_jobs
        self.cost += rep.cost_usd
        self.online += rep.online_cost_usd


def check_batch_mode(mode: str, deadline: float | None) -> None:
    """``--mode batch|auto`` and its deadline, as every batched run takes them."""
    if mode not in ("batch", "auto"):
        raise UsageError(f"--mode {mode!r}: one of {', '.join(MODES)}")
    if mode == "auto" and deadline is None:
        raise UsageError("--mode auto needs --batch-deadline (e.g. 2h)")


async def run_with_batches(
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
) -> tuple[RunReport, FileRun]:
    """Batch the bulk, wait (until the deadline in ``auto``), then run the rest online.

    One run from start to end: one output lock, one set of services (cache, rolling
    windows, shared limits), one event stream — the batch answers count as its jobs
    in the report, the event log, the history and the HTML — and one report.
    """
    check_batch_mode(mode, deadline)
    tell = say or _stderr
    if config.fresh and config.output is not None:
        config = start_fresh(config, tell)
    run = FileRun(
        config,
        progress=progress,
        provider_factory=provider_factory,
        handle_signals=handle_signals,
        sinks=sinks,
        clock=clock,
    )
    report = await locked_and_watched(
        run, lambda: _batches_then_online(run, deadline, poll, batch_size, client_factory, tell)
    )
    return report, run


async def locked_and_watched(
    run: RunSession, body: Callable[[], Awaitable[RunReport]]
) -> RunReport:
    """``body`` with the run's output locked and, if it handles them, its signals watched:
    a batched run (``run_with_batches``, ``run_embed_batches``) from start to end."""
    run.lock()
    try:
        async with anyio.create_task_group() as tg:
            if run.handles_signals:
                tg.start_soon(run.watch_signals)
            try:
                report = await body()
            finally:
                tg.cancel_scope.cancel()
        return report
    finally:
        run.unlock()


async def _batches_then_online(
    run: FileRun,
    deadline: float | None,
    poll: float,
    batch_size: int | None,
    client_factory: ClientFactory | None,
    tell: Any,
) -> RunReport:
    config, clock = run.config, run.clock
    try:
        sub = await submit(
            config,
            batch_size=batch_size,
            clock=clock,
            client_factory=client_factory,
            leave_online=True,
            session=run,
        )
    except BaseException:
        await run.close_services()
        raise
    tell(f"submitted {sub.jobs} jobs in {len(sub.batches)} batch(es); waiting for them")
    totals, canceled = await _wait_for_batches(run, deadline, poll, client_factory, tell)
    if sub.stopped_by is not None:
        # What was submitted is fetched; the rest would be refused online the same way.
        run.notes.append(sub.window_message or "the budget cap held the rest of the jobs back")
        run.stop(StopReason(sub.stopped_by))
    part = BatchPart(totals.jobs, totals.cost, totals.online, canceled, sub.stopped_by == "budget")
    return await run.run_locked(opened=True, batch=part)


async def _wait_for_batches(
    run: FileRun,
    deadline: float | None,
    poll: float,
    client_factory: ClientFactory | None,
    tell: Any,
) -> tuple[_Totals, int]:
    """Fetch until every batch has ended, or cancel at the deadline and fetch what ended.

    The deadline counts from the submission of the oldest open batch (its intent, kept in
    the batch state), not from this run: a rerun does not restart it. A signal ends the
    wait at once: the batches stay open, their state on disk, and the next run (or
    ``batch fetch``) takes them up.
    """
    config, clock, stopper = run.config, run.clock, run.stopper
    totals = _Totals()
    started = submitted_at(config, clock)
    while not stopper.stopping:
        # Schema repairs are left to the online part: its report counts them.
        rep = await fetch(
            config, clock=clock, client_factory=client_factory, repair=False, session=run
        )
        totals.add(rep)
        if not rep.still_open:
            return totals, 0
        waited = clock.time() - started
        if deadline is not None and waited >= deadline:
            canceled = await cancel_all(config, clock, client_factory)
            tell(f"batch deadline reached: canceled {canceled} batch(es); the rest runs online")
            await _fetch_canceled(run, poll, client_factory, totals)
            return totals, canceled
        tell(f"{rep.still_open} batch(es) in progress; {totals.jobs} jobs answered so far")
        step = poll if deadline is None else max(0.0, min(poll, deadline - waited))
        with stopper.interruptible():
            await clock.sleep(step)
    return totals, 0


def submitted_at(config: RunConfig, clock: Clock) -> float:
    """When the oldest open batch of the output was submitted (now, if none is open)."""
    assert config.output is not None
    opened = [c.at for c in BatchState.load(config.output).open_chunks()]
    return min(opened) if opened else clock.time()


async def _fetch_canceled(
    run: FileRun, poll: float, client_factory: ClientFactory | None, totals: _Totals
) -> None:
    """Fetch the canceled batches as soon as they have ended: polls 1 s, 2 s, 4 s, ...
    apart (at most ``poll``), so a quick cancel does not wait a whole poll interval."""
    config, clock, stopper = run.config, run.clock, run.stopper
    step = 1.0
    while not stopper.stopping:
        rep = await fetch(
            config, clock=clock, client_factory=client_factory, repair=False, session=run
        )
        totals.add(rep)
        if not rep.still_open:
            return
        with stopper.interruptible():
            await clock.sleep(min(step, poll))
        step *= 2


def start_fresh(config: RunConfig, tell: Any) -> RunConfig:
    """``--fresh``: move the output and its batch state aside first, as ``run`` does."""
    from llmbatch._io.resume import backup_output

    assert config.output is not None
    state = BatchState.load(config.output)
    if state.open_chunks():
        raise UsageError(
            f"--fresh: batches of {config.output} are still open; fetch or cancel them first. "
            "Nothing was sent."
        )
    moved = backup_output(config.output)
    if moved is not None:
        tell(f"--fresh: the old output was moved to {moved}")
        if state.dir.exists():
            state.dir.rename(moved.with_name(moved.name + ".batches"))
    return replace(config, fresh=False)


async def cancel_all(config: RunConfig, clock: Clock, factory: ClientFactory | None) -> int:
    async with batch_context(config, clock=clock, factory=factory, locked=True) as ctx:
        return len(await batch_cancel(ctx, release_unproven=True))


def _stderr(message: str) -> None:
    sys.stderr.write(f"llmbatch: {message}\n")
    sys.stderr.flush()
