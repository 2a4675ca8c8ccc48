"""Columnar jobs: Parquet, CSV and hf:// (a local dataset) give the results of the same JSONL."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from llmbatch._core.exceptions import UsageError
from llmbatch._io.columnar import Columns, iter_rows
from tests.conftest import run_cli

ROWS = [
    {"id": f"r{i:03d}", "prompt": f"Summarise item {i}", "topic": f"t{i % 3}"} for i in range(40)
]


def outputs(path: Path) -> dict[str, Any]:
    lines = [orjson.loads(x) for x in path.read_bytes().splitlines()]
    return {d["id"]: (d["status"], d["output"], d.get("metadata")) for d in lines}


def sources(tmp_path: Path, rows: list[dict[str, Any]]) -> dict[str, str]:
    import datasets

    jsonl = tmp_path / "jobs.jsonl"
    jsonl.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    table = pa.Table.from_pylist(rows)
    pq.write_table(table, tmp_path / "jobs.parquet", row_group_size=7)
    import csv

    with (tmp_path / "jobs.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    ds = datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)})
    ds.save_to_disk(str(tmp_path / "ds"))
    return {
        "jsonl": str(jsonl),
        "parquet": str(tmp_path / "jobs.parquet"),
        "csv": str(tmp_path / "jobs.csv"),
        "hf": f"hf://datasets/{tmp_path / 'ds'}:train",
    }


def test_chat_jobs_from_parquet_csv_and_hf_match_jsonl(tmp_path: Path) -> None:
    results = {}
    for kind, src in sources(tmp_path, ROWS).items():
        out = tmp_path / f"{kind}.results.jsonl"
        r = run_cli("run", src, "-m", "sim:gpt-4o-mini", "-o", str(out), "--quiet", "--no-cache")
        assert r.code == 0, (kind, r.output)
        results[kind] = outputs(out)
    assert len(results["jsonl"]) == 40
    for kind in ("parquet", "csv", "hf"):
        assert results[kind] == results["jsonl"], kind


def test_columns_choose_id_prompt_and_carried_columns(tmp_path: Path) -> None:
    rows = [{"doc": f"d{i}", "text": f"Summarise item {i}", "topic": f"t{i}"} for i in range(5)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "data.parquet")
    jsonl = tmp_path / "same.jsonl"
    jsonl.write_bytes(
        b"".join(
            orjson.dumps({"id": r["doc"], "prompt": r["text"], "metadata": {"topic": r["topic"]}})
            + b"\n"
            for r in rows
        )
    )
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    flags = ("-m", "sim:gpt-4o-mini", "--quiet", "--no-cache")
    cols = ("--id-column", "doc", "--prompt-column", "text", "--include-columns", "topic")
    assert run_cli("run", str(tmp_path / "data.parquet"), *cols, "-o", str(a), *flags).code == 0
    assert run_cli("run", str(jsonl), "-o", str(b), *flags).code == 0
    assert outputs(a) == outputs(b)
    assert outputs(a)["d3"][2] == {"topic": "t3"}
    # A template over the columns, as for JSONL records.
    c = tmp_path / "c.jsonl"
    t = ("--template", "Topic {topic}: {text}", "--id-column", "doc")
    assert run_cli("run", str(tmp_path / "data.parquet"), *t, "-o", str(c), *flags).code == 0
    assert set(outputs(c)) == {f"d{i}" for i in range(5)}


def test_embeddings_from_parquet_and_hf_match_jsonl(tmp_path: Path) -> None:
    rows = [{"id": r["id"], "input": r["prompt"]} for r in ROWS]
    vectors = {}
    for kind, src in sources(tmp_path, rows).items():
        out = tmp_path / f"{kind}.parquet"
        args = ("embed", src, "-m", "sim:text-embedding-3-small", "-o", str(out))
        r = run_cli(*args, "--quiet", "--no-cache", "--dimensions", "32")
        assert r.code == 0, (kind, r.output)
        t = pq.read_table(out).sort_by("id")
        vectors[kind] = (t["id"].to_pylist(), t["embedding"].to_pylist())
    assert len(vectors["jsonl"][0]) == 40
    for kind in ("parquet", "csv", "hf"):
        assert vectors[kind] == vectors["jsonl"], kind


def test_a_bad_row_is_named_by_file_and_row(tmp_path: Path) -> None:
    rows = [{"id": "a", "prompt": "fine"}, {"id": "b", "prompt": None}, {"id": "c", "prompt": "ok"}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    r = run_cli(
        "run", str(tmp_path / "d.parquet"), "-m", "sim:gpt-4o-mini", "-o", str(tmp_path / "o.jsonl")
    )
    assert r.code == 2
    assert f"{tmp_path / 'd.parquet'}:2" in r.output


def test_rows_are_read_in_batches(tmp_path: Path) -> None:
    rows = [{"id": i, "prompt": f"p{i}"} for i in range(10_000)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "big.parquet", row_group_size=1000)
    it = iter_rows(tmp_path / "big.parquet", Columns())
    first = next(it)
    assert first == (1, orjson.dumps({"id": 0, "prompt": "p0"}))
    assert sum(1 for _ in it) == 9_999


def test_a_missing_extra_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(UsageError, match=r"llmbatch\[parquet\]"):
        list(iter_rows(tmp_path / "x.parquet"))
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(UsageError, match=r"llmbatch\[hf\]"):
        list(iter_rows("hf://datasets/someone/thing"))


def test_chat_results_to_parquet_resume_and_match_jsonl(tmp_path: Path) -> None:
    src = sources(tmp_path, ROWS)["parquet"]
    flags = ("-m", "sim:gpt-4o-mini", "--quiet", "--no-cache")
    out = tmp_path / "results.parquet"
    first = run_cli("run", src, "-o", str(out), "--limit", "15", *flags)
    assert first.code == 0, first.output
    assert pq.read_table(out).num_rows == 15
    again = run_cli("run", src, "-o", str(out), *flags)
    assert again.code == 0, again.output
    table = pq.read_table(out)
    ids = table["id"].to_pylist()
    assert len(ids) == len(set(ids)) == 40
    jsonl = tmp_path / "same.jsonl"
    assert run_cli("run", src, "-o", str(jsonl), *flags).code == 0
    want = outputs(jsonl)
    got = {
        r["id"]: (
            r["status"],
            r["output"],
            None if r["metadata"] is None else orjson.loads(r["metadata"]),
        )
        for r in table.to_pylist()
    }
    assert got == want
    refused = run_cli("run", src, "-o", str(out), "--mode", "batch", *flags)
    assert refused.code == 2 and "parquet" in refused.output
