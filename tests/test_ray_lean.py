"""``run --ray`` alone starts a lean local Ray: its head without the autoscaler monitor,
the log monitor and the dashboard's API server (none of which a run uses), and still
runs every job; where Ray's internals are not as expected, or the lean start fails,
Ray starts its own way (the optimisation never fails a run)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from llmbatch._api import ray_cluster
from tests.conftest import prompts, read_jsonl, write_jsonl

_UNUSED = ("start_monitor", "start_log_monitor", "start_api_server")


def _fake_ray(node: type) -> Any:
    return SimpleNamespace(_private=SimpleNamespace(node=SimpleNamespace(Node=node)))


class _Node:
    def start_monitor(self) -> str:
        return "monitor"

    def start_log_monitor(self) -> str:
        return "log monitor"

    def start_api_server(self, **kwargs: Any) -> str:
        return "api server"


def test_the_lean_head_skips_the_three_and_puts_them_back() -> None:
    originals = {name: _Node.__dict__[name] for name in _UNUSED}
    with ray_cluster._lean_head(_fake_ray(_Node)) as lean:
        assert lean
        node = _Node()
        assert node.start_monitor() is None
        assert node.start_log_monitor() is None
        assert node.start_api_server(include_dashboard=False) is None
    assert {name: _Node.__dict__[name] for name in _UNUSED} == originals
    assert _Node().start_api_server() == "api server"


def test_a_ray_without_one_of_them_is_left_as_it_is() -> None:
    class Older:  # a Ray whose Node has no start_api_server: nothing is patched
        def start_monitor(self) -> str:
            return "monitor"

        def start_log_monitor(self) -> str:
            return "log monitor"

    for ray in (_fake_ray(Older), SimpleNamespace(), _fake_ray(None)):  # type: ignore[arg-type]
        with ray_cluster._lean_head(ray) as lean:
            assert not lean
    assert Older().start_monitor() == "monitor"
    assert "start_api_server" not in Older.__dict__


def test_a_failed_lean_start_falls_back_to_rays_own() -> None:
    calls: list[tuple[str, bool, Any]] = []

    class Ray(SimpleNamespace):
        def init(self, **kwargs: Any) -> None:
            lean = _Node.__dict__["start_monitor"] is ray_cluster._skip
            calls.append(("init", lean, kwargs.get("_system_config")))
            if lean:
                raise RuntimeError("this Ray does not start without its monitor")

        def shutdown(self) -> None:
            lean = _Node.__dict__["start_monitor"] is ray_cluster._skip
            calls.append(("shutdown", lean, None))

    ray = Ray(_private=SimpleNamespace(node=SimpleNamespace(Node=_Node)))
    ray_cluster._init_local(ray, object_store_memory=1)
    # Lean first (no task events either); what it left shut down; then Ray's own start,
    # with Node as it was and Ray's own settings.
    lean_config = {"task_events_report_interval_ms": 0}
    assert calls == [("init", True, lean_config), ("shutdown", False, None), ("init", False, None)]
    assert _Node().start_monitor() == "monitor"


def test_a_joining_driver_sends_no_task_events_and_leaves_the_setting_as_it_was(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[str | None] = []

    class Ray(SimpleNamespace):
        def is_initialized(self) -> bool:
            return False

        def init(self, **kwargs: Any) -> None:
            seen.append(os.environ.get(ray_cluster._TASK_EVENTS))

    monkeypatch.setitem(sys.modules, "ray", Ray())
    monkeypatch.delenv(ray_cluster._TASK_EVENTS, raising=False)
    with socket.socket() as cluster:  # a port that answers: the join goes on to Ray
        cluster.bind(("127.0.0.1", 0))
        cluster.listen()
        address = f"127.0.0.1:{cluster.getsockname()[1]}"
        assert ray_cluster.connect(address, quiet=True)
        assert seen == ["0"]  # read by Ray as it connects ...
        assert ray_cluster._TASK_EVENTS not in os.environ  # ... and gone after
        monkeypatch.setenv(ray_cluster._TASK_EVENTS, "1000")  # the user's own: kept
        monkeypatch.setenv("RAY_ADDRESS", address)
        ray_cluster.connect("auto", quiet=True)
    assert seen == ["0", "1000"]
    assert os.environ[ray_cluster._TASK_EVENTS] == "1000"


# A driver of its own (this process may have joined a Ray already): the node's processes,
# as Ray lists them, recorded once Ray is up; then the run goes on as the CLI runs it.
_DRIVER = """
import json, sys
from llmbatch._api import ray_cluster
connect = ray_cluster.connect

def recorded(*args, **kwargs):
    started = connect(*args, **kwargs)
    import ray
    node = ray._private.worker._global_node
    with open(seen, "w") as f:
        json.dump({"started": started, "processes": sorted(node.all_processes)}, f)
    return started

seen = sys.argv[1]
ray_cluster.connect = recorded
from llmbatch.cli import main
sys.argv = ["llmbatch", *sys.argv[2:]]
main()
"""


@pytest.mark.slow
@pytest.mark.filterwarnings(r"ignore::DeprecationWarning:ray\..*")
def test_a_local_ray_starts_lean_and_runs_every_job(tmp_path: Path) -> None:
    try:
        import ray  # noqa: F401
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("ray is not installed: `pip install -e '.[dev]'` (CI runs these tests)")
        pytest.skip("ray is not installed (pip install 'llmbatch[ray]')")
    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(300))
    out, seen = tmp_path / "out.jsonl", tmp_path / "processes.json"
    args = ["run", str(jobs), "-m", "sim:claude-haiku-4-5", "-o", str(out)]  # progress on
    env = {**os.environ, "LLMBATCH_SIM_LATENCY_MS": "0"}
    done = subprocess.run(
        [sys.executable, "-c", _DRIVER, str(seen), *args, "--ray", "--ray-workers", "2"],
        env=env,
        capture_output=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    said = done.stderr.decode()
    # What it waited for, said as it waited (stderr is no terminal: a line each) ...
    assert "llmbatch: starting a local Ray…\n" in said
    assert "llmbatch: Ray workers ready: 2/2\n" in said
    # ... and not Ray's note that its own local cluster turned token authentication on.
    assert "Token authentication is enabled" not in said
    node = json.loads(seen.read_text())
    assert node["started"]  # this run started its Ray
    assert {"gcs_server", "raylet"} <= set(node["processes"])
    assert not {"monitor", "log_monitor", "dashboard"} & set(node["processes"])
    ids = [line["id"] for line in read_jsonl(out)]
    assert sorted(ids) == sorted(f"job-{i}" for i in range(300))  # each once
    assert all(line["status"] == "ok" for line in read_jsonl(out))
