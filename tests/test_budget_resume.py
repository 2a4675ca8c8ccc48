"""Budget caps checked against the fake's own bill, kill -9 resume, changed jobs, the lock."""

from __future__ import annotations

import random
import signal
from pathlib import Path

import orjson
import pytest

from llmbatch._core.models import ModelRef
from llmbatch._core.pricing import PriceBook
from llmbatch._core.usage import Usage
from tests.conftest import (
    fake_env,
    prompts,
    read_jsonl,
    run_cli,
    start_cli,
    wait_until,
    write_jsonl,
)
from tests.fakeapi import FakeAPI

HAIKU = "anthropic:claude-haiku-4-5"


def fake_bill(fake: FakeAPI) -> float:
    """What the fake's answers cost at list price: the provider's view of the spend."""
    book = PriceBook()
    ref = ModelRef("anthropic", "claude-haiku-4-5")
    total = 0.0
    for rec in fake.records:
        if rec.outcome == "ok":
            cost = book.cost(ref, Usage(rec.input_tokens, rec.output_tokens))
            assert cost is not None
            total += cost
    return total


def test_cost_cap_is_never_exceeded_and_mostly_used(fake: FakeAPI, tmp_path: Path) -> None:
    fake.reply = " ".join(["word"] * 12)
    write_jsonl(tmp_path / "jobs.jsonl", prompts(400))
    cap = 0.01
    args = ["run", "jobs.jsonl", "-m", HAIKU, "--max-tokens", "20", "-c", "4"]
    r = run_cli(*args, "--max-cost", str(cap), "--report", "rep.json", env=fake_env(fake))
    assert r.code == 3, r.output
    assert "budget" in r.stderr
    bill = fake_bill(fake)
    assert bill <= cap
    assert bill >= 0.8 * cap
    report = orjson.loads((tmp_path / "rep.json").read_bytes())
    assert report["stopped_by"] == "budget"
    assert report["jobs"]["not_run"] == 400 - report["jobs"]["ok"]
    assert report["cost_usd"] == pytest.approx(bill, rel=1e-6)

    # Cumulative: the same cap again sends (almost) nothing more.
    before = fake.count()
    r = run_cli(*args, "--max-cost", str(cap), "--quiet", env=fake_env(fake))
    assert r.code == 3
    assert fake_bill(fake) <= cap
    assert fake.count() - before <= 4

    # A higher cap continues, still cumulative.
    r = run_cli(*args, "--max-cost", str(2 * cap), "--quiet", env=fake_env(fake))
    assert r.code == 3
    assert cap < fake_bill(fake) <= 2 * cap

    # No cap: finishes, every job once.
    r = run_cli(*args, "--quiet", env=fake_env(fake))
    assert r.code == 0, r.output
    ids = [x["id"] for x in read_jsonl(tmp_path / "jobs.results.jsonl")]
    assert len(ids) == len(set(ids)) == 400


def test_token_cap(fake: FakeAPI, tmp_path: Path) -> None:
    write_jsonl(tmp_path / "jobs.jsonl", prompts(100))
    r = run_cli(
        "run",
        "jobs.jsonl",
        "-m",
        HAIKU,
        "--max-tokens",
        "20",
        "-c",
        "2",
        "--max-total-tokens",
        "2000",
        "--quiet",
        env=fake_env(fake),
    )
    assert r.code == 3
    billed_in, billed_out = fake.billed()
    assert billed_in + billed_out <= 2000


def test_unknown_price_with_a_cap_sends_nothing(fake: FakeAPI, tmp_path: Path) -> None:
    write_jsonl(tmp_path / "jobs.jsonl", prompts(3))
    r = run_cli(
        "run", "jobs.jsonl", "-m", "openai:my-finetune-xyz", "--max-cost", "5", env=fake_env(fake)
    )
    assert r.code == 2
    assert "openai:my-finetune-xyz" in r.stderr and "[prices." in r.stderr
    assert fake.count() == 0


def test_estimate_sends_nothing(fake: FakeAPI, tmp_path: Path) -> None:
    write_jsonl(tmp_path / "jobs.jsonl", prompts(30))
    r = run_cli("run", "jobs.jsonl", "-m", HAIKU, "--quiet", env=fake_env(fake))
    assert r.code == 0
    write_jsonl(tmp_path / "jobs.jsonl", prompts(30) + prompts(10, prefix="more"))
    sent = fake.count()
    r = run_cli("estimate", "jobs.jsonl", "-m", HAIKU, "--json", env=fake_env(fake))
    assert r.code == 0, r.output
    est = orjson.loads(r.stdout)
    assert est["jobs"] == {"total": 40, "done": 30, "left": 10, "invalid_lines": 0}
    assert est["by_model"][HAIKU]["jobs"] == 10
    assert est["spent_usd_so_far"] > 0
    table = run_cli("estimate", "jobs.jsonl", "-m", HAIKU, env=fake_env(fake))
    assert table.code == 0 and "worst case" in table.stdout
    assert fake.count() == sent


def test_changed_jobs_under_an_old_output_stop_before_sending(
    fake: FakeAPI, tmp_path: Path
) -> None:
    write_jsonl(tmp_path / "jobs.jsonl", prompts(10))
    assert run_cli("run", "jobs.jsonl", "-m", HAIKU, "--quiet", env=fake_env(fake)).code == 0
    sent = fake.count()
    changed = prompts(10)
    changed[3]["prompt"] = "Something else entirely"
    changed[7]["max_tokens"] = 5
    write_jsonl(tmp_path / "jobs.jsonl", changed)
    r = run_cli("run", "jobs.jsonl", "-m", HAIKU, env=fake_env(fake))
    assert r.code == 2
    assert "2 job(s)" in r.stderr and "job-3" in r.stderr and "job-7" in r.stderr
    assert fake.count() == sent
    # A different model is a different request too.
    write_jsonl(tmp_path / "jobs.jsonl", prompts(10))
    r = run_cli("run", "jobs.jsonl", "-m", "openai:gpt-4o-mini", env=fake_env(fake))
    assert r.code == 2 and "10 job(s)" in r.stderr
    assert fake.count() == sent
    # --fresh starts over.
    r = run_cli(
        "run", "jobs.jsonl", "-m", "openai:gpt-4o-mini", "--fresh", "--quiet", env=fake_env(fake)
    )
    assert r.code == 0
    assert fake.count() == sent + 10


def test_a_second_run_on_the_same_output_is_refused(fake: FakeAPI, tmp_path: Path) -> None:
    fake.latency_s = 1.0
    write_jsonl(tmp_path / "jobs.jsonl", prompts(8))
    first = start_cli("run", "jobs.jsonl", "-m", HAIKU, "-c", "2", "--quiet", env=fake_env(fake))
    wait_until(lambda: fake.count() > 0)
    second = run_cli("run", "jobs.jsonl", "-m", HAIKU, env=fake_env(fake))
    assert second.code == 2
    assert "another llmbatch run" in second.stderr
    fake.latency_s = 0.01  # the point is made: the first run may finish quickly now
    first.communicate(timeout=60)
    assert first.returncode == 0
    ids = [x["id"] for x in read_jsonl(tmp_path / "jobs.results.jsonl")]
    assert len(ids) == len(set(ids)) == 8


@pytest.mark.slow
def test_kill_9_at_random_moments_loses_at_most_in_flight(fake: FakeAPI, tmp_path: Path) -> None:
    fake.latency_s = 0.15
    fake.ttft_s = 0.05
    jobs = 200
    concurrency = 8
    write_jsonl(tmp_path / "jobs.jsonl", prompts(jobs))
    args = ["run", "jobs.jsonl", "-m", HAIKU, "-c", str(concurrency), "--quiet"]
    rng = random.Random(11)
    kills = 0
    out = tmp_path / "jobs.results.jsonl"
    for _ in range(4):
        # Killed once the fake has answered a random number more: mid-stream, mid-write,
        # between sends — wherever that lands, however slowly the machine starts Python.
        target = fake.count() + rng.randint(1, 40)
        proc = start_cli(*args, env=fake_env(fake), capture=False)
        wait_until(lambda: fake.count() >= target or proc.poll() is not None)  # noqa: B023
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait(30)
    r = run_cli(*args, env=fake_env(fake))
    assert r.code == 0, r.output
    lines = out.read_bytes().splitlines()
    results = [orjson.loads(line) for line in lines]  # every line parses: none torn
    ids = [x["id"] for x in results]
    assert len(ids) == len(set(ids)) == jobs
    assert kills == 4
    answered = fake.count("ok")
    assert answered <= jobs + concurrency * kills, (answered, kills)
