"""An embedding batch's results file is spooled to disk and read a line at a time: the
fetch's peak Python memory (``tracemalloc``) stays far below the file's size, the
vectors are the online path's, a cut-off download is fetched again, and the spool
file is gone afterwards."""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import orjson
import pytest

from llmbatch._batch.embed_cmds import fetch_embed_output, submit_embed_file
from llmbatch._config.settings import RunConfig
from llmbatch._core.batch_types import ItemResult
from llmbatch._core.exceptions import ConnectionFailed
from llmbatch._core.models import ModelRef
from llmbatch._observe.progress import NoProgress
from llmbatch._run.embed import EmbedRun
from llmbatch.providers._spool import BIG_LINE, ResultStream, check_complete
from tests.batchutil import VirtualClock
from tests.conftest import fake_env
from tests.fakeapi import FakeAPI
from tests.fakebatch import FakeBatch
from tests.fakeembed import FakeEmbed, vector_of
from tests.test_embed_batch import vectors

MODEL = ModelRef("openai", "text-embedding-3-small")
DIMS = 1536
INPUTS = 4000


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


def big_file(path: Path, n: int = INPUTS) -> Path:
    with path.open("wb") as f:
        for i in range(n):
            row = {"id": f"e{i}", "input": f"text number {i}", "dimensions": DIMS}
            f.write(orjson.dumps(row) + b"\n")
    return path


def cfg(jobs: Path, out: Path, **kw: Any) -> RunConfig:
    # 100 inputs a request: 40 lines of about 0.8 MB in a results file of about 33 MB.
    return RunConfig(jobs=jobs, output=out, model=MODEL, embed=True, inputs_per_request=100, **kw)


def test_fetching_a_large_embedding_batch_keeps_memory_flat(
    fake: tuple[FakeBatch, FakeEmbed], tmp_path: Path
) -> None:
    fb, fe = fake
    # A small batch first, fetched: the modules a fetch imports are in before the measure.
    warm = cfg(big_file(tmp_path / "warm.jsonl", 10), tmp_path / "w.parquet", no_cache=True)
    clock = VirtualClock(fb)
    anyio.run(lambda: submit_embed_file(warm, clock=clock))
    fb.advance(700)
    assert anyio.run(lambda: fetch_embed_output(warm, clock=clock)).ok == 10
    jobs = big_file(tmp_path / "texts.jsonl")
    out = tmp_path / "v.parquet"
    # No response cache: its writes are batched (2,048 answers), and orjson's bytes of
    # each keep a 128 KiB buffer that tracemalloc counts (not resident): another matter.
    config = cfg(jobs, out, no_cache=True)
    sub = anyio.run(lambda: submit_embed_file(config, clock=clock))
    assert sub.jobs == INPUTS and len(fb.batches) == 2
    fb.advance(700)
    with fb._lock:  # the fake makes its output file now, before the measure starts
        for b in fb.batches.values():
            fb._advance(b)
    batch = list(fb.batches.values())[-1]
    assert batch.output_file_id is not None
    size = len(fb.files[batch.output_file_id].data)
    assert size > 30_000_000

    tracemalloc.start()
    try:
        rep = anyio.run(lambda: fetch_embed_output(config, clock=clock))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert rep.ok == INPUTS and rep.closed == 1 and rep.still_open == 0
    assert peak < size / 4, f"peak {peak:,} B for a results file of {size:,} B"
    assert not list((tmp_path / "v.parquet.batches").glob("*.download"))  # spool deleted

    # The same vectors as the online path's.
    online = cfg(jobs, tmp_path / "o.parquet", no_cache=True)
    anyio.run(EmbedRun(online, progress=NoProgress(), handle_signals=False).run)
    assert len(fe.texts_sent) == INPUTS
    got, want = vectors(out), vectors(tmp_path / "o.parquet")
    assert set(got) == set(want) and len(got) == INPUTS
    assert all(np.array_equal(got[k], v) for k, v in want.items())


def test_a_cut_off_download_is_fetched_again_and_no_spool_file_stays(
    fake: tuple[FakeBatch, FakeEmbed], tmp_path: Path
) -> None:
    fb, _ = fake
    config = cfg(big_file(tmp_path / "texts.jsonl", 300), tmp_path / "v.jsonl", no_cache=True)
    clock = VirtualClock(fb)
    anyio.run(lambda: submit_embed_file(config, clock=clock))
    fb.advance(700)
    fb.truncate_downloads = 1
    rep = anyio.run(lambda: fetch_embed_output(config, clock=clock))
    assert rep.ok == 300 and rep.closed == 1
    assert fb.calls["file_content"] == 2  # the cut one, then the whole one
    assert not list((tmp_path / "v.jsonl.batches").glob("*.download"))
    got = vectors(tmp_path / "v.jsonl")
    assert len(got) == 300 and np.array_equal(got[("e7", 0)], vector_of("text number 7", DIMS))


def test_the_spool_checks_the_last_line_and_deletes_its_files(tmp_path: Path) -> None:
    whole = tmp_path / "a.download"
    whole.write_bytes(b'{"custom_id": "a"}\n\n{"custom_id": "b"}')  # no final newline: fine
    check_complete(whole)
    cut = tmp_path / "b.download"
    long = orjson.dumps({"custom_id": "c", "pad": "x" * (BIG_LINE + 10)})
    cut.write_bytes(b'{"custom_id": "a"}\n' + long[: len(long) // 2])
    with pytest.raises(ConnectionFailed, match="cut off"):
        check_complete(cut)
    big = tmp_path / "c.download"
    big.write_bytes(long + b"\n" + b'{"custom_id": "d"}\n')
    with ResultStream([whole, big], lambda d: ItemResult(d["custom_id"], "ok")) as stream:
        assert [i.custom_id for i in stream] == ["a", "b", "c", "d"]
    assert not whole.exists() and not big.exists()
