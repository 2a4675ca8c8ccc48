"""Several llmbatch processes on one key and one budget (SPEC §10), against the loopback fake.

The fake is one server in this process, so its rate limit (``window_limit`` per
``window_s``) and its bill cover every process together.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from subprocess import DEVNULL

import pytest

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
from tests.redis_server import RedisServer

MODEL = "anthropic:claude-haiku-4-5"  # $1 / $5 per million tokens
CAP = 0.05


def bill(api: FakeAPI) -> float:
    """What the provider would charge for every answer it gave, in USD."""
    tokens_in, tokens_out = api.billed()
    return tokens_in * 1e-6 + tokens_out * 5e-6


# Starts `llmbatch ARGS` once the whole group is imported and ready, so the runs
# overlap even when a loaded machine takes seconds to start a Python process.
_SYNCED = """
import os, sys, time
from llmbatch.cli import main
ready, go = sys.argv[1], sys.argv[2]
open(ready, "w").close()
while not os.path.exists(go):
    time.sleep(0.005)
sys.argv = ["llmbatch", *sys.argv[3:]]
main()
"""


def start_runs(
    tmp_path: Path, api: FakeAPI, n: int, jobs_each: int, *args: str, env: dict[str, str]
) -> list[subprocess.Popen[bytes]]:
    """``n`` runs of ``jobs_each`` jobs each on the fake, started together."""
    procs = []
    go = tmp_path / "go"
    go.unlink(missing_ok=True)
    full_env = {**os.environ, **fake_env(api), **env}
    for i in range(n):
        rows = prompts(jobs_each, prefix=f"p{i}")
        for row in rows:
            # ~110 input tokens: about 300 answers fill the $0.05 of the budget tests.
            row["prompt"] += " Some context." * 30
        jobs = write_jsonl(tmp_path / f"jobs{i}.jsonl", rows)
        cmd = [sys.executable, "-c", _SYNCED, str(tmp_path / f"ready{i}"), str(go)]
        cmd += ["run", str(jobs), "-m", MODEL, "--quiet", *args]
        procs.append(subprocess.Popen(cmd, env=full_env, stdout=DEVNULL, stderr=DEVNULL))
    wait_until(lambda: all((tmp_path / f"ready{i}").exists() for i in range(n)))
    go.touch()
    return procs


def wait_all(procs: list[subprocess.Popen[bytes]]) -> list[int]:
    return [p.wait(timeout=120) for p in procs]


def peak_pace(api: FakeAPI, window_s: float = 3.0) -> float:
    """Answers per second in the busiest ``window_s`` (a loaded machine starts the
    processes seconds apart, so the whole span would measure start-up, not pacing)."""
    times = sorted(r.at for r in api.records if r.outcome == "ok")
    best = 0
    j = 0
    for i, t in enumerate(times):
        while times[j] <= t - window_s:
            j += 1
        best = max(best, i - j + 1)
    return best / window_s


@pytest.mark.slow
def test_three_runs_share_one_rpm(tmp_path: Path, redis_server: RedisServer) -> None:
    """--rpm 3000 on three runs: shared, they keep under the key's limit and near it."""
    api = FakeAPI(window_limit=100, window_s=2.0).start()  # 3,000 a minute
    try:
        # 120 jobs each (~2.4 s of the shared pace): on a loaded machine the three start
        # a second or two apart, and the busiest window must still hold two at once.
        procs = start_runs(
            tmp_path, api, 3, 120, "--rpm", "3000", "--shared", redis_server.url, env={}
        )
        assert wait_all(procs) == [0, 0, 0]
        outcomes = api.outcomes()
        assert outcomes["429"] <= 0.01 * api.count()
        assert peak_pace(api, window_s=2.0) >= 0.9 * 50.0
    finally:
        api.stop()

    alone = FakeAPI(window_limit=100, window_s=2.0).start()
    try:
        (tmp_path / "alone").mkdir()
        procs = start_runs(tmp_path / "alone", alone, 3, 50, "--rpm", "3000", env={})
        wait_all(procs)
        # Each paces itself at the key's limit: together three times too fast (150 sends
        # in ~1 s where 100 per 2 s pass), caught only by 429s and "none remaining" pauses.
        assert alone.outcomes()["429"] > 0.01 * alone.count()
    finally:
        alone.stop()


def check_budget(api: FakeAPI, codes: list[int], killed: int = 0) -> None:
    spent = bill(api)
    assert spent <= CAP
    assert spent >= 0.9 * CAP, spent
    assert codes.count(4) >= len(codes) - killed - 1  # "window full; run again later"
    assert all(c in (0, 4, -signal.SIGKILL) for c in codes)


BUDGET_ARGS = ("--budget-per-hour", str(CAP), "--max-tokens", "20", "-c", "4")


@pytest.mark.slow
def test_four_runs_share_one_hourly_budget(tmp_path: Path, fake: FakeAPI) -> None:
    ledger = str(tmp_path / "ledger.sqlite")
    procs = start_runs(tmp_path, fake, 4, 150, *BUDGET_ARGS, "--ledger", ledger, env={})
    check_budget(fake, wait_all(procs))


@pytest.mark.slow
def test_hourly_budget_holds_when_a_run_is_killed(tmp_path: Path, fake: FakeAPI) -> None:
    fake.latency_s = 0.02
    ledger = str(tmp_path / "ledger.sqlite")
    env = {"LLMBATCH_LEASE_S": "2"}  # the dead run's lease runs out quickly
    procs = start_runs(tmp_path, fake, 4, 150, *BUDGET_ARGS, "--ledger", ledger, env=env)
    wait_until(lambda: fake.count() >= 60)
    procs[0].send_signal(signal.SIGKILL)
    check_budget(fake, wait_all(procs), killed=1)


@pytest.mark.slow
def test_hourly_budget_on_redis(tmp_path: Path, fake: FakeAPI, redis_server: RedisServer) -> None:
    shared = ("--shared", redis_server.url)
    procs = start_runs(tmp_path, fake, 4, 150, *BUDGET_ARGS, *shared, env={})
    check_budget(fake, wait_all(procs))


@pytest.mark.slow
def test_redis_killed_mid_run(tmp_path: Path, fake: FakeAPI, redis_server: RedisServer) -> None:
    """Budgets fail closed (exit 5), what was answered is written, and resume completes."""
    fake.latency_s = 0.05
    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(150))
    out = tmp_path / "jobs.results.jsonl"
    args = ("run", str(jobs), "-m", MODEL, "--quiet", "-c", "4", "--budget-per-hour", "10")
    proc = start_cli(*args, "--shared", redis_server.url, env=fake_env(fake), capture=False)
    wait_until(lambda: fake.count() >= 30)
    redis_server.stop(signal.SIGKILL)
    assert proc.wait(timeout=60) == 5
    rows = read_jsonl(out)
    assert len(rows) == fake.count("ok") == len({r["id"] for r in rows})  # all written, once
    assert 0 < len(rows) < 150
    server = RedisServer(redis_server.binary, redis_server.port).start()
    try:
        res = run_cli(*args, "--shared", server.url, env=fake_env(fake))
        assert res.code == 0, res.output
    finally:
        server.stop()
    ids = [r["id"] for r in read_jsonl(out)]
    assert sorted(ids) == sorted(f"job-{i}" for i in range(150))
    assert fake.count("ok") == 150  # nothing answered twice
