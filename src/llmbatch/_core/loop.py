"""The event loop of a run llmbatch starts itself (``anyio.run``): uvloop where it is
installed (Linux, macOS), asyncio's own otherwise or with ``LLMBATCH_LOOP=asyncio``.

A run at no latency spends about a twentieth less CPU a job on uvloop; every run
llmbatch starts (the CLI, ``llmbatch.run``, ``run_file``, ``run_jobs``) uses it.
``Runner`` runs on whatever loop its host runs.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio

T = TypeVar("T")


def loop_options() -> dict[str, Any]:
    """anyio's asyncio backend options for a loop of llmbatch's own."""
    if os.environ.get("LLMBATCH_LOOP", "").strip().lower() == "asyncio":
        return {}
    if importlib.util.find_spec("uvloop") is None:
        return {}
    return {"use_uvloop": True}


def run_loop(main: Callable[[], Awaitable[T]]) -> T:
    """``anyio.run(main)`` on the loop :func:`loop_options` chooses."""
    return anyio.run(main, backend_options=loop_options())
