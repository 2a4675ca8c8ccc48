"""``--ray ADDRESS`` where no cluster runs is refused at once, saying so (Ray's own join
retries for minutes): the address is resolved as Ray resolves it, its port tried."""

from __future__ import annotations

import socket
import sys
import time
from types import SimpleNamespace
from typing import Any

import pytest

from llmbatch._api import ray_cluster
from llmbatch._api.ray_address import join_target, unreachable
from llmbatch._core.exceptions import UsageError


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
