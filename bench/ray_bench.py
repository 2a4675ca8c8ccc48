"""The ray section: 200,000 sim jobs (no latency) through ``run --ray --ray-workers 2``
against one local process on the same cores, two ways:

* cold: ``--ray`` alone, a local Ray started and stopped by the run (included);
* warm: ``--ray ADDRESS`` against a cluster already running (``ray start --head
  --num-cpus 2``, started before and stopped after by this section), as cluster users
  run it.

Each way's fixed cost is measured too: the same command over 10 jobs; and the jobs/s
past it, (n - 10) / (wall - fixed), for the local process as well.

And the ceiling (``bench/ray_ceiling.py``): two actors on the running cluster, each the
``--ray`` worker's engine over half of the jobs read where it runs, with no driver at
all. Ray's start (the cold fixed cost) plus n jobs at that rate is the shortest a cold
``--ray`` run can be here, whatever the driver does: ``ray_best_cold_vs_local``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from common import BENCH, PY, child, write_prompts

SIM = "sim:claude-haiku-4-5"
SAME = ["-c", "64", "--no-cache"]  # --ray uses no response cache: neither does local


def _run(jobs: Path, out: Path, *extra: str) -> list[str]:
    return [PY, "-m", "llmbatch", "run", str(jobs), "-m", SIM, "--quiet", "-o", str(out),
            "--fresh", *SAME, *extra]  # fmt: skip


def _measure(jobs: Path, n: int, out: Path, env: dict[str, str], *extra: str) -> dict[str, Any]:
    m = child(_run(jobs, out, *extra), env)
    lines = out.read_bytes().count(b"\n")
    out.unlink()
    return {"wall_s": round(m["wall_s"], 2), "jobs_per_s": round(n / m["wall_s"], 1),
            "cpu_s": round(m["cpu_s"], 2), "written": lines}  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def ray_head(env: dict[str, str], tiny: Path, tmp: Path) -> Iterator[str]:
    """A Ray head of 2 CPUs (``ray start --head --block``, its own process group), ready
    (a 10-job run got through); stopped, with every process it started, after."""
    port = _free_port()
    ray = str(Path(PY).with_name("ray"))
    cmd = [ray, "start", "--head", "--block", "--num-cpus", "2", f"--port={port}",
           "--include-dashboard=false", "--disable-usage-stats"]  # fmt: skip
    log = (tmp / "ray-head.log").open("wb")
    head = subprocess.Popen(
        cmd, env={**os.environ, **env}, stdout=log, stderr=log, start_new_session=True
    )
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                child(_run(tiny, tmp / "ray-warmup.jsonl", "--ray", address), env)
                break
            except RuntimeError:
                if time.monotonic() > deadline or head.poll() is not None:
                    raise
                time.sleep(1)
        (tmp / "ray-warmup.jsonl").unlink()
        yield address
    finally:
        head.send_signal(signal.SIGTERM)  # `ray start --block` stops what it started
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
        log.close()
        # `ray start` names its cluster the machine's current one there, and only `ray stop`
        # (which would stop every Ray here) takes that back: a plain ray.init() elsewhere
        # would try to join this stopped one.
        current = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
        with contextlib.suppress(OSError):
            if current.read_text().strip().endswith(f":{port}"):
                current.unlink()


def _ceiling(jobs: Path, n: int, address: str, env: dict[str, str], tmp: Path) -> dict[str, Any]:
    """Two actors, each the worker's engine over its half of the jobs, no driver."""
    lines = jobs.read_bytes().splitlines(keepends=True)
    halves = [tmp / "ray-half-a.jsonl", tmp / "ray-half-b.jsonl"]
    halves[0].write_bytes(b"".join(lines[: n // 2]))
    halves[1].write_bytes(b"".join(lines[n // 2 :]))
    cmd = [PY, str(BENCH / "ray_ceiling.py"), address, *map(str, halves)]
    done = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, check=True)
    for half in halves:
        half.unlink()
    out: dict[str, Any] = json.loads(done.stdout.decode().strip().splitlines()[-1])
    out["jobs_per_s"] = round(n / out["wall_s"], 1)
    return out


def _past_start(m: dict[str, Any], n: int, fixed_s: float) -> float:
    """Jobs a second once the run's fixed cost (its 10-job wall) is paid."""
    return round((n - 10) / max(1e-9, m["wall_s"] - fixed_s), 1)


def section_ray(tmp: Path, n: int) -> dict[str, Any]:
    jobs, tiny = tmp / "ray.jsonl", tmp / "ray-tiny.jsonl"
    write_prompts(jobs, n)
    write_prompts(tiny, 10)
    # RAY_AUTH_MODE=token: the head's default, said to the drivers joining it as well.
    env = {"LLMBATCH_SIM_LATENCY_MS": "0", "RAY_AUTH_MODE": "token"}
    out: dict[str, Any] = {"jobs": n}
    results = tmp / "ray.results.jsonl"
    cold = ["--ray", "--ray-workers", "2"]
    out["local"] = _measure(jobs, n, results, env)
    out["local_fixed_s"] = _measure(tiny, 10, results, env)["wall_s"]
    out["ray"] = _measure(jobs, n, results, env, *cold)
    out["ray_fixed_s"] = _measure(tiny, 10, results, env, *cold)["wall_s"]
    with ray_head(env, tiny, tmp) as address:
        warm = ["--ray", address, "--ray-workers", "2"]
        out["ray_warm"] = _measure(jobs, n, results, env, *warm)
        out["ray_warm_fixed_s"] = _measure(tiny, 10, results, env, *warm)["wall_s"]
        out["ray_ceiling"] = _ceiling(jobs, n, address, env, tmp)
    local = out["local"]["jobs_per_s"]
    out["ray_vs_local"] = round(out["ray"]["jobs_per_s"] / local, 3)
    out["ray_warm_vs_local"] = round(out["ray_warm"]["jobs_per_s"] / local, 3)
    for key, fixed in (("local", "local_fixed_s"), ("ray", "ray_fixed_s"),
                       ("ray_warm", "ray_warm_fixed_s")):  # fmt: skip
        out[key]["past_start_jobs_per_s"] = _past_start(out[key], n, out[fixed])
    best_cold_s = out["ray_fixed_s"] + n / out["ray_ceiling"]["jobs_per_s"]
    out["ray_best_cold_s"] = round(best_cold_s, 2)
    out["ray_best_cold_vs_local"] = round(out["local"]["wall_s"] / best_cold_s, 3)
    jobs.unlink()
    tiny.unlink()
    return out
