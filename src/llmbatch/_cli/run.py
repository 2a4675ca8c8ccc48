"""``llmbatch run`` past option parsing: run the engine, then report and pick the exit code."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmbatch._cli.common import _configured, _console, _err
from llmbatch._core.exceptions import UsageError

if TYPE_CHECKING:
    from llmbatch._config.settings import RunConfig
    from llmbatch._report.report import RunReport
    from llmbatch._run.embed import EmbedRun
    from llmbatch._run.online import FileRun


def _run(
    jobs: str,
    flags: dict[str, Any],
    config_path: Path | None,
    *,
    ray: str | None = None,
    ray_workers: int | None = None,
) -> int:
    import anyio

    from llmbatch._observe.progress import make_progress
    from llmbatch._run.online import FileRun
    from llmbatch._run.session import exit_code_for

    _arrow_system_pool()
    with _configured(jobs, flags, config_path) as cfg:
        if cfg.dry_run:
            from llmbatch._engine.dryrun import print_dry_run

            if cfg.embed or _embedding_lines(cfg):
                from llmbatch._run.embed_preview import print_embed_dry_run

                return print_embed_dry_run(cfg, sys.stdout.buffer, sys.stderr)
            return print_dry_run(cfg, sys.stdout.buffer, sys.stderr)
        if cfg.mode == "online" and flags.get("batch_deadline") is not None:
            raise UsageError("--batch-deadline goes with --mode auto. Nothing was sent.")
        progress = make_progress(cfg.quiet)
        _quiet_gc()
        if cfg.embed or _embedding_lines(cfg):  # (vectors go to Parquet in every mode)
            if ray is not None:
                raise UsageError("--ray is not built for embeddings. Nothing was sent.")
            return _embed(cfg, progress)
        _refuse_parquet_modes(cfg)
        if ray is not None and cfg.output is not None and cfg.output.suffix == ".parquet":
            raise UsageError("--ray writes JSONL: give a .jsonl --output. Nothing was sent.")
        if cfg.npy:
            raise UsageError("--npy is for embedding jobs (vectors). Nothing was sent.")
        if ray is not None:
            from llmbatch._api.ray_run import RayRun

            engine: FileRun = RayRun(cfg, address=ray, workers=ray_workers, progress=progress)
            report = anyio.run(engine.run)
        elif cfg.mode != "online":
            from llmbatch._cli.batch import run_mode

            report, engine = run_mode(cfg, progress)
        else:
            from llmbatch._batch.run import refuse_if_batches_open

            refuse_if_batches_open(cfg.output)
            engine = FileRun(cfg, progress=progress)
            report = anyio.run(engine.run)
    _write_json_report(cfg, report)
    _tell_outcome(cfg, report, engine)
    return exit_code_for(report, engine.stop_signal)


def _quiet_gc() -> None:
    """A run allocates a few small objects a job and keeps few of them: the collector's
    default (a pass every 700 allocations, full passes over everything imported) costs
    10–15 µs a job here. What is loaded by now is frozen out of its passes, and passes
    come every 50,000 allocations. Only the CLI does this: the Python API leaves the
    host program's collector alone."""
    import gc

    gc.freeze()
    gc.set_threshold(50_000, 50, 100)


def _refuse_parquet_modes(cfg: RunConfig) -> None:
    from llmbatch._io.vectors import is_parquet

    if is_parquet(cfg.output) and (cfg.mode != "online" or cfg.shard is not None):
        raise UsageError(
            "a .parquet --output goes with --mode online and no --shard for now; use a "
            "JSONL output for provider batches or shards. Nothing was sent."
        )


def _embedding_lines(cfg: RunConfig) -> bool:
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


def estimate_file(
    jobs: str, flags: dict[str, Any], config_path: Path | None
) -> tuple[dict[str, Any], Callable[[dict[str, Any], Any], None]]:
    """``llmbatch estimate``: chat jobs, or an embedding file (its first line asks for
    embeddings) read with the ``embed`` command's defaults (``JOBS.vectors.parquet``
    counted as done; a columnar source's text column)."""
    from llmbatch._engine.estimate import estimate_jobs, render_estimate

    with _configured(jobs, flags, config_path) as cfg:
        if not _embedding_lines(cfg):
            return estimate_jobs(cfg), render_estimate
        from llmbatch._run.embed_preview import estimate_embeddings, render_embed_estimate

        # A pipe was spooled to a file: read it again from there.
        with _configured(str(cfg.jobs), {**flags, "embed": True}, config_path) as ecfg:
            ecfg.jobs_display = cfg.jobs_display
            return estimate_embeddings(ecfg, _embed_batch_price(ecfg)), render_embed_estimate


def _embed_batch_price(cfg: RunConfig) -> Callable[[Any, Any], Any]:
    """What embeddings cost by batch, as ``--mode batch`` prices them (None: no batch)."""
    import time

    from llmbatch._batch.embed_submit import embed_batch_price, embeds_by_batch

    at = time.time()

    def price(book: Any, ref: Any) -> Any:
        if not embeds_by_batch(cfg.providers[ref.provider]):
            return None
        return embed_batch_price(book, cfg, ref, at)[0]

    return price


def _embed(cfg: RunConfig, progress: Any) -> int:
    import anyio

    from llmbatch._run.embed import EmbedRun
    from llmbatch._run.session import exit_code_for

    if cfg.shard is not None:
        _refuse_parquet_modes(cfg)  # a .parquet output with --shard, or a batch mode
    if cfg.mode != "online":
        from llmbatch._cli.batch import embed_run_mode

        report, engine = embed_run_mode(cfg, progress)
    else:
        from llmbatch._batch.run import refuse_if_batches_open

        refuse_if_batches_open(cfg.output)
        engine = EmbedRun(cfg, progress=progress)
        report = anyio.run(engine.run)
    _write_json_report(cfg, report)
    _tell_outcome(cfg, report, engine)  # the report, why it stopped, --html: as every run
    return exit_code_for(report, engine.stop_signal)


def _arrow_system_pool() -> None:
    """Parquet outputs stream through Arrow's buffers a few MiB at a time (pages, the
    merge's row groups). Arrow's default pool (mimalloc) keeps what it freed: 15–50 MiB
    of resident memory in an embedding run; the C library's malloc gives blocks of
    1 MiB and more back at once (``_io.vectors.release_big_blocks``). Arrow reads the
    choice when it loads, so it is made before anything imports pyarrow; a value the
    user set wins. Only the CLI does this: the Python API leaves the host's pool alone."""
    import os
    import sys

    if "pyarrow" not in sys.modules:
        os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")


def _write_json_report(cfg: RunConfig, report: RunReport) -> None:
    """``--report``: a failed write is said, not fatal (the results are on disk)."""
    if cfg.report is not None:
        try:
            cfg.report.parent.mkdir(parents=True, exist_ok=True)
            cfg.report.write_bytes(report.to_json())
        except OSError as exc:
            _err(f"could not write the report to {cfg.report}: {exc.strerror or exc}")


def _tell_outcome(cfg: RunConfig, report: RunReport, engine: FileRun | EmbedRun) -> None:
    """The report table (or, with --quiet, one line per failure kind), then why it stopped."""
    if engine.fatal and cfg.quiet:
        _err(engine.fatal)  # otherwise the report shows it
    if not cfg.quiet:
        console = _console(stderr=True)
        console.print()
        from llmbatch._report.render import render_report

        render_report(report, console)
    elif not engine.fatal and (report.failed or report.failed_earlier):
        where = report.output or "the output"
        if report.failed:
            _err(f"{report.failed} job(s) failed; see error fields in {where}")
        if report.failed_earlier:
            _err(
                f"{report.failed_earlier} job(s) failed in an earlier run on {where} and were "
                "not retried (exit 1); --retry-failed runs them again"
            )
    last_plan = engine.planner.last_plan
    if last_plan is not None and last_plan.held_back:
        _err(f"--limit {cfg.limit}: {last_plan.held_back} job(s) left for a later run")
    if report.stopped_by == "output_closed":
        _err("the output pipe was closed; stopped (jobs left unsent)")
    if report.stopped_by == "budget":
        _err("stopped by the budget cap; jobs left unsent. Rerun with a higher cap to continue.")
    if cfg.html is not None:
        _write_run_html(cfg, cfg.html, report, engine)
    if report.stopped_by == "budget_window":
        _err(f"a rolling budget window is full; run again after {report.resets_at or 'it frees'}")


def _write_run_html(
    cfg: RunConfig, path: Path, report: RunReport, engine: FileRun | EmbedRun
) -> None:
    """The run's HTML report, from its event stream."""
    from llmbatch._report.html import write_html_report

    write_html_report(path, report, engine.timeline.timeline())
    if not cfg.quiet:
        sys.stderr.write(f"llmbatch: HTML report written to {path}\n")
