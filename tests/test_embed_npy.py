"""``--npy PATH``: a float32 matrix whose row i is the output's row i (a Parquet row or a
JSONL line: its id, index, status) — after a plain run, with failed rows (NaN), after
kill -9 and a rerun, and when a kill left it stale or missing; refused (exit 2) when it
cannot be built."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow.parquet as pq
import pytest

from llmbatch._io.npy import is_current, write_npy
from llmbatch._io.vectors import VectorWriter
from tests.conftest import fake_env, run_cli, start_cli, wait_until
from tests.fakeembed import FakeEmbed, vector_of
from tests.test_embed import MODEL, embed_api, write_jobs

__all__ = ["embed_api"]  # the fixture, imported for this module's tests


def parquet_matrix(path: Path) -> tuple[list[str], Any]:
    t = pq.read_table(path)
    dim = t.schema.field("embedding").type.list_size
    col = t["embedding"].combine_chunks()
    matrix = np.full((len(t), dim), np.nan, dtype=np.float32)
    valid = col.is_valid().to_numpy(zero_copy_only=False)
    if valid.any():
        matrix[valid] = col.drop_null().flatten().to_numpy().reshape(-1, dim)
    return t["id"].to_pylist(), matrix


def jsonl_matrix(path: Path) -> tuple[list[str], Any]:
    """The ids and vectors of a JSONL output, line by line (failed: NaN)."""
    lines = [orjson.loads(raw) for raw in path.read_bytes().splitlines() if raw.strip()]
    dim = max((len(x["embedding"]) for x in lines if x["embedding"]), default=1)
    matrix = np.full((len(lines), dim), np.nan, dtype=np.float32)
    for row, x in enumerate(lines):
        if x["embedding"] is not None:
            matrix[row] = x["embedding"]
    return [x["id"] for x in lines], matrix


def output_matrix(out: Path) -> tuple[list[str], Any]:
    return parquet_matrix(out) if out.suffix == ".parquet" else jsonl_matrix(out)


def assert_npy_matches(out: Path, npy: Path | None = None) -> Any:
    npy = npy or out.with_suffix(".npy")
    matrix = np.load(npy, mmap_mode="r")
    ids, expected = output_matrix(out)
    assert isinstance(matrix, np.memmap)
    assert matrix.dtype == np.float32 and matrix.shape == expected.shape
    assert np.array_equal(np.asarray(matrix), expected, equal_nan=True)
    return matrix


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl"])
def test_npy_matches_the_output_row_for_row_failed_rows_nan(
    embed_api: tuple[Any, FakeEmbed], tmp_path: Path, suffix: str
) -> None:
    api, fe = embed_api
    texts = [f"npy text {i}" for i in range(50)]
    fe.fail_text = {"npy text 17": [400] * 5}  # its pack fails for good
    jobs = write_jobs(tmp_path / "jobs.jsonl", texts, model=MODEL)
    out = tmp_path / f"v{suffix}"
    npy = tmp_path / "m" / "vectors.npy"  # its folder is made
    result = run_cli(
        "embed", str(jobs), "-o", str(out), "--npy", str(npy), "--inputs-per-request", "10",
        "--no-cache", "--quiet", "--dimensions", "32", env=fake_env(api),
    )  # fmt: skip
    assert result.code in (0, 1), result.output
    matrix = assert_npy_matches(out, npy)
    assert matrix.shape == (50, 32)
    ids, _ = output_matrix(out)
    if suffix == ".parquet":
        statuses = pq.read_table(out, columns=["status"])["status"].to_pylist()
    else:
        statuses = [orjson.loads(raw)["status"] for raw in out.read_bytes().splitlines()]
    assert statuses.count("failed") == 10  # the pack of "npy text 17"
    for row, (job_id, status) in enumerate(zip(ids, statuses, strict=True)):
        if status == "ok":
            assert np.array_equal(matrix[row], vector_of(texts[int(job_id[1:])], 32))
        else:
            assert np.isnan(matrix[row]).all()


def test_npy_refusals_exit_2_before_anything_is_sent(tmp_path: Path) -> None:
    jobs = write_jobs(tmp_path / "jobs.jsonl", ["a", "b"])
    out = tmp_path / "v.jsonl"

    def refused(*args: str) -> str:
        result = run_cli(*args, "--quiet")
        assert result.code == 2, result.output
        assert not out.exists() and not [p for p in tmp_path.glob("*.npy") if p.is_file()]
        return result.output

    embed = ("embed", str(jobs), "-m", "sim:e")
    assert "end in .npy" in refused(*embed, "-o", str(out), "--npy", str(tmp_path / "m.txt"))
    same = tmp_path / "v.npy"  # JSON lines under a .npy name, and the matrix there too
    assert "--output itself" in refused(*embed, "-o", str(same), "--npy", str(same))
    assert "standard output" in refused(*embed, "-o", "-", "--npy", str(tmp_path / "m.npy"))
    (tmp_path / "d.npy").mkdir()
    assert "a directory" in refused(*embed, "-o", str(out), "--npy", str(tmp_path / "d.npy"))
    chat = tmp_path / "chat.jsonl"
    chat.write_text('{"id": "1", "prompt": "hi"}\n')
    run = ("run", str(chat), "-m", "sim:gpt-4o-mini", "-o", str(out))
    assert "embedding jobs" in refused(*run, "--npy", str(tmp_path / "m.npy"))


def test_run_over_embedding_lines_takes_npy(tmp_path: Path) -> None:
    jobs = write_jobs(tmp_path / "jobs.jsonl", ["a", "b", "c"])
    out, npy = tmp_path / "r.jsonl", tmp_path / "r-vectors.npy"
    args = ("run", str(jobs), "-m", "sim:e", "-o", str(out), "--npy", str(npy), "--quiet")
    assert run_cli(*args, env={"LLMBATCH_SIM_LATENCY_MS": "0"}).code == 0
    assert assert_npy_matches(out, npy).shape == (3, 256)


def test_a_stale_or_missing_npy_is_rebuilt_from_the_parquet(tmp_path: Path) -> None:
    """A kill between the merge and the matrix's rename leaves it missing or short."""
    out, npy = tmp_path / "v.parquet", tmp_path / "v.npy"
    rng = np.random.default_rng(1)
    first = rng.standard_normal((30, 8)).astype(np.float32)
    writer = VectorWriter(out)
    writer.write([f"a{i}" for i in range(30)], [0] * 30, "m", [None] * 30, 0.0, first)
    writer.close()
    write_npy(out, npy)
    assert is_current(out, npy)
    assert np.array_equal(np.load(npy), first)
    # more rows merged into the Parquet, the matrix not rewritten (the kill)
    second = rng.standard_normal((20, 8)).astype(np.float32)
    more = VectorWriter(out)
    more.write([f"b{i}" for i in range(20)], [0] * 20, "m", [None] * 20, 0.0, second)
    more.close()
    assert not is_current(out, npy)
    write_npy(out, npy)
    both = np.load(npy, mmap_mode="r")
    assert np.array_equal(np.asarray(both), np.concatenate([first, second]))
    npy.unlink()
    assert write_npy(out, npy) == npy
    assert_npy_matches(out, npy)
    assert not list(tmp_path.glob("*.writing"))


def test_jsonl_npy_is_rebuilt_when_stale_and_fills_across_windows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import llmbatch._io.npy as npy_mod

    monkeypatch.setattr(npy_mod, "WINDOW_BYTES", 1)  # windows of 1,024 rows: 3 of them
    out, npy = tmp_path / "v.jsonl", tmp_path / "v.npy"
    rng = np.random.default_rng(2)
    rows = rng.standard_normal((2500, 4)).astype(np.float32)
    with out.open("wb") as f:
        for i, row in enumerate(rows):
            vec = None if i % 700 == 3 else row
            line = {"id": f"d{i}", "index": 0, "status": "ok", "embedding": vec}
            f.write(orjson.dumps(line, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n")
    assert write_npy(out, npy) == npy and is_current(out, npy)
    matrix = assert_npy_matches(out, npy)
    assert np.array_equal(matrix[:3], rows[:3]) and np.isnan(matrix[703]).all()
    with out.open("ab") as f:  # a rerun appended rows: the matrix is stale
        f.write(b'{"id": "late", "index": 0, "status": "failed", "embedding": null}\n')
    assert not is_current(out, npy)
    assert write_npy(out, npy) is not None
    assert assert_npy_matches(out, npy).shape == (2501, 4)


def test_parquet_npy_fills_across_windows_and_row_groups(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import llmbatch._io.npy as npy_mod

    monkeypatch.setattr(npy_mod, "WINDOW_BYTES", 1)  # windows of 1,024 rows
    out, npy = tmp_path / "v.parquet", tmp_path / "v.npy"
    rng = np.random.default_rng(3)
    writer = VectorWriter(out, part_rows=900)  # row groups of 700 rows, parts of 1,400
    for k in range(4):
        ids = [f"r{k}-{i}" for i in range(700)]
        if k == 2:
            writer.write(ids, [0] * 700, "m", [None] * 700, None, None, "boom")
        else:
            rows = rng.standard_normal((700, 4)).astype(np.float32)
            writer.write(ids, [0] * 700, "m", [None] * 700, 0.0, rows)
    writer.close()
    write_npy(out, npy)
    matrix = assert_npy_matches(out, npy)
    assert matrix.shape == (2800, 4) and np.isnan(matrix[1400:2100]).all()
    assert not np.isnan(matrix[:1400]).any() and not np.isnan(matrix[2100:]).any()


def test_jsonl_npy_refuses_mixed_dimensions_and_non_embedding_lines(tmp_path: Path) -> None:
    from llmbatch._core.exceptions import OutputError

    out, npy = tmp_path / "v.jsonl", tmp_path / "v.npy"
    out.write_bytes(b'{"id": "a", "embedding": [1, 2]}\n{"id": "b", "embedding": [1, 2, 3]}\n')
    with pytest.raises(OutputError, match="3 dimensions"):
        write_npy(out, npy)
    out.write_bytes(b'{"id": "a", "output": "hi"}\n')
    with pytest.raises(OutputError, match="embedding"):
        write_npy(out, npy)
    assert not npy.exists() and not list(tmp_path.glob("*.writing"))


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl"])
def test_npy_after_kill_9_and_rerun(tmp_path: Path, suffix: str) -> None:
    n = 3000
    jobs = write_jobs(tmp_path / "jobs.jsonl", [f"npy kill {i}" for i in range(n)])
    out, npy = tmp_path / f"v{suffix}", tmp_path / "vectors.npy"
    env = {"LLMBATCH_SIM_LATENCY_MS": "40", "LLMBATCH_PARQUET_PART_ROWS": "100"}
    args = (
        "embed", str(jobs), "-m", "sim:text-embedding-3-small", "-o", str(out), "--npy", str(npy),
        "--inputs-per-request", "25", "-c", "2", "--no-cache", "--quiet", "--dimensions", "16",
    )  # fmt: skip
    proc = start_cli(*args, env=env)
    parts = out.with_name(out.name + ".parts")

    def some_rows_out() -> bool:
        if suffix == ".jsonl":
            return out.exists() and out.stat().st_size > 20_000
        return parts.is_dir() and len(list(parts.glob("*.parquet"))) >= 3

    try:
        wait_until(some_rows_out, timeout=60)
        proc.send_signal(signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)
    assert not npy.exists()  # killed mid-run: no matrix yet
    rerun = start_cli(*args, env={**env, "LLMBATCH_SIM_LATENCY_MS": "0"})
    _, err = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, err.decode()
    matrix = assert_npy_matches(out, npy)
    ids, _ = output_matrix(out)
    assert matrix.shape == (n, 16) and len(set(ids)) == n
    assert not np.isnan(matrix).any()
    # a rerun with nothing to do leaves the matching matrix alone
    before = npy.stat().st_mtime_ns
    time.sleep(0.01)
    again = start_cli(*args, env={**env, "LLMBATCH_SIM_LATENCY_MS": "0"})
    _, err = again.communicate(timeout=120)
    assert again.returncode == 0, err.decode()
    assert npy.stat().st_mtime_ns == before


def test_fresh_moves_the_old_npy_aside(tmp_path: Path) -> None:
    jobs = write_jobs(tmp_path / "jobs.jsonl", [f"t {i}" for i in range(5)])
    out, npy = tmp_path / "v.parquet", tmp_path / "v.npy"
    args = ("embed", str(jobs), "-m", "sim:e", "-o", str(out), "--npy", str(npy), "--quiet")
    env = {"LLMBATCH_SIM_LATENCY_MS": "0"}
    assert run_cli(*args, "--dimensions", "8", env=env).code == 0
    assert np.load(npy).shape == (5, 8)
    assert run_cli(*args, "--dimensions", "4", "--fresh", env=env).code == 0
    assert np.load(npy).shape == (5, 4)
    assert len(list(tmp_path.glob("v.npy.*.bak"))) == 1


@pytest.mark.parametrize("dim", [1, 3])
def test_write_npy_of_only_failed_rows(tmp_path: Path, dim: int) -> None:
    out, npy = tmp_path / "v.parquet", tmp_path / "v.npy"
    writer = VectorWriter(out)
    if dim > 1:
        ok = np.ones((2, dim), dtype=np.float32)
        writer.write(["x", "y"], [0, 0], "m", [None, None], 0.0, ok)
    writer.write(["f1", "f2"], [0, 0], "m", [None, None], None, None, "boom")
    writer.close()
    write_npy(out, npy)
    matrix = assert_npy_matches(out, npy)
    assert np.isnan(matrix[-2:]).all()


def test_writing_vectors_and_the_matrix_does_not_import_pandas(tmp_path: Path) -> None:
    """pyarrow.array() imports pandas (~50 MiB resident) to ask whether its argument is a
    pandas object; the vector writer builds its columns from buffers instead."""
    code = f"""
import sys
from pathlib import Path
import numpy as np
from llmbatch._io.npy import write_npy
from llmbatch._io.vectors import VectorWriter, read_existing_vectors
out = Path({str(tmp_path / "v.parquet")!r})
w = VectorWriter(out)
w.write(["a", "b"], [0, 1], "m", [None, {{"k": 1}}], 0.5, np.ones((2, 4), np.float32))
w.write(["c"], [0], "m", [None], None, None, "boom")
w.close()
write_npy(out, out.with_suffix(".npy"))
read_existing_vectors(out, retry_failed=False)
print("pandas" in sys.modules)
"""
    import subprocess
    import sys

    import pandas  # noqa: F401  (installed: the question is whether the writer loads it)

    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
    t = pq.read_table(tmp_path / "v.parquet")
    assert t["id"].to_pylist() == ["a", "b", "c"] and t["index"].to_pylist() == [0, 1, 0]
    assert t["metadata"].to_pylist() == [None, '{"k":1}', None]
    assert t["status"].to_pylist() == ["ok", "ok", "failed"]
    assert t["error"].to_pylist() == [None, None, "boom"]
    assert t["cost_usd"].to_pylist() == [0.25, 0.25, None]
    assert t["dimensions"].to_pylist() == [4, 4, 4]


def test_run_file_takes_npy_as_a_path(tmp_path: Path) -> None:
    import llmbatch

    jobs = write_jobs(tmp_path / "jobs.jsonl", ["a", "b"])
    out, npy = tmp_path / "v.jsonl", tmp_path / "v-matrix.npy"
    result = llmbatch.run_file(jobs, out, model="sim:e", npy=npy, dimensions=8)
    assert result.ok
    assert assert_npy_matches(out, npy).shape == (2, 8)
