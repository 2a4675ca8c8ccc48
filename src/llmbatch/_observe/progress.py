"""Live progress on stderr: animated on a terminal, a plain status line elsewhere."""

from __future__ import annotations

import sys
import time
from typing import IO, TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from llmbatch._observe.stats import RunStats


class ProgressSink(Protocol):
    """What the engine tells whoever watches the run."""

    def start(self, total: int) -> None: ...

    def update(self, stats: RunStats, spend: float, projected: float | None) -> None: ...

    def tick(self) -> None: ...

    def stop(self) -> None: ...


def show_status(progress: ProgressSink, text: str | None) -> None:
    """What the run waits for before its first job (Ray starting, workers opening), on a
    sink that shows it (``status``); None clears it. A sink without one shows nothing."""
    status = getattr(progress, "status", None)
    if status is not None:
        status(text)


class NoProgress:
    def start(self, total: int) -> None:
        return None

    def update(self, stats: RunStats, spend: float, projected: float | None) -> None:
        return None

    def tick(self) -> None:
        return None

    def stop(self) -> None:
        return None

    def status(self, text: str | None) -> None:
        return None


def _fmt_eta(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds < 0:
        return "--:--"
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class _Counts:
    """What both renderings show, kept from the latest update."""

    def __init__(self) -> None:
        self.total = 0
        self.ok = 0
        self.failed = 0
        self.spend = 0.0
        self.projected: float | None = None
        self.started = time.monotonic()

    @property
    def done(self) -> int:
        return self.ok + self.failed

    def rate(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.done / elapsed if elapsed > 0 else 0.0

    def eta(self) -> float | None:
        rate = self.rate()
        if rate <= 0:
            return None
        return (self.total - self.done) / rate

    def spend_text(self) -> str:
        text = f"${self.spend:,.4f}"
        if self.projected is not None:
            text += f" (→ ~${self.projected:,.4f})"
        return text


class PlainProgress(_Counts):
    """For cron and CI: one status line at most every ``interval`` seconds."""

    def __init__(self, stream: IO[str] | None = None, interval: float = 5.0) -> None:
        super().__init__()
        self._stream = stream or sys.stderr
        self._interval = interval
        self._last = 0.0

    def start(self, total: int) -> None:
        self.total = total
        self.started = time.monotonic()
        self._last = self.started

    def update(self, stats: RunStats, spend: float, projected: float | None) -> None:
        self.ok, self.failed, self.spend, self.projected = stats.ok, stats.failed, spend, projected

    def tick(self) -> None:
        now = time.monotonic()
        if now - self._last >= self._interval:
            self._last = now
            self._print()

    def status(self, text: str | None) -> None:
        """Said at once, a line of its own (cron and CI logs keep it)."""
        if text:
            self._stream.write(f"llmbatch: {text}\n")
            self._stream.flush()

    def _print(self) -> None:
        elapsed = time.monotonic() - self.started
        self._stream.write(
            f"llmbatch: {self.done}/{self.total} done ({self.ok} ok, {self.failed} failed) · "
            f"{self.rate():.1f} jobs/s · elapsed {_fmt_eta(elapsed)} · "
            f"ETA {_fmt_eta(self.eta())} · "
            f"spend {self.spend_text()}\n"
        )
        self._stream.flush()

    def stop(self) -> None:
        if self.done:
            self._print()


class RichProgress(_Counts):
    """An animated bar with counts, rate, elapsed, ETA and spend."""

    def __init__(self) -> None:
        super().__init__()
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._progress = Progress(
            TextColumn("[bold]llmbatch[/]{task.fields[status]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("[green]{task.fields[ok]} ok[/] [red]{task.fields[failed]} failed[/]"),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[spend]}"),
            console=Console(stderr=True),
            refresh_per_second=8,
            transient=False,
        )
        self._task = self._progress.add_task(
            "run", total=0, ok=0, failed=0, rate="", spend="$0", status="", start=False
        )

    def start(self, total: int) -> None:
        self.total = total
        self.started = time.monotonic()
        self._progress.update(self._task, total=total)
        self._progress.start_task(self._task)
        self._progress.start()

    def update(self, stats: RunStats, spend: float, projected: float | None) -> None:
        self.ok, self.failed, self.spend, self.projected = stats.ok, stats.failed, spend, projected

    def tick(self) -> None:
        self._progress.update(
            self._task,
            completed=self.done,
            ok=self.ok,
            failed=self.failed,
            rate=f"{self.rate():.1f}/s",
            spend=self.spend_text(),
        )

    def status(self, text: str | None) -> None:
        """Shown beside the name until cleared (None)."""
        from rich.markup import escape

        status = f" [cyan]{escape(text)}[/]" if text else ""
        self._progress.update(self._task, status=status)

    def stop(self) -> None:
        self.tick()
        self._progress.stop()


def make_progress(quiet: bool) -> ProgressSink:
    if quiet:
        return NoProgress()
    if sys.stderr.isatty():
        return RichProgress()
    return PlainProgress()
