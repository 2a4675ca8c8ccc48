"""What ``--otlp`` (and ``--log-json``) cost the client: `python bench/otel_overhead.py`.

Runs ``llmbatch run`` at concurrency 64 with and without ``--otlp`` pointed at a
local OTLP/HTTP receiver, and compares the client's CPU time (user + sys of the
child, from wait4; the exporter's thread is in it). Two settings:

- ``sim``: the offline sim provider (the cheapest request there is, so the
  hardest case for a fixed cost: ``--otlp``'s share is largest here);
- ``fake``: Anthropic and OpenAI streamed answers (20 words, TTFT 30 ms, 100 ms)
  from tests/fakeapi.py over loopback HTTP, the fake in a process of its own.

The receiver runs in this process and keeps the bodies undecoded until the runs
are over, so neither it nor the fake is counted or competes for the CPU while a
run is measured. Variants run interleaved (plain, --otlp, --log-json, plain, …)
so drift on a shared machine hits them alike; the overhead is the median of the
paired differences (each --otlp run against the plain run next to it), with their
spread. Target: < 10% more CPU with ``--otlp``. A benchmark, not a test.

Options: ``--jobs N`` (default 4000), ``--repeat R`` (default 5),
``--latency-ms MS`` (the sim's mean latency, default 50), ``--only sim|fake``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
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
) -> dict[str, list[float]]:
    """CPU seconds of each variant's runs, interleaved."""
    jobs = work / "jobs.jsonl"
    child(command(jobs, model, work / "out.jsonl", []), env)  # warm the file cache
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeat):
        for name, extra in variants.items():
            cpu[name].append(child(command(jobs, model, work / "out.jsonl", extra), env)["cpu_s"])
    return cpu


def report(title: str, cpu: dict[str, list[float]], jobs: int) -> float:
    """Print one setting's figures; the --otlp overhead (median of paired differences)."""
    plain = cpu["plain"]
    print(title)
    print(f"  {'plain':11} cpu {statistics.median(plain):6.2f} s "
          f"({statistics.median(plain) / jobs * 1000:.3f} ms/job)")  # fmt: skip
    overhead = 0.0
    for name, runs in cpu.items():
        if name == "plain":
            continue
        paired = sorted((o - p) / p for o, p in zip(runs, plain, strict=True))
        extra = statistics.median(paired)
        print(
            f"  {name:11} cpu {statistics.median(runs):6.2f} s "
            f"({statistics.median(runs) / jobs * 1000:.3f} ms/job)  "
            f"{extra:+.1%} (paired runs from {paired[0]:+.1%} to {paired[-1]:+.1%})"
        )
        if name == "--otlp":
            overhead = extra
    return overhead


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
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--latency-ms", type=float, default=50.0)
    ap.add_argument("--only", choices=("sim", "fake"))
    args = ap.parse_args()
    verdicts: list[tuple[str, float]] = []
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
            cpu = measure(work, "sim:claude-haiku-4-5", env, variants, args.repeat)
            title = f"sim provider, latency {args.latency_ms:g} ms: {head}"
            verdicts.append(("sim", report(title, cpu, args.jobs)))
        if args.only in (None, "fake"):
            fake = subprocess.Popen(
                [PY, "-c", FAKE, str(ROOT)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
            )
            assert fake.stdout is not None and fake.stdin is not None
            try:
                env = fake_env(int(fake.stdout.readline()))
                for model in ("anthropic:claude-haiku-4-5", "openai:gpt-4o-mini"):
                    cpu = measure(work, model, env, variants, args.repeat)
                    title = f"{model} streamed from tests/fakeapi.py: {head}"
                    verdicts.append((model, report(title, cpu, args.jobs)))
            finally:
                fake.stdin.close()
                fake.wait(30)
        receiver.decode_raw()
        spans = len(receiver.received.spans)
        runs = args.repeat * len(verdicts)
    print(f"spans received: {spans} over {runs} --otlp runs ({spans / max(runs, 1):.0f} a run)")
    for name, overhead in verdicts:
        verdict = "PASS" if overhead < TARGET else "FAIL"
        print(f"{verdict} {name}: --otlp costs {overhead:+.1%} client CPU (target < {TARGET:.0%})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
