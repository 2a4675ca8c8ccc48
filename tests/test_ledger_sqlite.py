"""The SQLite rolling-budget ledger: windows, chunked leases, dead processes, status and reset."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest

from llmbatch._budget.ledger import Hold, Refusal
from llmbatch._budget.sqlite import SqliteLedger
from llmbatch._budget.sqlite_status import ledger_status, reset_scope
from llmbatch._budget.windows import DAY, HOUR, Window
from llmbatch._config.settings import FileConfig, build_run_config, load_config
from llmbatch._core.exceptions import ConfigError, UsageError
from llmbatch._report.report import RunReport
from llmbatch._run.online import run_jobs_async
from tests.conftest import prompts, run_cli, write_jsonl

pytestmark = pytest.mark.anyio

PER_HOUR = Window("cost", HOUR, 0.05, "--budget-per-hour")
TOKENS_DAY = Window("tokens", DAY, 10_000, "--tokens-per-day")


class StepClock:
    """A clock that moves only when told (wall and monotonic together)."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds


async def ledger(
    path: Path, clock: StepClock, windows: list[Window] | None = None, **kw: float
) -> SqliteLedger:
    led = SqliteLedger(path, "default", windows or [PER_HOUR], clock, **kw)
    await led.open()
    return led


async def test_never_overshot_and_refuses_with_resets_at(tmp_path: Path) -> None:
    clock = StepClock()
    a = await ledger(tmp_path / "l.sqlite", clock)
    spent = 0.0
    refusal = None
    for _ in range(200):
        hold = await a.reserve(0.002, 0)
        if not isinstance(hold, Hold):
            refusal = hold
            break
        clock.now += 1.0
        await a.settle(hold, 0.001, 0)
        spent += 0.001
    assert isinstance(refusal, Refusal)
    assert refusal.reason == "budget_window" and not refusal.may_fit_later
    assert spent <= 0.05 + 1e-9
    assert spent >= 0.05 - 0.002 - 1e-9  # the last worst case did not fit, nothing else wasted
    # The oldest spend ages out an hour after it was booked: that is when room frees.
    assert refusal.resets_at is not None
    assert 1_800_000_000.0 + HOUR < refusal.resets_at < clock.now + HOUR
    assert "--budget-per-hour 0.05" in refusal.message
    clock.now = refusal.resets_at + 1.0
    assert isinstance(await a.reserve(0.002, 0), Hold)
    await a.aclose()


async def test_holds_in_flight_may_fit_later(tmp_path: Path) -> None:
    clock = StepClock()
    a = await ledger(tmp_path / "l.sqlite", clock)
    holds = [await a.reserve(0.01, 0) for _ in range(5)]
    assert all(isinstance(h, Hold) for h in holds)
    refusal = await a.reserve(0.01, 0)
    assert isinstance(refusal, Refusal) and refusal.may_fit_later
    for h in holds:
        assert isinstance(h, Hold)
        await a.settle(h, 0.001, 0)
    assert isinstance(await a.reserve(0.01, 0), Hold)
    await a.aclose()


async def test_two_processes_share_one_window(tmp_path: Path) -> None:
    """Two ledgers on one file (two runs) never hold more than the window together."""
    clock = StepClock()
    path = tmp_path / "l.sqlite"
    a, b = await ledger(path, clock), await ledger(path, clock)
    total = 0.0
    stuck = 0
    for i in range(400):
        led = (a, b)[i % 2]
        hold = await led.reserve(0.0005, 0)
        if isinstance(hold, Refusal):
            stuck += 1
            if not hold.may_fit_later or stuck > 4:
                break
            continue
        stuck = 0
        await led.settle(hold, 0.0005, 0)
        total += 0.0005
    await a.aclose()
    await b.aclose()
    assert 0.049 <= total <= 0.05 + 1e-9
    [hour, _day] = ledger_status(path, "default", clock.now)
    assert hour.spent_cost == pytest.approx(total)
    assert hour.held_cost == 0 and hour.live_leases == 0


async def test_chunks_spare_the_database(tmp_path: Path) -> None:
    clock = StepClock()
    a = await ledger(tmp_path / "l.sqlite", clock, [Window("cost", HOUR, 100.0, "--x")])
    for _ in range(1000):
        hold = await a.reserve(0.001, 0)
        assert isinstance(hold, Hold)
        await a.settle(hold, 0.001, 0)
    assert a.transactions < 1000 / 10
    await a.aclose()
    [hour, _] = ledger_status(tmp_path / "l.sqlite", None, clock.now)
    assert hour.spent_cost == pytest.approx(1.0)


async def test_dead_process_counts_as_spent_at_worst_case(tmp_path: Path) -> None:
    """A run that dies keeps its lease counted; past the lease it is spend that ages out."""
    clock = StepClock()
    path = tmp_path / "l.sqlite"
    dead = await ledger(path, clock, lease_s=30.0)
    for _ in range(10):
        assert isinstance(await dead.reserve(0.004, 0), Hold)  # never settled: killed
    alive = await ledger(path, clock, lease_s=30.0)
    refusal = await alive.reserve(0.011, 0)
    assert isinstance(refusal, Refusal) and refusal.may_fit_later  # its lease is still live
    clock.now += 31.0
    refusal = await alive.reserve(0.011, 0)
    assert isinstance(refusal, Refusal) and not refusal.may_fit_later  # now it is spend
    assert refusal.resets_at == pytest.approx(clock.now - 1.0 + HOUR)
    assert isinstance(await alive.reserve(0.009, 0), Hold)
    clock.now += HOUR
    assert isinstance(await alive.reserve(0.011, 0), Hold)
    await alive.aclose()


async def test_token_window(tmp_path: Path) -> None:
    clock = StepClock()
    a = await ledger(tmp_path / "l.sqlite", clock, [PER_HOUR, TOKENS_DAY])
    hold = await a.reserve(0.0, 6000)
    assert isinstance(hold, Hold)
    await a.settle(hold, 0.0, 6000)
    refusal = await a.reserve(0.0, 6000)
    assert isinstance(refusal, Refusal) and "--tokens-per-day 10000" in refusal.message
    stats = a.statistics()
    assert stats.limit_cost == 0.05 and stats.limit_tokens == 10_000
    assert stats.spent_tokens == 6000
    await a.aclose()


async def test_scopes_are_apart_and_reset(tmp_path: Path) -> None:
    clock = StepClock()
    path = tmp_path / "l.sqlite"
    a = SqliteLedger(path, "team-a", [PER_HOUR], clock)
    b = SqliteLedger(path, "team-b", [PER_HOUR], clock)
    await a.open()
    await b.open()
    for led in (a, b):
        hold = await led.reserve(0.04, 0)
        assert isinstance(hold, Hold)
        await led.settle(hold, 0.04, 0)
    await a.aclose()
    await b.aclose()
    assert {u.scope for u in ledger_status(path, None, clock.now)} == {"team-a", "team-b"}
    assert reset_scope(path, "team-a") > 0
    [hour, _] = ledger_status(path, "team-a", clock.now)
    assert hour.spent_cost == 0
    [hour, _] = ledger_status(path, "team-b", clock.now)
    assert hour.spent_cost == pytest.approx(0.04)


def test_budget_status_and_reset_commands(tmp_path: Path) -> None:
    path = tmp_path / "state" / "ledger.sqlite"

    async def spend() -> None:
        led = SqliteLedger(path, "nightly", [PER_HOUR], StepClock(time.time()))
        await led.open()
        hold = await led.reserve(0.01, 100)
        assert isinstance(hold, Hold)
        await led.settle(hold, 0.0075, 80)
        await led.aclose()

    anyio.run(spend)
    env = {"XDG_STATE_HOME": str(tmp_path / "state")}
    (tmp_path / "state" / "llmbatch").mkdir(parents=True)
    path.rename(tmp_path / "state" / "llmbatch" / "ledger.sqlite")
    res = run_cli("budget", "status", "--json", env=env)
    assert res.code == 0, res.output
    rows = json.loads(res.stdout)
    assert [(r["scope"], r["window"]) for r in rows] == [("nightly", "hour"), ("nightly", "day")]
    assert rows[0]["spent_usd"] == pytest.approx(0.0075) and rows[0]["spent_tokens"] == 80
    res = run_cli("budget", "status", "--scope", "nightly", env=env)
    assert res.code == 0 and "nightly" in res.stdout and "0.007500" in res.stdout
    res = run_cli("budget", "reset", "--scope", "nightly", env=env)
    assert res.code == 0, res.output
    rows = json.loads(run_cli("budget", "status", "--json", env=env).stdout)
    assert rows == []


def test_many_processes_on_one_ledger(tmp_path: Path) -> None:
    """8 processes × 2,000 reservations on one file: no "database is locked", all booked."""
    script = (
        "import anyio, sys\n"
        "from pathlib import Path\n"
        "from llmbatch._budget.ledger import Hold\n"
        "from llmbatch._core.clock import SYSTEM_CLOCK\n"
        "from llmbatch._budget.sqlite import SqliteLedger\n"
        "from llmbatch._budget.windows import Window\n"
        "async def main():\n"
        "    led = SqliteLedger(Path(sys.argv[1]), 'load', "
        "[Window('cost', 3600, 1000.0, 'x')], SYSTEM_CLOCK)\n"
        "    await led.open()\n"
        "    for _ in range(2000):\n"
        "        hold = await led.reserve(0.01, 10)\n"
        "        assert isinstance(hold, Hold), hold\n"
        "        await led.settle(hold, 0.005, 5)\n"
        "    await led.aclose()\n"
        "    print(led.transactions)\n"
        "anyio.run(main)\n"
    )
    path = tmp_path / "ledger.sqlite"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(8)
    ]
    outs = [p.communicate(timeout=30) for p in procs]
    for p, (_out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err.decode()
        assert b"locked" not in err
    [hour, _] = ledger_status(path, "load", time.time())
    assert hour.spent_cost == pytest.approx(8 * 2000 * 0.005)
    assert hour.spent_tokens == 8 * 2000 * 5
    assert hour.live_leases == 0


def run_engine(tmp_path: Path, **flags: object) -> RunReport:
    jobs = tmp_path / "jobs.jsonl"
    if not jobs.exists():
        write_jsonl(jobs, prompts(200))
    merged = {"model": "sim:claude-haiku-4-5", "quiet": True, "max_tokens": 50, **flags}
    merged.setdefault("ledger", str(tmp_path / "ledger.sqlite"))
    cfg = build_run_config(jobs, merged, FileConfig())
    return anyio.run(lambda: run_jobs_async(cfg, handle_signals=False))


def test_engine_stops_when_the_window_is_full(tmp_path: Path) -> None:
    report = run_engine(tmp_path, budget_per_hour=0.01)
    assert report.stopped_by == "budget_window" and report.exit_code == 4
    assert 0.0095 <= report.cost_usd <= 0.01
    assert report.resets_at is not None and report.to_dict()["resets_at"] == report.resets_at
    assert report.not_run > 0
    # The next run (cron, an hour too early) sends nothing and says when to come back.
    again = run_engine(tmp_path, budget_per_hour=0.01)
    assert again.exit_code == 4 and again.cost_usd == 0 and again.ok == 0
    assert again.not_run == report.not_run
    assert any("--budget-per-hour 0.01" in n for n in again.notes)
    # Another scope has its own window.
    other = run_engine(tmp_path, budget_per_hour=0.01, budget_scope="other")
    assert other.cost_usd > 0


def test_engine_waits_for_the_window(tmp_path: Path) -> None:
    """--wait-for-budget: spend booked 3,599 s ago ages out in a second; the run goes on."""
    path = tmp_path / "ledger.sqlite"

    async def old_spend() -> None:
        led = SqliteLedger(path, "default", [PER_HOUR], StepClock(time.time() - HOUR + 1.0))
        await led.open()
        hold = await led.reserve(0.05, 0)
        assert isinstance(hold, Hold)
        await led.settle(hold, 0.05, 0)
        await led.aclose()

    anyio.run(old_spend)
    write_jsonl(tmp_path / "jobs.jsonl", prompts(5))
    report = run_engine(tmp_path, budget_per_hour=0.05, wait_for_budget=True)
    assert report.exit_code == 0 and report.ok == 5


def test_config_file_keys(tmp_path: Path) -> None:
    (tmp_path / "llmbatch.toml").write_text(
        'budget_per_hour = 0.5\ntokens_per_day = 100000\nbudget_scope = "nightly"\n'
        'ledger = "l.sqlite"\nwait_for_budget = true\nshard = "1/3"\n'
        '[shared]\nurl = "redis://127.0.0.1:1/0"\n'
    )
    cfg = build_run_config(tmp_path / "jobs.jsonl", {}, load_config(tmp_path / "llmbatch.toml"))
    assert (cfg.budget_per_hour, cfg.tokens_per_day, cfg.budget_scope) == (0.5, 100000, "nightly")
    assert cfg.wait_for_budget and cfg.shared == "redis://127.0.0.1:1/0"
    assert cfg.shard == (1, 3) and cfg.output is not None
    assert cfg.output.name == "jobs.shard-1-of-3.results.jsonl"
    flags = {"budget_scope": "x", "shared": "redis://h:2/1"}
    cfg = build_run_config(tmp_path / "jobs.jsonl", flags, load_config(tmp_path / "llmbatch.toml"))
    assert (cfg.budget_scope, cfg.shared) == ("x", "redis://h:2/1")
    (tmp_path / "bad.toml").write_text('[shared]\nhost = "x"\n')
    with pytest.raises(ConfigError, match=r"\[shared\]"):
        load_config(tmp_path / "bad.toml")
    with pytest.raises(UsageError, match="--shared"):
        build_run_config(tmp_path / "jobs.jsonl", {"shared": "http://x"}, FileConfig())
    with pytest.raises(UsageError, match="--budget-per-hour"):
        build_run_config(tmp_path / "jobs.jsonl", {"budget_per_hour": -1}, FileConfig())


def test_a_cost_window_needs_a_price(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "jobs.jsonl", prompts(2))
    with pytest.raises(UsageError, match="--budget-per-day needs a price"):
        run_engine(tmp_path, model="sim:no-such-model-xyz", budget_per_day=1.0)
