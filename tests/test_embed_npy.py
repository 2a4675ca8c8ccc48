"""``--npy``: OUT.npy is a float32 matrix whose row i is the Parquet's row i — after a
plain run, with failed rows (NaN), after kill -9 and a rerun, and when a kill left it
stale or missing."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
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


def assert_npy_matches(out: Path) -> Any:
    npy = out.with_suffix(".npy")
    matrix = np.load(npy, mmap_mode="r")
    ids, expected = parquet_matrix(out)
    assert isinstance(matrix, np.memmap)
    assert matrix.dtype == np.float32 and matrix.shape == expected.shape
    assert np.array_equal(np.asarray(matrix), expected, equal_nan=True)
    return matrix


def test_npy_matches_the_parquet_row_for_row_failed_rows_nan(
    embed_api: tuple[Any, FakeEmbed], tmp_path: Path
) -> None:
    api, fe = embed_api
    texts = [f"npy text {i}" for i in range(50)]
    fe.fail_text = {"npy text 17": [400] * 5}  # its pack fails for good
    jobs = write_jobs(tmp_path / "jobs.jsonl", texts, model=MODEL)
    out = tmp_path / "v.parquet"
    result = run_cli(
        "embed", str(jobs), "-o", str(out), "--npy", "--inputs-per-request", "10",
        "--no-cache", "--quiet", "--dimensions", "32", env=fake_env(api),
    )  # fmt: skip
    assert result.code in (0, 1), result.output
    matrix = assert_npy_matches(out)
    assert matrix.shape == (50, 32)
    ids, _ = parquet_matrix(out)
    statuses = pq.read_table(out, columns=["status"])["status"].to_pylist()
    assert statuses.count("failed") == 10  # the pack of "npy text 17"
    for row, (job_id, status) in enumerate(zip(ids, statuses, strict=True)):
        if status == "ok":
            assert np.array_equal(matrix[row], vector_of(texts[int(job_id[1:])], 32))
        else:
            assert np.isnan(matrix[row]).all()


def test_npy_needs_a_parquet_output_and_embedding_jobs(tmp_path: Path) -> None:
    jobs = write_jobs(tmp_path / "jobs.jsonl", ["a", "b"])
    out = tmp_path / "v.jsonl"
    result = run_cli("embed", str(jobs), "-m", "sim:e", "-o", str(out), "--npy", "--quiet")
    assert result.code == 2 and "Parquet" in result.output
    assert not out.exists()
    chat = tmp_path / "chat.jsonl"
    chat.write_text('{"id": "1", "prompt": "hi"}\n')
    result = run_cli("run", str(chat), "-m", "sim:gpt-4o-mini", "--npy", "--quiet")
    assert result.code == 2 and "--npy" in result.output
    # `run` over embedding lines takes it as `embed` does
    out = tmp_path / "r.parquet"
    args = ("run", str(jobs), "-m", "sim:e", "-o", str(out), "--npy", "--quiet")
    assert run_cli(*args, env={"LLMBATCH_SIM_LATENCY_MS": "0"}).code == 0
    assert_npy_matches(out)


def test_a_stale_or_missing_npy_is_rebuilt_from_the_parquet(tmp_path: Path) -> None:
    """A kill between the merge and the matrix's rename leaves it missing or short."""
    out = tmp_path / "v.parquet"
    rng = np.random.default_rng(1)
    first = rng.standard_normal((30, 8)).astype(np.float32)
    writer = VectorWriter(out, npy=True)
    writer.write([f"a{i}" for i in range(30)], [0] * 30, "m", [None] * 30, 0.0, first)
    writer.close()
    assert is_current(out, out.with_suffix(".npy"))
    assert np.array_equal(np.load(out.with_suffix(".npy")), first)
    # more rows merged into the Parquet, the matrix not rewritten (the kill)
    second = rng.standard_normal((20, 8)).astype(np.float32)
    more = VectorWriter(out)
    more.write([f"b{i}" for i in range(20)], [0] * 20, "m", [None] * 20, 0.0, second)
    more.close()
    assert not is_current(out, out.with_suffix(".npy"))
    write_npy(out)
    both = np.load(out.with_suffix(".npy"), mmap_mode="r")
    assert np.array_equal(np.asarray(both), np.concatenate([first, second]))
    out.with_suffix(".npy").unlink()
    assert write_npy(out) == out.with_suffix(".npy")
    assert_npy_matches(out)
    assert not list(tmp_path.glob("*.writing"))


def test_npy_after_kill_9_and_rerun(tmp_path: Path) -> None:
    n = 3000
    jobs = write_jobs(tmp_path / "jobs.jsonl", [f"npy kill {i}" for i in range(n)])
    out = tmp_path / "v.parquet"
    env = {"LLMBATCH_SIM_LATENCY_MS": "40", "LLMBATCH_PARQUET_PART_ROWS": "100"}
    args = (
        "embed", str(jobs), "-m", "sim:text-embedding-3-small", "-o", str(out), "--npy",
        "--inputs-per-request", "25", "-c", "2", "--no-cache", "--quiet", "--dimensions", "16",
    )  # fmt: skip
    proc = start_cli(*args, env=env)
    parts = out.with_name(out.name + ".parts")
    try:
        wait_until(lambda: parts.is_dir() and len(list(parts.glob("*.parquet"))) >= 3, timeout=60)
        proc.send_signal(signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)
    assert not out.with_suffix(".npy").exists()  # killed mid-run: no matrix yet
    rerun = start_cli(*args, env={**env, "LLMBATCH_SIM_LATENCY_MS": "0"})
    _, err = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, err.decode()
    matrix = assert_npy_matches(out)
    ids, _ = parquet_matrix(out)
    assert matrix.shape == (n, 16) and len(set(ids)) == n
    assert not np.isnan(matrix).any()
    # a rerun with nothing to do leaves the matching matrix alone
    before = out.with_suffix(".npy").stat().st_mtime_ns
    time.sleep(0.01)
    again = start_cli(*args, env={**env, "LLMBATCH_SIM_LATENCY_MS": "0"})
    _, err = again.communicate(timeout=120)
    assert again.returncode == 0, err.decode()
    assert out.with_suffix(".npy").stat().st_mtime_ns == before


def test_fresh_moves_the_old_npy_aside(tmp_path: Path) -> None:
    jobs = write_jobs(tmp_path / "jobs.jsonl", [f"t {i}" for i in range(5)])
    out = tmp_path / "v.parquet"
    args = ("embed", str(jobs), "-m", "sim:e", "-o", str(out), "--npy", "--quiet")
    env = {"LLMBATCH_SIM_LATENCY_MS": "0"}
    assert run_cli(*args, "--dimensions", "8", env=env).code == 0
    assert np.load(out.with_suffix(".npy")).shape == (5, 8)
    assert run_cli(*args, "--dimensions", "4", "--fresh", env=env).code == 0
    assert np.load(out.with_suffix(".npy")).shape == (5, 4)
    assert len(list(tmp_path.glob("v.npy.*.bak"))) == 1


@pytest.mark.parametrize("dim", [1, 3])
def test_write_npy_of_only_failed_rows(tmp_path: Path, dim: int) -> None:
    out = tmp_path / "v.parquet"
    writer = VectorWriter(out, npy=True)
    if dim > 1:
        ok = np.ones((2, dim), dtype=np.float32)
        writer.write(["x", "y"], [0, 0], "m", [None, None], 0.0, ok)
    writer.write(["f1", "f2"], [0, 0], "m", [None, None], None, None, "boom")
    writer.close()
    matrix = assert_npy_matches(out)
    assert np.isnan(matrix[-2:]).all()
