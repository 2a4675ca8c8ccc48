"""Embeddings: packing under the caps, base64 = floats, a 429 retries its pack only,
repeats cost once, Parquet resume after kill -9, and the fake checked by the openai SDK."""

from __future__ import annotations

import base64
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow.parquet as pq
import pytest

from llmbatch._core.embed import (
    EmbedCaps,
    EmbedJob,
    EmbedParser,
    decode_vectors,
    token_bound,
)
from llmbatch._core.jobs import LineError
from llmbatch._core.models import ModelRef
from llmbatch._engine.embed import EmbedSource, EmbedState
from tests.conftest import fake_env, run_cli, start_cli, wait_until
from tests.fakeapi import FakeAPI
from tests.fakeembed import FakeEmbed, tokens_of, vector_of

MODEL = "openai:text-embedding-3-small"


@pytest.fixture
def embed_api() -> Iterator[tuple[FakeAPI, FakeEmbed]]:
    api = FakeAPI()
    fe = FakeEmbed(api)
    api.start()
    try:
        yield api, fe
    finally:
        api.stop()


def write_jobs(path: Path, texts: list[str], **extra: Any) -> Path:
    with path.open("wb") as f:
        for i, text in enumerate(texts):
            f.write(orjson.dumps({"id": f"j{i}", "input": text, **extra}) + b"\n")
    return path


def vectors_by_id(path: Path) -> dict[tuple[str, int], Any]:
    t = pq.read_table(path)
    ids, index = t["id"].to_pylist(), t["index"].to_pylist()
    flat = t["embedding"].combine_chunks().flatten().to_numpy()
    dim = t.schema.field("embedding").type.list_size
    matrix = flat.reshape(-1, dim)
    return {(i, k): matrix[n] for n, (i, k) in enumerate(zip(ids, index, strict=True))}


def run_embed(api: FakeAPI, *args: str) -> Any:
    return run_cli("embed", *args, "--no-cache", "--quiet", env=fake_env(api))


# -- packing ------------------------------------------------------------------------


def test_packing_respects_count_and_token_caps() -> None:
    caps = EmbedCaps(inputs=5, tokens=40, input_tokens=100)
    texts = [("word " * (1 + i % 9)).strip() + f" {i}" for i in range(200)]
    jobs = [EmbedJob(f"j{i}", i + 1, [t], None, None) for i, t in enumerate(texts)]
    ref = ModelRef("sim", "m")
    source = EmbedSource(
        lambda: iter((j.line, j) for j in jobs), lambda j: ref, lambda r: caps, EmbedState()
    )
    packs = [pj.request.embed for pj in source]
    assert sum(len(p.ids) for p in packs) == 200
    assert sorted(i for p in packs for i in p.ids) == sorted(j.id for j in jobs)
    for p in packs:
        assert len(p.texts) <= caps.inputs
        assert sum(token_bound(t) for t in p.texts) <= caps.tokens
    assert len(packs) < 200 / 2  # packed, not one a request


def test_packing_on_the_fake_never_passes_its_caps(
    embed_api: tuple[FakeAPI, FakeEmbed], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    api, fe = embed_api
    fe.max_inputs, fe.max_tokens = 7, 60
    from llmbatch._core import embed as core

    monkeypatch.setitem(core.CAPS, "openai", EmbedCaps(7, 60, 60))
    texts = [f"text {i} " + "abc " * (i % 12) for i in range(120)]
    jobs = write_jobs(tmp_path / "jobs.jsonl", texts, model=MODEL)
    out = tmp_path / "v.parquet"
    result = run_embed(api, str(jobs), "-o", str(out))
    assert result.code == 0, result.output
    assert all(r.status == 200 for r in fe.records)
    assert all(len(r.inputs) <= 7 and r.tokens <= 60 for r in fe.records)
    got = vectors_by_id(out)
    assert len(got) == 120
    for i, text in enumerate(texts):
        assert np.array_equal(got[(f"j{i}", 0)], vector_of(text, 64))


def test_fake_refuses_past_its_caps(embed_api: tuple[FakeAPI, FakeEmbed]) -> None:
    openai = pytest.importorskip("openai")
    api, fe = embed_api
    fe.max_inputs = 3
    with openai.OpenAI(base_url=api.url + "/v1", api_key="sk-test", max_retries=0) as client:
        with pytest.raises(openai.BadRequestError, match="at most 3 inputs"):
            client.embeddings.create(model="text-embedding-3-small", input=["a", "b", "c", "d"])
        fe.max_inputs, fe.max_tokens = 100, 5
        with pytest.raises(openai.BadRequestError, match="max 5 tokens"):
            client.embeddings.create(model="text-embedding-3-small", input=["x" * 40])


# -- decoding -----------------------------------------------------------------------


def test_base64_and_float_answers_give_the_same_vectors(
    embed_api: tuple[FakeAPI, FakeEmbed], tmp_path: Path
) -> None:
    api, fe = embed_api
    texts = [f"sentence number {i}" for i in range(50)]
    jobs = write_jobs(tmp_path / "jobs.jsonl", texts, model=MODEL)
    a, b = tmp_path / "b64.parquet", tmp_path / "float.parquet"
    assert run_embed(api, str(jobs), "-o", str(a)).code == 0
    assert {r.encoding for r in fe.records} == {"base64"}
    fe.answer_floats = True
    assert run_embed(api, str(jobs), "-o", str(b)).code == 0
    va, vb = vectors_by_id(a), vectors_by_id(b)
    assert va.keys() == vb.keys() and len(va) == 50
    for key in va:
        assert va[key].dtype == np.float32
        assert np.array_equal(va[key], vb[key])
    assert pq.read_schema(a).field("embedding").type.value_type == "float"


def test_decode_vectors_is_one_matrix_either_way() -> None:
    vecs = np.arange(12, dtype=np.float32).reshape(3, 4) / 7
    b64 = [{"embedding": base64.b64encode(v.astype("<f4").tobytes()).decode()} for v in vecs]
    floats = [{"embedding": [float(x) for x in v]} for v in vecs]
    for items in (b64, floats):
        m = decode_vectors(items)
        assert m.dtype == np.float32 and m.shape == (3, 4)
        assert np.array_equal(m, vecs)


# -- retries, repeats, cost -------------------------------------------------------------


def test_a_429_mid_run_retries_only_its_request(
    embed_api: tuple[FakeAPI, FakeEmbed], tmp_path: Path
) -> None:
    api, fe = embed_api
    texts = [f"text {i}" for i in range(40)]
    fe.fail_text = {"text 25": [429]}
    jobs = write_jobs(tmp_path / "jobs.jsonl", texts, model=MODEL)
    out = tmp_path / "v.parquet"
    result = run_embed(api, str(jobs), "-o", str(out), "--inputs-per-request", "10", "-c", "1")
    assert result.code == 0, result.output
    statuses = [r.status for r in fe.records]
    assert statuses.count(429) == 1 and statuses.count(200) == 4
    failed = next(r for r in fe.records if r.status == 429)
    retried = [r for r in fe.records if r.status == 200 and r.inputs == failed.inputs]
    assert len(retried) == 1  # the same pack, once more; no other pack sent twice
    assert sorted(fe.texts_sent) == sorted(texts)
    assert len(vectors_by_id(out)) == 40


def test_duplicate_texts_cost_once(embed_api: tuple[FakeAPI, FakeEmbed], tmp_path: Path) -> None:
    api, fe = embed_api
    distinct = [f"chunk {i} of the corpus" for i in range(30)]
    texts = distinct + distinct[:20] + distinct[5:10]  # 55 rows, 30 distinct texts
    jobs = write_jobs(tmp_path / "jobs.jsonl", texts, model=MODEL)
    out = tmp_path / "v.parquet"
    report = tmp_path / "r.json"
    args = ("-o", str(out), "--report", str(report), "--inputs-per-request", "8")
    assert run_embed(api, str(jobs), *args).code == 0
    assert sorted(fe.texts_sent) == sorted(distinct)  # each text sent once
    got = vectors_by_id(out)
    assert len(got) == 55
    for i, text in enumerate(texts):
        assert np.array_equal(got[(f"j{i}", 0)], vector_of(text, 64))
    emb = json.loads(report.read_text())["embedding"]
    tokens = sum(tokens_of(t) for t in distinct)
    assert emb["tokens"] == tokens
    assert emb["cost_usd"] == pytest.approx(tokens * 0.02 / 1e6)
    assert emb["deduplicated"] == 25 and emb["vectors"] == 55 and emb["dimensions"] == [64]
    assert emb["texts_sent"] == 30


def test_repeats_across_runs_come_from_the_response_cache(
    embed_api: tuple[FakeAPI, FakeEmbed], tmp_path: Path
) -> None:
    api, fe = embed_api
    texts = [f"cached text {i}" for i in range(12)]
    cache = tmp_path / "cache.sqlite"
    jobs = write_jobs(tmp_path / "a.jsonl", texts, model=MODEL)
    env = fake_env(api)
    first = run_cli(
        "embed",
        str(jobs),
        "-o",
        str(tmp_path / "a.parquet"),
        "--cache",
        str(cache),
        "--quiet",
        env=env,
    )
    assert first.code == 0, first.output
    sent = len(fe.texts_sent)
    again = run_cli(
        "embed",
        str(jobs),
        "-o",
        str(tmp_path / "b.parquet"),
        "--cache",
        str(cache),
        "--quiet",
        env=env,
    )
    assert again.code == 0, again.output
    assert len(fe.texts_sent) == sent == 12  # the second run sent nothing
    va, vb = vectors_by_id(tmp_path / "a.parquet"), vectors_by_id(tmp_path / "b.parquet")
    assert all(np.array_equal(va[k], vb[k]) for k in va) and len(vb) == 12


# -- lines --------------------------------------------------------------------------------


def test_embed_lines_are_checked_with_file_and_line(tmp_path: Path) -> None:
    parser = EmbedParser()
    with pytest.raises(LineError, match='"input"'):
        parser.parse(b'{"id": 1, "input": []}', 1)
    with pytest.raises(LineError, match="dimensions"):
        parser.parse(b'{"id": 1, "input": "x", "dimensions": 0}', 1)
    job = parser.parse(b'{"id": 7, "input": ["a", "b"], "model": "sim:e", "dimensions": 8}', 3)
    assert (job.id, job.texts, job.dimensions, str(job.model)) == ("7", ["a", "b"], 8, "sim:e")
    jobs = tmp_path / "bad.jsonl"
    jobs.write_text('{"id": 1, "input": "ok"}\n{"id": 2, "input": 5}\n')
    result = run_cli(
        "embed", str(jobs), "-m", "sim:text-embedding-3-small", "-o", str(tmp_path / "o.parquet")
    )
    assert result.code == 2
    assert f"{jobs}:2" in result.output and "input" in result.output


# -- resume after kill -9 ---------------------------------------------------------------------


def test_kill_9_mid_run_then_rerun_writes_every_id_once(tmp_path: Path) -> None:
    n = 3000
    jobs = write_jobs(tmp_path / "jobs.jsonl", [f"kill test {i}" for i in range(n)])
    out = tmp_path / "v.parquet"
    env = {
        "LLMBATCH_SIM_LATENCY_MS": "40",
        "LLMBATCH_PARQUET_PART_ROWS": "100",
    }
    args = (
        "embed",
        str(jobs),
        "-m",
        "sim:text-embedding-3-small",
        "-o",
        str(out),
        "--inputs-per-request",
        "25",
        "-c",
        "2",
        "--no-cache",
        "--quiet",
        "--dimensions",
        "16",
    )
    proc = start_cli(*args, env=env)
    parts = out.with_name(out.name + ".parts")
    try:
        wait_until(lambda: parts.is_dir() and len(list(parts.glob("*.parquet"))) >= 4, timeout=60)
        proc.send_signal(signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)
    assert not out.exists()  # killed before the merge: only parts
    rerun = start_cli(*args, env={**env, "LLMBATCH_SIM_LATENCY_MS": "0"})
    _, err = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, err.decode()
    ids = pq.read_table(out, columns=["id"])["id"].to_pylist()
    assert len(ids) == n and len(set(ids)) == n
    assert not parts.exists()
    assert pq.read_schema(out).field("embedding").type.list_size == 16
    assert os.path.getsize(out) > n * 16 * 4


def test_the_openai_sdk_parses_what_the_fake_sends(embed_api: tuple[FakeAPI, FakeEmbed]) -> None:
    openai = pytest.importorskip("openai")
    api, fe = embed_api
    texts = ["alpha", "beta gamma"]
    with openai.OpenAI(base_url=api.url + "/v1", api_key="sk-test", max_retries=0) as client:
        as_floats = client.embeddings.create(
            model="text-embedding-3-small", input=texts, encoding_format="float", dimensions=32
        )
        as_b64 = client.embeddings.create(
            model="text-embedding-3-small", input=texts, dimensions=32
        )
        fe.faults = [429]
        with pytest.raises(openai.RateLimitError):
            client.embeddings.create(model="text-embedding-3-small", input=["x"])
    assert [r.encoding for r in fe.records][:2] == ["float", "base64"]  # the SDK asks base64
    for resp in (as_floats, as_b64):
        assert [d.index for d in resp.data] == [0, 1]
        assert resp.usage.prompt_tokens == sum(tokens_of(t) for t in texts)
        for d, text in zip(resp.data, texts, strict=True):
            assert np.array_equal(np.asarray(d.embedding, dtype=np.float32), vector_of(text, 32))


def test_gemini_batch_embed_contents(embed_api: tuple[FakeAPI, FakeEmbed], tmp_path: Path) -> None:
    api, fe = embed_api
    texts = [f"gemini text {i}" for i in range(250)]
    jobs = write_jobs(tmp_path / "jobs.jsonl", texts, model="gemini:gemini-embedding-001")
    out = tmp_path / "g.parquet"
    env = {"GEMINI_BASE_URL": api.url, "GEMINI_API_KEY": "gm-test-key"}
    r = run_cli("embed", str(jobs), "-o", str(out), "--dimensions", "24", "--no-cache", env=env)
    assert r.code == 0, r.output
    assert all(rec.status == 200 and len(rec.inputs) <= 100 for rec in fe.records)
    assert len(fe.records) == 3 and {rec.dimensions for rec in fe.records} == {24}
    got = vectors_by_id(out)
    for i, text in enumerate(texts):
        assert np.array_equal(got[(f"j{i}", 0)], vector_of(text, 24))


def test_a_server_that_refuses_base64_is_asked_for_floats(
    embed_api: tuple[FakeAPI, FakeEmbed], tmp_path: Path
) -> None:
    api, fe = embed_api
    fe.refuses_base64 = True
    texts = [f"compat text {i}" for i in range(30)]
    jobs = write_jobs(tmp_path / "jobs.jsonl", texts, model=MODEL)
    out = tmp_path / "v.parquet"
    r = run_embed(api, str(jobs), "-o", str(out), "--inputs-per-request", "10", "-c", "1")
    assert r.code == 0, r.output
    assert [x.status for x in fe.records] == [400, 200, 200, 200]
    assert {x.encoding for x in fe.records[1:]} == {"float"}
    got = vectors_by_id(out)
    assert all(np.array_equal(got[(f"j{i}", 0)], vector_of(t, 64)) for i, t in enumerate(texts))
