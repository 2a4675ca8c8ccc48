"""The engine as a library (``run_jobs_async``), with a scriptable provider double."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmbatch import ModelRef, RunConfig, run_jobs, run_jobs_async
from tests.conftest import prompts, read_jsonl, write_jsonl
from tests.scripted import ScriptedProvider, factory


def config(tmp_path: Path, n: int, **kw: object) -> RunConfig:
    write_jsonl(tmp_path / "jobs.jsonl", prompts(n))
    cfg = RunConfig(
        jobs=tmp_path / "jobs.jsonl",
        output=tmp_path / "out.jsonl",
        model=ModelRef("sim", "claude-haiku-4-5"),
        quiet=True,
    )
    for key, value in kw.items():
        setattr(cfg, key, value)
    return cfg


async def test_concurrency_is_a_hard_bound_and_is_used(tmp_path: Path) -> None:
    provider = ScriptedProvider(hold=0.02)
    cfg = config(tmp_path, 60, concurrency=5)
    report = await run_jobs_async(cfg, provider_factory=factory(provider))
    assert report.ok == 60
    assert provider.peak == 5
    assert len(provider.sent) == 60


async def test_scripted_faults_are_retried_and_counted(tmp_path: Path) -> None:
    provider = ScriptedProvider(
        {"Question 1: what is 1 + 1?": ["429", "500"], "Question 2: what is 2 + 2?": ["500"]}
    )
    cfg = config(tmp_path, 3, backoff_cap=0.01)
    report = await run_jobs_async(cfg, provider_factory=factory(provider))
    results = {x["id"]: x for x in read_jsonl(tmp_path / "out.jsonl")}
    assert results["job-1"]["attempts"] == 3
    assert results["job-1"]["attempt_errors"] == {"rate_limited": 1, "server_error": 1}
    assert results["job-2"]["attempts"] == 2
    assert report.attempts == 6 == len(provider.sent)
    assert report.errors == {"rate_limited": 1, "server_error": 2}


async def test_budget_holds_under_concurrency(tmp_path: Path) -> None:
    provider = ScriptedProvider(hold=0.01)
    cfg = config(tmp_path, 500, concurrency=32, max_tokens=5, max_cost=0.002)
    report = await run_jobs_async(cfg, provider_factory=factory(provider))
    assert report.stopped_by == "budget" and report.exit_code == 3
    spent = sum(x["cost_usd"] for x in read_jsonl(tmp_path / "out.jsonl"))
    assert spent <= 0.002
    assert report.not_run == 500 - report.ok


def test_run_jobs_blocks_and_returns_the_report(tmp_path: Path) -> None:
    provider = ScriptedProvider()
    report = run_jobs(config(tmp_path, 4), provider_factory=factory(provider))
    assert report.ok == 4 and report.exit_code == 0
    assert report.to_dict()["jobs"]["total"] == 4


@pytest.mark.parametrize("n", [0, 1])
async def test_tiny_inputs(tmp_path: Path, n: int) -> None:
    report = await run_jobs_async(config(tmp_path, n), provider_factory=factory(ScriptedProvider()))
    assert report.ok == n and report.jobs_total == n


async def test_a_run_of_cache_hits_writes_as_it_goes_and_lets_the_loop_turn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Answers from the cache never wait for anything: the run must still write in
    bounded batches (memory flat: a rerun of 200,000 hits once held 2.4 GB) and give
    other tasks turns (a signal, the progress) while it goes."""
    import anyio
    import anyio.lowlevel

    from llmbatch._engine import engine as engine_module
    from llmbatch._engine.sinks import OutputSink

    n = 5000
    cfg = config(tmp_path, n, cache_path=tmp_path / "c.sqlite", concurrency=8)
    first = await run_jobs_async(cfg, provider_factory=factory(ScriptedProvider()))
    assert first.ok == n
    (tmp_path / "out.jsonl").unlink()

    writes: list[int] = []
    real_write = OutputSink.write

    def counting_write(self: OutputSink, results: list) -> None:  # type: ignore[type-arg]
        writes.append(len(results))
        real_write(self, results)

    monkeypatch.setattr(OutputSink, "write", counting_write)
    turns = 0

    async def ticker() -> None:
        nonlocal turns
        while True:
            turns += 1
            await anyio.lowlevel.checkpoint()

    provider = ScriptedProvider()
    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker)
        again = await run_jobs_async(cfg, provider_factory=factory(provider))
        tg.cancel_scope.cancel()
    assert again.ok == n and not provider.sent  # every answer from the cache
    assert len(read_jsonl(tmp_path / "out.jsonl")) == n
    assert sum(writes) == n and max(writes) <= engine_module._WRITE_AT
    assert turns >= n // (engine_module._TURN * 8)  # the loop turned all along
