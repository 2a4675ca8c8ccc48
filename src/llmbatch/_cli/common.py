"""What every command shares: the error boundary, messages, consoles, and the run config.

Only typer at module level: cli.py imports this for every command, ``--help`` included.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import typer

if TYPE_CHECKING:
    from rich.console import Console

    from llmbatch._config.settings import RunConfig

T = TypeVar("T")


def _console(stderr: bool = False) -> Console:
    """A rich console; off a terminal (cron, CI, pipes) wide enough for the tables."""
    from rich.console import Console

    console = Console(stderr=stderr)
    if not console.is_terminal:
        console.width = max(console.width, 120)
    return console


def _err(message: str) -> None:
    sys.stderr.write(f"llmbatch: {message}\n")
    sys.stderr.flush()


def _guard(fn: Callable[[], T]) -> T:
    """The error boundary: expected errors become one message and an exit code."""
    from llmbatch._core.exceptions import (
        InputError,
        LLMBatchError,
        OutputLocked,
        ResumeConflict,
        SharedStoreError,
        UsageError,
    )

    try:
        return fn()
    except InputError as exc:
        for problem in exc.problems:
            sys.stderr.write(f"{problem}\n")
        _err(str(exc))
        raise typer.Exit(2) from None
    except (UsageError, ResumeConflict, OutputLocked) as exc:
        _err(str(exc))
        raise typer.Exit(2) from None
    except SharedStoreError as exc:
        _err(f"{exc} (budgets fail closed; nothing more was sent, resumable)")
        raise typer.Exit(5) from None
    except LLMBatchError as exc:
        _err(str(exc))
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    except (typer.Exit, SystemExit):
        raise
    except Exception as exc:
        if os.environ.get("LLMBATCH_DEBUG") == "1":
            raise
        _err(
            f"internal error: {type(exc).__name__}: {exc} "
            "(set LLMBATCH_DEBUG=1 for the traceback, and please report it)"
        )
        raise typer.Exit(70) from None


@contextmanager
def _configured(jobs: str, flags: dict[str, Any], config_path: Path | None) -> Iterator[RunConfig]:
    """Flags over llmbatch.toml, for JOBS (``-`` is spooled to a temporary file, removed after)."""
    from llmbatch._api.options import configured

    with configured(jobs, flags, config_path) as cfg:
        yield cfg


def _flags(params: dict[str, Any], skip: set[str]) -> dict[str, Any]:
    """A command's options as config flags: an unset switch (False) is None, so the file decides."""
    return {
        name: (value or None) if isinstance(value, bool) else value
        for name, value in params.items()
        if name not in skip
    }
