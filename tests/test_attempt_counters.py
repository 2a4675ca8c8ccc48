"""Attempts reach the run's statistics and timeline by their figures; an ``AttemptEnded``
is built only when some sink reads it, and either way the report counts the same."""

from __future__ import annotations

import copy
import pickle
from typing import Any

import pytest

import llmbatch
from llmbatch._core.events import AttemptEnded, AttemptFigures, EventBus, JobEnded, ListSink
from llmbatch._core.models import ModelRef
from llmbatch._engine.events import attempt_ended
from llmbatch._observe.stats import RunStats
from llmbatch._observe.timeline import TimelineRecorder
from llmbatch.testing import MockProvider


def _script() -> MockProvider:
    # A 429, then answers: two attempts for the first job, one for each other.
    return MockProvider([429, "a", "b", "c"])


def test_no_attempt_event_is_built_when_no_sink_reads_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    built: list[Any] = []
    real = attempt_ended

    def counting(*args: Any) -> AttemptEnded:
        built.append(args)
        return real(*args)

    monkeypatch.setattr("llmbatch._engine.events.attempt_ended", counting)

    async def quiet() -> llmbatch.RunReport:
        async with llmbatch.Runner(provider=_script(), model="m1", concurrency=1) as runner:
            await runner.run(["x", "y", "z"])
            return runner.report()

    import anyio

    report = anyio.run(quiet)
    assert built == []  # the statistics and the timeline counted from the figures
    assert (report.ok, report.attempts) == (3, 4)
    assert report.errors == {"rate_limited": 1}

    sink = ListSink()
    results = llmbatch.run(["x", "y", "z"], provider=_script(), model="m1", sinks=[sink],
                           concurrency=1)  # fmt: skip
    assert len(built) == 4  # a sink reads them: one event an attempt
    ended = sink.of(AttemptEnded)
    assert [e.outcome for e in ended] == ["rate_limited", "ok", "ok", "ok"]
    assert sorted(e.result.id for e in sink.of(JobEnded)) == [r.id for r in results]
    assert sum(r.attempts for r in results) == 4


def test_counted_and_emitted_attempts_give_the_same_statistics() -> None:
    figures = AttemptFigures(10.0, 9.5, "openai", "gpt-x", "rate_limited", 12, 0, None)
    ok = AttemptFigures(11.0, 10.5, "openai", "gpt-x", "ok", 12, 30, 0.002)
    by_count, by_event = RunStats(), RunStats()
    lines_count, lines_event = TimelineRecorder(), TimelineRecorder()
    for f in (figures, ok):
        by_count.count_attempt(f)
        lines_count.count_attempt(f)
        e = AttemptEnded(f[0], f[1], "j", f[2], f[3], 1, f[4], None, None, None, f[5], f[6],
                         f[7], None, None)  # fmt: skip
        by_event.emit(e)
        lines_event.emit(e)

    def figures_of(s: RunStats) -> tuple[Any, ...]:
        return (s.attempts, s.errors, s.input_tokens, s.output_tokens, s.cost_usd,
                s.by_model, s.unpriced_models)  # fmt: skip

    assert figures_of(by_count) == figures_of(by_event)
    assert by_count.attempts == 2 and by_count.errors == {"rate_limited": 1}
    assert lines_count.timeline() == lines_event.timeline()


def test_a_counter_that_raises_is_turned_off_and_the_rest_go_on(
    capsys: pytest.CaptureFixture[str],
) -> None:
    class Broken:
        def emit(self, event: Any) -> None:
            pass

        def count_attempt(self, f: AttemptFigures) -> None:
            raise RuntimeError("boom")

    stats, broken, reader = RunStats(), Broken(), ListSink()
    bus = EventBus([broken, stats, reader])
    assert bus.counters == [broken, stats] and bus.has_readers
    bus.count_attempt(AttemptFigures(1.0, 0.5, "sim", "m", "ok", 1, 2, 0.0))
    bus.count_attempt(AttemptFigures(2.0, 1.5, "sim", "m", "ok", 1, 2, 0.0))
    assert stats.attempts == 2
    assert bus.sinks == [stats, reader] and bus.counters == [stats]
    assert "Broken failed and was turned off" in capsys.readouterr().err
    bus.remove(reader)
    assert not bus.has_readers


def test_a_model_ref_is_one_object_per_name_here_and_anew_in_another_process() -> None:
    ref = ModelRef("sim", "m1")
    assert ModelRef("sim", "m1") is ref and ModelRef("sim", "m2") != ref
    assert {ref: 1}[ModelRef("sim", "m1")] == 1
    assert pickle.loads(pickle.dumps(ref)) is ref
    assert copy.copy(ref) is ref and copy.deepcopy({"r": ref})["r"] is ref
    # What is pickled is the provider and the model, never this process's hash or id.
    assert pickle.dumps(ref).count(str(hash(ref)).encode()) == 0
    assert (ref.provider, ref.model, str(ref)) == ("sim", "m1", "sim:m1")
    assert repr(ref) == "ModelRef(provider='sim', model='m1')"
    with pytest.raises(AttributeError, match="immutable"):
        ref.model = "m2"
