"""Helpers shared by the batch tests: a clock on the fake's virtual time, fixtures, files."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio.lowlevel
import pytest

from llmbatch._config.settings import RunConfig
from llmbatch._engine.tally import REPAIR_INSTRUCTION
from tests.conftest import fake_env, write_jsonl
from tests.fakeapi import FakeAPI
from tests.fakebatch import FakeBatch

OA = "gpt-4o-mini"
AN = "claude-haiku-4-5"
SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
REPAIR_MARK = REPAIR_INSTRUCTION.split(":")[0]  # what a schema repair turn says


@contextmanager
def running_fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeBatch]:
    """The fake API with its Batch endpoints, both providers pointed at it."""
    api = FakeAPI(retry_after=0.01)
    batch = FakeBatch(api)
    api.start()
    for k, v in fake_env(api).items():
        monkeypatch.setenv(k, v)
    try:
        yield batch
    finally:
        api.stop()


def repair_requests(fb: FakeBatch) -> list[dict[str, Any]]:
    """The online requests that were schema repair turns."""
    return [r.body for r in fb.api.records if REPAIR_MARK in str(r.body.get("messages"))]


class VirtualClock:
    """Our clock on the fake's virtual time: a sleep moves the providers' time on."""

    def __init__(self, fb: FakeBatch) -> None:
        self.fb = fb
        self.slept = 0.0

    def monotonic(self) -> float:
        return self.fb.now()

    def time(self) -> float:
        return self.fb.now()

    async def sleep(self, seconds: float) -> None:
        self.slept += seconds
        self.fb.advance(seconds)
        await anyio.lowlevel.checkpoint()


def jobs_file(tmp_path: Path, n: int, models: tuple[str, ...] = (OA, AN)) -> Path:
    rows = [
        {"id": f"job-{i}", "prompt": f"Question {i}: what is {i} + {i}?", "model": models[i % 2]}
        for i in range(n)
    ]
    return write_jsonl(tmp_path / "jobs.jsonl", rows)


def config(jobs: Path, **kw: Any) -> RunConfig:
    return RunConfig(jobs=jobs, output=jobs.with_name("out.jsonl"), **kw)
