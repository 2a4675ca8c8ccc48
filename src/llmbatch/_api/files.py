"""``llmbatch.run_file``: a jobs file run as ``llmbatch run`` runs it; the CLI's
``run`` and ``embed`` are this call, then the rendering.

A file run has side effects by nature, the same as the command's: it reads
``./llmbatch.toml`` (or ``config_file=``), locks the output and appends result
lines to it (default ``JOBS.results.jsonl``; ``JOBS.vectors.parquet`` for
embeddings), resumes what is there (``fresh=True`` moves it aside first), appends
a line to the output's run history, reads and fills the user's response cache
(``cache=False``: neither), holds ``max_cost`` against every run on the output,
and writes ``report=``/``html=`` when given. Nothing else is printed unless asked
(``progress=True``, ``say=``); signals are left alone unless ``handle_signals=True``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

from llmbatch._api.options import configured, custom_providers, file_flags
from llmbatch._config.settings import RunConfig
from llmbatch._core.events import EventSink
from llmbatch._core.exceptions import UsageError
from llmbatch._core.loop import run_loop
from llmbatch._core.models import ModelRef
from llmbatch._core.schema import check_schema
from llmbatch._observe.progress import NoProgress, ProgressSink, make_progress
from llmbatch._report.report import RunReport
from llmbatch._run.embed import EmbedRun
from llmbatch._run.online import FileRun
from llmbatch._run.session import exit_code_for
from llmbatch.providers._base import Provider
from llmbatch.providers.factory import ProviderFactory, default_provider_factory

_IN_LOOP = (
    "llmbatch.run_file() cannot be called inside a running event loop (a notebook, an "
    "async function): use the async form instead —\n"
    "    result = await llmbatch.arun_file(jobs, ...)"
)


@dataclass(frozen=True, slots=True)
class FileRunResult:
    """What ``llmbatch run`` ends with: the report, the exit code the command would
    give (SPEC §6: 0 done, 1 some failed, 3 stopped by a budget, 128+N a signal, …),
    and what it would say after the report table."""

    report: RunReport
    exit_code: int
    notes: tuple[str, ...] = ()  # jobs left by --limit, why it stopped, a --report not written
    fatal: str | None = None  # the error that stopped the run (also the report's first note)
    html: Path | None = None  # where the HTML report went (``html=``)
    quiet: bool = False  # ``quiet`` (an option or llmbatch.toml): the CLI prints no table

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


def run_file(
    jobs: str | Path,
    output: str | Path | None = None,
    **options: Any,
) -> FileRunResult:
    """Run every job of ``jobs`` not yet in ``output``, as ``llmbatch run`` does (see
    ``arun_file`` for the options). Blocks until done; inside a running event loop
    use ``await llmbatch.arun_file(...)``."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise RuntimeError(_IN_LOOP)
    return run_loop(lambda: arun_file(jobs, output, **options))


async def arun_file(
    jobs: str | Path,
    output: str | Path | None = None,
    *,
    model: str | ModelRef | None = None,
    fallback: Sequence[str | ModelRef] | None = (),
    schema: str | Path | dict[str, Any] | None = None,
    mode: str | None = None,
    embed: bool | None = None,
    cache: bool | str | Path | None = None,
    provider: str | Provider | Mapping[str, Provider] | None = None,
    ray: str | bool | None = None,
    ray_workers: int | None = None,
    config_file: str | Path | None = None,
    handle_signals: bool = False,
    progress: bool | ProgressSink = False,
    say: Callable[[str], None] | None = None,
    sinks: Sequence[EventSink] = (),
    **options: Any,
) -> FileRunResult:
    """``llmbatch run JOBS`` as a call. Options are the ``run`` flags by their long
    names (``concurrency``, ``max_cost``, ``fresh``, ``limit``, ``report``, ``html``, …).

    ``mode``: ``"online"`` (default), ``"batch"`` or ``"auto"`` (with ``batch_deadline``);
    ``embed=True``: the jobs are texts to embed (as ``llmbatch embed``; a file whose
    first line is an embedding job is one anyway); ``ray=True`` or an address (with
    ``ray_workers``); ``provider``: a provider name (``--provider``), or a ``Provider``
    object / mapping name → object as ``llmbatch.run`` takes; ``cache``: None/True the
    default cache, False none, a path that file; ``progress=True``: the CLI's progress on
    stderr; ``say``: where ``--mode batch|auto`` tells what it does (not with ``quiet``).
    """
    customs: dict[str, Provider] = {}
    if provider is not None and not isinstance(provider, str):
        customs = custom_providers(provider)
    elif provider is not None:
        options["provider"] = provider
    flags = file_flags(
        output=output,
        model=model,
        fallback=fallback or (),
        schema=schema,
        cache=cache,
        customs=customs,
        one_provider=bool(customs) and not isinstance(provider, Mapping),
        options={**options, "mode": mode, "embed": embed or None},
    )
    if ray is True:
        ray = "local"
    if ray_workers is not None and not ray:
        raise UsageError("--ray-workers goes with --ray")
    with configured(jobs, flags, config_file, customs) as cfg:
        if isinstance(schema, dict):
            check_schema(schema, "schema=")
            cfg.schema = schema
        run = _FileJob(cfg, flags, customs, handle_signals, sinks, say)
        return await run.run(
            progress if not isinstance(progress, bool) else _progress(cfg, progress),
            ray=ray or None,
            ray_workers=ray_workers,
        )


def _progress(cfg: RunConfig, shown: bool) -> ProgressSink:
    return make_progress(cfg.quiet) if shown else NoProgress()


_Run = TypeVar("_Run", FileRun, EmbedRun)


class _FileJob:
    """One file run: the checks before anything opens, the session for the mode, the
    files written after (``report``, ``html``), the exit code."""

    def __init__(
        self,
        cfg: RunConfig,
        flags: Mapping[str, Any],
        customs: Mapping[str, Provider],
        handle_signals: bool,
        sinks: Sequence[EventSink],
        say: Callable[[str], None] | None,
    ) -> None:
        self.cfg = cfg
        self.flags = flags
        self.customs = customs
        self.handle_signals = handle_signals
        self.sinks = sinks
        self._say = say

    def say(self, message: str) -> None:
        if self._say is not None and not self.cfg.quiet:
            self._say(message)

    def factory(self) -> ProviderFactory | None:
        customs = self.customs
        if not customs:
            return None

        def make(name: str, config: RunConfig) -> Provider:
            own = customs.get(name)
            return own if own is not None else default_provider_factory(name, config)

        return make

    async def run(
        self, progress: ProgressSink, *, ray: str | None, ray_workers: int | None
    ) -> FileRunResult:
        cfg = self.cfg
        if cfg.mode == "online" and self.flags.get("batch_deadline") is not None:
            raise UsageError("--batch-deadline goes with --mode auto. Nothing was sent.")
        session: FileRun | EmbedRun
        if cfg.embed or embedding_lines(cfg):  # (vectors go to Parquet in every mode)
            if ray is not None:
                raise UsageError("--ray is not built for embeddings. Nothing was sent.")
            report, session = await self._embed(progress)
        else:
            report, session = await self._chat(progress, ray, ray_workers)
        return self._result(report, session)

    async def _chat(
        self, progress: ProgressSink, ray: str | None, ray_workers: int | None
    ) -> tuple[RunReport, FileRun]:
        cfg = self.cfg
        _refuse_parquet_modes(cfg)
        if ray is not None and cfg.output is not None and cfg.output.suffix == ".parquet":
            raise UsageError("--ray writes JSONL: give a .jsonl --output. Nothing was sent.")
        if cfg.npy:
            raise UsageError("--npy is for embedding jobs (vectors). Nothing was sent.")
        if ray is not None:
            if self.customs:
                raise UsageError(
                    "provider= objects do not go with ray= (each actor makes its own "
                    "providers). Nothing was sent."
                )
            from llmbatch._api.ray_run import RayRun

            session: FileRun = RayRun(
                cfg,
                address=ray,
                workers=ray_workers,
                progress=progress,
                handle_signals=self.handle_signals,
                sinks=self.sinks,
            )
            return await session.run(), session
        return await self._local(progress, FileRun)

    async def _embed(self, progress: ProgressSink) -> tuple[RunReport, EmbedRun]:
        cfg = self.cfg
        if cfg.shard is not None:
            _refuse_parquet_modes(cfg)  # a .parquet output with --shard, or a batch mode
        return await self._local(progress, EmbedRun)

    async def _local(self, progress: ProgressSink, kind: type[_Run]) -> tuple[RunReport, _Run]:
        """The run in this process: the bulk by batch first (``mode`` batch or auto), or
        online only; chat jobs or embeddings (``kind``)."""
        cfg = self.cfg
        factory = self.factory()
        if cfg.mode != "online":
            from llmbatch._batch.embed_run import run_embed_batches
            from llmbatch._batch.run import run_with_batches

            batched = run_embed_batches if kind is EmbedRun else run_with_batches
            report, run = await batched(
                cfg,
                mode=cfg.mode,
                deadline=cfg.batch_deadline if cfg.mode == "auto" else None,  # batch waits
                progress=progress,
                provider_factory=factory,
                handle_signals=self.handle_signals,
                say=self.say,
                sinks=self.sinks,
            )
            assert isinstance(run, kind)
            return report, run
        from llmbatch._batch.run import refuse_if_batches_open

        refuse_if_batches_open(cfg.output)
        session = kind(
            cfg,
            progress=progress,
            provider_factory=factory,
            handle_signals=self.handle_signals,
            sinks=self.sinks,
        )
        return await session.run(), session

    def _result(self, report: RunReport, session: FileRun | EmbedRun) -> FileRunResult:
        """The files written after the run, what the command says after its report."""
        cfg = self.cfg
        notes: list[str] = []
        if cfg.report is not None:  # a failed write is said, not fatal (results are on disk)
            try:
                cfg.report.parent.mkdir(parents=True, exist_ok=True)
                cfg.report.write_bytes(report.to_json())
            except OSError as exc:
                notes.append(f"could not write the report to {cfg.report}: {exc.strerror or exc}")
        last_plan = session.planner.last_plan
        if last_plan is not None and last_plan.held_back:
            notes.append(f"--limit {cfg.limit}: {last_plan.held_back} job(s) left for a later run")
        if report.stopped_by == "output_closed":
            notes.append("the output pipe was closed; stopped (jobs left unsent)")
        if report.stopped_by == "budget":
            notes.append(
                "stopped by the budget cap; jobs left unsent. Rerun with a higher cap to continue."
            )
        if report.stopped_by == "budget_window":
            notes.append(
                f"a rolling budget window is full; run again after {report.resets_at or 'it frees'}"
            )
        html = None
        if cfg.html is not None:
            from llmbatch._report.html import write_html_report

            write_html_report(cfg.html, report, session.timeline.timeline())
            html = cfg.html
        return FileRunResult(
            report=report,
            exit_code=exit_code_for(report, session.stop_signal),
            notes=tuple(notes),
            fatal=session.fatal,
            html=html,
            quiet=cfg.quiet,
        )


def _refuse_parquet_modes(cfg: RunConfig) -> None:
    from llmbatch._io.vectors import is_parquet

    if is_parquet(cfg.output) and (cfg.mode != "online" or cfg.shard is not None):
        raise UsageError(
            "a .parquet --output goes with --mode online and no --shard for now; use a "
            "JSONL output for provider batches or shards. Nothing was sent."
        )


def embedding_lines(cfg: RunConfig) -> bool:
    """Whether the first job of the file asks for embeddings (``input``, no prompt)."""
    import orjson

    from llmbatch._core.embed import is_embed_record
    from llmbatch._io.jobfile import job_records

    for _, raw in job_records(cfg.jobs, cfg.columns):
        try:
            return is_embed_record(orjson.loads(raw))
        except orjson.JSONDecodeError:
            return False
    return False


def dry_run_file(
    jobs: str | Path,
    flags: Mapping[str, Any],
    config_file: str | Path | None,
    out: IO[bytes],
    err: IO[str],
) -> int:
    """``run --dry-run``: the request bodies a run would send now into ``out`` (keys
    redacted), a summary into ``err``; nothing is sent. The exit code."""
    from llmbatch._engine.dryrun import print_dry_run

    with configured(jobs, {**flags, "dry_run": True}, config_file) as cfg:
        if cfg.embed or embedding_lines(cfg):
            from llmbatch._run.embed_preview import print_embed_dry_run

            return print_embed_dry_run(cfg, out, err)
        return print_dry_run(cfg, out, err)
