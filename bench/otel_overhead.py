"""What ``--otlp`` (and ``--log-json``) cost the client: `python bench/otel_overhead.py`.

Runs ``llmbatch run`` on the sim provider at concurrency 64, with and without
``--otlp`` pointed at a local OTLP/HTTP receiver (in this process, so its own
work is not counted), and compares the client's CPU time (user + sys of the
child, from wait4; the exporter's thread is in it). Target: < 10% more CPU with
``--otlp``. A benchmark, not a test: it prints figures and PASS/FAIL.

Options: ``--jobs N`` (default 4000), ``--repeat R`` (default 3; medians),
``--latency-ms MS`` (the sim's mean latency, default 50).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.otlp_receiver import OTLPReceiver  # noqa: E402

TARGET = 0.10


def run_once(work: Path, extra: list[str], latency_ms: float) -> dict[str, float]:
    """One run as a child process; its CPU seconds and wall seconds."""
    env = dict(os.environ)
    env["LLMBATCH_SIM_LATENCY_MS"] = str(latency_ms)
    env["XDG_CACHE_HOME"] = str(work / "cache")
    env["XDG_STATE_HOME"] = str(work / "state")
    cmd = [
        sys.executable,
        "-m",
        "llmbatch",
        "run",
        str(work / "jobs.jsonl"),
        "-m",
        "sim:claude-haiku-4-5",
        "-c",
        "64",
        "-o",
        str(work / "out.jsonl"),
        "--fresh",
        "--no-cache",
        "--quiet",
        *extra,
    ]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    err = proc.stderr.read().decode() if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {err[-2000:]}")
    return {"cpu_s": usage.ru_utime + usage.ru_stime, "wall_s": wall}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=4000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--latency-ms", type=float, default=50.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp, OTLPReceiver() as receiver:
        work = Path(tmp)
        with (work / "jobs.jsonl").open("w") as f:
            for i in range(args.jobs):
                f.write(f'{{"id": "j{i}", "prompt": "Question {i}: what is {i} + {i}?"}}\n')
        variants = {
            "plain": [],
            "--otlp": ["--otlp", receiver.url],
            "--log-json": ["--log-json", str(work / "events.jsonl")],
        }
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
        run_once(work, [], args.latency_ms)  # warm the file cache and the imports
        for _ in range(args.repeat):
            for name, extra in variants.items():  # interleaved: drift hits all alike
                runs[name].append(run_once(work, extra, args.latency_ms))
        spans = len(receiver.received.spans)
    cpu = {name: statistics.median(r["cpu_s"] for r in rs) for name, rs in runs.items()}
    wall = {name: statistics.median(r["wall_s"] for r in rs) for name, rs in runs.items()}
    print(
        f"{args.jobs} jobs, concurrency 64, sim latency {args.latency_ms:g} ms, "
        f"median of {args.repeat}"
    )
    for name in variants:
        extra = (cpu[name] - cpu["plain"]) / cpu["plain"]
        print(
            f"  {name:11} cpu {cpu[name]:6.2f} s ({cpu[name] / args.jobs * 1000:.3f} ms/job, "
            f"{extra:+.1%})   wall {wall[name]:6.2f} s"
        )
    print(f"  spans received: {spans} over {args.repeat} --otlp runs")
    overhead = (cpu["--otlp"] - cpu["plain"]) / cpu["plain"]
    verdict = "PASS" if overhead < TARGET else "FAIL"
    print(f"{verdict}: --otlp costs {overhead:+.1%} client CPU (target < {TARGET:.0%})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
