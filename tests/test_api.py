"""The public Python API: ``llmbatch.run``, ``llmbatch.Runner``, ``MockProvider``, custom
providers — requests and results in memory, no side effect unless asked."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import orjson
import pytest

import llmbatch
from llmbatch.testing import MockProvider

SIM = "sim:claude-haiku-4-5"


def all_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() or p.is_symlink())


def test_run_returns_results_in_memory_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # clean_environ: cwd, XDG_CACHE_HOME and XDG_STATE_HOME are all under tmp_path.
    assert Path.cwd() == tmp_path and os.environ["XDG_STATE_HOME"].startswith(str(tmp_path))
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    before = all_files(tmp_path)
    requests: list[Any] = [
        "What is 2 + 2?",
        {"id": "msg", "messages": [{"role": "user", "content": "hi"}], "metadata": {"k": 1}},
        llmbatch.Request(prompt="Rate this", id=7, max_tokens=50),
        {"custom_id": "ob", "body": {"model": SIM, "messages": [{"role": "user", "content": "y"}]}},
    ]
    results = llmbatch.run(requests, model=SIM, concurrency=4, max_cost=1.0)
    assert [r.id for r in results] == ["request-0", "msg", "7", "ob"]  # in request order
    assert all(isinstance(r, llmbatch.Result) and r.ok and r.output for r in results)
    assert results[1].metadata == {"k": 1}
    assert all_files(tmp_path) == before  # no output, lock, history, cache or ledger


def test_result_to_dict_is_the_output_line(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    [result] = llmbatch.run(["hello"], model=SIM, output=out)
    line = orjson.loads(out.read_bytes().splitlines()[0])
    assert result.to_dict() == line
    assert result.usage == llmbatch.Usage(**{k: v for k, v in line["usage"].items()})
    with pytest.raises(AttributeError):
        result.status = "failed"  # type: ignore[misc]  # frozen


def test_cache_is_opt_in(tmp_path: Path) -> None:
    cache = tmp_path / "c.sqlite"
    first = llmbatch.run(["same"], model=SIM, cache=cache)
    again = llmbatch.run(["same"], model=SIM, cache=cache)
    assert cache.exists() and first[0].output == again[0].output
    assert again[0].cache is not None and again[0].cache["hit"]


def test_a_runner_s_second_call_takes_what_its_first_kept_in_a_new_cache(
    tmp_path: Path,
) -> None:
    """A new cache file is not asked for jobs' own keys within one call; a later call of
    the same runner asks it (the first call's answers are there to take)."""

    async def main() -> tuple[list[llmbatch.Result], list[llmbatch.Result]]:
        async with llmbatch.Runner(model=SIM, cache=tmp_path / "new.sqlite") as runner:
            first = await runner.run([{"id": f"j{i}", "prompt": f"q{i}"} for i in range(300)])
            assert runner.session.services.cache is not None
            runner.session.services.cache.flush()  # on the file, not only in memory
            again = await runner.run([{"id": f"j{i}", "prompt": f"q{i}"} for i in range(300)])
            return first, again

    first, again = asyncio.run(main())
    assert all(r.cache is None for r in first)
    assert all(r.cache is not None and r.cache["hit"] for r in again)
    assert [r.output for r in again] == [r.output for r in first]


def test_bad_requests_named_by_index_nothing_sent() -> None:
    mock = MockProvider()
    with pytest.raises(llmbatch.InputError) as info:
        llmbatch.run(["fine", {"prompt": ""}, {"id": 3}, 42], provider=mock)  # type: ignore[list-item]
    text = str(info.value)
    assert "request 1:" in text and '"prompt" must be a non-empty string' in text
    assert "request 2:" in text and "request 3:" in text
    assert mock.sent == []


def test_sync_run_inside_a_loop_names_the_async_form() -> None:
    async def inside() -> None:
        llmbatch.run(["x"], model=SIM)

    with pytest.raises(RuntimeError, match=r"(?s)running event loop.*llmbatch\.Runner"):
        asyncio.run(inside())


def test_runner_inside_a_running_loop_keeps_limits_across_calls() -> None:
    async def main() -> tuple[list[str], int, llmbatch.RunReport]:
        async with llmbatch.Runner(model=SIM, concurrency=3, rpm=6000) as runner:
            streamed = [r.id async for r in runner.stream([f"q{i}" for i in range(6)])]
            gates = dict(runner.session.services.gates)
            more = await runner.run([{"id": "z", "prompt": "again"}])
            assert runner.session.services.gates == gates  # the same limiter objects
            return streamed, len(more), runner.report()

    streamed, more, report = asyncio.run(main())
    assert sorted(streamed) == [f"request-{i}" for i in range(6)] and more == 1
    assert report.ok == 7 and report.output is None


def test_mock_provider_429_then_answer_counts_two_attempts() -> None:
    mock = MockProvider([429, "hello"])
    [result] = llmbatch.run(["hi"], provider=mock, backoff_cap=0.01)
    assert result.ok and result.output == "hello"
    assert result.attempts == 2 and result.attempt_errors == {"rate_limited": 1}
    assert [s.prompt for s in mock.sent] == ["hi", "hi"] and mock.closed


def test_failed_job_is_a_failed_result_not_an_exception() -> None:
    mock = MockProvider(by_prompt={"bad": [400]})
    results = llmbatch.run(["good", "bad"], provider=mock)
    assert [r.status for r in results] == ["ok", "failed"]
    assert results[1].error is not None and results[1].error.status == 400


class Upper:
    """A custom provider using only public names."""

    name = "upper"

    def __init__(self) -> None:
        self.notes: set[str] = set()
        self.models: list[str] = []

    async def send(
        self, model: str, request: llmbatch.ProviderRequest, time_limit: float
    ) -> llmbatch.Answer:
        self.models.append(model)
        text = str(request.messages[-1]["content"]).upper()
        return llmbatch.Answer(text, llmbatch.Usage(3, 4), "end_turn", 1.0, None)

    async def aclose(self) -> None:
        return None


def test_custom_provider_object_and_mapping() -> None:
    upper: llmbatch.Provider = Upper()
    [r] = llmbatch.run(["shout"], provider=upper, model="loud-1")
    assert (r.output, r.provider, r.model) == ("SHOUT", "upper", "loud-1")
    mock = MockProvider(name="mock")
    results = llmbatch.run(
        [{"prompt": "a", "model": "upper:u1"}, {"prompt": "b", "model": "mock:m1"}],
        provider={"upper": Upper(), "mock": mock},
    )
    assert [r.output for r in results] == ["A", "echo: b"]
    assert [s.model for s in mock.sent] == ["m1"]


def test_max_cost_and_events_through_the_api() -> None:
    sink = _Collect()
    results = llmbatch.run(
        [f"q{i}" for i in range(40)], model=SIM, max_cost=0.01, concurrency=2, sinks=[sink]
    )
    assert 0 < len(results) < 40  # the cap stopped it; the rest are left
    assert sum(r.cost_usd or 0 for r in results) <= 0.01
    kinds = {type(e).__name__ for e in sink.events}
    assert {"AttemptEnded", "JobEnded", "RunEnded"} <= kinds


class _Collect:
    def __init__(self) -> None:
        self.events: list[Any] = []

    def emit(self, event: Any) -> None:
        self.events.append(event)


def test_result_lines_read_back_fast_are_read_back_right(tmp_path: Path) -> None:
    from llmbatch._core.results import JobResult

    out = tmp_path / "out.jsonl"
    mock = MockProvider([429, "fine"], by_prompt={"bad": [400]})
    llmbatch.run(["a", "bad", {"prompt": "m", "metadata": [1]}], provider=mock, output=out)
    for raw in out.read_bytes().splitlines():
        d = orjson.loads(raw)
        assert JobResult.from_written(d) == JobResult.from_line(d)
        assert JobResult.from_written(d).to_json() == raw + b"\n"
