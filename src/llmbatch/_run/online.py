"""``llmbatch run`` over the jobs file: the check pass, then the engine, then the report.

``FileRun`` is a ``RunSession`` that plans the jobs file (resume state, checks,
``--limit``, shards), takes over what the output's batches left (seeds, their
spend), streams the file again through the engine into the output, and reports.
``run --mode batch|auto`` and the Python API use the same session underneath.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Unpack

from llmbatch._config.settings import RunConfig
from llmbatch._core.events import EventSink
from llmbatch._core.exceptions import ConfigError, InputError, ResumeConflict, UsageError
from llmbatch._core.loop import run_loop
from llmbatch._engine.engine import ResultSink
from llmbatch._engine.plan import BatchSeed, Plan, Planner
from llmbatch._engine.sinks import OutputSink
from llmbatch._engine.sources import FileSource
from llmbatch._engine.takeover import batch_carry
from llmbatch._io.history import append_history
from llmbatch._io.results_parquet import ParquetResultSink
from llmbatch._io.resume import ExistingOutput, backup_output, cut_torn_tail
from llmbatch._io.vectors import cut_torn_parts, is_parquet
from llmbatch._observe.progress import ProgressSink
from llmbatch._report.batch import BatchPart
from llmbatch._report.report import RunReport
from llmbatch._run.session import RunSession, SessionOptions
from llmbatch.providers.factory import ProviderFactory


class FileRun(RunSession):
    """The ``run`` command's session: the jobs file, resumed on its output."""

    def __init__(self, config: RunConfig, **options: Unpack[SessionOptions]) -> None:
        super().__init__(config, **options)
        self.planner = Planner(config, self.services.prices)
        self.plan: Plan | None = None

    async def run(self) -> RunReport:
        """Lock, check, run every job not yet done, report. Refused runs send nothing."""
        self.lock()
        try:
            return await self.run_locked()
        except (InputError, UsageError, ResumeConflict, ConfigError) as exc:
            self.refused(exc)
            raise
        finally:
            self.unlock()

    def refused(self, exc: Exception) -> None:
        """A run refused before anything was sent (exit 2) still gets its history line."""
        output = self.config.output
        if output is None:
            return
        record = {
            "started": self.started_wall,
            "ended": self.clock.time(),
            "wall_s": 0.0,
            "jobs_done": 0,
            "ok": 0,
            "failed": 0,
            "cost_usd": 0.0,
            "stopped_by": None,
            "exit_code": 2,
            "refused": str(exc),
        }
        append_history(output, record)

    async def run_locked(
        self, *, opened: bool = False, batch: BatchPart | None = None
    ) -> RunReport:
        """The run with the output locked (``opened``: services open already, as in
        ``run --mode batch|auto``, whose ``batch`` block goes into the report)."""
        try:
            plan = self.plan = self.planner.plan()
            self.planner.check(plan)
            if not opened:
                await self.open_services()  # after the check: a refused run opens nothing
            existing = self.planner.existing
            self._prepare_output(existing)
            seeds = self._take_over(existing)
            self.services.limits_for(plan.models)
            self.started(plan.todo, plan.skipped_done, plan.models)
            await self._run_file(plan, existing, seeds)
        finally:
            await self.close_services()
        return self.finish(
            skipped_done=plan.skipped_done,
            not_run=max(0, plan.todo - self.stats.done),
            cost_before=existing.cost_usd if existing else 0.0,
            invalid_lines=sorted(plan.invalid_lines),
            failed_earlier=0 if (existing is None or self.config.retry_failed) else existing.failed,
            batch=batch,
        )

    async def _run_file(
        self, plan: Plan, existing: ExistingOutput | None, seeds: dict[str, BatchSeed]
    ) -> None:
        source = FileSource(self.planner, plan, existing, seeds)
        out = self.config.output
        sink: ResultSink = (
            ParquetResultSink(out) if out is not None and is_parquet(out) else OutputSink(out)
        )
        try:
            await self.run_engine(source, sink, size=plan.todo)
        finally:
            sink.close()
            self.notes.extend(source.notes)

    def _prepare_output(self, existing: ExistingOutput | None) -> None:
        cfg = self.config
        if cfg.output is None:
            return
        if cfg.fresh:
            backup = backup_output(cfg.output)
            if backup is not None:
                self.notes.append(f"--fresh: the old output was moved to {backup}")
        elif existing is not None and existing.torn_at is not None and is_parquet(cfg.output):
            n = cut_torn_parts(cfg.output)
            self.notes.append(f"removed {n} part file(s) left unreadable by an interrupted run")
        elif existing is not None and existing.torn_at is not None:
            cut_torn_tail(existing)
            self.notes.append(
                f"cut a torn last line ({existing.torn_bytes} bytes) left by an "
                "interrupted run; that job runs again"
            )
        if existing is not None:
            self.run_budget.count_spent(existing.cost_usd, existing.tokens)

    def _take_over(self, existing: ExistingOutput | None) -> dict[str, BatchSeed]:
        """Seeds for jobs the output's batches left, and their spend held against the caps."""
        if self.config.fresh or existing is None:
            return {}
        carry = batch_carry(self.config.output, existing.done.fingerprint)
        if carry is None:
            return {}
        self.run_budget.count_spent(carry.spent_cost, carry.spent_tokens)
        if carry.recorder is not None:
            self.bus.add(carry.recorder)
        return dict(carry.seeds)


async def run_jobs_async(config: RunConfig, **options: Unpack[SessionOptions]) -> RunReport:
    """Run every job in ``config.jobs`` not yet in its output; return the report."""
    return await FileRun(config, **options).run()


def run_jobs(
    config: RunConfig,
    *,
    progress: ProgressSink | None = None,
    provider_factory: ProviderFactory | None = None,
    handle_signals: bool = False,
    sinks: Sequence[EventSink] = (),
) -> RunReport:
    """Run every job in ``config.jobs``; return the report. Blocks until done.

    :raises InputError: invalid job lines (nothing was sent).
    :raises UsageError: bad settings, missing keys, resume conflicts (nothing was sent).
    """
    return run_loop(
        lambda: run_jobs_async(
            config,
            progress=progress,
            provider_factory=provider_factory,
            handle_signals=handle_signals,
            sinks=sinks,
        )
    )
