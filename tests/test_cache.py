"""The response cache: keys, storage, degrading on a broken file, concurrency, the commands."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

from llmbatch._cache.key import KeyMaker, cache_key, cache_key_for
from llmbatch._cache.records import CachedAnswer, hit_result
from llmbatch._cache.sqlfile import clear_cache, default_cache_path
from llmbatch._cache.store import ResponseCache, open_cache
from llmbatch._cli.cache import parse_duration
from llmbatch._config.settings import FileConfig, RunConfig, build_run_config
from llmbatch._core.exceptions import UsageError
from llmbatch._core.jobs import Request
from llmbatch._core.models import ModelRef
from llmbatch._core.results import JobResult
from llmbatch._core.usage import Usage
from llmbatch._observe.stats import RunStats
from llmbatch._report.report import build_report
from llmbatch.cli import app


def req(**kw: Any) -> Request:
    base: dict[str, Any] = {
        "messages": [{"role": "user", "content": "What is 2 + 2?"}],
        "max_tokens": 100,
    }
    base.update(kw)
    return Request(**base)


def key(request: Request, job: str = "a", **kw: Any) -> bytes:
    args: dict[str, Any] = {
        "provider": "anthropic",
        "base_url": "https://api.anthropic.com",
        "model": "claude-haiku-4-5",
    }
    args.update(kw)
    return cache_key(args["provider"], args["base_url"], args["model"], request, job)


def answer(text: str = "4", cost: float | None = 0.0021) -> CachedAnswer:
    return CachedAnswer(
        text=text,
        parsed={"n": 4},
        usage=Usage(12, 3),
        cost_usd=cost,
        stop_reason="end_turn",
        model="claude-haiku-4-5",
        provider="anthropic",
    )


class Warnings:
    def __init__(self) -> None:
        self.messages: list[str] = []

    def __call__(self, message: str) -> None:
        self.messages.append(message)


# -- keys -------------------------------------------------------------------------


def test_temperature_zero_shares_answers_across_job_ids() -> None:
    r = req(temperature=0.0)
    assert key(r, "a") == key(r, "b")


@pytest.mark.parametrize("temperature", [None, 0.7, 1.0])
def test_sampled_requests_are_keyed_per_job_id(temperature: float | None) -> None:
    r = req(temperature=temperature)
    assert key(r, "a") != key(r, "b")
    assert key(r, "a") == key(req(temperature=temperature), "a")  # a rerun of a job hits


@pytest.mark.parametrize(
    "change",
    [
        {"messages": [{"role": "user", "content": "What is 2 + 3?"}]},
        {"system": "Be terse."},
        {"max_tokens": 101},
        {"temperature": 0.5},
        {"schema": {"type": "object"}},
        {"appended": [{"role": "user", "content": "again"}]},
        {"wire_format": "openai", "body": {"model": "x", "messages": []}},
    ],
)
def test_any_change_of_the_request_misses(change: dict[str, Any]) -> None:
    base = req(temperature=0.0)
    changed = req(**{"temperature": 0.0, **change})
    assert key(base) != key(changed)


@pytest.mark.parametrize(
    "where",
    [
        {"provider": "openai"},
        {"base_url": "http://127.0.0.1:9999"},
        {"model": "claude-sonnet-4-5"},
    ],
)
def test_provider_base_url_and_model_are_in_the_key(where: dict[str, str]) -> None:
    r = req(temperature=0.0)
    assert key(r) != key(r, **where)


def test_key_is_a_sha256_and_holds_no_prompt() -> None:
    k = key(req(temperature=0.0))
    assert len(k) == 16  # the digest's first 16 bytes: the key as the file stores it
    assert b"2 + 2" not in k


@pytest.mark.parametrize(
    "request_",
    [
        req(temperature=0.0),
        req(temperature=0.7),
        req(),
        Request(
            messages=[{"role": "user", "content": 'é ✓ \n "q"', "z": 1, "a": [3, {"y": 2}]}],
            system="be brief",
            max_tokens=17,
            temperature=0,
            schema={"type": "object", "properties": {"b": {}, "a": {}}},
        ),
        # Built in Python with a key that is not a string: orjson's slower path.
        req(body={"model": "m", 2: "two", "messages": []}),
    ],
)
@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_the_run_s_key_maker_hashes_what_cache_key_hashes(
    request_: Request, provider: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """KeyMaker encodes a model's fixed parts once; the keys are the same bytes as
    cache_key's (old cache files keep answering)."""
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:1/v1/")
    cfg = RunConfig(jobs=Path("j.jsonl"))
    ref = ModelRef(provider, "some-model")
    s = cfg.providers[provider]
    for job in ("a", 'j"2'):
        want = cache_key(
            provider, s.resolved_base_url(), "some-model", request_, job,
            settings=[s.kind, s.structured_output, s.max_tokens_field],
            temperature_sent=s.sends_temperature,
        )  # fmt: skip
        maker = KeyMaker(cfg)
        got = maker(ref, request_, job)
        assert got == want and got.shared == want.shared
        assert maker(ref, request_, job) == want  # and again, from the encoded parts


def test_key_for_config_uses_the_resolved_base_url(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = RunConfig(jobs=Path("j.jsonl"))
    ref = ModelRef("openai", "gpt-4o-mini")
    r = req(temperature=0.0)
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:1/v1")
    one = cache_key_for(cfg, ref, r, "a")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:2/v1")
    assert cache_key_for(cfg, ref, r, "a") != one


# -- storage ----------------------------------------------------------------------


def test_store_then_lookup_round_trips(tmp_path: Path) -> None:
    cache = ResponseCache(tmp_path / "c.sqlite")
    assert cache.lookup("k") is None
    cache.store("k", answer())
    got = cache.lookup("k")
    assert got is not None
    assert (got.text, got.parsed, got.usage, got.cost_usd) == ("4", {"n": 4}, Usage(12, 3), 0.0021)
    assert (got.stop_reason, got.model, got.provider) == (
        "end_turn",
        "claude-haiku-4-5",
        "anthropic",
    )
    assert got.created > 0
    s = cache.statistics()
    assert (s.hits, s.saved_usd, s.stores, s.disabled) == (1, 0.0021, 1, None)
    assert s.to_dict() == {"hits": 1, "saved_usd": 0.0021}
    cache.close()


def test_an_answer_is_stored_without_its_empty_fields_and_both_forms_read_back() -> None:
    """No ``parsed``, no token count of 0: a tenth of a short answer's bytes. Rows written
    whole (by earlier versions) read the same."""
    bare = CachedAnswer("4", None, Usage(12, 3), 0.0021, "end_turn", "m", "anthropic")
    stored = orjson.loads(bare.to_json())
    assert "parsed" not in stored
    assert stored["usage"] == {"input_tokens": 12, "output_tokens": 3}
    whole = orjson.dumps(
        {"text": "4", "parsed": None, "usage": Usage(12, 3).to_dict(), "cost_usd": 0.0021,
         "stop_reason": "end_turn", "model": "m", "provider": "anthropic"}
    )  # fmt: skip
    assert CachedAnswer.from_json(bare.to_json(), 0.0) == CachedAnswer.from_json(whole, 0.0)
    cached = Usage(20, 3, cache_read_tokens=8, cache_write_tokens=0, reasoning_tokens=2)
    rich = CachedAnswer("{}", {"n": 4}, cached, None, "end_turn", "m", "openai")
    assert CachedAnswer.from_json(rich.to_json(), 0.0) == rich


def test_prefetch_answers_lookups_from_memory_and_the_file_answers_the_rest(
    tmp_path: Path,
) -> None:
    path = tmp_path / "c.sqlite"
    ResponseCache(path).close()
    cache = ResponseCache(path)
    other = ResponseCache(path)  # another run stores after this one prefetched
    cache.prefetch([b"present", b"absent"])
    assert cache.lookup(b"absent") is None  # found absent by the prefetch
    other.store(b"present", answer("from the other run"))
    other.store(b"unasked", answer("asked later"))
    other.close()
    assert cache.lookup(b"present") is None  # the prefetch saw the file before that store
    found = cache.lookup(b"unasked")  # never prefetched: asked of the file
    assert found is not None and found.text == "asked later"
    cache.prefetch([b"present"])
    found = cache.lookup(b"present")
    assert found is not None and found.text == "from the other run"
    cache.close()


def _queries(cache: ResponseCache) -> list[str]:
    """The SELECTs the cache sends from now on (a trace on its connection)."""
    sent: list[str] = []
    db = cache._db
    assert db is not None
    db.set_trace_callback(lambda sql: sent.append(sql) if sql.startswith("SELECT") else None)
    return sent


def test_a_new_file_is_not_asked_for_jobs_own_keys_until_another_run_writes(
    tmp_path: Path,
) -> None:
    """A job's own key (a sampled answer) is asked for only by its job, before its answer
    is kept: a file that held nothing when the run began cannot have it, until another
    run writes to the file."""
    path = tmp_path / "c.sqlite"
    own = [key(req(), job=f"j{i}") for i in range(3)]
    shared = key(req(temperature=0.0), job="j0")
    assert {type(k).__name__ for k in own} == {"_OwnKey"} and getattr(shared, "shared", None)
    cache = ResponseCache(path)
    sent = _queries(cache)
    cache.prefetch(own)
    assert cache.lookup(own[0]) is None
    assert not [q for q in sent if "IN (" in q]  # not asked
    cache.prefetch([shared])
    assert [q for q in sent if "IN (" in q]  # a shared key may be anyone's: asked
    cache.store(own[1], answer("kept"))
    found = cache.lookup(own[1])
    assert found is not None and found.text == "kept"
    other = ResponseCache(path)  # another run keeps an answer for job j2
    other.store(own[2], answer("from the other run"))
    other.close()
    sent.clear()
    cache.prefetch([own[2]])
    assert [q for q in sent if "IN (" in q]  # the file changed: asked again
    found = cache.lookup(own[2])
    assert found is not None and found.text == "from the other run"
    cache.close()
    # A file that holds answers is asked for every key.
    again = ResponseCache(path)
    sent = _queries(again)
    again.prefetch([own[1], key(req(), job="j9")])
    assert [q for q in sent if "IN (" in q]
    found = again.lookup(own[1])
    assert found is not None and found.text == "kept"
    again.close()


def test_once_it_kept_answers_a_new_set_of_jobs_asks_the_file_for_every_key(
    tmp_path: Path,
) -> None:
    cache = ResponseCache(tmp_path / "c.sqlite")
    k = key(req(), job="j1")
    cache.new_jobs()  # nothing kept yet: a job's own key is known absent
    cache.prefetch([k])
    assert cache.lookup(k) is None
    cache.store(k, answer("kept"))
    cache.flush()  # in the file, no longer in memory
    cache.new_jobs()  # the same jobs again (a runner's second call)
    sent = _queries(cache)
    cache.prefetch([k])
    assert [q for q in sent if "IN (" in q]
    found = cache.lookup(k)
    assert found is not None and found.text == "kept"
    cache.close()


def test_answers_survive_the_run_and_hits_are_recorded(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    first = ResponseCache(path)
    first.store("k", answer())
    first.close()
    second = ResponseCache(path)
    assert second.lookup("k") is not None
    assert second.lookup("k") is not None
    second.close()
    contents = ResponseCache(path).contents()
    assert contents is not None
    assert (contents.entries, contents.hits) == (1, 1)  # one key used in that run
    assert contents.saved_usd == pytest.approx(0.0021)
    assert contents.bytes > 0


def test_big_answers_are_written_by_the_megabyte_not_only_by_the_count(tmp_path: Path) -> None:
    """Vectors are ~30 KB each: 8,192 of them would hold ~250 MB until written."""
    path = tmp_path / "c.sqlite"
    cache = ResponseCache(path, clock=lambda: 5.0)  # the clock stands still: no time bound
    big = b"[" + b"0.125," * 5000 + b"0]"  # ~30 KB, like a 1,536-dimension vector
    for i in range(300):  # ~9 MB
        cache.store_encoded(f"k{i}", big, 0.0)
    with sqlite3.connect(path) as db:
        written = db.execute("SELECT count(*) FROM answers").fetchone()[0]
    assert 200 <= written < 300  # one batch went at 8 MB; the rest waits
    cache.close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT count(*) FROM answers").fetchone()[0] == 300


def test_a_file_with_text_keys_is_converted_and_still_answers(tmp_path: Path) -> None:
    """Caches written before keys were stored as 16 bytes hold the hex text: their answers
    stay reachable (converted once, in place), and a new file gets 16 KiB pages."""
    path = tmp_path / "c.sqlite"
    k = key(req())
    ResponseCache(path).close()  # the schema, then an entry as an older llmbatch wrote it
    with sqlite3.connect(path) as db:
        db.execute("CREATE INDEX answers_used ON answers(used)")  # an older file's index
        db.execute(
            "INSERT INTO answers (key, created, used, hits, cost_usd, value, shared) "
            "VALUES (?, 1.0, 1.0, 0, 0.0021, ?, 0)",
            (k.hex() + "0" * 32, answer().to_json()),  # the whole sha256, in hex
        )
    cache = ResponseCache(path)
    assert cache.contains(k)
    found = cache.lookup(k)
    assert found is not None and found.text == "4"
    cache.store(key(req(), job="b"), answer("5"))
    cache.close()
    with sqlite3.connect(path) as db:
        kinds = {row[0] for row in db.execute("SELECT typeof(key) FROM answers")}
        assert kinds == {"blob"}
        assert db.execute("SELECT hits FROM answers WHERE key = ?", (bytes(k),)).fetchone() == (1,)
        assert db.execute("PRAGMA page_size").fetchone()[0] == 16384
        # The index on `used` is gone (every store paid for it; prune scans instead).
        assert db.execute("SELECT name FROM sqlite_master WHERE type = 'index'").fetchall() == [
            ("sqlite_autoindex_answers_1",)
        ]
    again = ResponseCache(path)
    again.prefetch([k, key(req(), job="b"), key(req(), job="c")])
    assert again.lookup(key(req(), job="b")) is not None
    assert again.lookup(key(req(), job="c")) is None
    assert again.lookup(k) is not None
    again.close()


def test_the_file_is_wal(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    ResponseCache(path).close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_default_path_follows_xdg_cache_home(tmp_path: Path) -> None:
    # conftest points XDG_CACHE_HOME at this test's own directory.
    assert default_cache_path() == tmp_path / ".xdg" / "cache" / "llmbatch" / "cache.sqlite"
    cache = open_cache(RunConfig(jobs=Path("j.jsonl")))
    assert cache is not None and cache.usable
    cache.close()
    assert default_cache_path().exists()
    assert open_cache(RunConfig(jobs=Path("j.jsonl"), no_cache=True)) is None


def test_prune_drops_entries_unused_for_long(tmp_path: Path) -> None:
    now = [1000.0]
    cache = ResponseCache(tmp_path / "c.sqlite", clock=lambda: now[0])
    cache.store("old", answer("old"))
    now[0] = 2000.0
    cache.store("new", answer("new"))
    now[0] = 2100.0
    assert cache.prune(500) == 1
    assert cache.lookup("old") is None
    assert cache.lookup("new") is not None


# -- a broken cache never fails a run ----------------------------------------------


def test_a_corrupt_file_degrades_to_no_cache_with_one_warning(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    path.write_bytes(b"this is not a database, it was corrupted on purpose" * 100)
    warned = Warnings()
    cache = ResponseCache(path, warn=warned)
    assert not cache.usable
    for _ in range(3):
        assert cache.lookup("k") is None
        cache.store("k", answer())
    cache.close()
    assert len(warned.messages) == 1
    assert str(path) in warned.messages[0] and "running without it" in warned.messages[0]
    assert cache.statistics().disabled == warned.messages[0]


def test_a_page_corrupted_after_opening_degrades_too(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    cache = ResponseCache(path)
    for i in range(200):
        cache.store(f"k{i}", answer("x" * 500))
    cache.close()
    data = bytearray(path.read_bytes())
    data[4096 : len(data)] = b"\xff" * (len(data) - 4096)  # every page but the first
    path.write_bytes(bytes(data))
    warned = Warnings()
    cache = ResponseCache(path, warn=warned)
    results = [cache.lookup(f"k{i}") for i in range(200)]
    cache.store("new", answer())
    assert all(r is None for r in results)
    assert len(warned.messages) == 1


def test_a_lock_held_too_long_degrades_to_no_cache(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    ResponseCache(path).close()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        warned = Warnings()
        cache = ResponseCache(path, busy_timeout_s=0.05, warn=warned)
        cache.store("k", answer())
        cache.flush()  # the writer lock is held elsewhere
        assert cache.lookup("k") is None
        cache.close()
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert len(warned.messages) == 1 and "locked" in warned.messages[0]


def test_an_unwritable_directory_degrades(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    warned = Warnings()
    cache = ResponseCache(blocker / "cache.sqlite", warn=warned)
    assert cache.lookup("k") is None
    assert len(warned.messages) == 1


# -- concurrency --------------------------------------------------------------------


def test_concurrent_writers_on_one_file(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    ResponseCache(path).close()
    warned = Warnings()

    def writer(n: int) -> None:
        cache = ResponseCache(path, warn=warned)
        for i in range(100):
            cache.store(f"{n}-{i}", answer(f"{n}-{i}"))
            assert cache.lookup(f"{n}-{i // 2}") is not None
        cache.close()

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    script = (
        "import sys; from pathlib import Path; from llmbatch._cache.store import ResponseCache; "
        "from llmbatch._cache.records import CachedAnswer; from llmbatch._core.usage import Usage\n"
        "c = ResponseCache(Path(sys.argv[1]))\n"
        "for i in range(100): c.store(f'p-{i}', CachedAnswer('t', None, Usage(), 0.0, None, "
        "'m', 'sim'))\n"
        "c.close(); assert c.warning is None, c.warning\n"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script.replace("p-", f"p{n}-"), str(path)])
        for n in range(2)
    ]
    assert [p.wait(timeout=60) for p in procs] == [0, 0]
    assert warned.messages == []
    contents = ResponseCache(path).contents()
    assert contents is not None and contents.entries == 600


# -- result lines and the report ------------------------------------------------------


def test_a_hit_is_a_normal_result_line_that_costs_nothing() -> None:
    r = hit_result(answer(), job_id="j1", metadata={"m": 1}, fingerprint="abc")
    line = orjson.loads(r.to_json())
    assert line["status"] == "ok" and line["output"] == "4" and line["parsed"] == {"n": 4}
    assert line["cost_usd"] == 0.0 and line["attempts"] == 0
    assert line["usage"]["input_tokens"] == 0
    assert line["cache"] == {"hit": True, "saved_usd": 0.0021}
    assert JobResult.from_line(line).cache == {"hit": True, "saved_usd": 0.0021}


def test_the_report_counts_hits_and_dollars_saved() -> None:
    stats = RunStats()
    stats.add(hit_result(answer(cost=0.25), job_id="a", metadata=None, fingerprint=None))
    stats.add(hit_result(answer(cost=None), job_id="b", metadata=None, fingerprint=None))
    report = build_report(stats)
    assert report.to_dict()["cache"] == {"hits": 2, "saved_usd": 0.25}
    assert report.cost_usd == 0.0


# -- config and commands ---------------------------------------------------------------


def test_flags_reach_the_config(tmp_path: Path) -> None:
    flags = {"cache": str(tmp_path / "mine.sqlite"), "no_cache": True, "otlp": "http://h:4318"}
    cfg = build_run_config(Path("jobs.jsonl"), flags, FileConfig())
    assert (cfg.cache_path, cfg.no_cache, cfg.otlp) == (
        tmp_path / "mine.sqlite",
        True,
        flags["otlp"],
    )


def test_otlp_must_be_a_url() -> None:
    with pytest.raises(UsageError, match="--otlp"):
        build_run_config(Path("jobs.jsonl"), {"otlp": "localhost:4318"}, FileConfig())


def test_parse_duration() -> None:
    assert parse_duration("30d") == 30 * 86400
    assert parse_duration("12h") == 43200
    assert parse_duration("90m") == 5400
    assert parse_duration("45") == 45
    with pytest.raises(ValueError):
        parse_duration("soon")


def test_cache_commands(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    cache = ResponseCache(path)
    cache.store("k", answer())
    cache.close()
    runner = CliRunner()
    res = runner.invoke(app, ["cache", "stats", "--cache", str(path), "--json"])
    assert res.exit_code == 0, res.output
    assert orjson.loads(res.stdout)["entries"] == 1
    res = runner.invoke(app, ["cache", "prune", "--older-than", "30d", "--cache", str(path)])
    assert res.exit_code == 0 and "pruned 0 answers" in res.stdout
    res = runner.invoke(app, ["cache", "prune", "--older-than", "0s", "--cache", str(path)])
    assert res.exit_code == 0 and "pruned 1 answers" in res.stdout
    res = runner.invoke(app, ["cache", "prune", "--older-than", "soon", "--cache", str(path)])
    assert res.exit_code == 2
    res = runner.invoke(app, ["cache", "clear", "--cache", str(path)])
    assert res.exit_code == 0 and not path.exists()
    res = runner.invoke(app, ["cache", "stats"])  # the default path, not there yet
    assert res.exit_code == 0 and "answers:  0" in res.stdout


def test_cache_stats_on_a_corrupt_file_says_so_and_clear_mends_it(tmp_path: Path) -> None:
    """At the default path a file that is not SQLite can only be a cache that broke."""
    path = default_cache_path()
    path.parent.mkdir(parents=True)
    path.write_bytes(b"garbage" * 1000)
    runner = CliRunner()
    res = runner.invoke(app, ["cache", "stats"])
    assert res.exit_code == 1 and "unusable" in res.stderr
    res = runner.invoke(app, ["cache", "clear"])
    assert res.exit_code == 0 and not path.exists()
    res = runner.invoke(app, ["cache", "stats"])
    assert res.exit_code == 0
    path.write_bytes(b"garbage" * 1000)
    assert clear_cache(path) == 7000 and not path.exists()  # the library's own call


def test_hits_are_written_as_the_run_goes_not_only_at_close(tmp_path: Path) -> None:
    """A rerun answered from the cache records its hits a batch at a time, as stores are
    written: memory stays flat, and a killed run keeps most of its hits counted."""
    path = tmp_path / "c.sqlite"
    now = [100.0]
    cache = ResponseCache(path, clock=lambda: now[0])
    for i in range(3):
        cache.store(f"k{i}", answer())
    cache.flush()
    assert cache.lookup("k0") is not None and cache.lookup("k1") is not None
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT sum(hits) FROM answers").fetchone()[0] == 0  # kept for now
    now[0] += 2.0  # a second later: the next hit writes what was kept
    assert cache.lookup("k2") is not None
    with sqlite3.connect(path) as db:
        rows = dict(db.execute("SELECT key, hits FROM answers").fetchall())
        used = {u for (u,) in db.execute("SELECT used FROM answers")}
    assert sorted(rows.values()) == [1, 1, 1] and used == {100.0, 102.0}
    cache.close()
