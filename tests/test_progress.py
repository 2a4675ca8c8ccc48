"""What a run waits for before its first job (``run --ray``: Ray starting, its workers
opening) is shown by the progress: a line at once for cron and CI, beside the bar on a
terminal; a progress sink of the caller's own without ``status`` shows nothing."""

from __future__ import annotations

import io

from llmbatch._observe.progress import (
    NoProgress,
    PlainProgress,
    RichProgress,
    show_status,
)


def test_plain_progress_says_the_status_at_once_on_a_line_of_its_own() -> None:
    stream = io.StringIO()
    progress = PlainProgress(stream, interval=3600.0)
    progress.start(10)
    show_status(progress, "starting a local Ray…")
    show_status(progress, "Ray workers ready: 1/2")
    show_status(progress, None)  # cleared: nothing to say
    said = stream.getvalue().splitlines()
    assert said == ["llmbatch: starting a local Ray…", "llmbatch: Ray workers ready: 1/2"]


def test_rich_progress_shows_the_status_beside_its_name_until_cleared() -> None:
    progress = RichProgress()
    (task,) = progress._progress.tasks
    show_status(progress, "joining Ray [at] 10.0.0.1:6379…")  # markup in it stays text
    assert task.fields["status"] == " [cyan]joining Ray \\[at] 10.0.0.1:6379…[/]"
    show_status(progress, None)
    assert task.fields["status"] == ""


def test_a_sink_without_status_is_left_alone() -> None:
    class Counting:  # a caller's own ProgressSink, from before ``status``
        def __init__(self) -> None:
            self.calls: list[str] = []

        def start(self, total: int) -> None:
            self.calls.append("start")

    sink = Counting()
    show_status(sink, "starting a local Ray…")  # type: ignore[arg-type]
    show_status(NoProgress(), "starting a local Ray…")
    assert sink.calls == []
