"""Embeddings by provider batch (``/v1/embeddings`` lines): the same vectors as online, the
fake's bill at the batch price, cached texts never submitted, kill-safe fetch, failed
lines online in ``auto``, and ``--budget-per-hour`` kept at submit."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import orjson
import pyarrow.parquet as pq
import pytest

from llmbatch._batch.embed_run import run_embed_batches
from llmbatch._config.settings import RunConfig
from llmbatch._core.models import ModelRef
from llmbatch._observe.progress import NoProgress
from llmbatch._report.report import RunReport
from llmbatch._run.embed import EmbedRun
from llmbatch._run.session import exit_code_for
from tests.batchutil import VirtualClock
from tests.conftest import fake_env, read_jsonl
from tests.fakeapi import FakeAPI
from tests.fakebatch import FakeBatch
from tests.fakeembed import FakeEmbed, tokens_of, vector_of

MODEL = ModelRef("openai", "text-embedding-3-small")
ONLINE_PER_MTOK = 0.02  # genai-prices' online price of text-embedding-3-small


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[FakeBatch, FakeEmbed]]:
    api = FakeAPI(retry_after=0.01)
    fb = FakeBatch(api)
    fe = FakeEmbed(api)
    api.start()
    for k, v in fake_env(api).items():
        monkeypatch.setenv(k, v)
    try:
        yield fb, fe
    finally:
        api.stop()


def texts_file(path: Path, n: int, *, repeat_every: int = 0) -> Path:
    """``n`` lines; every third has two inputs; with ``repeat_every``, repeated texts."""
    with path.open("wb") as f:
        for i in range(n):
            text = f"text number {i % repeat_every if repeat_every else i}"
            row: dict[str, Any] = {"id": f"e{i}", "input": text, "metadata": {"i": i}}
            if i % 3 == 0:
                row["input"] = [text, f"second text of {i}"]
            f.write(orjson.dumps(row) + b"\n")
    return path


def cfg_for(jobs: Path, out: str, tmp: Path, **kw: Any) -> RunConfig:
    return RunConfig(
        jobs=jobs,
        output=tmp / out,
        model=MODEL,
        embed=True,
        cache_path=kw.pop("cache_path", tmp / "cache.sqlite"),
        **kw,
    )


def by_batch(cfg: RunConfig, fb: FakeBatch, mode: str = "batch", **kw: Any) -> RunReport:
    report, _ = anyio.run(
        lambda: run_embed_batches(
            cfg,
            mode=mode,
            clock=VirtualClock(fb),
            progress=NoProgress(),
            handle_signals=False,
            say=lambda _m: None,
            **kw,
        )
    )
    return report


def online(cfg: RunConfig) -> RunReport:
    return anyio.run(EmbedRun(cfg, progress=NoProgress(), handle_signals=False).run)


def vectors(path: Path) -> dict[tuple[str, int], Any]:
    if path.suffix == ".jsonl":
        return {
            (x["id"], x["index"]): np.asarray(x["embedding"], dtype=np.float32)
            for x in read_jsonl(path)
        }
    t = pq.read_table(path)
    dim = t.schema.field("embedding").type.list_size
    flat = t["embedding"].combine_chunks().flatten().to_numpy().reshape(-1, dim)
    keys = zip(t["id"].to_pylist(), t["index"].to_pylist(), strict=True)
    return {k: flat[n] for n, k in enumerate(keys)}


def ids_of(path: Path) -> Counter[tuple[str, int]]:
    if path.suffix == ".jsonl":
        return Counter((x["id"], x["index"]) for x in read_jsonl(path))
    t = pq.read_table(path, columns=["id", "index"])
    return Counter(zip(t["id"].to_pylist(), t["index"].to_pylist(), strict=True))


def batch_texts(fb: FakeBatch) -> list[str]:
    return [t for b in fb.batches.values() for it in b.items for t in it.body["input"]]


@pytest.mark.parametrize("out", ["v.parquet", "v.jsonl"])
def test_batch_mode_writes_the_vectors_online_mode_writes(
    fake: tuple[FakeBatch, FakeEmbed], tmp_path: Path, out: str
) -> None:
    fb, fe = fake
    jobs = texts_file(tmp_path / "texts.jsonl", 60)
    rep = by_batch(cfg_for(jobs, "b-" + out, tmp_path, no_cache=True), fb, batch_size=30)
    assert exit_code_for(rep, None) == 0 and not fe.records  # nothing went online
    assert len(fb.created) >= 3  # 80 inputs, at most 30 a batch
    assert all(b.endpoint == "/v1/embeddings" for b in fb.batches.values())
    online(cfg_for(jobs, "o-" + out, tmp_path, no_cache=True))
    got, want = vectors(tmp_path / ("b-" + out)), vectors(tmp_path / ("o-" + out))
    assert set(got) == set(want) and len(got) == 80
    for key, vec in want.items():
        assert np.array_equal(got[key], vec)
    assert np.array_equal(got[("e1", 0)], vector_of("text number 1", 64))
    # Cost: the fake's bill at half the online price; the report's batch block says so.
    tokens = sum(i for i, _ in fb.billed().values())
    assert tokens == sum(tokens_of(t) for t in batch_texts(fb))
    assert rep.batch is not None and rep.batch.jobs == sum(n for _, _, n in fb.created)
    assert rep.cost_usd == pytest.approx(tokens * ONLINE_PER_MTOK / 2 / 1e6)
    assert rep.batch.online_cost_usd == pytest.approx(2 * rep.batch.cost_usd)
    assert rep.embedding is not None and rep.embedding.vectors == 80
    assert any("half the online price" in n for n in rep.notes)


def test_cached_texts_are_not_submitted(fake: tuple[FakeBatch, FakeEmbed], tmp_path: Path) -> None:
    fb, fe = fake
    first = texts_file(tmp_path / "first.jsonl", 20)
    online(cfg_for(first, "first.parquet", tmp_path))
    assert len(fe.texts_sent) == 27
    # A new file: its first 20 lines are the same texts; 10 more lines are new.
    jobs = texts_file(tmp_path / "texts.jsonl", 30)
    rep = by_batch(cfg_for(jobs, "v.parquet", tmp_path), fb)
    assert exit_code_for(rep, None) == 0
    sent = batch_texts(fb)
    assert sorted(sent) == sorted(set(sent))
    assert set(sent).isdisjoint(fe.texts_sent) and len(sent) == 40 - 27
    assert len(fe.texts_sent) == 27  # the cached-only lines were written for $0
    got = vectors(tmp_path / "v.parquet")
    assert len(got) == 40
    assert np.array_equal(got[("e3", 1)], vector_of("second text of 3", 64))
    assert np.array_equal(got[("e21", 1)], vector_of("second text of 21", 64))


class _Death(BaseException):
    pass


def test_killed_between_writing_and_closing_a_batch_writes_every_id_once(
    fake: tuple[FakeBatch, FakeEmbed], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process death after a batch's rows are written, before it is marked fetched:
    the rerun finds the batch open, fetches it again, and writes none of it twice."""
    from llmbatch._io.batch_state import BatchState

    fb, fe = fake
    jobs = texts_file(tmp_path / "texts.jsonl", 50)
    cfg = cfg_for(jobs, "v.parquet", tmp_path, no_cache=True)
    real = BatchState.append_many
    closes = 0

    def dies_at_the_second_close(self: BatchState, events: list[dict[str, Any]]) -> None:
        nonlocal closes
        if any(e.get("ev") == "closed" for e in events):
            closes += 1
            if closes == 2:
                raise _Death  # the process dies here
        real(self, events)

    monkeypatch.setattr(BatchState, "append_many", dies_at_the_second_close)
    with pytest.raises(BaseException) as died:
        by_batch(cfg, fb, batch_size=20)
    assert isinstance(died.value, _Death) or died.group_contains(_Death)
    monkeypatch.setattr(BatchState, "append_many", real)
    assert cfg.output is not None and BatchState.load(cfg.output).open_chunks()
    assert 0 < len(ids_of(cfg.output)) < 67  # the second batch's rows are in, still open
    rep = by_batch(cfg, fb, batch_size=20)
    assert exit_code_for(rep, None) == 0 and not fe.records
    rows = ids_of(tmp_path / "v.parquet")
    assert set(rows.values()) == {1} and len(rows) == 50 + 17
    assert Counter(fb.sent_ids().values()) == Counter({1: sum(n for _, _, n in fb.created)})


def test_a_failed_batch_line_goes_online_in_auto_mode(
    fake: tuple[FakeBatch, FakeEmbed], tmp_path: Path
) -> None:
    fb, fe = fake
    jobs = texts_file(tmp_path / "texts.jsonl", 40)
    fb.api.add_rule("text number 7", *["500"] * 10)  # its pack fails (transient), each round
    fb.api.add_rule("text number 33", "400")  # its pack fails for good: failed rows
    cfg = cfg_for(jobs, "v.parquet", tmp_path, no_cache=True, inputs_per_request=8)
    rep = by_batch(cfg, fb, mode="auto", deadline=7200)
    assert rep.batch is not None
    online_texts = fe.texts_sent
    assert "text number 7" in online_texts and "text number 33" not in online_texts
    assert len(online_texts) <= 8  # only the pack that failed went online
    t = pq.read_table(tmp_path / "v.parquet").to_pylist()
    assert set(ids_of(tmp_path / "v.parquet").values()) == {1}
    failed = {r["id"] for r in t if r["status"] == "failed"}
    assert "e33" in failed and "e7" not in failed
    assert len(t) == 40 + 14 and exit_code_for(rep, None) == 1  # the failed rows: exit 1


def test_budget_per_hour_is_kept_at_submit(
    fake: tuple[FakeBatch, FakeEmbed], tmp_path: Path
) -> None:
    fb, fe = fake
    jobs = texts_file(tmp_path / "texts.jsonl", 60)
    cap = 2e-6  # room for part of the 60 lines' worst case at the batch price
    cfg = cfg_for(
        jobs,
        "v.parquet",
        tmp_path,
        no_cache=True,
        budget_per_hour=cap,
        ledger=tmp_path / "ledger.sqlite",
        inputs_per_request=5,
    )
    rep = by_batch(cfg, fb, batch_size=10)
    assert rep.stopped_by == "budget_window" and exit_code_for(rep, None) == 4
    tokens = sum(i for i, _ in fb.billed().values())
    assert 0 < tokens * ONLINE_PER_MTOK / 2 / 1e6 <= cap
    assert not fe.records  # nothing went online past the window
    rows = ids_of(tmp_path / "v.parquet")
    assert 0 < len(rows) < 80


def test_the_openai_sdk_reads_the_fakes_embedding_batches(
    fake: tuple[FakeBatch, FakeEmbed],
) -> None:
    """The fake's /v1/embeddings batch, driven and read by the installed openai SDK."""
    import base64

    import openai

    from tests.conftest import CANARY_OPENAI

    fb, _ = fake
    lines = [
        {
            "custom_id": f"p{i}",
            "method": "POST",
            "url": "/v1/embeddings",
            "body": {
                "model": "text-embedding-3-small",
                "input": [f"a {i}", f"b {i}"],
                "encoding_format": "base64" if i else "float",
                "dimensions": 8,
            },
        }
        for i in range(2)
    ]
    data = b"".join(orjson.dumps(x) + b"\n" for x in lines)
    with openai.OpenAI(api_key=CANARY_OPENAI, base_url=fb.api.url + "/v1", max_retries=0) as c:
        f = c.files.create(file=("in.jsonl", data), purpose="batch")
        b = c.batches.create(input_file_id=f.id, endpoint="/v1/embeddings", completion_window="24h")
        assert b.endpoint == "/v1/embeddings" and b.status == "validating"
        fb.advance(700)
        done = c.batches.retrieve(b.id)
        assert done.status == "completed" and done.output_file_id
        assert done.request_counts is not None and done.request_counts.completed == 2
        out = [orjson.loads(x) for x in c.files.content(done.output_file_id).content.splitlines()]
    floats = openai.types.CreateEmbeddingResponse.model_validate(out[0]["response"]["body"])
    assert floats.usage.prompt_tokens == tokens_of("a 0") + tokens_of("b 0")
    assert np.allclose(floats.data[1].embedding, vector_of("b 0", 8))
    packed = out[1]["response"]["body"]["data"]
    vec = np.frombuffer(base64.b64decode(packed[0]["embedding"]), dtype="<f4")
    assert np.array_equal(vec, vector_of("a 1", 8)) and packed[1]["index"] == 1


def test_kill_9_mid_fetch_then_rerun_writes_every_id_once(
    fake: tuple[FakeBatch, FakeEmbed], tmp_path: Path
) -> None:
    """``run --mode batch`` from the shell, killed (SIGKILL) while it fetches the second of
    three batches: the rerun submits nothing again, fetches the rest, every id once."""
    from tests.conftest import run_cli, start_cli, wait_until

    fb, fe = fake
    fb.process_s = 0  # every batch has ended by the first poll
    fb.download_delay_s = 0.4  # each results download takes a while: time to kill
    models = ("text-embedding-3-small", "text-embedding-3-large", "text-embedding-ada-002")
    with (tmp_path / "texts.jsonl").open("wb") as f:
        for i in range(90):
            row = {"id": f"e{i}", "input": [f"t {i}", f"u {i}"], "model": models[i % 3]}
            f.write(orjson.dumps(row) + b"\n")
    out = tmp_path / "v.parquet"
    state = tmp_path / "v.parquet.batches" / "batches.jsonl"
    args = ("run", str(tmp_path / "texts.jsonl"), "-o", str(out), "--mode", "batch", "--quiet")
    env = fake_env(fb.api)
    proc = start_cli(*args, "--no-cache", env=env, capture=False)
    try:
        wait_until(lambda: state.exists() and b'"ev":"closed"' in state.read_bytes())
    finally:
        proc.kill()
        proc.wait()
    assert not out.exists()  # killed before the merge: rows in part files only
    assert list((tmp_path / "v.parquet.parts").glob("*.parquet"))
    fb.download_delay_s = 0
    res = run_cli(*args, "--no-cache", env=env)
    assert res.code == 0, res.output
    assert len(fb.created) == 3 and not fe.records  # nothing submitted or sent again
    rows = ids_of(out)
    assert set(rows.values()) == {1} and len(rows) == 180
    got = vectors(out)
    assert np.array_equal(got[("e5", 1)], vector_of("u 5", 64))


def test_batch_submit_status_fetch_for_an_embedding_file(
    fake: tuple[FakeBatch, FakeEmbed], tmp_path: Path
) -> None:
    from tests.conftest import CANARY_OPENAI, run_cli

    fb, fe = fake
    env = fake_env(fb.api)
    jobs = str(texts_file(tmp_path / "texts.jsonl", 30))
    out = str(tmp_path / "v.parquet")
    model = ["-m", "openai:text-embedding-3-small", "--batch-size", "20"]
    sub = run_cli("batch", "submit", jobs, "-o", out, *model, "--json", env=env)
    assert sub.code == 0, sub.output
    assert orjson.loads(sub.stdout)["jobs"] == 30 and len(fb.created) == 2
    assert run_cli("batch", "status", out, env=env).code == 4
    online = run_cli("embed", jobs, "-o", out, "-m", "openai:text-embedding-3-small", env=env)
    assert online.code == 2 and "still open" in online.stderr and not fe.records
    again = run_cli("batch", "submit", jobs, "-o", out, *model, "--json", env=env)
    assert again.code == 0 and orjson.loads(again.stdout)["skipped_open"] == 30
    fb.advance(700)
    fetched = run_cli("batch", "fetch", out, "--json", env=env)
    assert fetched.code == 0, fetched.output
    rep = orjson.loads(fetched.stdout)
    assert rep["jobs"]["ok"] == 30 and rep["batch"]["jobs"] >= 2
    assert rep["batch"]["online_cost_usd"] > rep["batch"]["cost_usd"] > 0  # (6 decimals)
    assert "saved $" in fetched.stderr
    assert len(ids_of(Path(out))) == 40 and run_cli("batch", "status", out, env=env).code == 0
    assert run_cli("batch", "fetch", out, env=env).code == 0 and len(ids_of(Path(out))) == 40
    for res in (sub, fetched, again):
        assert CANARY_OPENAI not in res.output
    # A provider with no embeddings batch here: refused before anything is sent.
    sim = run_cli("batch", "submit", jobs, "-o", str(tmp_path / "s.jsonl"), "-m", "sim:e", env=env)
    assert sim.code == 2 and "--mode online" in sim.stderr and len(fb.created) == 2


@pytest.mark.parametrize(
    "name", ["azure-v1", "azure-deployment", "compat-purpose", "compat-inline"]
)
def test_azure_and_compatible_batch_services_take_embeddings(name: str, tmp_path: Path) -> None:
    """The same batch shapes as chat jobs (tests/test_openai_batch_shapes.py), with
    ``/embeddings`` lines: Azure's paths without ``/v1``, a compatible service's with."""
    from tests.conftest import run_cli
    from tests.test_openai_batch_shapes import SHAPES, check_sent

    shape = next(s for s in SHAPES if s.name == name)
    api = FakeAPI(retry_after=0.01)
    fb = FakeBatch(api)
    api.start()
    try:
        fb.file_purpose = shape.purpose
        (tmp_path / "llmbatch.toml").write_text(shape.toml.replace("{url}", api.url))
        jobs = str(texts_file(tmp_path / "texts.jsonl", 12))
        out = str(tmp_path / "v.jsonl")
        env = shape.env(fb)
        sub = run_cli("batch", "submit", jobs, "-o", out, "-m", shape.model, env=env)
        assert sub.code == 0, sub.output
        endpoint = shape.endpoint.replace("/chat/completions", "/embeddings")
        check_sent(replace(shape, endpoint=endpoint), fb)
        fb.advance(3600)
        fetched = run_cli("batch", "fetch", out, env=env)
        assert fetched.code == 0, fetched.output
    finally:
        api.stop()
    rows = read_jsonl(Path(out))
    assert len(rows) == 16 and all(r["status"] == "ok" for r in rows)
    got = vectors(Path(out))
    assert np.array_equal(got[("e4", 0)], vector_of("text number 4", 64))


def test_max_cost_holds_each_packs_worst_case_at_submit(
    fake: tuple[FakeBatch, FakeEmbed], tmp_path: Path
) -> None:
    fb, fe = fake
    jobs = texts_file(tmp_path / "texts.jsonl", 60)
    cap = 3e-6  # room for part of the packs' worst case (a token a byte) at the batch price
    cfg = cfg_for(jobs, "v.parquet", tmp_path, no_cache=True, max_cost=cap, inputs_per_request=5)
    rep = by_batch(cfg, fb, batch_size=10)
    assert rep.stopped_by == "budget" and exit_code_for(rep, None) == 3
    tokens = sum(i for i, _ in fb.billed().values())
    assert 0 < tokens * ONLINE_PER_MTOK / 2 / 1e6 <= cap and not fe.records
    assert rep.cost_usd == pytest.approx(tokens * ONLINE_PER_MTOK / 2 / 1e6)
    assert 0 < len(ids_of(tmp_path / "v.parquet")) < 80


def test_auto_cancels_at_the_deadline_and_finishes_online(
    fake: tuple[FakeBatch, FakeEmbed], tmp_path: Path
) -> None:
    fb, fe = fake
    fb.process_s = 4 * 3600  # the batch would take four hours
    jobs = texts_file(tmp_path / "texts.jsonl", 40)
    cfg = cfg_for(jobs, "v.parquet", tmp_path, no_cache=True, inputs_per_request=4)
    rep = by_batch(cfg, fb, mode="auto", deadline=3600)
    assert exit_code_for(rep, None) == 0 and fb.calls["batch_cancel"] == 1
    assert rep.batch is not None and rep.batch.canceled_at_deadline == 1
    answered = [t for b in fb.batches.values() for it in b.items if it.outcome == "ok"
                for t in it.body["input"]]  # fmt: skip
    assert 0 < len(answered) < 54
    assert sorted(answered + fe.texts_sent) == sorted(batch_texts(fb))  # each text once
    rows = ids_of(tmp_path / "v.parquet")
    assert set(rows.values()) == {1} and len(rows) == 54


def test_a_fetched_embedding_batch_replaces_its_window_booking_by_its_bill(
    fake: tuple[FakeBatch, FakeEmbed], tmp_path: Path
) -> None:
    """As for chat batches (``_batch.windows``): the worst case booked at submit becomes
    what the batch billed once it is fetched, so a later run finds the room."""
    import time

    from llmbatch._budget.sqlite_status import ledger_status
    from llmbatch._io.batch_state import BatchState

    fb, _ = fake
    jobs = texts_file(tmp_path / "texts.jsonl", 30)
    cfg = cfg_for(
        jobs, "v.parquet", tmp_path, no_cache=True, budget_per_hour=1.0,
        ledger=tmp_path / "ledger.sqlite", inputs_per_request=5,
    )  # fmt: skip
    rep = by_batch(cfg, fb, batch_size=10)
    assert rep.stopped_by is None and exit_code_for(rep, None) == 0
    chunks = BatchState.load(cfg.output or tmp_path).chunks.values()
    worst = sum(c.reserve_cost for c in chunks)
    assert all(c.bookings and c.window_settled for c in chunks)
    billed = sum(i for i, _ in fb.billed().values()) * ONLINE_PER_MTOK / 2 / 1e6
    uses = ledger_status(tmp_path / "ledger.sqlite", "default", time.time())
    spent = next(u.spent_cost for u in uses if u.seconds == 3600)
    assert spent == pytest.approx(billed, rel=1e-6)
    assert 0 < spent < worst / 2  # the worst case (a token a byte) is well above the bill
