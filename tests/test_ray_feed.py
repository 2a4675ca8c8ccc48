"""A ``run --ray`` actor runs the blocks it is given in one engine run: the next block's
jobs start as soon as slots free up, not after the last retry of the block before it
(which left the actor's other slots idle through every block's tail). In-process: the
actor's own code, no Ray."""

from __future__ import annotations

from array import array
from typing import Any

import anyio
import orjson
import pytest

from llmbatch._api.options import build_config
from llmbatch._api.ray_worker import BlockDone, EngineWorker, Part
from tests.conftest import fake_env
from tests.fakeapi import FakeAPI


def _block(first_line: int, rows: list[dict[str, Any]]) -> tuple[bytes, bytes]:
    numbers = array("q", range(first_line, first_line + len(rows)))
    return numbers.tobytes(), b"\n".join(orjson.dumps(row) for row in rows)


async def test_a_blocks_retry_tail_does_not_hold_the_next_block(
    fake: FakeAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in fake_env(fake).items():
        monkeypatch.setenv(name, value)
    fake.retry_after = 0.4  # the slow job's three 429s: over a second of back-off
    fake.add_rule("slow one", "429", "429", "429")
    config = build_config(model="anthropic:claude-haiku-4-5", fallback=[], schema=None,
                          output=None, cache=False, shared=None, customs={},
                          one_provider=False, options={"concurrency": 4})  # fmt: skip
    worker = EngineWorker()
    await worker.open(config)
    first = [{"id": "a0", "prompt": "the slow one"}] + [
        {"id": f"a{i}", "prompt": f"quick {i}"} for i in range(1, 8)
    ]
    second = [{"id": f"b{i}", "prompt": f"quick b{i}"} for i in range(8)]
    ended: list[str] = []
    answered: dict[str, int] = {"a": 0, "b": 0}

    async def run(name: str, block: tuple[bytes, bytes]) -> None:
        async for item in worker.stream_block(*block):
            if isinstance(item, Part):
                answered[name] += item.digest.count
            else:
                assert isinstance(item, BlockDone) and item.stopped_by is None
                ended.append(name)

    async with anyio.create_task_group() as tg:
        tg.start_soon(run, "a", _block(1, first))
        await anyio.sleep(0.05)  # the first block is running, its slow job waiting
        tg.start_soon(run, "b", _block(9, second))
    await worker.close()
    assert answered == {"a": 8, "b": 8}
    assert ended == ["b", "a"]  # the second block ran while the first one's job waited


async def test_an_engine_that_failed_fails_every_block_and_hangs_none(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LLMBATCH_SIM_LATENCY_MS", "0")
    config = build_config(model="sim:claude-haiku-4-5", fallback=[], schema=None,
                          output=None, cache=False, shared=None, customs={},
                          one_provider=False, options={})  # fmt: skip
    worker = EngineWorker()
    await worker.open(config)
    assert worker.runner is not None

    async def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("the engine broke")

    monkeypatch.setattr(worker.runner, "run_into", broken)
    for first_line in (1, 3):  # the block it broke on, and the next one given
        block = _block(first_line, [{"prompt": "a"}, {"prompt": "b"}])
        with anyio.fail_after(10), pytest.raises(RuntimeError, match="the engine broke"):
            async for _ in worker.stream_block(*block):
                pass
    await worker.close()
