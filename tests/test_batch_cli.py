"""What only the CLI does for batches: exit codes a cron job reads, and kill -9 mid-submit."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from tests.conftest import (
    CANARY_ANTHROPIC,
    CANARY_OPENAI,
    fake_env,
    read_jsonl,
    run_cli,
    start_cli,
    wait_until,
    write_jsonl,
)
from tests.fakeapi import FakeAPI
from tests.fakebatch import FakeBatch


@pytest.fixture
def fb() -> Iterator[FakeBatch]:
    api = FakeAPI(retry_after=0.01)
    batch = FakeBatch(api)
    api.start()
    try:
        yield batch
    finally:
        api.stop()


def jobs(tmp_path: Path, n: int, models: tuple[str, ...]) -> Path:
    rows = [
        {"id": f"job-{i}", "prompt": f"Question {i}?", "model": models[i % len(models)]}
        for i in range(n)
    ]
    return write_jsonl(tmp_path / "jobs.jsonl", rows)


def test_submit_status_fetch_exit_codes(fb: FakeBatch, tmp_path: Path) -> None:
    env = fake_env(fb.api)
    path = jobs(tmp_path, 30, ("gpt-4o-mini", "claude-haiku-4-5"))
    out = str(tmp_path / "out.jsonl")
    sub = run_cli("batch", "submit", str(path), "-o", out, "--batch-size", "10", env=env)
    assert sub.code == 0, sub.output
    assert len(fb.created) == 4
    status = run_cli("batch", "status", out, "--json", env=env)
    assert status.code == 4, status.output
    shown = orjson.loads(status.stdout)
    rows = shown["batches"]
    assert shown["pending_jobs"] == 0 and len(rows) == 4 and all(r["in_progress"] for r in rows)
    assert run_cli("batch", "fetch", out, env=env).code == 4
    fb.advance(3600)
    fetched = run_cli("batch", "fetch", out, env=env)
    assert fetched.code == 0, fetched.output
    assert "saved $" in fetched.stderr
    assert run_cli("batch", "status", out, env=env).code == 0
    again = run_cli("batch", "fetch", out, "--json", env=env)
    assert again.code == 0 and orjson.loads(again.stdout)["jobs"]["ok"] == 0
    lines = read_jsonl(Path(out))
    assert sorted(x["id"] for x in lines) == sorted(f"job-{i}" for i in range(30))
    # The report over the results file has the batch block: half the online price.
    report = orjson.loads(run_cli("report", out, "--json").stdout)
    batch = report["batch"]
    assert batch["jobs"] == 30 and batch["cost_usd"] == pytest.approx(report["cost_usd"])
    assert batch["online_cost_usd"] == pytest.approx(2 * batch["cost_usd"], rel=0.01)
    # And as printed: the savings line; batch answers carry no latency, so none is shown.
    shown = run_cli("report", out, env={"COLUMNS": "160"}).output
    assert "batch" in shown and "jobs for $" in shown and "saved $" in shown, shown
    assert "no answer timed" in shown and "p50 0.0 ms" not in shown
    for text in (sub.output, status.output, fetched.output, again.output):
        assert CANARY_OPENAI not in text and CANARY_ANTHROPIC not in text


def test_invalid_line_exits_2_and_sends_nothing(fb: FakeBatch, tmp_path: Path) -> None:
    path = tmp_path / "jobs.jsonl"
    path.write_text('{"id": "a", "prompt": "x", "model": "gpt-4o-mini"}\n{"id": "b"}\n')
    res = run_cli("batch", "submit", str(path), env=fake_env(fb.api))
    assert res.code == 2 and "jobs.jsonl:2:" in res.stderr
    assert not fb.created and not fb.files


@pytest.mark.parametrize("model", ["gpt-4o-mini", "claude-haiku-4-5"])
def test_kill_during_submit_then_submit_again_pays_once(
    fb: FakeBatch, tmp_path: Path, model: str
) -> None:
    env = fake_env(fb.api)
    path = jobs(tmp_path, 10, (model,))
    out = str(tmp_path / "out.jsonl")
    fb.create_delay_s = 60  # the batch exists; its id never reaches the client
    proc = start_cli(
        "batch", "submit", str(path), "-o", out, "--batch-size", "5", env=env, capture=False
    )
    try:
        wait_until(lambda: len(fb.created) == 1)
    finally:
        proc.kill()
        proc.wait()
    fb.create_delay_s = 0
    res = run_cli("batch", "submit", str(path), "-o", out, "--batch-size", "5", env=env)
    assert res.code == 0, res.output
    assert "found batch" in res.stderr or "may be its" in res.stderr  # proven at fetch
    assert len(fb.created) == 2
    assert Counter(fb.sent_ids().values()) == Counter({1: 10})
    fb.advance(3600)
    assert run_cli("batch", "fetch", out, env=env).code == 0
    assert len(read_jsonl(Path(out))) == 10


def test_run_mode_auto_from_the_shell(fb: FakeBatch, tmp_path: Path) -> None:
    env = fake_env(fb.api)
    path = jobs(tmp_path, 12, ("gpt-4o-mini", "claude-haiku-4-5"))
    out = tmp_path / "out.jsonl"
    report = tmp_path / "report.json"
    sub = run_cli("batch", "submit", str(path), "-o", str(out), "--batch-size", "3", env=env)
    assert sub.code == 0 and len(fb.created) == 4
    online = run_cli("run", str(path), "-o", str(out), env=env)
    assert online.code == 2 and "still open" in online.stderr
    assert not fb.api.records
    res = run_cli(
        "run", str(path), "-o", str(out), "--mode", "auto", "--batch-deadline", "1s",
        "--report", str(report), env=env,
    )  # fmt: skip
    assert res.code == 0, res.output
    assert "batch deadline reached" in res.stderr
    lines = read_jsonl(out)
    assert Counter(x["id"] for x in lines) == Counter(f"job-{i}" for i in range(12))
    assert len(fb.api.records) == 12  # nothing finished in a second of real time: all online
    assert orjson.loads(report.read_bytes())["batch"] == {
        "jobs": 0,
        "cost_usd": 0.0,
        "online_cost_usd": 0.0,
        "saved_usd": 0.0,
        "canceled_at_deadline": 4,
    }


def test_mode_and_deadline_from_llmbatch_toml_flags_win(fb: FakeBatch, tmp_path: Path) -> None:
    env = fake_env(fb.api)
    path = jobs(tmp_path, 4, ("gpt-4o-mini", "claude-haiku-4-5"))
    out = tmp_path / "out.jsonl"
    toml = tmp_path / "llmbatch.toml"
    toml.write_text('mode = "auto"\nbatch_deadline = "1s"\n')
    res = run_cli("run", str(path), "-o", str(out), "--config", str(toml), env=env)
    assert res.code == 0, res.output
    assert "batch deadline reached" in res.stderr and len(fb.created) == 2
    assert len(read_jsonl(out)) == 4
    # A flag wins over the file: online, and nothing is submitted.
    res = run_cli(
        "run", str(path), "-o", str(tmp_path / "b.jsonl"), "--config", str(toml),
        "--mode", "online", env=env,
    )  # fmt: skip
    assert res.code == 0 and len(fb.created) == 2
    bad = run_cli("run", str(path), "--mode", "online", "--batch-deadline", "5s", env=env)
    assert bad.code == 2 and "--batch-deadline goes with --mode auto" in bad.stderr
    toml.write_text('mode = "sideways"\n')
    res = run_cli("run", str(path), "-o", str(out), "--config", str(toml), env=env)
    assert res.code == 2 and "--mode 'sideways'" in res.stderr
    toml.write_text('batch_dedline = "1h"\n')
    res = run_cli("run", str(path), "-o", str(out), "--config", str(toml), env=env)
    assert res.code == 2 and "unknown key 'batch_dedline'" in res.stderr
    assert "batch_deadline" in res.stderr  # among the keys it knows
