"""The attempt loop in-process: budgets used to the cap, every request counted once,
foreign errors contained, auth refusals not recorded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import llmbatch
from llmbatch import ModelRef, RunConfig
from llmbatch._core.events import AttemptEnded, BudgetStopped, ListSink
from llmbatch._core.models import ModelRef as Ref
from llmbatch._core.pricing import PriceBook
from llmbatch._core.stops import StopReason
from llmbatch._core.usage import Usage
from llmbatch._run.online import FileRun as Engine
from llmbatch.testing import MockProvider
from tests.conftest import fake_env, prompts, read_jsonl, write_jsonl
from tests.fakeapi import FakeAPI
from tests.scripted import ScriptedProvider, factory

HAIKU = ModelRef("anthropic", "claude-haiku-4-5")
HAIKU_REF = Ref("anthropic", "claude-haiku-4-5")


def config(tmp_path: Path, n: int, **kw: object) -> RunConfig:
    write_jsonl(tmp_path / "jobs.jsonl", prompts(n))
    cfg = RunConfig(
        jobs=tmp_path / "jobs.jsonl",
        output=tmp_path / "out.jsonl",
        model=ModelRef("sim", "claude-haiku-4-5"),
        quiet=True,
        backoff_cap=0.001,
    )
    for key, value in kw.items():
        setattr(cfg, key, value)
    return cfg


def fake_bill(fake: FakeAPI) -> tuple[float, int]:
    """(dollars, tokens) of every answer the fake gave, at list price."""
    book = PriceBook()
    cost, tokens = 0.0, 0
    for rec in fake.records:
        if rec.outcome == "ok":
            c = book.cost(
                Ref("anthropic", "claude-haiku-4-5"), Usage(rec.input_tokens, rec.output_tokens)
            )
            assert c is not None
            cost += c
            tokens += rec.input_tokens + rec.output_tokens
    return cost, tokens


@pytest.fixture
def fake_envs(fake: FakeAPI, monkeypatch: pytest.MonkeyPatch) -> FakeAPI:
    for name, value in fake_env(fake).items():
        monkeypatch.setenv(name, value)
    return fake


@pytest.mark.parametrize("concurrency", [32, 64])
async def test_cost_cap_is_used_to_the_cap_under_concurrency(
    concurrency: int, fake_envs: FakeAPI, tmp_path: Path
) -> None:
    fake_envs.reply = " ".join(["word"] * 150)
    cap = 0.06
    cfg = config(tmp_path, 300, model=HAIKU, concurrency=concurrency, max_tokens=200, max_cost=cap)
    report = await Engine(cfg, handle_signals=False).run()
    bill, _ = fake_bill(fake_envs)
    assert report.stopped_by == "budget" and report.exit_code == 3
    assert bill <= cap
    assert bill >= 0.95 * cap, f"stopped at {bill / cap:.0%} of the cap"
    assert report.cost_usd == pytest.approx(bill, rel=1e-6)


async def test_token_cap_is_used_to_the_cap_under_concurrency(
    fake_envs: FakeAPI, tmp_path: Path
) -> None:
    fake_envs.reply = " ".join(["word"] * 150)
    cap = 20_000
    cfg = config(tmp_path, 300, model=HAIKU, concurrency=32, max_tokens=200, max_total_tokens=cap)
    report = await Engine(cfg, handle_signals=False).run()
    _, tokens = fake_bill(fake_envs)
    assert report.stopped_by == "budget"
    assert 0.95 * cap <= tokens <= cap


async def test_a_job_too_big_for_the_cap_is_named(tmp_path: Path) -> None:
    cfg = config(tmp_path, 3, max_tokens=100_000, max_cost=0.01)
    sink = ListSink()
    engine = Engine(cfg, handle_signals=False, sinks=[sink])
    report = await engine.run()
    assert report.stopped_by == "budget" and report.attempts == 0
    stops = sink.of(BudgetStopped)
    assert len(stops) == 1 and "job-0" in stops[0].message
    assert engine.fatal is not None and "job-0" in engine.fatal


async def test_every_request_is_counted_once_under_the_model_it_went_to() -> None:
    # The primary always fails (transient); jobs fall back to the second model.
    mock = MockProvider(default=lambda sent: 500 if sent.model == "primary" else "ok")
    sink = ListSink()
    async with llmbatch.Runner(
        "mock:primary",
        fallback=["mock:backup"],
        provider={"mock": mock},
        max_attempts=2,
        sinks=[sink],
    ) as runner:
        results = await runner.run(prompts(20))
    report = runner.report()
    assert report.ok == len(results) == 20
    assert report.attempts == len(mock.sent) == len(sink.of(AttemptEnded))
    primary = [s.model for s in mock.sent].count("primary")
    assert report.by_model["mock:primary"]["attempts"] == primary > 0
    assert report.by_model["mock:backup"]["attempts"] == 20
    assert report.errors == {"server_error": primary}


async def test_attempts_of_jobs_cut_mid_retry_still_count(tmp_path: Path) -> None:
    provider = ScriptedProvider(default="500", hold=0.001)
    cfg = config(tmp_path, 10, concurrency=4, max_attempts=50, backoff_cap=0.01)
    engine = Engine(cfg, provider_factory=factory(provider), handle_signals=False)

    class StopAfter:
        def emit(self, event: object) -> None:
            if isinstance(event, AttemptEnded) and event.n >= 3:
                engine.stop(StopReason.SIGNAL)

    engine.bus.add(StopAfter())
    report = await engine.run()
    assert report.stopped_by == "signal"
    assert read_jsonl(tmp_path / "out.jsonl") == []  # cut mid-retry: resumable
    assert report.attempts == len(provider.sent) >= 3
    assert report.errors == {"server_error": len(provider.sent)}


async def test_a_foreign_exception_fails_the_attempt_not_the_run() -> None:
    bug = AttributeError("'list' object has no attribute 'get'")  # as an adapter bug raises
    mock = MockProvider(by_prompt={"Question 1: what is 1 + 1?": [bug, bug]})
    results = await run_mock(mock, prompts(5))
    assert [r.status for r in results] == ["ok"] * 5
    line = {r.id: r.to_dict() for r in results}["job-1"]
    assert line["attempts"] == 3 and line["attempt_errors"] == {"other": 2}


async def test_auth_refusals_are_not_recorded_and_a_rerun_finishes() -> None:
    mock = MockProvider(default=401)
    async with llmbatch.Runner(provider=mock, concurrency=2) as runner:
        results = await runner.run(prompts(40))
        report = runner.report()
    assert results == [] and len(mock.sent) < 10
    final = runner.report()
    assert final.stopped_by == "auth" and final.exit_code == 1
    assert final.notes and "check the API key" in final.notes[0]
    assert report.ok == 0

    # The key fixed: the same requests all run, no --retry-failed needed.
    mock.default = "ok"
    results = await run_mock(mock, prompts(40), concurrency=2)
    assert len(results) == 40 and all(r.ok for r in results)


async def test_a_lone_auth_refusal_after_answers_is_a_failed_job() -> None:
    mock = MockProvider(by_prompt={"Question 3: what is 3 + 3?": [401]}, delay=0.001)
    async with llmbatch.Runner(provider=mock, concurrency=1) as runner:
        results = await runner.run(prompts(6))
    report = runner.report()
    assert report.ok == 5 and report.failed == 1 and report.stopped_by is None
    failed = [r for r in results if r.status == "failed"]
    assert failed[0].error is not None and failed[0].error.type == "auth"


async def test_workers_follow_the_work_not_the_flag() -> None:
    async with llmbatch.Runner(provider=MockProvider(), concurrency=10_000) as runner:
        results = await runner.run(prompts(2))
        assert len(results) == 2
        assert runner.session.workers == 2


async def run_mock(
    mock: MockProvider, requests: list[dict[str, object]], **options: Any
) -> list[llmbatch.Result]:
    async with llmbatch.Runner(provider=mock, **options) as runner:
        return await runner.run(requests)
