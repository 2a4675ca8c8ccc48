"""What the benchmark sections share: running a measured child process, writing a jobs file."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

PY = sys.executable
BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # for tests.fakeapi


def child(
    cmd: list[str], env: dict[str, str] | None = None, cwd: Path | None = None
) -> dict[str, float]:
    """Run a command; return wall seconds, CPU seconds (user+sys, from wait4) and peak RSS (MiB)."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    started = time.perf_counter()
    proc = subprocess.Popen(
        cmd, env=full_env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    # wait4 before reading stderr: its usage is the child's alone. A child that
    # fills the stderr pipe would block here; ours write a few lines at most.
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    stderr = proc.stderr.read().decode() if proc.stderr else ""
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd} exited {proc.returncode}: {stderr[-2000:]}")
    return {
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "rss_mib": usage.ru_maxrss / 1024,
    }


def write_prompts(path: Path, n: int) -> None:
    """``n`` short prompt jobs, one JSON object a line."""
    with path.open("wb") as f:
        for i in range(n):
            f.write(b'{"id": "j%d", "prompt": "Question %d: what is %d + %d?"}\n' % (i, i, i, i))
