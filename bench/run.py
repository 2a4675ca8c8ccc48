"""llmbatch's benchmark: `make bench` (or `python bench/run.py [--quick] [--full] [--only A,B]`).

Measures, side by side on this machine, and prints PASS/FAIL against the targets:
  1. tls: the realistic workload: HTTPS (bench/tls_fake.py, its own process),
     300-token answers one token per event, 20,000 requests at concurrency 256
     (2,000 with --quick), for llmbatch, a bare aiohttp floor and the official SDKs:
     client CPU per request (user+sys of the client, from wait4), connections
     opened (counted at the fake), the fake's own CPU;
  2. cpu: the same three clients over plain HTTP with 20-token answers, 2,000
     requests at concurrency 64 (tests/fakeapi.py);
  3. engine: jobs/s, CPU µs a job and peak RSS on the sim provider with no latency,
     with the defaults (response cache on, a new file) and with --no-cache, beside the
     I/O floor (bench/io_floor.py: read the jobs with orjson, write a result line each);
     target ≥ 20,000 jobs per CPU-second (≤ 50 µs a job) with the cache on;
  4. startup: `llmbatch --help` and a one-line run;
  5. ratelimit: pacing against a fake enforcing a request window;
  6. ray: 200,000 sim jobs (no latency) through `run --ray --ray-workers 2` against one
     local process: a local Ray started by the run (its start and stop included), and
     a cluster already running (`ray start --head --num-cpus 2`, bench/ray_bench.py);
  7. embed: 1,000,000 short inputs (100,000 with --quick) embedded by `sim` into
     Parquet (256 dimensions): vectors/s, peak RSS, and the file read back with
     pyarrow and pandas (float32 vectors of the right dimension, every id once).
Writes bench/results.json (bench/out/results-partial.json with --only). These are
goals for the code, never timed tests in CI. BENCH_TLS_CLIENTS=llmbatch,floor
limits the tls section to some clients (for profiling rounds); BENCH_BASELINE_SRC=
another checkout's src/ adds its llmbatch to the tls and engine sections (before/after).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from checks import all_checks
from common import BENCH, PY, child, write_prompts
from ray_bench import section_ray as ray_section
from tls_bench import section_tls

from tests.fakeapi import FakeAPI  # importable: common puts the repo on sys.path

FULL = "--full" in sys.argv
QUICK = "--quick" in sys.argv
N_REQ = 2000
CONC = 64
TLS_REQ = 2_000 if QUICK else 20_000
TLS_CONC = 256
SECTIONS = ("tls", "cpu", "engine", "startup", "ratelimit", "ray", "embed")
EMBED_N = 100_000 if QUICK else 1_000_000
EMBED_DIM = 256


def llmbatch_run(jobs: Path, model: str, out: Path, *extra: str) -> list[str]:
    """The command line of a quiet, fresh ``llmbatch run``."""
    return [PY, "-m", "llmbatch", "run", str(jobs), "-m", model, "--quiet", "-o", str(out),
            "--fresh", *extra]  # fmt: skip


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
            args = [fake.url, str(N_REQ), str(CONC)]
            runs = {
                "llmbatch": llmbatch_run(
                    jobs, f"{provider}:{model}", tmp / f"lb-{provider}.jsonl", "-c", str(CONC)
                ),
                "floor": [
                    PY,
                    str(BENCH / "floor.py"),
                    provider,
                    *args,
                    str(tmp / f"floor-{provider}.jsonl"),
                ],
                "sdk": [
                    PY,
                    str(BENCH / "sdk_loop.py"),
                    provider,
                    *args,
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


def engine_row(
    n: int, jobs: Path, tmp: Path, floor_cpu_s: float, env: dict[str, str], cache: bool = True
) -> dict[str, Any]:
    """One sim run of ``n`` jobs with the defaults (the response cache on, in a new file),
    or with ``--no-cache``: speed, CPU per job and memory, against the I/O floor."""
    results = tmp / f"engine-{n}.results.jsonl"
    cache_file = tmp / f"engine-{n}.cache.sqlite"
    flags = ["--cache", str(cache_file)] if cache else ["--no-cache"]
    # The last run's writes (a cache file is ~200 MB at 200k) go to disk first: the
    # kernel would otherwise charge their writeback to this run's system time.
    os.sync()
    m = child(
        llmbatch_run(jobs, "sim:claude-haiku-4-5", results, "-c", "256", *flags),
        {"LLMBATCH_SIM_LATENCY_MS": "0", **env},
    )
    results.unlink()
    for p in tmp.glob(cache_file.name + "*"):
        p.unlink()
    # Both are one thread: jobs per CPU-second is jobs/s on a core of one's own,
    # which a shared machine's wall clock is not.
    return {
        "jobs_per_s": round(n / m["wall_s"], 1),
        "jobs_per_cpu_s": round(n / m["cpu_s"], 1),
        "cpu_us_per_job": round(m["cpu_s"] / n * 1e6, 1),
        "wall_s": round(m["wall_s"], 2),
        "peak_rss_mib": round(m["rss_mib"], 1),
        "io_floor_jobs_per_cpu_s": round(n / floor_cpu_s, 1),
        "vs_io_floor": round(floor_cpu_s / m["cpu_s"], 3),
    }


def section_engine(tmp: Path) -> dict[str, Any]:
    sizes = [50_000, 200_000] + ([1_000_000] if FULL else [])
    before = os.environ.get("BENCH_BASELINE_SRC")
    out: dict[str, Any] = {}
    for n in sizes:
        jobs = tmp / f"engine-{n}.jsonl"
        write_prompts(jobs, n)
        floor = child([PY, str(BENCH / "io_floor.py"), str(jobs), str(tmp / "io-floor.jsonl")])
        row = engine_row(n, jobs, tmp, floor["cpu_s"], {})
        row["no_cache"] = engine_row(n, jobs, tmp, floor["cpu_s"], {}, cache=False)
        row["io_floor_cpu_us_per_job"] = round(floor["cpu_s"] / n * 1e6, 1)
        if before:
            row["before"] = engine_row(n, jobs, tmp, floor["cpu_s"], {"PYTHONPATH": before})
        out[str(n)] = row
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
            llmbatch_run(one, "sim:claude-haiku-4-5", tmp / "one.out.jsonl"),
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
            cmd = llmbatch_run(
                jobs, "openai:gpt-4o-mini", tmp / f"rl-{label}.jsonl", "-c", "32", *extra
            )
            child(cmd, env)
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


def section_embed(tmp: Path) -> dict[str, Any]:
    import orjson

    jobs, out = tmp / "embed.jsonl", tmp / "vectors.parquet"
    with jobs.open("wb") as f:
        for i in range(EMBED_N):
            f.write(
                orjson.dumps({"id": f"doc-{i}", "input": f"short passage {i} on topic {i % 97}"})
            )
            f.write(b"\n")
    cmd = [PY, "-m", "llmbatch", "embed", str(jobs), "-m", "sim:text-embedding-3-small",
           "--dimensions", str(EMBED_DIM), "-o", str(out), "--quiet", "--no-cache"]  # fmt: skip
    r = child(cmd, {"LLMBATCH_SIM_LATENCY_MS": "0"})
    return {"inputs": EMBED_N, "dimensions": EMBED_DIM, "wall_s": round(r["wall_s"], 2),
            "cpu_s": round(r["cpu_s"], 2), "vectors_per_s": round(EMBED_N / r["wall_s"]),
            "vectors_per_cpu_s": round(EMBED_N / r["cpu_s"]),
            "peak_rss_mib": round(r["rss_mib"], 1),
            "file_mib": round(out.stat().st_size / 2**20, 1),
            **read_back(out)}  # fmt: skip


def read_back(path: Path) -> dict[str, Any]:
    """The vectors file as pyarrow and pandas read it: rows, distinct ids, dtype, dimension."""
    import pandas as pd
    import pyarrow.parquet as pq

    ids = pq.read_table(path, columns=["id"])["id"]
    field = pq.read_schema(path).field("embedding")
    head = pd.read_parquet(path).head(3) if path.stat().st_size < 2**31 else None
    pf = pq.ParquetFile(path)
    first = pf.read_row_group(0, columns=["embedding"])["embedding"]
    sample = pd.Series(first.to_pylist()[:3])
    return {
        "rows": len(ids),
        "distinct_ids": len(set(ids.to_pylist())),
        "arrow_type": str(field.type),
        "pandas_vector_dtype": str(head["embedding"].iloc[0].dtype) if head is not None else None,
        "pandas_vector_len": len(head["embedding"].iloc[0]) if head is not None else len(sample[0]),
    }


def section_ray(tmp: Path) -> dict[str, Any]:
    return ray_section(tmp, 50_000 if QUICK else 200_000)


def chosen_sections() -> tuple[str, ...]:
    if {"-h", "--help"} & set(sys.argv):
        sys.stdout.write(__doc__ or "")
        sys.exit(0)
    known = {"--quick", "--full", "--only"}
    for i, arg in enumerate(sys.argv[1:], 1):
        if arg.startswith("-") and arg not in known:
            sys.exit(f"unknown option {arg}; see python bench/run.py --help")
        if arg == "--only" and i + 1 >= len(sys.argv):
            sys.exit("--only takes a list of sections: " + ", ".join(SECTIONS))
    for i, arg in enumerate(sys.argv):
        if arg == "--only":
            wanted = tuple(sys.argv[i + 1].split(","))
            unknown = set(wanted) - set(SECTIONS)
            if unknown:
                sys.exit(f"unknown sections {sorted(unknown)}; known: {', '.join(SECTIONS)}")
            return wanted
    return SECTIONS


def run_sections(sections: tuple[str, ...], tmp: Path) -> dict[str, Any]:
    labels = {
        "tls": f"TLS, 300-token streams ({TLS_REQ:,} requests, concurrency {TLS_CONC})",
        "cpu": f"CPU per request, plain HTTP ({N_REQ:,} requests, concurrency {CONC})",
        "engine": "engine throughput and memory (sim, no latency) against the I/O floor",
        "startup": "start-up",
        "ratelimit": "rate-limit efficiency",
        "embed": f"embeddings: {EMBED_N:,} short inputs by sim into Parquet",
        "ray": "run --ray --ray-workers 2 against one local process (sim, no latency)",
    }
    results: dict[str, Any] = {}
    for i, name in enumerate(sections, 1):
        print(f"{i}/{len(sections)} {labels[name]} …", flush=True)
        started = time.perf_counter()
        if name == "tls":
            results[name] = section_tls(tmp, TLS_REQ, TLS_CONC)
        else:
            results[name] = globals()[f"section_{name}"](tmp)
        print(f"    {time.perf_counter() - started:.0f} s", flush=True)
    return results


def print_tables(results: dict[str, Any], checks: list[tuple[str, str, bool]]) -> None:
    if "tls" in results:
        print("\n| TLS | client | CPU ms/req | req/s | cores | conns | fake CPU ms/req |")
        print("|---|---|---:|---:|---:|---:|---:|")
        for provider in ("anthropic", "openai"):
            for name, r in results["tls"].get(provider, {}).items():
                if isinstance(r, dict):
                    print(
                        f"| {provider} | {name} | {r['cpu_ms_per_req']} | {r['req_per_s']} | "
                        f"{r['cores']} | {r['connections']} | {r['fake_cpu_ms_per_req']} |"
                    )
    if "ray" in results:
        r = results["ray"]
        head = "wall s | jobs/s | CPU s (command) | vs local | fixed s | jobs/s past it"
        print(f"\n| {r['jobs']:,} sim jobs | {head} |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        rows = (
            ("local process", "local", None, "local_fixed_s"),
            ("--ray (starts Ray)", "ray", "ray_vs_local", "ray_fixed_s"),
            ("--ray ADDRESS (running)", "ray_warm", "ray_warm_vs_local", "ray_warm_fixed_s"),
        )
        for label, key, ratio, fixed in rows:
            m = r[key]
            print(f"| {label} | {m['wall_s']} | {m['jobs_per_s']:,.0f} | {m['cpu_s']} | "
                  f"{r[ratio] if ratio else 1.0}× | {r[fixed]} | "
                  f"{m['past_start_jobs_per_s']:,.0f} |")  # fmt: skip
        c = r["ray_ceiling"]
        print(f"| ceiling: 2 actors, no driver | {c['wall_s']} | {c['jobs_per_s']:,.0f} | "
              f"{sum(a['cpu_s'] for a in c['actors']):.2f} (actors) | - | - | - |")  # fmt: skip
    if "cpu" in results:
        print("\n| plain HTTP | client | CPU ms/request | wall s |")
        print("|---|---|---:|---:|")
        for provider, row in results["cpu"].items():
            for name in ("llmbatch", "floor", "sdk"):
                r = row[name]
                print(f"| {provider} | {name} | {r['cpu_ms_per_req']} | {r['wall_s']} |")
    if "engine" in results:
        print_engine(results["engine"])
    print("\n| target | value | verdict |")
    print("|---|---:|---|")
    for t, v, p in checks:
        verdict = "info" if t.endswith("(info)") else ("PASS" if p else "FAIL")
        print(f"| {t} | {v} | {verdict} |")


def print_engine(engine: dict[str, Any]) -> None:
    print("\n| sim jobs | run | jobs/s | jobs/CPU-s | CPU µs/job | wall s | peak RSS MiB |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for n, row in engine.items():
        runs = (
            ("before", row.get("before")),
            ("cache on", row),
            ("--no-cache", row.get("no_cache")),
        )
        for tag, r in runs:
            if r is not None:
                cells = [
                    f"{int(n):,}",
                    tag,
                    f"{r['jobs_per_s']:,.0f}",
                    f"{r['jobs_per_cpu_s']:,.0f}",
                ]
                cells += [
                    str(r.get("cpu_us_per_job", "")),
                    str(r["wall_s"]),
                    str(r["peak_rss_mib"]),
                ]
                print("| " + " | ".join(cells) + " |")
        floor_us = row.get("io_floor_cpu_us_per_job", "")
        print(f"| {int(n):,} | bare orjson read→write | | {row['io_floor_jobs_per_cpu_s']:,.0f} "
              f"| {floor_us} | | |")  # fmt: skip


def main() -> None:
    # The runs measured, not the compiler: where the environment forbids writing
    # bytecode (this machine's shells do), every child, and each of the dozen Pythons a
    # Ray start makes, would compile its modules anew (a cold --ray run: 10 s, not 3).
    # `make bench` clears it too; this covers `python bench/run.py`.
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    sections = chosen_sections()
    started = time.perf_counter()
    results: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
            "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
        },
        "quick": QUICK,
    }
    with tempfile.TemporaryDirectory(prefix="llmbatch-bench-") as d:
        results.update(run_sections(sections, Path(d)))
    results["duration_s"] = round(time.perf_counter() - started, 1)
    checks = all_checks(results)
    results["checks"] = [{"target": t, "value": v, "pass": p} for t, v, p in checks]
    print_tables(results, checks)
    if sections == SECTIONS:
        path = BENCH / "results.json"
    else:
        path = BENCH / "out" / "results-partial.json"
        path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwritten: {path}  ({results['duration_s']:.0f} s in all)")


if __name__ == "__main__":
    main()
