"""The engine as a library (``run_jobs_async``), with a scriptable provider double."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

from llmbatch import ModelRef, RateLimited, RunConfig, ServerError, run_jobs, run_jobs_async
from llmbatch._jobs import Request
from llmbatch._usage import Usage
from llmbatch.providers._base import Answer, Provider
from tests.conftest import prompts, read_jsonl, write_jsonl


class ScriptedProvider:
    """Answers from a script per job prompt; records what was sent and how many at once."""

    name = "scripted"

    def __init__(self, script: dict[str, list[str]] | None = None, hold: float = 0.0) -> None:
        self.notes: set[str] = set()
        self.script = defaultdict(list, script or {})
        self.hold = hold
        self.sent: list[Request] = []
        self.in_flight = 0
        self.peak = 0

    async def send(self, model: str, request: Request, time_limit: float) -> Answer:
        self.sent.append(request)
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            await anyio.sleep(self.hold)
            prompt = str(request.messages[0]["content"])
            steps = self.script[prompt]
            step = steps.pop(0) if steps else "ok"
            if step == "429":
                raise RateLimited("slow down", status=429, retry_after=0.0)
            if step == "500":
                raise ServerError("oops", status=500)
            return Answer(
                text=f"answer to {prompt}",
                usage=Usage(10, 5),
                stop_reason="end_turn",
                latency_ms=1.0,
                ttft_ms=0.5,
            )
        finally:
            self.in_flight -= 1

    async def aclose(self) -> None:
        return None


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


def factory(provider: ScriptedProvider) -> Callable[[str, RunConfig], Provider]:
    def make(name: str, cfg: RunConfig) -> Provider:
        return provider

    return make


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
