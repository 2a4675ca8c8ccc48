"""Where results go: the output file, a list, or a callback (the engine's ``ResultSink``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from llmbatch._core.results import JobResult, ResultWriter


class OutputSink:
    """Result lines appended to the output (stdout when None): one write() a batch,
    fsync at most every ``fsync_interval`` seconds and at close."""

    def __init__(self, path: Path | None, fsync_interval: float = 1.0) -> None:
        self.writer = ResultWriter(path, fsync_interval)

    def write(self, results: Sequence[JobResult]) -> None:
        self.writer.write([r.to_json() for r in results])

    def write_lines(self, lines: Sequence[bytes]) -> None:
        """Result lines already encoded (``JobResult.to_json``, by a Ray worker say)."""
        self.writer.write(list(lines))

    def close(self) -> None:
        self.writer.close()


class CollectSink:
    """Keeps every result in memory, in completion order."""

    def __init__(self) -> None:
        self.results: list[JobResult] = []

    def write(self, results: Sequence[JobResult]) -> None:
        self.results.extend(results)

    def close(self) -> None:
        return None


class CallbackSink:
    """Hands each batch of results to a function (it must not block)."""

    def __init__(self, callback: Callable[[Sequence[JobResult]], None]) -> None:
        self.callback = callback

    def write(self, results: Sequence[JobResult]) -> None:
        self.callback(results)

    def close(self) -> None:
        return None
