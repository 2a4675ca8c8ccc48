"""Issue 21.4 and 21.5: a batch the provider no longer knows, and pending jobs, in the
exit codes a cron loop reads: nothing stuck, nothing silent."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anyio
import orjson
import pytest

from tests.batchutil import VirtualClock, config, jobs_file
from tests.conftest import fake_env, read_jsonl, run_cli, write_jsonl
from tests.fakeapi import FakeAPI
from tests.fakebatch import FakeBatch


@pytest.fixture
def fbc() -> Iterator[FakeBatch]:
    """The fake, for CLI calls (env passed per call)."""
    api = FakeAPI(retry_after=0.01)
    batch = FakeBatch(api)
    api.start()
    try:
        yield batch
    finally:
        api.stop()


def jobs(tmp_path: Path, n: int, model: str = "claude-haiku-4-5") -> Path:
    rows = [{"id": f"job-{i}", "prompt": f"Question {i}?", "model": model} for i in range(n)]
    return write_jsonl(tmp_path / "jobs.jsonl", rows)


@pytest.mark.parametrize("model", ["claude-haiku-4-5", "gpt-4o-mini"])
def test_a_batch_the_provider_forgot_is_lost_on_the_second_poll(
    fbc: FakeBatch, tmp_path: Path, model: str
) -> None:
    env = fake_env(fbc.api)
    path = jobs(tmp_path, 5, model)
    out = tmp_path / "out.jsonl"
    assert run_cli("batch", "submit", str(path), "-o", str(out), env=env).code == 0
    fbc.batches.clear()  # deleted, past retention, or made on another base URL
    first = run_cli("batch", "fetch", str(out), env=env)
    assert first.code == 4 and "does not know" in first.stderr, first.output
    status = run_cli("batch", "status", str(out), env=env)
    assert status.code == 4 and "batch forget" in status.stderr
    second = run_cli("batch", "fetch", str(out), "--json", env=env)
    assert second.code == 6, second.output
    assert "lost" in second.stderr and "may have cost up to $" in second.stderr
    assert orjson.loads(second.stdout)["jobs"]["pending"] == 5
    shown = run_cli("batch", "status", str(out), "--json", env=env)
    assert shown.code == 6 and orjson.loads(shown.stdout)["pending_jobs"] == 5
    assert [r["state"] for r in orjson.loads(shown.stdout)["batches"]] == ["lost"]
    cancel = run_cli("batch", "cancel", str(out), env=env)
    assert cancel.code == 0, cancel.output
    # The way out: submit again; the jobs are answered; everything says 0.
    again = run_cli("batch", "submit", str(path), "-o", str(out), env=env)
    assert again.code == 0 and "submitted 5 jobs" in again.stderr
    fbc.advance(3600)
    assert run_cli("batch", "fetch", str(out), env=env).code == 0
    assert run_cli("batch", "status", str(out), env=env).code == 0
    assert sorted(x["id"] for x in read_jsonl(out)) == [f"job-{i}" for i in range(5)]


def test_a_results_download_the_provider_no_longer_has_is_lost_too(
    fbc: FakeBatch, tmp_path: Path
) -> None:
    env = fake_env(fbc.api)
    path = jobs(tmp_path, 3, "gpt-4o-mini")
    out = tmp_path / "out.jsonl"
    assert run_cli("batch", "submit", str(path), "-o", str(out), env=env).code == 0
    fbc.advance(3600)
    for b in fbc.batches.values():
        fbc._advance(b)
    fbc.files.clear()  # the output file is gone (retention), the batch is not
    assert run_cli("batch", "fetch", str(out), env=env).code == 4
    res = run_cli("batch", "fetch", str(out), env=env)
    assert res.code == 6 and "lost" in res.stderr, res.output


def test_batch_forget(fbc: FakeBatch, tmp_path: Path) -> None:
    env = fake_env(fbc.api)
    path = jobs(tmp_path, 4)
    out = tmp_path / "out.jsonl"
    assert run_cli("batch", "submit", str(path), "-o", str(out), env=env).code == 0
    (_, batch_id, _) = fbc.created[0]
    known = run_cli("batch", "forget", str(out), batch_id, env=env)
    assert known.code == 2 and "still knows" in known.stderr and "--force" in known.stderr
    unknown = run_cli("batch", "forget", str(out), "msgbatch_nope", env=env)
    assert unknown.code == 2 and batch_id in unknown.stderr
    fbc.batches[batch_id].deleted = True
    gone = run_cli("batch", "forget", str(out), batch_id, env=env)
    assert gone.code == 0 and "4 jobs go back to pending" in gone.stderr, gone.output
    assert "may have cost up to $" in gone.stderr
    assert run_cli("batch", "status", str(out), env=env).code == 6
    online = run_cli("run", str(path), "-o", str(out), env=env)  # no open batch: allowed
    assert online.code == 0, online.output
    assert run_cli("batch", "status", str(out), env=env).code == 0


def test_the_readme_cron_loop_ends(fbc: FakeBatch, tmp_path: Path) -> None:
    """The README's loop: fetch; 4 → later; 6 → submit again; else stop. With a batch
    deleted at the provider and one canceled, it still ends with every job answered."""
    env = fake_env(fbc.api)
    path = jobs(tmp_path, 6)
    out = tmp_path / "out.jsonl"
    sub = run_cli("batch", "submit", str(path), "-o", str(out), "--batch-size", "3", env=env)
    assert sub.code == 0
    first, second = (bid for _, bid, _ in fbc.created)
    fbc.batches[first].deleted = True
    fbc.batches[second].cancel_at = fbc.now()
    codes = []
    for _ in range(10):
        code = run_cli("batch", "fetch", str(out), env=env).code
        codes.append(code)
        if code == 4:
            fbc.advance(600)
        elif code == 6:
            assert run_cli("batch", "submit", str(path), "-o", str(out), env=env).code == 0
        else:
            break
    assert codes[-1] == 0, codes
    assert 6 in codes
    assert sorted(x["id"] for x in read_jsonl(out)) == [f"job-{i}" for i in range(6)]


def test_run_mode_batch_gets_past_a_lost_batch(fb: FakeBatch, tmp_path: Path) -> None:
    from llmbatch._batch.submit import submit
    from tests.test_batch_run import run_mode

    clock = VirtualClock(fb)
    cfg = config(jobs_file(tmp_path, 4))
    fb.process_s = 4 * 3600
    anyio.run(lambda: submit(cfg, clock=clock))
    fb.batches.clear()  # gone at the provider
    rep = run_mode(cfg, clock, "batch", deadline=None)
    assert rep.exit_code == 0
    assert cfg.output is not None and len(read_jsonl(cfg.output)) == 4


def test_jobs_back_to_pending_show_in_fetch_status_and_exit_codes(
    fbc: FakeBatch, tmp_path: Path
) -> None:
    """Issue 21.5: after an expiry, fetch said "back to pending" and exited 0; status
    exited 0 and said nothing of them."""
    env = fake_env(fbc.api)
    path = jobs(tmp_path, 10)
    out = tmp_path / "out.jsonl"
    fbc.expire_after = 0.5
    assert run_cli("batch", "submit", str(path), "-o", str(out), env=env).code == 0
    fbc.advance(25 * 3600)
    fetched = run_cli("batch", "fetch", str(out), "--json", env=env)
    assert fetched.code == 6, fetched.output
    assert orjson.loads(fetched.stdout)["jobs"]["pending"] == 5
    assert "5 job(s) are pending" in fetched.stderr
    assert "batch submit" in fetched.stderr
    status = run_cli("batch", "status", str(out), env=env)
    assert status.code == 6 and "5 job(s)" in status.stderr, status.output
    shown = run_cli("batch", "status", str(out), "--json", env=env)
    assert shown.code == 6 and orjson.loads(shown.stdout)["pending_jobs"] == 5
    fbc.expire_after = None
    assert run_cli("batch", "submit", str(path), "-o", str(out), env=env).code == 0
    fbc.advance(3600)
    assert run_cli("batch", "fetch", str(out), env=env).code == 0
    final = run_cli("batch", "status", str(out), "--json", env=env)
    assert final.code == 0 and orjson.loads(final.stdout)["pending_jobs"] == 0


def test_a_batch_too_large_for_the_token_limit_says_batch_size(
    fb: FakeBatch, tmp_path: Path
) -> None:
    """A whole batch failing token_limit_exceeded, round after round: each fetch says a
    smaller --batch-size fixes it, and the last round says failed, not "back to pending"."""
    from llmbatch._batch.fetch import fetch
    from llmbatch._batch.submit import submit

    clock = VirtualClock(fb)
    cfg = config(jobs_file(tmp_path, 6, models=("gpt-4o-mini", "gpt-4o-mini")))
    notes: list[list[str]] = []
    codes = []
    for _ in range(2):
        fb.fail_next = "token_limit_exceeded"
        assert anyio.run(lambda: submit(cfg, clock=clock)).jobs == 6
        fb.advance(60)
        rep = anyio.run(lambda: fetch(cfg, clock=clock, max_attempts=2))
        notes.append([n for n in rep.notes if "token_limit_exceeded" in n])
        codes.append((rep.failed, rep.pending, rep.exit_code))
    first, last = notes
    assert len(first) == 1 and "--batch-size 3" in first[0], first
    assert "6 job(s) go back to pending" in first[0]
    assert len(last) == 1 and "6 failed for good" in last[0] and "pending" not in last[0], last
    assert codes == [(0, 6, 6), (6, 0, 1)]
    assert cfg.output is not None
    lines = read_jsonl(cfg.output)
    assert all(x["status"] == "failed" for x in lines) and len(lines) == 6


def test_the_cron_loop_ends_when_pending_jobs_cannot_go_by_batch(
    fbc: FakeBatch, tmp_path: Path
) -> None:
    """Pending jobs that submit cannot send (gone from the jobs file, or no model with a
    Batch API left): submit sends nothing and exits 1, naming them, so the loop ends."""
    env = fake_env(fbc.api)
    path = jobs(tmp_path, 4)
    out = tmp_path / "out.jsonl"
    fbc.expire_after = 0.0
    assert run_cli("batch", "submit", str(path), "-o", str(out), env=env).code == 0
    fbc.advance(25 * 3600)
    assert run_cli("batch", "fetch", str(out), env=env).code == 6
    fbc.expire_after = None
    jobs(tmp_path, 2)  # job-2 and job-3 are gone from the jobs file
    codes = []
    for _ in range(10):
        code = run_cli("batch", "fetch", str(out), env=env).code
        codes.append(code)
        if code == 4:
            fbc.advance(3600)
        elif code == 6:
            sub = run_cli("batch", "submit", str(path), "-o", str(out), env=env)
            if sub.code != 0:
                codes.append(sub.code)
                assert "2 job(s) came back from earlier batches" in sub.stderr, sub.output
                break
        else:
            break
    assert codes[-2:] == [6, 1], codes
    assert sorted(x["id"] for x in read_jsonl(out)) == ["job-0", "job-1"]
