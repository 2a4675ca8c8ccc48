"""The files one run writes, checked against the files it reads, from its config."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

from llmbatch._io.history import history_path
from llmbatch._io.lock import lock_path
from llmbatch._io.paths import check_paths


class RunPaths(Protocol):
    """The paths of a run's config that it reads or writes (``RunConfig`` is one)."""

    @property
    def jobs(self) -> Path: ...
    @property
    def output(self) -> Path | None: ...
    @property
    def report(self) -> Path | None: ...
    @property
    def html(self) -> Path | None: ...
    @property
    def log_json(self) -> str | None: ...
    @property
    def cache_path(self) -> Path | None: ...


def check_run_paths(
    cfg: RunPaths,
    reads: Mapping[str, Path | None] | None = None,
    writes: Mapping[str, Path | None] | None = None,
) -> None:
    """Refuse a run whose written files (output, history, lock, report) are files it reads.

    ``reads`` and ``writes`` add paths beyond the config's own: the CLI passes the
    schema, template and config files; a feature with sidecars of its own (e.g.
    ``<output>.batches/``) passes them as ``writes``.
    """
    out = cfg.output
    all_writes: dict[str, Path | None] = {
        "--output": out,
        "the run history": history_path(out) if out else None,
        "the output lock": lock_path(out) if out else None,
        "--report": cfg.report,
        "--html": cfg.html,
        "--log-json": None if cfg.log_json in (None, "-") else Path(str(cfg.log_json)),
        "--cache": cfg.cache_path,
        **(writes or {}),
    }
    check_paths({"the jobs file": cfg.jobs, **(reads or {})}, all_writes)
