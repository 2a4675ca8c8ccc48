"""``--ray ADDRESS`` where no cluster runs is refused at once, saying so (Ray's own join
retries for minutes): the address is resolved as Ray resolves it, its port tried. And a
rolling budget is not taken to a cluster whose nodes would each hold their own ledger."""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from llmbatch._api import ray_cluster
from llmbatch._api.ray_address import join_target, unreachable
from llmbatch._core.exceptions import UsageError
from tests.conftest import fake_env, prompts, run_cli, write_jsonl
from tests.fakeapi import FakeAPI


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port  # nothing listens there now


def test_the_address_a_join_goes_to(monkeypatch: pytest.MonkeyPatch) -> None:
    assert join_target("10.0.0.7:6379") == ("10.0.0.7", 6379)
    assert join_target("ray://head.internal:10001") == ("head.internal", 10001)
    assert join_target("[::1]:6379") == ("::1", 6379)
    assert join_target("no-port-here") is None  # Ray is left to say what it makes of it
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.8:6380")  # what `auto` joins first
    assert join_target("auto") == ("10.0.0.8", 6380)


def test_a_port_that_answers_and_one_that_does_not() -> None:
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        assert unreachable("127.0.0.1", listening.getsockname()[1]) is None
    assert unreachable("127.0.0.1", _closed_port()) == "Connection refused"


def _fake_ray(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    joined: list[str] = []

    class Ray(SimpleNamespace):
        def is_initialized(self) -> bool:
            return False

        def init(self, address: str, **kwargs: Any) -> None:
            joined.append(address)

    monkeypatch.setitem(sys.modules, "ray", Ray())
    return joined


def test_a_join_where_nothing_answers_is_refused_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    joined = _fake_ray(monkeypatch)
    address = f"127.0.0.1:{_closed_port()}"
    started = time.monotonic()
    with pytest.raises(UsageError) as refused:
        ray_cluster.connect(address, quiet=True)
    assert time.monotonic() - started < 5  # not Ray's minutes of retries
    assert str(refused.value) == (
        f"--ray {address}: cannot reach {address} (nothing answers there: Connection "
        "refused). Start one (`ray start --head`), or pass --ray alone for a local Ray. "
        "Nothing was sent."
    )
    assert joined == []  # Ray was never asked
    # `auto` names where it looked (here RAY_ADDRESS; a stale `ray start` file alike).
    monkeypatch.setenv("RAY_ADDRESS", address)
    with pytest.raises(UsageError, match=f"nothing answers at {address}: Connection refused"):
        ray_cluster.connect("auto", quiet=True)
    assert joined == []


def test_a_join_where_a_port_answers_goes_on_to_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    joined = _fake_ray(monkeypatch)
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        address = f"127.0.0.1:{listening.getsockname()[1]}"
        assert ray_cluster.connect(address, quiet=True)
    assert joined == [address]


def test_a_rolling_budget_on_a_joined_cluster_needs_shared(tmp_path: Path, fake: FakeAPI) -> None:
    # Without --shared a rolling budget lives in a SQLite file: one machine's. A joined
    # cluster may be many machines, each spending the whole budget: refused, sent nothing.
    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(5))
    out = tmp_path / "out.jsonl"
    args = ["run", str(jobs), "-m", "anthropic:claude-haiku-4-5", "-o", str(out), "--quiet"]
    done = run_cli(*args, "--ray", "auto", "--budget-per-hour", "1", env=fake_env(fake))
    assert done.code == 2, done.output
    assert done.stderr.startswith(
        "llmbatch: --budget-per-hour with --ray auto: a cluster's nodes need a ledger they "
        "all share"
    ), done.stderr
    assert "Add --shared redis://HOST:PORT/DB" in done.stderr
    assert fake.count() == 0 and not out.exists()


def test_process_refuses_a_rolling_budget_on_several_nodes_without_shared(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from llmbatch.ray import process

    class Ray(SimpleNamespace):  # a cluster of two nodes, as Ray lists them
        def cluster_resources(self) -> dict[str, float]:
            return {"CPU": 4.0}

        def nodes(self) -> list[dict[str, Any]]:
            return [{"Alive": True}, {"Alive": True}, {"Alive": False}]

    monkeypatch.setitem(sys.modules, "ray", Ray())

    class Dataset:  # never reached: refused before any work is planned
        def map_batches(self, *args: Any, **kwargs: Any) -> None:
            raise AssertionError("planned despite the refusal")

    with pytest.raises(UsageError, match=r"tokens_per_day= on a Ray cluster of 2 nodes"):
        process(Dataset(), model="sim:claude-haiku-4-5", tokens_per_day=1000)
