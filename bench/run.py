"""llmbatch's benchmark: `make bench` (or `python bench/run.py [--full]`).

Measures, side by side on this machine, and prints PASS/FAIL against the targets:
  1. client CPU per streamed request (user+sys of the client process, from wait4)
     for llmbatch, a bare aiohttp loop (the floor) and the official SDKs, 2,000
     requests at concurrency 64 against the loopback fake API;
  2. engine throughput and peak RSS on the sim provider with no latency;
  3. start-up time of `llmbatch --help` and a one-line run;
  4. rate-limit efficiency against a fake enforcing a request window.
Writes bench/results.json. These are goals for the code, never timed tests in CI.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fakeapi import FakeAPI  # noqa: E402

PY = sys.executable
BENCH = Path(__file__).resolve().parent
FULL = "--full" in sys.argv
N_REQ = 2000
CONC = 64


def child(
    cmd: list[str], env: dict[str, str] | None = None, cwd: Path | None = None
) -> dict[str, float]:
    """Run a command; return wall seconds, CPU seconds (user+sys) and peak RSS (MiB)."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    started = time.perf_counter()
    proc = subprocess.Popen(
        cmd, env=full_env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    stderr = proc.stderr.read().decode() if proc.stderr else ""
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode not in (0,):
        raise RuntimeError(f"{cmd} exited {proc.returncode}: {stderr[-2000:]}")
    return {
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "rss_mib": usage.ru_maxrss / 1024,
    }


def write_prompts(path: Path, n: int) -> None:
    with path.open("wb") as f:
        for i in range(n):
            f.write(b'{"id": "j%d", "prompt": "Question %d: what is %d + %d?"}\n' % (i, i, i, i))


def section_cpu(tmp: Path) -> dict[str, Any]:
    fake = FakeAPI(latency_s=0.1, ttft_s=0.03, retry_after=None, rate_limit_headers=True)
    fake.reply = " ".join(f"word{i}" for i in range(20))
    fake.start()
    jobs = tmp / "cpu.jsonl"
    write_prompts(jobs, N_REQ)
    env = {
        "ANTHROPIC_BASE_URL": fake.url,
        "OPENAI_BASE_URL": fake.url + "/v1",
        "ANTHROPIC_API_KEY": "k",
        "OPENAI_API_KEY": "k",
        "NO_PROXY": "*",
    }
    out: dict[str, Any] = {}
    try:
        for provider, model in (("anthropic", "claude-haiku-4-5"), ("openai", "gpt-4o-mini")):
            row: dict[str, Any] = {}
            runs = {
                "llmbatch": [
                    PY,
                    "-m",
                    "llmbatch",
                    "run",
                    str(jobs),
                    "-m",
                    f"{provider}:{model}",
                    "-c",
                    str(CONC),
                    "--quiet",
                    "-o",
                    str(tmp / f"lb-{provider}.jsonl"),
                    "--fresh",
                ],
                "floor": [
                    PY,
                    str(BENCH / "floor.py"),
                    provider,
                    fake.url,
                    str(N_REQ),
                    str(CONC),
                    str(tmp / f"floor-{provider}.jsonl"),
                ],
                "sdk": [
                    PY,
                    str(BENCH / "sdk_loop.py"),
                    provider,
                    fake.url,
                    str(N_REQ),
                    str(CONC),
                    str(tmp / f"sdk-{provider}.jsonl"),
                ],
            }
            for name, cmd in runs.items():
                before = fake.count()
                m = child(cmd, env)
                served = fake.count() - before
                if served != N_REQ:
                    raise RuntimeError(f"{name}/{provider}: fake served {served}, not {N_REQ}")
                row[name] = {
                    "cpu_ms_per_req": round(m["cpu_s"] * 1000 / N_REQ, 3),
                    "wall_s": round(m["wall_s"], 2),
                }
            lb, fl, sdk = row["llmbatch"], row["floor"], row["sdk"]
            row["cpu_vs_floor"] = round(lb["cpu_ms_per_req"] / fl["cpu_ms_per_req"], 2)
            row["sdk_vs_llmbatch"] = round(sdk["cpu_ms_per_req"] / lb["cpu_ms_per_req"], 2)
            row["wall_vs_floor"] = round(lb["wall_s"] / fl["wall_s"], 2)
            out[provider] = row
    finally:
        fake.stop()
    return out


def section_engine(tmp: Path) -> dict[str, Any]:
    sizes = [50_000, 200_000] + ([1_000_000] if FULL else [])
    out: dict[str, Any] = {}
    for n in sizes:
        jobs = tmp / f"engine-{n}.jsonl"
        write_prompts(jobs, n)
        m = child(
            [
                PY,
                "-m",
                "llmbatch",
                "run",
                str(jobs),
                "-m",
                "sim:claude-haiku-4-5",
                "-c",
                "256",
                "--quiet",
                "-o",
                str(tmp / f"engine-{n}.results.jsonl"),
                "--fresh",
            ],
            {"LLMBATCH_SIM_LATENCY_MS": "0"},
        )
        out[str(n)] = {
            "jobs_per_s": round(n / m["wall_s"], 1),
            "wall_s": round(m["wall_s"], 2),
            "peak_rss_mib": round(m["rss_mib"], 1),
        }
        jobs.unlink()
    return out


def section_startup(tmp: Path) -> dict[str, Any]:
    one = tmp / "one.jsonl"
    write_prompts(one, 1)

    def median(cmd: list[str], env: dict[str, str] | None = None) -> float:
        times = [child(cmd, env)["wall_s"] for _ in range(7)]
        return round(statistics.median(times), 3)

    return {
        "help_s": median([PY, "-m", "llmbatch", "--help"]),
        "run_one_s": median(
            [
                PY,
                "-m",
                "llmbatch",
                "run",
                str(one),
                "-m",
                "sim:claude-haiku-4-5",
                "--quiet",
                "-o",
                str(tmp / "one.out.jsonl"),
                "--fresh",
            ],
            {"LLMBATCH_SIM_LATENCY_MS": "0"},
        ),
    }


def section_ratelimit(tmp: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    n = 200
    jobs = tmp / "rl.jsonl"
    write_prompts(jobs, n)
    for label, extra in (("with_rpm", ["--rpm", "1200"]), ("without_rpm", [])):
        fake = FakeAPI(window_limit=10, window_s=0.5, retry_after=0.5, rate_limit_headers=False)
        fake.start()
        try:
            env = {"OPENAI_BASE_URL": fake.url + "/v1", "OPENAI_API_KEY": "k", "NO_PROXY": "*"}
            child(
                [
                    PY,
                    "-m",
                    "llmbatch",
                    "run",
                    str(jobs),
                    "-m",
                    "openai:gpt-4o-mini",
                    "-c",
                    "32",
                    "--quiet",
                    "-o",
                    str(tmp / f"rl-{label}.jsonl"),
                    "--fresh",
                    *extra,
                ],
                env,
            )
            ok = sorted(r.at for r in fake.records if r.outcome == "ok")
            pace = (len(ok) - 1) / (ok[-1] - ok[0])
            out[label] = {
                "pace_ratio": round(pace / 20.0, 3),
                "rejected_ratio": round(fake.count("429") / fake.count(), 4),
                "attempts_per_job": round(fake.count() / n, 3),
            }
        finally:
            fake.stop()
    return out


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def main() -> None:
    results: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]}
    }
    with tempfile.TemporaryDirectory(prefix="llmbatch-bench-") as d:
        tmp = Path(d)
        print("1/4 CPU per streamed request (2,000 requests, concurrency 64) …", flush=True)
        results["cpu"] = section_cpu(tmp)
        print("2/4 engine throughput and memory (sim, no latency) …", flush=True)
        results["engine"] = section_engine(tmp)
        print("3/4 start-up …", flush=True)
        results["startup"] = section_startup(tmp)
        print("4/4 rate-limit efficiency …", flush=True)
        results["ratelimit"] = section_ratelimit(tmp)

    checks: list[tuple[str, str, bool]] = []
    for provider, row in results["cpu"].items():
        checks.append(
            (
                f"{provider}: CPU/request ≤ 2× floor",
                f"{row['cpu_vs_floor']}×",
                row["cpu_vs_floor"] <= 2.0,
            )
        )
        checks.append(
            (
                f"{provider}: SDK loop ≥ 2.5× our CPU",
                f"{row['sdk_vs_llmbatch']}×",
                row["sdk_vs_llmbatch"] >= 2.5,
            )
        )
        checks.append(
            (
                f"{provider}: wall ≤ 1.3× floor",
                f"{row['wall_vs_floor']}×",
                row["wall_vs_floor"] <= 1.3,
            )
        )
    eng = results["engine"]
    for n, row in eng.items():
        checks.append(
            (
                f"sim engine {int(n):,} jobs ≥ 8,000 jobs/s",
                f"{row['jobs_per_s']:,.0f}/s",
                row["jobs_per_s"] >= 8000,
            )
        )
    checks.append(
        (
            "peak RSS at 200k ≤ 150 MiB",
            f"{eng['200000']['peak_rss_mib']} MiB",
            eng["200000"]["peak_rss_mib"] <= 150,
        )
    )
    growth = eng["200000"]["peak_rss_mib"] / eng["50000"]["peak_rss_mib"] - 1
    results["engine_rss_growth_50k_to_200k"] = round(growth, 3)
    checks.append(("RSS growth 50k → 200k ≤ 30%", f"{growth:.0%}", growth <= 0.30))
    st = results["startup"]
    checks.append(("`llmbatch --help` ≤ 0.35 s", f"{st['help_s']} s", st["help_s"] <= 0.35))
    checks.append(("one-line sim run (info)", f"{st['run_one_s']} s", True))
    rl = results["ratelimit"]
    checks.append(
        (
            "--rpm: pace ≥ 95% of allowed",
            f"{rl['with_rpm']['pace_ratio']:.0%}",
            rl["with_rpm"]["pace_ratio"] >= 0.95,
        )
    )
    checks.append(
        (
            "--rpm: ≤ 1% rejected",
            f"{rl['with_rpm']['rejected_ratio']:.1%}",
            rl["with_rpm"]["rejected_ratio"] <= 0.01,
        )
    )
    checks.append(("no --rpm: pace (info)", f"{rl['without_rpm']['pace_ratio']:.0%}", True))
    checks.append(("no --rpm: rejected (info)", f"{rl['without_rpm']['rejected_ratio']:.1%}", True))
    results["checks"] = [{"target": t, "value": v, "pass": p} for t, v, p in checks]

    print()
    print("| provider | client | CPU ms/request | wall s |")
    print("|---|---|---:|---:|")
    for provider, row in results["cpu"].items():
        for name in ("llmbatch", "floor", "sdk"):
            print(
                f"| {provider} | {name} | {row[name]['cpu_ms_per_req']} | {row[name]['wall_s']} |"
            )
    print()
    print("| sim jobs | jobs/s | wall s | peak RSS MiB |")
    print("|---:|---:|---:|---:|")
    for n, row in eng.items():
        print(
            f"| {int(n):,} | {row['jobs_per_s']:,.0f} | {row['wall_s']} | {row['peak_rss_mib']} |"
        )
    print()
    print("| target | value | verdict |")
    print("|---|---:|---|")
    for t, v, p in checks:
        print(f"| {t} | {v} | {verdict(p)} |")
    (BENCH / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwritten: {BENCH / 'results.json'}")


if __name__ == "__main__":
    main()
