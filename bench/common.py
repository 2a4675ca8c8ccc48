"""What the benchmark sections share: running a measured child process, writing a jobs file."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

PY = sys.executable
BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # for tests.fakeapi


# Linux counts a process's peak RSS from the one it was forked from (the high-water
# mark survives fork and exec), so a child of this big process would report at
# least our size. A small launcher forks the command and reports its usage.
LAUNCHER = """
import os, sys, time
started = time.perf_counter()
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[2], sys.argv[2:])
_, status, u = os.wait4(pid, 0)
wall = time.perf_counter() - started
with open(sys.argv[1], "w") as f:
    f.write(f"{wall} {u.ru_utime + u.ru_stime} {u.ru_maxrss}")
sys.exit(os.waitstatus_to_exitcode(status))
"""


def child(
    cmd: list[str], env: dict[str, str] | None = None, cwd: Path | None = None
) -> dict[str, float]:
    """Run a command; return wall seconds, CPU seconds (user+sys, from wait4) and peak RSS (MiB)."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    # Each run gets an empty response cache of its own: no run is answered by another's.
    cache_dir = tempfile.TemporaryDirectory(prefix="llmbatch-bench-cache-")
    full_env["XDG_CACHE_HOME"] = cache_dir.name
    with cache_dir, tempfile.NamedTemporaryFile("r", suffix=".usage") as usage_file:
        proc = subprocess.run(
            [PY, "-S", "-c", LAUNCHER, usage_file.name, *cmd],
            env=full_env,
            cwd=cwd,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"{cmd} exited {proc.returncode}: {proc.stderr.decode()[-2000:]}")
        wall_s, cpu_s, maxrss_kib = usage_file.read().split()
    return {"wall_s": float(wall_s), "cpu_s": float(cpu_s), "rss_mib": int(maxrss_kib) / 1024}


def write_prompts(path: Path, n: int) -> None:
    """``n`` short prompt jobs, one JSON object a line."""
    with path.open("wb") as f:
        for i in range(n):
            f.write(b'{"id": "j%d", "prompt": "Question %d: what is %d + %d?"}\n' % (i, i, i, i))
