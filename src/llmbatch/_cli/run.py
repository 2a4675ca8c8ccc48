"""``llmbatch run`` and ``llmbatch embed`` past option parsing: ``llmbatch.run_file`` (the
Python API's file run: every check, mode and file it writes), then the report and the exit code."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmbatch._cli.common import _console, _err
from llmbatch._core.collector import quiet_gc

if TYPE_CHECKING:
    from llmbatch._api.files import FileRunResult


def _run(
    jobs: str,
    flags: dict[str, Any],
    config_path: Path | None,
    *,
    ray: str | None = None,
    ray_workers: int | None = None,
) -> int:
    _arrow_system_pool()
    from llmbatch._api import files

    if flags.get("dry_run"):
        options = {k: v for k, v in flags.items() if k != "dry_run"}
        return files.dry_run_file(jobs, options, config_path, sys.stdout.buffer, sys.stderr)
    quiet_gc()  # after the run's modules are loaded (above), before any job
    result = files.run_file(
        jobs,
        config_file=config_path,
        ray=ray,
        ray_workers=ray_workers,
        handle_signals=True,
        progress=True,
        say=_err,
        **{k: v for k, v in flags.items() if k != "dry_run"},
    )
    _tell_outcome(result)
    return result.exit_code


def _arrow_system_pool() -> None:
    """Parquet outputs stream through Arrow's buffers a few MiB at a time (pages, the
    merge's row groups). Arrow's default pool (mimalloc) keeps what it freed: 15–50 MiB
    of resident memory in an embedding run; the C library's malloc gives blocks of
    1 MiB and more back at once (``_io.vectors.release_big_blocks``). Arrow reads the
    choice when it loads, so it is made before anything imports pyarrow; a value the
    user set wins. Only the CLI does this: the Python API leaves the host's pool alone."""
    import os

    if "pyarrow" not in sys.modules:
        os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")


def _tell_outcome(result: FileRunResult) -> None:
    """The report table (or, with --quiet, one line per failure kind), then why it stopped."""
    report = result.report
    quiet = result.quiet
    if result.fatal and quiet:
        _err(result.fatal)  # otherwise the report shows it
    if not quiet:
        console = _console(stderr=True)
        console.print()
        from llmbatch._report.render import render_report

        render_report(report, console)
    elif not result.fatal and (report.failed or report.failed_earlier):
        where = report.output or "the output"
        if report.failed:
            _err(f"{report.failed} job(s) failed; see error fields in {where}")
        if report.failed_earlier:
            _err(
                f"{report.failed_earlier} job(s) failed in an earlier run on {where} and were "
                "not retried (exit 1); --retry-failed runs them again"
            )
    for note in result.notes:
        _err(note)
    if result.html is not None and not quiet:
        sys.stderr.write(f"llmbatch: HTML report written to {result.html}\n")
