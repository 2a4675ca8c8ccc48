"""Shards: a stable split of one jobs file, resume across any N, and merge."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

from llmbatch._config.settings import FileConfig, build_run_config
from llmbatch._core.exceptions import UsageError
from llmbatch._io.shard import parse_shard, shard_of, shard_output, sibling_outputs
from llmbatch._report.report import RunReport
from llmbatch._run.online import run_jobs_async
from tests.conftest import prompts, read_jsonl, run_cli, start_cli, wait_until, write_jsonl


def run_shard(jobs: Path, shard: str | None, **flags: Any) -> RunReport:
    merged = {"model": "sim:claude-haiku-4-5", "quiet": True, "shard": shard, **flags}
    cfg = build_run_config(jobs, merged, FileConfig())
    return anyio.run(lambda: run_jobs_async(cfg, handle_signals=False))


def complete_ids(path: Path) -> list[str]:
    ids = []
    for line in path.read_bytes().splitlines(keepends=True):
        if line.endswith(b"\n") and line.strip():
            try:
                ids.append(json.loads(line)["id"])
            except ValueError:
                continue
    return ids


def test_parse_shard() -> None:
    assert parse_shard("1/4", {}) == (1, 4)
    assert parse_shard("auto", {"JOB_COMPLETION_INDEX": "2", "JOB_COMPLETIONS": "3"}) == (2, 3)
    slurm = {"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MIN": "3"}
    assert parse_shard("auto", slurm) == (2, 4)
    for bad in ("4/4", "1/0", "x", "-1/2"):
        with pytest.raises(UsageError):
            parse_shard(bad, {})
    with pytest.raises(UsageError, match="JOB_COMPLETION_INDEX"):
        parse_shard("auto", {})


def test_output_names_and_siblings(tmp_path: Path) -> None:
    out = tmp_path / "jobs.results.jsonl"
    assert shard_output(out, (1, 3)).name == "jobs.shard-1-of-3.results.jsonl"
    assert shard_output(tmp_path / "x.jsonl", (0, 2)).name == "x.shard-0-of-2.jsonl"
    for name in ("jobs.results.jsonl", "jobs.shard-0-of-2.results.jsonl", "other.results.jsonl"):
        (tmp_path / name).write_text("")
    mine = shard_output(out, (2, 3))
    assert [p.name for p in sibling_outputs(mine)] == [
        "jobs.results.jsonl",
        "jobs.shard-0-of-2.results.jsonl",
    ]


def test_shards_are_stable_across_hash_seeds() -> None:
    ids = [f"job-{i}" for i in range(300)]
    code = (
        "import sys\nfrom llmbatch._io.shard import shard_of\n"
        "print(','.join(str(shard_of(f'job-{i}', 7)) for i in range(300)))"
    )
    seen = set()
    for seed in ("0", "1", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, check=True
        ).stdout
        seen.add(out.strip())
    assert len(seen) == 1
    assert seen.pop().decode() == ",".join(str(shard_of(i, 7)) for i in ids)
    counts = [sum(1 for i in ids if shard_of(i, 7) == s) for s in range(7)]
    assert min(counts) > 20  # spread, not lumped


def test_shards_are_disjoint_and_cover_the_file(tmp_path: Path) -> None:
    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(90))
    for i in range(3):
        report = run_shard(jobs, f"{i}/3")
        assert report.exit_code == 0
    files = [tmp_path / f"jobs.shard-{i}-of-3.results.jsonl" for i in range(3)]
    per_file = [set(complete_ids(f)) for f in files]
    assert all(per_file)
    assert sum(len(s) for s in per_file) == 90
    assert set().union(*per_file) == {f"job-{i}" for i in range(90)}
    for i, ids in enumerate(per_file):
        assert all(shard_of(j, 3) == i for j in ids)


def test_reshard_after_kill_loses_and_repeats_nothing(tmp_path: Path) -> None:
    """Two shards killed mid-run, then three shards finish: every job exactly once."""
    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(120))
    env = {"LLMBATCH_SIM_LATENCY_MS": "100"}
    procs = [
        start_cli(
            "run",
            str(jobs),
            "-m",
            "sim:claude-haiku-4-5",
            "--quiet",
            "-c",
            "2",
            "--shard",
            f"{i}/2",
            env=env,
            capture=False,
        )  # fmt: skip
        for i in range(2)
    ]
    outs = [tmp_path / f"jobs.shard-{i}-of-2.results.jsonl" for i in range(2)]
    try:
        wait_until(lambda: all(o.exists() and len(complete_ids(o)) >= 5 for o in outs))
    finally:
        for p in procs:
            p.send_signal(signal.SIGKILL)
            p.wait()
    before = [set(complete_ids(o)) for o in outs]
    assert sum(len(b) for b in before) < 120  # they were stopped part-way
    for i in range(3):
        assert run_shard(jobs, f"{i}/3").exit_code == 0
    files = outs + [tmp_path / f"jobs.shard-{i}-of-3.results.jsonl" for i in range(3)]
    all_ids = [j for f in files for j in complete_ids(f)]
    assert sorted(all_ids) == sorted(f"job-{i}" for i in range(120))  # none lost, none twice
    # A rerun with yet another N finds nothing left to do.
    assert run_shard(jobs, "0/5").jobs_total - run_shard(jobs, "0/5").skipped_done == 0

    merged = tmp_path / "merged.results.jsonl"
    res = run_cli("merge", str(merged), *map(str, files))
    assert res.code == 0, res.output
    single = tmp_path / "single.results.jsonl"
    run_shard(jobs, None, output=str(single))
    assert sorted(complete_ids(merged)) == sorted(complete_ids(single))
    res = run_cli("report", str(merged), "--json")
    assert res.code == 0, res.output
    assert json.loads(res.stdout)["jobs"]["ok"] == 120


def test_merge_keeps_the_last_line_and_refuses_conflicts(tmp_path: Path) -> None:
    base = {"status": "ok", "output": "x", "usage": {}, "cost_usd": 0.0, "attempts": 1}
    a = write_jsonl(
        tmp_path / "a.jsonl",
        [{**base, "id": "1", "status": "failed", "fingerprint": "f1"}, {**base, "id": "2"}],
    )
    b = write_jsonl(tmp_path / "b.jsonl", [{**base, "id": "1", "fingerprint": "f1"}])
    out = tmp_path / "out.jsonl"
    res = run_cli("merge", str(out), str(a), str(b))
    assert res.code == 0, res.output
    rows = read_jsonl(out)
    assert [(r["id"], r["status"]) for r in rows] == [("1", "ok"), ("2", "ok")]
    c = write_jsonl(tmp_path / "c.jsonl", [{**base, "id": "1", "fingerprint": "f2"}])
    out2 = tmp_path / "out2.jsonl"
    res = run_cli("merge", str(out2), str(a), str(c))
    assert res.code == 2 and "1" in res.stderr and not out2.exists()
