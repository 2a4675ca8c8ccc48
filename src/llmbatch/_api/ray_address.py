"""Where ``--ray ADDRESS`` goes, and whether anything answers there, before Ray is asked.

Ray's own join to an address where no cluster runs does not fail: it retries for
minutes, printing its connection warnings (a mistyped port, or a stale
``/tmp/ray/ray_current_cluster`` behind ``auto``). A run checks first that the
cluster's port takes a connection, and refuses at once, saying so, when it does not.
"""

from __future__ import annotations

import os
import socket

PROBE_S = 10.0  # how long a cluster's port may take to answer


def join_target(address: str) -> tuple[str, int] | None:
    """The host and port a join to ``address`` (``auto``, ``ray://HOST:PORT``,
    ``HOST:PORT``) goes to; None where that cannot be told here (Ray is left to it).
    Raises ConnectionError when ``auto`` finds no cluster at all."""
    target: str | None = address
    if address == "auto":
        target = _auto_address()
    if not target:
        return None
    host, sep, port = target.removeprefix("ray://").rpartition(":")
    host = host.strip("[]")  # an IPv6 literal
    if not sep or not host or not port.isdigit():
        return None
    return host, int(port)


def _auto_address() -> str | None:
    """What ``auto`` joins, as Ray finds it: ``RAY_ADDRESS``, else the cluster ``ray
    start`` last named current on this machine (else a running one it finds)."""
    env = os.environ.get("RAY_ADDRESS")
    if env:
        return env if env != "auto" else None
    try:
        from ray._private.services import canonicalize_bootstrap_address
    except ImportError:  # not this Ray's layout: Ray is left to find it
        return None
    found: str | None = canonicalize_bootstrap_address("auto")
    return found


def unreachable(host: str, port: int, timeout: float = PROBE_S) -> str | None:
    """None if ``host:port`` takes a TCP connection within ``timeout``; else why not."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except TimeoutError:
        return f"no answer within {timeout:g} s"
    except OSError as exc:
        return exc.strerror or type(exc).__name__
