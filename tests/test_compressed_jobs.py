"""A jobs file compressed with gzip, bzip2 or xz is read as its lines (told by its first
bytes, whatever its name), by every command that reads jobs; its results go beside it
as for the plain file; zstd, which this Python cannot read, is refused saying how."""

from __future__ import annotations

import bz2
import gzip
import lzma
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import fake_env, prompts, read_jsonl, run_cli
from tests.fakeapi import FakeAPI

MODEL = "anthropic:claude-haiku-4-5"


def _jobs(n: int) -> bytes:
    import orjson

    return b"".join(orjson.dumps(row) + b"\n" for row in prompts(n))


@pytest.mark.parametrize(
    ("name", "compress"),
    [
        ("jobs.jsonl.gz", gzip.compress),
        ("jobs.jsonl.bz2", bz2.compress),
        ("jobs.xz", lzma.compress),
    ],
)
def test_a_compressed_jobs_file_runs_as_the_plain_one(
    tmp_path: Path, fake: FakeAPI, name: str, compress: Callable[[bytes], bytes]
) -> None:
    jobs = tmp_path / name
    jobs.write_bytes(compress(_jobs(30)))
    done = run_cli("run", str(jobs), "-m", MODEL, "--quiet", env=fake_env(fake))
    assert done.code == 0, done.output
    out = tmp_path / "jobs.results.jsonl"  # beside it, named as for jobs.jsonl
    assert sorted(line["id"] for line in read_jsonl(out)) == sorted(f"job-{i}" for i in range(30))
    again = run_cli("run", str(jobs), "-m", MODEL, "--quiet", env=fake_env(fake))
    assert again.code == 0, again.output  # resumed: nothing run twice
    assert len(read_jsonl(out)) == 30 and fake.count() == 30


def test_validate_names_a_compressed_files_lines(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.jsonl.gz"
    jobs.write_bytes(gzip.compress(_jobs(3) + b'{"id": "x"}\n'))
    done = run_cli("validate", str(jobs), "-m", "sim:claude-haiku-4-5")
    assert done.code == 2
    assert done.stdout.startswith(f'{jobs}:4: no "prompt" or "messages"')


def test_zstd_is_refused_saying_how_to_run_it(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.jsonl.zst"
    jobs.write_bytes(b"\x28\xb5\x2f\xfd" + b"\x00" * 20)
    done = run_cli("run", str(jobs), "-m", "sim:claude-haiku-4-5", "-o", str(tmp_path / "o"))
    assert done.code == 2
    assert "is zstd-compressed, which this Python cannot read" in done.stderr
    assert f"zstd -dc {jobs} | llmbatch run - …" in done.stderr
