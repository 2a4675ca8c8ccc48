"""The benchmark's targets: (what, measured value, met?) from one run's results."""

from __future__ import annotations

from typing import Any

Check = tuple[str, str, bool]


def tls_checks(tls: dict[str, Any]) -> list[Check]:
    out: list[Check] = []
    conc = tls["concurrency"]
    for provider in ("anthropic", "openai"):
        row = tls.get(provider, {})
        for name in ("llmbatch_before", "llmbatch"):
            if name not in row:
                continue
            lb = row[name]
            tag = f"TLS {provider}{' (before)' if name.endswith('_before') else ''}"
            if "cpu_vs_floor" in lb:
                ratio, sdk = lb["cpu_vs_floor"], lb["sdk_vs_llmbatch"]
                out.append((f"{tag}: CPU/request ≤ 1.25× floor", f"{ratio}×", ratio <= 1.25))
                out.append((f"{tag}: SDK loop ≥ 4× our CPU", f"{sdk}×", sdk >= 4.0))
            if "cpu_vs_floor_chunks" in lb:
                ratio = lb["cpu_vs_floor_chunks"]
                out.append((f"{tag}: CPU/request vs chunk-reading floor (info)", f"{ratio}×", True))
            conns = lb["connections"]
            out.append((f"{tag}: connections ≤ concurrency ({conc})", str(conns), conns <= conc))
            per_core = round(1000 / lb["cpu_ms_per_req"])
            out.append(
                (
                    f"{tag}: requests/s per core ≥ 500",
                    f"{per_core}/s (ran {lb['req_per_s']}/s on {lb['cores']} cores)",
                    per_core >= 500,
                )
            )
        for name in ("floor", "sdk"):
            if name in row:
                conns = row[name]["connections"]
                out.append((f"TLS {provider}: {name} connections (info)", str(conns), True))
    return out


def cpu_checks(cpu: dict[str, Any]) -> list[Check]:
    out: list[Check] = []
    for provider, row in cpu.items():
        ratio, sdk, wall = row["cpu_vs_floor"], row["sdk_vs_llmbatch"], row["wall_vs_floor"]
        out.append((f"HTTP {provider}: CPU/request ≤ 2× floor", f"{ratio}×", ratio <= 2.0))
        out.append((f"HTTP {provider}: SDK loop ≥ 2.5× our CPU", f"{sdk}×", sdk >= 2.5))
        out.append((f"HTTP {provider}: wall ≤ 1.3× floor", f"{wall}×", wall <= 1.3))
    return out


ENGINE_JOBS_PER_CPU_S = 20_000  # ≤ 50 µs of CPU a job, with the defaults (cache on)


def engine_checks(eng: dict[str, Any]) -> list[Check]:
    out: list[Check] = []
    for n, row in eng.items():
        runs = (("(before) ", row.get("before")), ("", row), ("--no-cache ", row.get("no_cache")))
        for tag, r in runs:
            if r is None:
                continue
            info = " (info)" if tag else ""
            out.append(
                (
                    f"sim engine {tag}{int(n):,} jobs ≥ {ENGINE_JOBS_PER_CPU_S:,} jobs/CPU-s{info}",
                    f"{r['jobs_per_cpu_s']:,.0f} ({r.get('cpu_us_per_job', '?')} µs/job)",
                    r["jobs_per_cpu_s"] >= ENGINE_JOBS_PER_CPU_S,
                )
            )
    rss = eng["200000"]["peak_rss_mib"]
    out.append(("peak RSS at 200k ≤ 150 MiB", f"{rss} MiB", rss <= 150))
    growth = rss / eng["50000"]["peak_rss_mib"] - 1
    out.append(("RSS growth 50k → 200k ≤ 30%", f"{growth:.0%}", growth <= 0.30))
    return out


def startup_checks(st: dict[str, Any]) -> list[Check]:
    return [
        ("`llmbatch --help` ≤ 0.35 s", f"{st['help_s']} s", st["help_s"] <= 0.35),
        ("one-line sim run (info)", f"{st['run_one_s']} s", True),
    ]


def embed_checks(e: dict[str, Any]) -> list[Check]:
    n, dim = e["inputs"], e["dimensions"]
    return [
        (
            f"embed {n:,}: ≥ 20,000 vectors/s",
            f"{e['vectors_per_s']:,}/s",
            e["vectors_per_s"] >= 20_000,
        ),
        (f"embed {n:,}: peak RSS ≤ 300 MiB", f"{e['peak_rss_mib']} MiB", e["peak_rss_mib"] <= 300),
        (
            f"embed {n:,}: every id once, float32 × {dim} (pyarrow, pandas)",
            f"{e['distinct_ids']:,} ids · {e['arrow_type']} · {e['pandas_vector_dtype']}",
            e["rows"] == e["distinct_ids"] == n
            and e["arrow_type"] == f"fixed_size_list<element: float>[{dim}]"
            and e["pandas_vector_dtype"] == "float32"
            and e["pandas_vector_len"] == dim,
        ),
    ]


def ratelimit_checks(rl: dict[str, Any]) -> list[Check]:
    with_rpm, without = rl["with_rpm"], rl["without_rpm"]
    return [
        (
            "--rpm: pace ≥ 95% of allowed",
            f"{with_rpm['pace_ratio']:.0%}",
            with_rpm["pace_ratio"] >= 0.95,
        ),
        (
            "--rpm: ≤ 1% rejected",
            f"{with_rpm['rejected_ratio']:.1%}",
            with_rpm["rejected_ratio"] <= 0.01,
        ),
        ("no --rpm: pace (info)", f"{without['pace_ratio']:.0%}", True),
        ("no --rpm: rejected (info)", f"{without['rejected_ratio']:.1%}", True),
    ]


def ray_checks(r: dict[str, Any]) -> list[Check]:
    n = r["jobs"]
    return [
        (
            f"--ray --ray-workers 2: every one of {n:,} jobs written once",
            f"{r['ray']['written']:,}",
            r["ray"]["written"] == n,
        ),
        (
            "--ray jobs/s ≥ one local process (Ray start and stop included)",
            f"{r['ray']['jobs_per_s']:,.0f} vs {r['local']['jobs_per_s']:,.0f} "
            f"({r['ray_vs_local']:.2f}×; fixed {r['ray_fixed_s']} s)",
            r["ray_vs_local"] >= 1.0,
        ),
        (
            "--ray ADDRESS jobs/s ≥ one local process (a cluster already running)",
            f"{r['ray_warm']['jobs_per_s']:,.0f} vs {r['local']['jobs_per_s']:,.0f} "
            f"({r['ray_warm_vs_local']:.2f}×; fixed {r['ray_warm_fixed_s']} s)",
            r["ray_warm_vs_local"] >= 1.0,
        ),
        (
            "--ray ADDRESS jobs/s past its fixed cost ≥ one local process past its own",
            f"{r['ray_warm']['past_start_jobs_per_s']:,.0f} vs "
            f"{r['local']['past_start_jobs_per_s']:,.0f}",
            r["ray_warm"]["past_start_jobs_per_s"] >= r["local"]["past_start_jobs_per_s"],
        ),
        (
            "the shortest a cold --ray run can be here: Ray's start + the ceiling (info)",
            f"{r['ray_best_cold_s']} s vs local {r['local']['wall_s']} s "
            f"({r['ray_best_cold_vs_local']:.2f}×)",
            True,
        ),
        (
            f"--ray ADDRESS: every one of {n:,} jobs written once",
            f"{r['ray_warm']['written']:,}",
            r["ray_warm"]["written"] == n,
        ),
    ]


def all_checks(results: dict[str, Any]) -> list[Check]:
    """Every target whose section ran."""
    makers = {
        "tls": tls_checks,
        "cpu": cpu_checks,
        "engine": engine_checks,
        "startup": startup_checks,
        "ratelimit": ratelimit_checks,
        "embed": embed_checks,
        "ray": ray_checks,
    }
    out: list[Check] = []
    for name, make in makers.items():
        if name in results:
            out.extend(make(results[name]))
    return out
