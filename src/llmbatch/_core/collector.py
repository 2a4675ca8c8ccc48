"""The garbage collector as a process of llmbatch's own sets it: the CLI's, a Ray worker's."""

from __future__ import annotations

import gc


def quiet_gc() -> None:
    """A run allocates a few small objects a job and keeps few of them: the collector's
    default (a pass every 700 allocations, full passes over everything imported) costs
    10–15 µs a job here. What is loaded by now is frozen out of its passes, and passes
    come every 50,000 allocations. Only processes of llmbatch's own do this (the CLI, a
    Ray worker): the Python API leaves the host program's collector alone."""
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)
