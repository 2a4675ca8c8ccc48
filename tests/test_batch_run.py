"""``run --mode batch|auto``: the bulk by batch, the rest online, no job sent twice."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import anyio
import pytest

from llmbatch._batch.run import parse_duration, run_with_batches
from llmbatch._batch.submit import submit
from llmbatch._config.settings import RunConfig
from llmbatch._core.exceptions import UsageError
from llmbatch._observe.progress import NoProgress
from llmbatch._report.report import RunReport
from llmbatch._run.session import exit_code_for
from tests.batchutil import VirtualClock, config, jobs_file
from tests.conftest import read_jsonl
from tests.fakebatch import FakeBatch


@dataclass(frozen=True)
class ModeRun:
    """What a test reads of ``run --mode``: the report, its batch block, the exit code."""

    report: RunReport
    batch: SimpleNamespace
    exit_code: int


def run_mode(
    cfg: RunConfig, clock: VirtualClock, mode: str, deadline: float | None, poll: float = 600
) -> ModeRun:
    report, _run = anyio.run(
        lambda: run_with_batches(
            cfg,
            mode=mode,
            deadline=deadline,
            poll=poll,
            clock=clock,
            progress=NoProgress(),
            handle_signals=False,
            say=lambda _m: None,
        )
    )
    assert report.batch is not None
    batch = SimpleNamespace(**report.batch.to_dict())
    return ModeRun(report, batch, exit_code_for(report, None))


def online_ids(fb: FakeBatch) -> Counter[str]:
    """Job ids the fake's online endpoints answered (from the prompt text)."""
    ids: Counter[str] = Counter()
    for r in fb.api.records:
        text = str(r.body.get("messages"))
        m = re.search(r"Question (\d+):", text)
        assert m is not None
        ids[f"job-{m.group(1)}"] += 1
    return ids


def test_auto_finishes_stragglers_online_and_never_sends_a_job_twice(
    fb: FakeBatch, tmp_path: Path
) -> None:
    clock = VirtualClock(fb)
    cfg = config(jobs_file(tmp_path, 40))
    fb.process_s = 4 * 3600  # the batches would take four hours
    rep = run_mode(cfg, clock, "auto", deadline=3600)
    assert rep.exit_code == 0
    assert rep.batch.canceled_at_deadline == 2
    assert fb.calls["batch_cancel"] == 1 and fb.calls["msgbatch_cancel"] == 1
    by_batch = {i.rsplit("_", 1)[0] for i, n in fb.sent_ids().items() if n}
    answered_by_batch = {
        it.custom_id.rsplit("_", 1)[0]
        for b in fb.batches.values()
        for it in b.items
        if it.outcome == "ok"
    }
    online = online_ids(fb)
    assert 0 < len(answered_by_batch) < 40 and rep.batch.jobs == len(answered_by_batch)
    assert set(online) == by_batch - answered_by_batch  # only the stragglers went online
    assert all(n == 1 for n in online.values())
    assert cfg.output is not None
    lines = read_jsonl(cfg.output)
    assert Counter(x["id"] for x in lines) == Counter(f"job-{i}" for i in range(40))
    assert {x["id"] for x in lines if "batch" in x} == answered_by_batch
    assert rep.report.to_dict()["batch"]["jobs"] == len(answered_by_batch)
    assert rep.batch.online_cost_usd > rep.batch.cost_usd > 0


def test_batch_mode_waits_then_runs_expired_leftovers_online(fb: FakeBatch, tmp_path: Path) -> None:
    clock = VirtualClock(fb)
    cfg = config(jobs_file(tmp_path, 20))
    fb.expire_after = 0.75
    rep = run_mode(cfg, clock, "batch", deadline=None)
    assert rep.exit_code == 0 and rep.batch.jobs == 14
    assert clock.slept >= 24 * 3600  # it waited for the expiry, on virtual time
    assert sum(online_ids(fb).values()) == 6
    assert cfg.output is not None
    assert len(read_jsonl(cfg.output)) == 20


def test_online_run_refuses_while_a_batch_is_open(fb: FakeBatch, tmp_path: Path) -> None:
    from llmbatch._batch.run import refuse_if_batches_open

    clock = VirtualClock(fb)
    cfg = config(jobs_file(tmp_path, 4))
    anyio.run(lambda: submit(cfg, clock=clock))
    with pytest.raises(UsageError, match="still open"):
        refuse_if_batches_open(cfg.output)
    with pytest.raises(UsageError, match="needs --batch-deadline"):
        run_mode(cfg, clock, "auto", deadline=None)
    assert not fb.api.records


def test_durations() -> None:
    assert parse_duration("90") == 90
    assert parse_duration("30m") == 1800
    assert parse_duration("1h30m") == 5400
    with pytest.raises(UsageError):
        parse_duration("soon")


def test_batch_block_from_a_results_file(fb: FakeBatch, tmp_path: Path) -> None:
    from llmbatch._report.batch import batch_part_from_results

    clock = VirtualClock(fb)
    cfg = config(jobs_file(tmp_path, 30))
    rep = run_mode(cfg, clock, "batch", deadline=None)
    assert cfg.output is not None
    part = batch_part_from_results(cfg.output)
    assert part.jobs == rep.batch.jobs == 30
    assert part.cost_usd == pytest.approx(rep.batch.cost_usd, abs=30 * 5e-9)
    assert part.online_cost_usd == pytest.approx(rep.batch.online_cost_usd, rel=1e-3)


def test_fresh_moves_output_and_state_aside(fb: FakeBatch, tmp_path: Path) -> None:
    clock = VirtualClock(fb)
    cfg = config(jobs_file(tmp_path, 6))
    run_mode(cfg, clock, "batch", deadline=None)
    cfg.fresh = True
    rep = run_mode(cfg, clock, "batch", deadline=None)
    assert rep.batch.jobs == 6 and sum(fb.sent_ids().values()) == 12
    assert cfg.output is not None and len(read_jsonl(cfg.output)) == 6
    backups = sorted(p.name for p in tmp_path.iterdir() if ".bak" in p.name)
    # The output, its batch state and its run history move aside together.
    assert backups == [backups[0], backups[0] + ".batches", backups[0] + ".runs.jsonl"]


def test_mode_and_deadline_as_config_keys(tmp_path: Path) -> None:
    from llmbatch._config.settings import build_run_config, load_config

    toml = tmp_path / "llmbatch.toml"
    toml.write_text('mode = "auto"\nbatch_deadline = "1h30m"\n')
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("")
    cfg = build_run_config(jobs, {}, load_config(toml))
    assert (cfg.mode, cfg.batch_deadline) == ("auto", 5400)
    flagged = build_run_config(jobs, {"mode": "batch", "batch_deadline": "10m"}, load_config(toml))
    assert (flagged.mode, flagged.batch_deadline) == ("batch", 600)
    toml.write_text("batch_deadline = 90\n")
    cfg = build_run_config(jobs, {}, load_config(toml))
    assert (cfg.mode, cfg.batch_deadline) == ("online", 90.0)
    toml.write_text('batch_deadline = "soon"\n')
    with pytest.raises(UsageError, match="duration"):
        build_run_config(jobs, {}, load_config(toml))


def test_auto_deadline_is_kept_within_one_poll_after_a_slow_cancel(
    fb: FakeBatch, tmp_path: Path
) -> None:
    """Issue 21.6: `--batch-deadline 6s` took 37 s (the next poll after cancelling came
    30 s later). The cancel takes 2 s here; the run may overrun the deadline by that
    wait, never by a whole poll interval."""
    clock = VirtualClock(fb)
    cfg = config(jobs_file(tmp_path, 10))
    fb.process_s = 4 * 3600
    fb.cancel_s = 2
    rep = run_mode(cfg, clock, "auto", deadline=6, poll=30)
    assert rep.exit_code == 0 and rep.batch.canceled_at_deadline == 2
    assert 6 + 2 <= clock.slept <= 6 + 2 * 2, clock.slept


def test_auto_deadline_counts_from_submission_not_from_each_rerun(
    fb: FakeBatch, tmp_path: Path
) -> None:
    """Issue 21.6: the deadline restarted on each rerun. Batches submitted an hour ago
    with a 30-minute deadline: the rerun cancels at once instead of waiting again."""
    clock = VirtualClock(fb)
    cfg = config(jobs_file(tmp_path, 10))
    fb.process_s = 4 * 3600
    anyio.run(lambda: submit(cfg, clock=clock))
    fb.advance(3600)  # the first run died; an hour later it runs again
    rep = run_mode(cfg, clock, "auto", deadline=1800)
    assert rep.batch.canceled_at_deadline == 2
    assert clock.slept < 600, clock.slept  # not another 30 minutes, nor a poll
    assert cfg.output is not None and len(read_jsonl(cfg.output)) == 10
