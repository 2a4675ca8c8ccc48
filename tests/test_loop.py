"""The runs llmbatch starts itself go on uvloop where it is installed; LLMBATCH_LOOP=asyncio
keeps asyncio's own loop."""

from __future__ import annotations

import asyncio

import pytest

import llmbatch
from llmbatch._core.loop import loop_options, run_loop


async def _loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


def test_a_run_of_its_own_goes_on_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LLMBATCH_LOOP", raising=False)
    assert loop_options() == {"use_uvloop": True}  # installed with llmbatch (not on Windows)
    assert run_loop(_loop_module).startswith("uvloop")
    [result] = llmbatch.run(["hello"], model="sim:claude-haiku-4-5")
    assert result.status == "ok"


def test_llmbatch_loop_asyncio_keeps_asyncio_s_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMBATCH_LOOP", "asyncio")
    assert loop_options() == {}
    assert run_loop(_loop_module).startswith("asyncio")
