"""Issue 21's edges: merge never destroys files, the cache file is checked, clear errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.conftest import read_jsonl, run_cli, write_jsonl

BASE: dict[str, Any] = {"output": "x", "usage": {}, "cost_usd": 0.001, "attempts": 1}


def result_rows(prefix: str, n: int, status: str = "ok") -> list[dict[str, Any]]:
    return [{**BASE, "id": f"{prefix}-{i}", "status": status} for i in range(n)]


# -- 2: merge refuses to overwrite -------------------------------------------------------------


def test_merge_with_out_forgotten_refuses_the_first_shard(tmp_path: Path) -> None:
    shards = [
        write_jsonl(tmp_path / f"jobs.shard-{i}-of-3.results.jsonl", result_rows(f"s{i}", 31))
        for i in range(3)
    ]
    before = shards[0].read_bytes()
    res = run_cli("merge", *map(str, shards))
    assert res.code == 2, res.output
    assert shards[0].name in res.stderr
    assert shards[0].read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == sorted(
        p.name for p in shards
    )
    # --force does not make a shard file a merge target either
    res = run_cli("merge", "--force", *map(str, shards))
    assert res.code == 2 and shards[0].read_bytes() == before


def test_merge_refuses_an_existing_out_unless_force_and_keeps_a_backup(tmp_path: Path) -> None:
    a = write_jsonl(tmp_path / "a.results.jsonl", result_rows("a", 3))
    out = write_jsonl(tmp_path / "all.results.jsonl", result_rows("old", 5))
    before = out.read_bytes()
    res = run_cli("merge", str(out), str(a))
    assert res.code == 2 and str(out) in res.stderr and "--force" in res.stderr
    assert out.read_bytes() == before
    res = run_cli("merge", "--force", str(out), str(a))
    assert res.code == 0, res.output
    assert [r["id"] for r in read_jsonl(out)] == ["a-0", "a-1", "a-2"]
    backups = [p for p in tmp_path.iterdir() if p.name.startswith("all.results.jsonl.")]
    assert len(backups) == 1 and backups[0].read_bytes() == before
    assert backups[0].name in res.stderr


# -- 10: a merge that keeps nothing is no success ------------------------------------------------


def test_merge_of_a_jobs_file_fails_naming_it_and_writes_nothing(tmp_path: Path) -> None:
    jobs = write_jsonl(
        tmp_path / "jobs.jsonl", [{"id": f"j{i}", "prompt": "hi"} for i in range(100)]
    )
    out = tmp_path / "out.jsonl"
    res = run_cli("merge", str(out), str(jobs))
    assert res.code == 2, res.output
    assert str(jobs) in res.stderr
    assert "torn" not in res.stderr and "not result lines" in res.stderr
    assert not out.exists()


def test_merge_with_a_jobs_file_among_shards_is_refused(tmp_path: Path) -> None:
    a = write_jsonl(tmp_path / "a.results.jsonl", result_rows("a", 3))
    jobs = write_jsonl(tmp_path / "jobs.jsonl", [{"id": "j", "prompt": "hi"}])
    out = tmp_path / "out.jsonl"
    res = run_cli("merge", str(out), str(a), str(jobs))
    assert res.code == 2 and str(jobs) in res.stderr and not out.exists()


def test_merge_of_empty_files_keeps_nothing_and_fails(tmp_path: Path) -> None:
    a = tmp_path / "a.results.jsonl"
    a.write_bytes(b"")
    out = tmp_path / "out.jsonl"
    res = run_cli("merge", str(out), str(a))
    assert res.code == 2 and "nothing" in res.stderr and not out.exists()


def test_merge_counts_torn_and_non_result_lines_apart(tmp_path: Path) -> None:
    a = write_jsonl(
        tmp_path / "a.results.jsonl",
        [*result_rows("a", 2), {"hello": 1}, b'{"id": "a-9", "stat'],
    )
    out = tmp_path / "out.jsonl"
    res = run_cli("merge", str(out), str(a))
    assert res.code == 0, res.output
    assert "1 torn line(s)" in res.stderr and "1 line(s) that are not result lines" in res.stderr
    assert len(read_jsonl(out)) == 2


def test_merge_keeps_an_ok_over_a_later_failed(tmp_path: Path) -> None:
    a = write_jsonl(tmp_path / "a.results.jsonl", result_rows("x", 1, "ok"))
    b = write_jsonl(tmp_path / "b.results.jsonl", result_rows("x", 1, "failed"))
    c = write_jsonl(
        tmp_path / "c.results.jsonl", [{**result_rows("x", 1, "ok")[0], "output": "late"}]
    )
    out = tmp_path / "out.jsonl"
    assert run_cli("merge", str(out), str(a), str(b)).code == 0
    assert [r["status"] for r in read_jsonl(out)] == ["ok"]
    out2 = tmp_path / "out2.jsonl"
    assert run_cli("merge", str(out2), str(a), str(b), str(c)).code == 0
    assert [r["output"] for r in read_jsonl(out2)] == ["late"]
