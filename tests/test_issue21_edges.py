"""Issue 21's edges: merge never destroys files, the cache file is checked, clear errors."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from llmbatch._cache.fileid import APPLICATION_ID, CacheFile, identify
from tests.conftest import fake_env, prompts, read_jsonl, run_cli, write_jsonl
from tests.fakeapi import FakeAPI
from tests.fakebatch import FakeBatch

SIM = "sim:claude-haiku-4-5"

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


# -- 3: the cache touches only caches ------------------------------------------------------------


def make_ledger(tmp_path: Path) -> Path:
    jobs = write_jsonl(tmp_path / "l.jsonl", prompts(2, "l"))
    ledger = tmp_path / "ledger.sqlite"
    res = run_cli(
        "run", str(jobs), "-m", SIM, "--quiet", "--budget-per-day", "5", "--ledger", str(ledger)
    )
    assert res.code == 0, res.output
    assert ledger.exists()
    return ledger


def tables(path: Path) -> set[str]:
    db = sqlite3.connect(path)
    try:
        return {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    finally:
        db.close()


def test_cache_clear_refuses_files_that_are_no_cache(tmp_path: Path) -> None:
    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(3))
    results = write_jsonl(tmp_path / "jobs.results.jsonl", result_rows("r", 3))
    ledger = make_ledger(tmp_path)
    folder = tmp_path / "somedir"
    folder.mkdir()
    (folder / "keep.txt").write_text("keep")
    for path in (jobs, results, ledger, folder):
        before = sorted(str(p) for p in tmp_path.rglob("*"))
        content = path.read_bytes() if path.is_file() else b""
        for command in (["clear"], ["stats"], ["prune", "--older-than", "0s"]):
            res = run_cli("cache", *command, "--cache", str(path))
            assert res.code == 2, (command, path, res.output)
            assert str(path) in res.stderr and "not an llmbatch response cache" in res.stderr
            assert "Traceback" not in res.output
        assert sorted(str(p) for p in tmp_path.rglob("*")) == before
        if path.is_file():
            assert path.read_bytes() == content
    assert tables(ledger) == {"spend", "leases", "bookings"}


def test_run_refuses_a_cache_path_that_is_no_cache(tmp_path: Path) -> None:
    ledger = make_ledger(tmp_path)
    ledger_bytes = ledger.read_bytes()
    other = write_jsonl(tmp_path / "other.results.jsonl", result_rows("r", 2))
    folder = tmp_path / "cachedir"
    folder.mkdir()
    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(3))
    for bad in (ledger, other, folder):
        res = run_cli("run", str(jobs), "-m", SIM, "--quiet", "--cache", str(bad))
        assert res.code == 2, (bad, res.output)
        assert str(bad) in res.stderr and "not an llmbatch response cache" in res.stderr
        assert not (tmp_path / "jobs.results.jsonl").exists()
    assert ledger.read_bytes() == ledger_bytes and tables(ledger) == {"spend", "leases", "bookings"}
    assert list(folder.iterdir()) == []


def test_a_cache_made_before_the_mark_still_works_and_gets_it(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    res = run_cli(
        "run", str(write_jsonl(tmp_path / "a.jsonl", prompts(3))), "-m", SIM, "--quiet",
        "--temperature", "0", "--cache", str(path),
    )  # fmt: skip
    assert res.code == 0, res.output
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    db.execute("PRAGMA application_id = 0")  # as an older llmbatch left it
    db.commit()
    db.close()
    assert identify(path)[0] is CacheFile.CACHE
    res = run_cli("cache", "stats", "--cache", str(path), "--json")
    assert res.code == 0 and json.loads(res.stdout)["entries"] == 3
    res = run_cli(
        "run", str(write_jsonl(tmp_path / "b.jsonl", prompts(3))), "-m", SIM, "--quiet",
        "--temperature", "0", "--cache", str(path), "--report", str(tmp_path / "r.json"),
    )  # fmt: skip
    assert res.code == 0, res.output
    assert json.loads((tmp_path / "r.json").read_text())["cache"]["hits"] == 3
    assert path.read_bytes()[68:72] == APPLICATION_ID.to_bytes(4, "big")
    res = run_cli("cache", "clear", "--cache", str(path))
    assert res.code == 0 and not path.exists()


# -- 7: an unusable ledger is a setup error (exit 2), not internal (70) or resumable (5) ---------


def corrupt_pages(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[4096:] = b"\xff" * (len(data) - 4096)
    path.write_bytes(bytes(data))


def test_budget_commands_on_an_unusable_ledger_exit_2_saying_what_to_do(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(bytes(range(256)) * 20)
    folder = tmp_path / "ledgerdir"
    folder.mkdir()
    cache = tmp_path / "cache.sqlite"
    jobs = write_jsonl(tmp_path / "c.jsonl", prompts(2, "c"))
    assert run_cli("run", str(jobs), "-m", SIM, "--quiet", "--cache", str(cache)).code == 0
    paged = make_ledger(tmp_path)
    corrupt_pages(paged)
    for bad in (garbage, folder, cache, paged):
        before = bad.read_bytes() if bad.is_file() else b""
        for args in (["status"], ["status", "--json"], ["reset", "--scope", "default"]):
            res = run_cli("budget", *args, "--ledger", str(bad))
            assert res.code == 2, (bad, args, res.output)
            assert "internal error" not in res.output and str(bad) in res.stderr
            assert "cannot be used" in res.stderr and "--ledger" in res.stderr
        if bad.is_file():
            assert bad.read_bytes() == before
    assert tables(cache) == {"answers"}


def test_run_with_an_unusable_ledger_exits_2_before_anything(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"not a ledger at all\n" * 300)
    folder = tmp_path / "ledgerdir"
    folder.mkdir()
    paged = make_ledger(tmp_path)
    corrupt_pages(paged)
    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(3))
    out = tmp_path / "jobs.results.jsonl"
    for bad in (garbage, folder, paged):
        before = bad.read_bytes() if bad.is_file() else b""
        res = run_cli(
            "run", str(jobs), "-m", SIM, "--quiet", "--budget-per-day", "5", "--ledger", str(bad)
        )
        assert res.code == 2, (bad, res.output)
        assert str(bad) in res.stderr and "resumable" not in res.stderr
        assert not out.exists() or read_jsonl(out) == []
        if bad.is_file():
            assert bad.read_bytes() == before
    assert list(folder.iterdir()) == []


# -- 8: --otlp with credentials -----------------------------------------------------------------


def test_otlp_url_with_credentials_is_refused_without_echoing_them(tmp_path: Path) -> None:
    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(2))
    for url in (
        "http://user:s3cretPW@127.0.0.1:4318",
        "https://:s3cretPW@127.0.0.1:4318/v1/traces",
        "http://s3cretPW@127.0.0.1:4318",
        "ftp://user:s3cretPW@127.0.0.1",
    ):
        res = run_cli("run", str(jobs), "-m", SIM, "--quiet", "--otlp", url)
        assert res.code == 2, (url, res.output)
        assert "--otlp" in res.stderr and "s3cretPW" not in res.output
        assert not (tmp_path / "jobs.results.jsonl").exists()


def test_otlp_export_warnings_never_print_userinfo() -> None:
    from llmbatch._observe.otel import OtelExporter
    from tests.events_data import sample_run
    from tests.test_otel import free_port

    warnings: list[str] = []
    exporter = OtelExporter(
        f"http://user:s3cretPW@127.0.0.1:{free_port()}",
        export_timeout_s=0.2,
        close_timeout_s=5,
        warn=warnings.append,
    )
    for e in sample_run():
        exporter.emit(e)
    assert exporter.closed and len(warnings) == 1
    assert "s3cretPW" not in warnings[0] and "user" not in warnings[0]
    assert "127.0.0.1" in warnings[0]


# -- 9: report over malformed lines -------------------------------------------------------------


def test_report_names_a_malformed_cost_and_says_the_total_is_partial(tmp_path: Path) -> None:
    rows = result_rows("r", 4)
    rows[1]["cost_usd"] = "0.50"
    rows[2]["usage"] = {"input_tokens": "many", "output_tokens": 3}
    path = write_jsonl(tmp_path / "x.results.jsonl", rows)
    res = run_cli("report", str(path), "--json")
    assert res.code == 2, res.output
    assert f"{path}:2:" in res.stderr and "cost_usd" in res.stderr
    assert f"{path}:3:" in res.stderr and "input_tokens" in res.stderr
    report = json.loads(res.stdout)
    assert report["cost_usd"] == 0.003  # what could be read, said to be partial
    assert report["malformed_lines"] == [2, 3]
    assert any("partial" in n for n in report["notes"])
    res = run_cli("report", str(path))
    assert res.code == 2 and "partial" in res.output and f"{path}:2:" in res.stderr


def test_report_names_unreadable_lines_but_not_a_torn_tail(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "y.results.jsonl", [*result_rows("r", 2), b"garbage", result_rows("z", 1)[0]]
    )
    with path.open("ab") as f:
        f.write(b'{"id": "torn", "sta')  # a crash mid-write: expected, not a problem
    res = run_cli("report", str(path), "--json")
    assert res.code == 2 and f"{path}:3:" in res.stderr and f"{path}:5" not in res.stderr
    clean = write_jsonl(tmp_path / "ok.results.jsonl", result_rows("r", 2))
    with clean.open("ab") as f:
        f.write(b'{"id": "torn", "sta')
    res = run_cli("report", str(clean), "--json")
    assert res.code == 0, res.output
    assert json.loads(res.stdout)["malformed_lines"] == []


# -- 12: only answers asked for deterministically are shared across ids --------------------------


def same_prompt_jobs(n: int, prefix: str) -> list[dict[str, Any]]:
    return [{"id": f"{prefix}{i}", "prompt": "Name a colour.", "temperature": 0} for i in range(n)]


def test_temperature_zero_is_shared_only_where_the_temperature_is_sent(
    tmp_path: Path, fake: FakeAPI
) -> None:
    cache = tmp_path / "c.sqlite"
    env = fake_env(fake)
    a = write_jsonl(tmp_path / "a.jsonl", same_prompt_jobs(3, "a"))
    res = run_cli(
        "run", str(a), "-m", "claude-haiku-4-5", "--quiet", "-c", "1", "--cache", str(cache),
        env=env,
    )  # fmt: skip
    assert res.code == 0, res.output
    anthropic = [r for r in fake.records if r.kind == "anthropic"]
    assert len(anthropic) == 3 and all("temperature" not in r.body for r in anthropic)
    o = write_jsonl(tmp_path / "o.jsonl", same_prompt_jobs(3, "o"))
    res = run_cli(
        "run", str(o), "-m", "gpt-4o-mini", "--quiet", "-c", "1", "--cache", str(cache), env=env
    )
    assert res.code == 0, res.output
    openai = [r for r in fake.records if r.kind == "openai"]
    assert len(openai) == 1 and openai[0].body["temperature"] == 0
    # a rerun of the Anthropic jobs still costs nothing: each id has its own answer
    res = run_cli(
        "run", str(a), "-m", "claude-haiku-4-5", "--quiet", "--fresh", "--cache", str(cache),
        env=env,
    )  # fmt: skip
    assert res.code == 0 and len([r for r in fake.records if r.kind == "anthropic"]) == 3
    stats = json.loads(run_cli("cache", "stats", "--cache", str(cache), "--json").stdout)
    assert stats["entries"] == 4 and stats["shared"] == 1 and stats["per_job"] == 3
    text = run_cli("cache", "stats", "--cache", str(cache)).stdout
    assert "shared across job ids" in text and "temperature" in text


def test_each_provider_says_truly_whether_it_sends_the_temperature() -> None:
    from llmbatch._config.provider_settings import ProviderSettings
    from llmbatch._core.jobs import Request
    from llmbatch.providers.anthropic import build_anthropic_body
    from llmbatch.providers.openai import build_openai_body

    request = Request(messages=[{"role": "user", "content": "hi"}], temperature=0.0)
    bodies = {
        "anthropic": build_anthropic_body("m", request),
        "openai": build_openai_body("m", request),
    }
    for kind, body in bodies.items():
        settings = ProviderSettings(name=kind, kind=kind)
        assert settings.sends_temperature == ("temperature" in body), kind


# -- 14: batch status off a terminal never cuts ids or counts -----------------------------------


def test_batch_status_off_a_terminal_prints_whole_ids_and_counts(
    fb: FakeBatch, tmp_path: Path
) -> None:
    serial = iter(range(1, 1000))
    fb._new_id = lambda prefix: f"{prefix}01HkcTjaV5uDC8jWR4ZsDV8d{next(serial):04d}xyzzy"  # type: ignore[method-assign]
    rows = [
        {"id": f"job-{i}", "prompt": f"Q{i}?", "model": m}
        for i, m in enumerate(["claude-haiku-4-5-20251001", "gpt-4o-mini-2024-07-18"] * 60)
    ]
    jobs = write_jsonl(tmp_path / "jobs.jsonl", rows)
    out = str(tmp_path / "out.jsonl")
    env = {"COLUMNS": "80"}
    assert run_cli("batch", "submit", str(jobs), "-o", out, env=env).code == 0
    fb.advance(3600)
    assert run_cli("batch", "fetch", out, env=env).code == 0
    res = run_cli("batch", "status", out, env=env)
    assert res.code == 0, res.output
    ids = [b for _, b, _ in fb.created]
    assert len(ids) == 2
    for batch_id in ids:
        assert batch_id in res.stdout, res.stdout
    assert "…" not in res.stdout
    assert res.stdout.count(" 60 ") >= 2  # ok and total of each batch, whole
    assert "claude-haiku-4-5-20251001" in res.stdout and "gpt-4o-mini-2024-07-18" in res.stdout


def test_a_binary_file_that_is_no_sqlite_is_read_as_a_broken_cache_never_written(
    tmp_path: Path,
) -> None:
    broken = tmp_path / "broken.sqlite"
    broken.write_bytes(b"\x00\xffcorrupted\x00" * 500)
    before = broken.read_bytes()
    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(3))
    res = run_cli("run", str(jobs), "-m", SIM, "--quiet", "--cache", str(broken))
    assert res.code == 0 and res.stderr.count("warning") == 1, res.output
    assert "running without it" in res.stderr
    res = run_cli("cache", "stats", "--cache", str(broken))
    assert res.code == 1 and "unusable" in res.stderr
    res = run_cli("cache", "clear", "--cache", str(broken))  # it may be anyone's binary file
    assert res.code == 2 and str(broken) in res.stderr and "delete it yourself" in res.stderr
    assert broken.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir() if "broken" in p.name) == ["broken.sqlite"]


def test_text_at_the_default_cache_path_is_a_broken_cache(tmp_path: Path) -> None:
    from llmbatch._cache.sqlfile import default_cache_path

    path = default_cache_path()
    path.parent.mkdir(parents=True)
    path.write_text("garbage\n" * 100)
    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(2))
    res = run_cli("run", str(jobs), "-m", SIM, "--quiet")
    assert res.code == 0 and "running without it" in res.stderr, res.output
    assert path.read_text() == "garbage\n" * 100
    assert run_cli("cache", "clear").code == 0 and not path.exists()


def test_a_refused_run_is_recorded_in_the_run_history(tmp_path: Path) -> None:
    """Item 7: a run refused before anything is sent (exit 2) still gets its history line."""
    write_jsonl(tmp_path / "jobs.jsonl", [{"id": "a", "prompt": "hi"}, {"id": "b"}])
    r = run_cli("run", "jobs.jsonl", "-m", "sim:claude-haiku-4-5", "-o", "out.jsonl")
    assert r.code == 2, r.output
    history = (tmp_path / "out.jsonl.runs.jsonl").read_text().splitlines()
    runs = [json.loads(x) for x in history]
    assert len(runs) == 1 and runs[0]["exit_code"] == 2 and runs[0]["jobs_done"] == 0
    assert "jobs.jsonl:2" in runs[0]["refused"] or "invalid" in runs[0]["refused"]
