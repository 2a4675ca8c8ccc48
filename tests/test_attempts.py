"""The attempt loop in-process: budgets used to the cap, every request counted once,
foreign errors contained, auth refusals not recorded."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmbatch import ModelRef, RunConfig
from llmbatch._core.events import AttemptEnded, BudgetStopped, ListSink
from llmbatch._core.models import ModelRef as Ref
from llmbatch._core.pricing import PriceBook
from llmbatch._core.stops import StopReason
from llmbatch._core.usage import Usage
from llmbatch._run.online import FileRun as Engine
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


async def test_every_request_is_counted_once_under_the_model_it_went_to(tmp_path: Path) -> None:
    # The primary always fails (transient); jobs fall back to the second model.
    provider = ScriptedProvider(models={"primary": "500"})
    cfg = config(
        tmp_path,
        20,
        model=ModelRef("sim", "primary"),
        fallback=[ModelRef("sim", "backup")],
        max_attempts=2,
    )
    sink = ListSink()
    report = await Engine(
        cfg, provider_factory=factory(provider), handle_signals=False, sinks=[sink]
    ).run()
    assert report.ok == 20
    assert report.attempts == len(provider.sent) == len(sink.of(AttemptEnded))
    primary = provider.sent_models.count("primary")
    assert report.by_model["sim:primary"]["attempts"] == primary > 0
    assert report.by_model["sim:backup"]["attempts"] == 20
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


async def test_a_foreign_exception_fails_the_attempt_not_the_run(tmp_path: Path) -> None:
    provider = ScriptedProvider({"Question 1: what is 1 + 1?": ["foreign", "foreign"]})
    cfg = config(tmp_path, 5)
    report = await Engine(cfg, provider_factory=factory(provider), handle_signals=False).run()
    assert report.ok == 5
    line = {x["id"]: x for x in read_jsonl(tmp_path / "out.jsonl")}["job-1"]
    assert line["attempts"] == 3 and line["attempt_errors"] == {"other": 2}


async def test_auth_refusals_are_not_recorded_and_a_rerun_finishes(tmp_path: Path) -> None:
    provider = ScriptedProvider(default="401")
    cfg = config(tmp_path, 40, concurrency=2)
    engine = Engine(cfg, provider_factory=factory(provider), handle_signals=False)
    report = await engine.run()
    assert report.stopped_by == "auth" and report.exit_code == 1
    assert len(provider.sent) < 10
    assert read_jsonl(tmp_path / "out.jsonl") == []
    assert engine.fatal is not None and "check the API key" in engine.fatal

    # The key fixed: the same command runs every job, no --retry-failed needed.
    provider.default = "ok"
    report = await Engine(cfg, provider_factory=factory(provider), handle_signals=False).run()
    assert report.ok == 40 and report.exit_code == 0


async def test_a_lone_auth_refusal_after_answers_is_a_failed_job(tmp_path: Path) -> None:
    provider = ScriptedProvider({"Question 3: what is 3 + 3?": ["401"]}, hold=0.001)
    cfg = config(tmp_path, 6, concurrency=1)
    report = await Engine(cfg, provider_factory=factory(provider), handle_signals=False).run()
    assert report.ok == 5 and report.failed == 1 and report.stopped_by is None
    failed = [x for x in read_jsonl(tmp_path / "out.jsonl") if x["status"] == "failed"]
    assert failed[0]["error"]["type"] == "auth"


async def test_workers_follow_the_work_not_the_flag(tmp_path: Path) -> None:
    cfg = config(tmp_path, 2, concurrency=1_000_000)
    engine = Engine(cfg, provider_factory=factory(ScriptedProvider()), handle_signals=False)
    report = await engine.run()
    assert report.ok == 2
    assert engine.workers == 2
