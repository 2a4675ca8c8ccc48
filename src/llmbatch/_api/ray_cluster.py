"""``run --ray``'s cluster: joined or started, and the actors made, while the driver
checks the jobs file (a thread of its own), so Ray's start costs the run little."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from typing import Any

from llmbatch._api.ray_address import join_target, unreachable
from llmbatch._api.ray_worker import EngineWorker
from llmbatch._core.exceptions import UsageError

_OBJECT_STORE = 256 * 2**20  # a local Ray's object store: blocks are well under 1 MB


def connect(address: str, *, quiet: bool = False) -> bool:
    """Join (``auto``, ``ray://…``, ``HOST:PORT``) or start (``local``) Ray; True if
    this process started it (and so shuts it down)."""
    try:
        import ray
    except ImportError:
        raise UsageError(
            "--ray needs Ray: pip install 'llmbatch[ray]'. Nothing was sent."
        ) from None
    if ray.is_initialized():
        return False
    import logging

    # Ray started from a thread (ClusterStart) says it sets no SIGTERM handler there:
    # llmbatch handles the signals itself.
    logging.getLogger("ray._private.worker").addFilter(_no_signal_warning)
    kwargs: dict[str, Any] = {
        "include_dashboard": False,
        "log_to_driver": False,
        "logging_level": logging.ERROR if quiet else logging.WARNING,
    }
    try:
        if address == "local":  # a new Ray of its own, whatever `ray start` left running
            # It turns token authentication on by default, and says so as it starts;
            # nobody else reaches it, and it is gone when the run ends: not said here.
            auth = logging.getLogger(_AUTH_LOGGER)
            auth.addFilter(_no_default_token_note)
            try:
                _init_local(ray, object_store_memory=_OBJECT_STORE, **kwargs)
            finally:
                auth.removeFilter(_no_default_token_note)
        else:
            _refuse_if_nothing_answers(address)
            with _driver_sends_no_task_events():
                ray.init(address=address, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = "a running cluster" if address == "auto" else address
        raise UsageError(
            f"--ray {address}: cannot reach {where} ({exc}). Start one (`ray start --head`), "
            "or pass --ray alone for a local Ray. Nothing was sent."
        ) from None
    return True


def _refuse_if_nothing_answers(address: str) -> None:
    """At once, where no cluster's port answers (Ray itself would retry for minutes)."""
    target = join_target(address)
    if target is None:
        return
    host, port = target
    problem = unreachable(host, port)
    if problem is not None:
        where = f" at {host}:{port}" if address == "auto" else " there"
        raise ConnectionError(f"nothing answers{where}: {problem}")


# What a local Ray's head starts that a run of llmbatch's own never uses: the autoscaler
# monitor (nothing to scale), the log monitor (log_to_driver is off) and the dashboard's
# API server. Each is a Python process importing much of Ray while the run starts, on the
# same cores, and the monitor holds ray.shutdown() up for a second.
_UNUSED = ("start_monitor", "start_log_monitor", "start_api_server")
# Nor does it read Ray's task events (the dashboard's and the state API's): unsent, they
# are not flushed either when the driver disconnects (~0.3 s of ray.shutdown()).
_LEAN_CONFIG = {"task_events_report_interval_ms": 0}


_TASK_EVENTS = "RAY_task_events_report_interval_ms"


@contextlib.contextmanager
def _driver_sends_no_task_events() -> Iterator[None]:
    """Joining a cluster, this driver sends it no task events (``_LEAN_CONFIG``, for this
    process alone): its calls' own runs still show in the dashboard, as the actors report
    them; what goes is the ~0.25 s ``ray.shutdown()`` spends flushing the driver's side.
    Ray reads the setting when it connects, so it is set for that moment only; one the
    user set is left as it is."""
    if _TASK_EVENTS in os.environ:
        yield
        return
    os.environ[_TASK_EVENTS] = "0"
    try:
        yield
    finally:
        os.environ.pop(_TASK_EVENTS, None)


def _init_local(ray: Any, **kwargs: Any) -> None:
    """A new local Ray, its head without the processes a run does not use (``_UNUSED``)
    and sending no task events (``_LEAN_CONFIG``). Ray's internals are not an API: where
    they are not as expected, or the lean start fails, Ray starts as ``ray.init`` alone
    starts it."""
    try:
        with _lean_head(ray):
            ray.init(address="local", _system_config=_LEAN_CONFIG, **kwargs)
        return
    except Exception:  # the lean start failed: Ray's own way, once
        with contextlib.suppress(Exception):
            ray.shutdown()
    ray.init(address="local", **kwargs)


@contextlib.contextmanager
def _lean_head(ray: Any) -> Iterator[bool]:
    """Within: a new head node starts none of ``_UNUSED`` (True); False, and nothing
    changed, where this Ray's ``Node`` has not all three. Put back on the way out."""
    node = getattr(getattr(getattr(ray, "_private", None), "node", None), "Node", None)
    saved = {name: node.__dict__.get(name) for name in _UNUSED} if node else {}
    if not saved or not all(callable(method) for method in saved.values()):
        yield False
        return
    for name in _UNUSED:
        setattr(node, name, _skip)
    try:
        yield True
    finally:
        for name, method in saved.items():
            setattr(node, name, method)


def _skip(self: Any, *args: Any, **kwargs: Any) -> None:
    """A head process not started (``_lean_head``)."""


def _no_signal_warning(record: Any) -> bool:
    return "SIGTERM handler is not set" not in str(record.getMessage())


_AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"


def _no_default_token_note(record: Any) -> bool:
    return "Token authentication is enabled for this Ray cluster" not in str(record.getMessage())


def cpus_of(ray: Any) -> float:
    """The CPUs the cluster offers."""
    resources: dict[str, float] = ray.cluster_resources()
    return max(1.0, float(resources.get("CPU", 1.0)))


class ClusterStart:
    """Ray joined or started, and ``workers`` actors (default: a CPU each) made, in a
    thread; ``result()`` waits for them (or raises what went wrong), ``close()`` ends
    them. The thread lives until Ray is shut down: the processes a local Ray starts
    die with the thread that started them (Linux's parent-death signal is a thread's)."""

    def __init__(
        self, address: str, workers: int | None, env: dict[str, str | None], quiet: bool
    ) -> None:
        self.address, self.want, self.env, self.quiet = address, workers, env, quiet
        self.started = False  # this process started Ray (and so shuts it down)
        self.actors: list[Any] = []
        self._error: BaseException | None = None
        self._ready = threading.Event()
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._life, name="llmbatch-ray", daemon=True)
        self._thread.start()

    def _life(self) -> None:
        try:
            self._start()
        except BaseException as exc:  # raised where result() is called
            self._error = exc
        finally:
            self._ready.set()
        self._closing.wait()
        self._stop()

    def _start(self) -> None:
        self.started = connect(self.address, quiet=self.quiet)
        import ray

        cpus = cpus_of(ray)
        n = self.want or int(cpus)
        remote = ray.remote(num_cpus=min(1.0, cpus / n), max_restarts=0)(EngineWorker)
        # Made now: each starts its process and imports llmbatch while the file is checked.
        self.actors = [remote.remote(None, None, self.env) for _ in range(n)]

    def result(self) -> list[Any]:
        """The actors, once made; the thread's error, if any, raised."""
        self._ready.wait()
        if self._error is not None:
            raise self._error
        return self.actors

    def close(self) -> None:
        """The actors killed, and Ray shut down if this process started it."""
        self._closing.set()
        self._thread.join()

    def _stop(self) -> None:
        if not self.actors and not self.started:
            return
        import ray

        for actor in self.actors:
            try:
                ray.kill(actor)
            except Exception:  # gone already
                pass
        if self.started:
            _stop_monitor(ray)
            ray.shutdown()


def _stop_monitor(ray: Any) -> None:
    """A local Ray's autoscaler monitor, killed ahead of ``ray.shutdown()``: that asks it
    to end and waits a full second for it (it has nothing to scale here). A lean head
    (``_lean_head``) has none: this is for a Ray started its own way (the fallback)."""
    node = getattr(getattr(ray, "_private", None), "worker", None)
    processes = getattr(getattr(node, "_global_node", None), "all_processes", None)
    if not isinstance(processes, dict):  # not this version's layout: Ray's own way then
        return
    for info in processes.get("monitor", ()):
        process = getattr(info, "process", None)
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()
