"""What ``--otlp`` (and ``--log-json``) cost the client: `python bench/otel_overhead.py`.

Runs ``llmbatch run`` at concurrency 64 with and without ``--otlp`` pointed at a
local OTLP/HTTP receiver, and compares the client's CPU time (user + sys of the
child, from wait4; the exporter's thread is in it). Two settings:

- ``sim``: the offline sim provider (the cheapest request there is, so the
  hardest case for a fixed cost: ``--otlp``'s share is largest here);
- ``fake``: Anthropic and OpenAI streamed answers (20 words, TTFT 30 ms, 100 ms)
  from tests/fakeapi.py over loopback HTTP, the fake in a process of its own.

The receiver runs in this process and keeps the bodies undecoded until the runs
are over (so it is neither counted nor busy while a run is measured); the fake's
own CPU is not counted either. A third, low-noise figure: the exporter's own work
(events in, protobuf bytes out, nothing sent) timed in this process for the same
number of jobs. Variants run interleaved, each round in a rotated order, so drift
on a shared machine hits them alike; the overhead is the median of the paired
differences (each --otlp run against the plain run of its round), with their
spread: on a loaded 2-core machine a single run's CPU varies by ±10%.
Target: < 10% more CPU with ``--otlp``. A benchmark, not a test.

Options: ``--jobs N`` (default 4000), ``--repeat R`` (default 7),
``--latency-ms MS`` (the sim's mean latency, default 50), ``--only sim|fake``,
``--src DIR`` (run another checkout's ``src/``, e.g. the code before a change).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from common import PY, ROOT, child, write_prompts

from tests.otlp_receiver import OTLPReceiver  # importable: common puts the repo on sys.path

TARGET = 0.10
CONC = 64
FAKE = """
import sys
sys.path.insert(0, sys.argv[1])
from tests.fakeapi import FakeAPI
api = FakeAPI(latency_s=0.1, ttft_s=0.03, retry_after=None)
api.reply = " ".join(f"word{i}" for i in range(20))
api.start()
print(api.port, flush=True)
sys.stdin.read()
api.stop()
"""


def command(jobs: Path, model: str, out: Path, extra: list[str]) -> list[str]:
    return [PY, "-m", "llmbatch", "run", str(jobs), "-m", model, "-c", str(CONC), "-o",
            str(out), "--fresh", "--no-cache", "--quiet", *extra]  # fmt: skip


def measure(
    work: Path, model: str, env: dict[str, str], variants: dict[str, list[str]], repeat: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """CPU seconds and wall seconds of each variant's runs, interleaved."""
    jobs = work / "jobs.jsonl"
    child(command(jobs, model, work / "out.jsonl", []), env)  # warm the file cache
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    wall: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for i in range(repeat):
        # Each round in another order: no variant always runs first, or after the same one.
        for name in names[i % len(names) :] + names[: i % len(names)]:
            m = child(command(jobs, model, work / "out.jsonl", variants[name]), env)
            cpu[name].append(m["cpu_s"])
            wall[name].append(m["wall_s"])
    return cpu, wall


def report(
    title: str, measured: tuple[dict[str, list[float]], dict[str, list[float]]], jobs: int
) -> float:
    """Print one setting's figures; the --otlp overhead (median of paired differences)."""
    cpu, wall = measured
    plain = cpu["plain"]
    print(title)
    print(f"  {'plain':11} cpu {statistics.median(plain):6.2f} s "
          f"({statistics.median(plain) / jobs * 1000:.3f} ms/job)  "
          f"runs from {min(plain):.2f} to {max(plain):.2f} s, "
          f"wall {statistics.median(wall['plain']):.2f} s")  # fmt: skip
    overhead = 0.0
    for name, runs in cpu.items():
        if name == "plain":
            continue
        paired = sorted((o - p) / p for o, p in zip(runs, plain, strict=True))
        extra = statistics.median(paired)
        print(
            f"  {name:11} cpu {statistics.median(runs):6.2f} s "
            f"({statistics.median(runs) / jobs * 1000:.3f} ms/job)  "
            f"{extra:+.1%} (paired runs from {paired[0]:+.1%} to {paired[-1]:+.1%}), "
            f"wall {statistics.median(wall[name]):.2f} s"
        )
        if name == "--otlp":
            overhead = extra
    return overhead


def direct_cost(jobs: int) -> float:
    """CPU seconds the exporter spends on ``jobs`` one-attempt jobs' events (none sent)."""
    from llmbatch._core.events import AttemptStarted, Event, JobEnded, RunStarted
    from llmbatch._observe.otel import OtelExporter
    from tests.events_data import T0, attempt, result
    from tests.otlp_reference import Keep

    events: list[Event] = [RunStarted(T0, jobs, 0, ("sim:claude-haiku-4-5",), CONC, None, "j")]
    for i in range(jobs):
        job, t = f"j{i}", T0 + i / 100
        events.append(AttemptStarted(t, job, "sim", "claude-haiku-4-5", 1))
        tokens = {"input_tokens": 10 + i % 50, "output_tokens": 100 + i % 300}
        events.append(attempt(job, 1, t, t + 0.05, provider="sim", prompt=None, **tokens))
        events.append(JobEnded(t + 0.05, result(job, attempts=1)))
    exporter = OtelExporter("http://127.0.0.1:1", sender=Keep(), interval_s=3600)
    started = time.process_time()
    for e in events:
        exporter.emit(e)
    exporter.close()  # encodes what is queued, on its thread (process_time counts it)
    return time.process_time() - started


def fake_env(port: int) -> dict[str, str]:
    url = f"http://127.0.0.1:{port}"
    return {
        "ANTHROPIC_BASE_URL": url,
        "OPENAI_BASE_URL": url + "/v1",
        "ANTHROPIC_API_KEY": "k",
        "OPENAI_API_KEY": "k",
        "NO_PROXY": "*",
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=4000)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--latency-ms", type=float, default=50.0)
    ap.add_argument("--only", choices=("sim", "fake"))
    ap.add_argument("--src", type=Path)
    args = ap.parse_args()
    verdicts: list[tuple[str, float]] = []
    if args.src is not None:
        os.environ["PYTHONPATH"] = str(args.src.resolve())  # the children's llmbatch
        print(f"llmbatch from {args.src}")
    else:
        direct = statistics.median(direct_cost(args.jobs) for _ in range(5))
        print(
            f"exporter's own work for {args.jobs} jobs ({2 * args.jobs + 1} spans encoded, none "
            f"sent): {direct * 1000:.0f} ms ({direct / args.jobs * 1e6:.1f} µs/job), median of 5"
        )
    with tempfile.TemporaryDirectory() as tmp, OTLPReceiver(decode=False) as receiver:
        work = Path(tmp)
        write_prompts(work / "jobs.jsonl", args.jobs)
        variants = {
            "plain": [],
            "--otlp": ["--otlp", receiver.url],
            "--log-json": ["--log-json", str(work / "events.jsonl")],
        }
        head = f"{args.jobs} jobs, concurrency {CONC}, median of {args.repeat}"
        if args.only in (None, "sim"):
            env = {"LLMBATCH_SIM_LATENCY_MS": str(args.latency_ms)}
            runs = measure(work, "sim:claude-haiku-4-5", env, variants, args.repeat)
            title = f"sim provider, latency {args.latency_ms:g} ms: {head}"
            verdicts.append(("sim", report(title, runs, args.jobs)))
        if args.only in (None, "fake"):
            fake = subprocess.Popen(
                [PY, "-c", FAKE, str(ROOT)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
            )
            assert fake.stdout is not None and fake.stdin is not None
            try:
                env = fake_env(int(fake.stdout.readline()))
                for model in ("anthropic:claude-haiku-4-5", "openai:gpt-4o-mini"):
                    runs = measure(work, model, env, variants, args.repeat)
                    title = f"{model} streamed from tests/fakeapi.py: {head}"
                    verdicts.append((model, report(title, runs, args.jobs)))
            finally:
                fake.stdin.close()
                fake.wait(30)
        receiver.decode_raw()
        spans = len(receiver.received.spans)
        n = args.repeat * len(verdicts)
    print(f"spans received: {spans} over {n} --otlp runs ({spans / max(n, 1):.0f} a run)")
    for name, overhead in verdicts:
        verdict = "PASS" if overhead < TARGET else "FAIL"
        print(f"{verdict} {name}: --otlp costs {overhead:+.1%} client CPU (target < {TARGET:.0%})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
