"""Shared fixtures: a clean environment per test, the CLI as a subprocess, the fake API."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

import llmbatch._core.retry
from tests.fakeapi import FakeAPI
from tests.fakebatch import FakeBatch
from tests.redis_server import redis_server  # noqa: F401  (the --shared tests use it)

CANARY_ANTHROPIC = "sk-ant-canary-DO-NOT-LEAK-0123456789abcdef"
CANARY_OPENAI = "sk-canary-DO-NOT-LEAK-9876543210fedcba"


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No keys, base URLs, proxies or llmbatch settings leak in; cwd is the test's own.

    Cache and state dirs are the test's own too: no run answers another's from the cache.
    """
    for name in list(os.environ):
        upper = name.upper()
        if (
            upper.endswith("_API_KEY")
            or upper.endswith("_BASE_URL")
            or upper.endswith("_PROXY")
            or upper.startswith("LLMBATCH_")
            or upper.startswith("AWS_")
        ):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "*")
    # No AWS credentials or region from this machine, and never the instance metadata address.
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / ".aws" / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / ".aws" / "credentials"))
    # Retries without a retry-after wait 0.25-0.5 s, then 0.5-1 s, ...: the fakes fail on
    # purpose hundreds of times, so in this process the first step is 20 ms (the policy's
    # own tests give Backoff its real base).
    monkeypatch.setattr(llmbatch._core.retry, "BASE_S", 0.02)
    monkeypatch.setenv("LLMBATCH_SIM_LATENCY_MS", "0")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / ".xdg" / "cache"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / ".xdg" / "state"))
    monkeypatch.chdir(tmp_path)


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def run_cli(
    *args: str,
    input: str | bytes | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 120,
    cwd: Path | None = None,
) -> Result:
    """Run ``llmbatch ARGS`` in this process (the CLI's own code, its exit code, its
    stdout and stderr), as a user would in the current directory.

    Spawning a Python per call cost most of the suite's time; tests about what only a
    real process shows (signals, kill -9, pipes, peak memory, encodings) use
    :func:`run_cli_process`. ``LLMBATCH_TEST_SUBPROCESS=1`` runs every call in a process.
    """
    if os.environ.get("LLMBATCH_TEST_SUBPROCESS") == "1":
        return run_cli_process(*args, input=input, env=env, timeout=timeout, cwd=cwd)
    from typer.testing import CliRunner

    from llmbatch.cli import app

    old_cwd = Path.cwd()
    if cwd is not None:
        os.chdir(cwd)
    try:
        outcome = CliRunner().invoke(app, list(args), input=input, env=env)
    finally:
        os.chdir(old_cwd)
    if outcome.exception is not None and not isinstance(outcome.exception, SystemExit):
        raise outcome.exception
    return Result(outcome.exit_code, outcome.stdout, outcome.stderr)


def run_cli_process(
    *args: str,
    input: str | bytes | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 120,
    cwd: Path | None = None,
) -> Result:
    """Run ``python -m llmbatch ARGS`` in a new process, as a user would."""
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    data = input.encode() if isinstance(input, str) else input
    proc = subprocess.run(
        [sys.executable, "-m", "llmbatch", *args],
        input=data,
        capture_output=True,
        env=full_env,
        timeout=timeout,
        cwd=cwd,
    )
    return Result(proc.returncode, proc.stdout.decode(), proc.stderr.decode())


def write_jsonl(path: Path, rows: Sequence[Any]) -> Path:
    with path.open("wb") as f:
        for row in rows:
            f.write(row if isinstance(row, bytes) else orjson.dumps(row))
            f.write(b"\n")
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def prompts(n: int, prefix: str = "job") -> list[dict[str, Any]]:
    return [
        {"id": f"{prefix}-{i}", "prompt": f"Question {i}: what is {i} + {i}?"} for i in range(n)
    ]


@pytest.fixture
def fake() -> Iterator[FakeAPI]:
    api = FakeAPI().start()
    try:
        yield api
    finally:
        api.stop()


def fake_env(api: FakeAPI) -> dict[str, str]:
    """Point both providers at the fake, with canary keys."""
    return {
        "ANTHROPIC_BASE_URL": api.url,
        "OPENAI_BASE_URL": api.url + "/v1",
        "ANTHROPIC_API_KEY": CANARY_ANTHROPIC,
        "OPENAI_API_KEY": CANARY_OPENAI,
    }


def start_cli(
    *args: str, env: dict[str, str] | None = None, capture: bool = True
) -> subprocess.Popen[bytes]:
    """Start ``python -m llmbatch ARGS`` in the background, to signal or kill it."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    out = subprocess.PIPE if capture else subprocess.DEVNULL
    return subprocess.Popen(
        [sys.executable, "-m", "llmbatch", *args], env=full_env, stdout=out, stderr=out
    )


def wait_until(condition: Callable[[], bool], timeout: float = 60) -> None:
    """Poll ``condition`` (what the fake saw, what the output holds) until it holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(0.05)


@pytest.fixture
def fb(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeBatch]:
    """The fake API with its Batch endpoints (tests/fakebatch.py), both providers'
    base URLs and keys pointed at it."""
    from tests.batchutil import running_fake  # it imports this module

    with running_fake(monkeypatch) as batch:
        yield batch
