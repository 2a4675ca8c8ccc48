"""The realistic workload: HTTPS, 300-token answers one token per event, many requests at once.

llmbatch, the raw aiohttp floor and the official SDK loops each run in their own
process against bench/tls_fake.py (another process); client CPU is user+sys of
the client process, connections are counted at the fake.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import orjson
from common import BENCH, PY, ROOT, child, write_prompts

MODELS = {"anthropic": "claude-haiku-4-5", "openai": "gpt-4o-mini"}


class TLSFake:
    """bench/tls_fake.py in its own process, driven over its stdin."""

    def __init__(self, cert_dir: Path) -> None:
        self.proc = subprocess.Popen(
            [PY, str(BENCH / "tls_fake.py"), str(cert_dir)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert self.proc.stdout is not None
        ready = self.proc.stdout.readline().split()
        if not ready or ready[0] != b"READY":
            raise RuntimeError(f"tls_fake did not start: {ready!r}")
        self.url = f"https://127.0.0.1:{int(ready[1])}"
        self.cert = cert_dir / "cert.pem"

    def stats(self) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(b"stats\n")
        self.proc.stdin.flush()
        out: dict[str, Any] = orjson.loads(self.proc.stdout.readline())
        return out

    def client_env(self) -> dict[str, str]:
        """What a client's environment needs to reach this fake and trust its certificate."""
        return {
            "SSL_CERT_FILE": str(self.cert),
            "ANTHROPIC_BASE_URL": self.url,
            "OPENAI_BASE_URL": self.url + "/v1",
            "ANTHROPIC_API_KEY": "k",
            "OPENAI_API_KEY": "k",
            "NO_PROXY": "*",
        }

    def stop(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def commands(
    provider: str, fake: TLSFake, jobs: Path, n: int, conc: int, tmp: Path
) -> dict[str, list[str]]:
    """The three clients' command lines for one provider."""
    return {
        "llmbatch": [
            PY,
            "-m",
            "llmbatch",
            "run",
            str(jobs),
            "-m",
            f"{provider}:{MODELS[provider]}",
            "-c",
            str(conc),
            "--quiet",
            "-o",
            str(tmp / f"tls-lb-{provider}.jsonl"),
            "--fresh",
        ],
        "floor": [
            PY,
            str(BENCH / "floor.py"),
            provider,
            fake.url,
            str(n),
            str(conc),
            str(tmp / f"tls-floor-{provider}.jsonl"),
        ],
        "floor_chunks": [
            PY,
            str(BENCH / "floor.py"),
            provider,
            fake.url,
            str(n),
            str(conc),
            str(tmp / f"tls-floorc-{provider}.jsonl"),
            "chunks",
        ],
        "sdk": [
            PY,
            str(BENCH / "sdk_loop.py"),
            provider,
            fake.url,
            str(n),
            str(conc),
            str(tmp / f"tls-sdk-{provider}.jsonl"),
        ],
    }


def measure(
    fake: TLSFake, name: str, cmd: list[str], env: dict[str, str], n: int
) -> dict[str, Any]:
    """One client run: its CPU and wall time, and what the fake saw meanwhile."""
    before = fake.stats()
    m = child(cmd, env, cwd=ROOT)
    after = fake.stats()
    served = after["requests"] - before["requests"]
    if served != n:
        raise RuntimeError(f"{name}: the fake served {served} requests, not {n}")
    return {
        "cpu_ms_per_req": round(m["cpu_s"] * 1000 / n, 3),
        "wall_s": round(m["wall_s"], 2),
        "req_per_s": round(n / m["wall_s"], 1),
        "cores": round(m["cpu_s"] / m["wall_s"], 2),
        "peak_rss_mib": round(m["rss_mib"], 1),
        "connections": after["connections"] - before["connections"],
        "fake_cpu_ms_per_req": round((after["cpu_s"] - before["cpu_s"]) * 1000 / n, 3),
    }


def section_tls(tmp: Path, n: int, conc: int, log: Any = print) -> dict[str, Any]:
    """Both providers, three clients each; ratios within each provider."""
    jobs = tmp / "tls.jsonl"
    write_prompts(jobs, n)
    cert_dir = tmp / "tls-cert"
    cert_dir.mkdir(exist_ok=True)
    fake = TLSFake(cert_dir)
    env = fake.client_env()
    only = os.environ.get("BENCH_TLS_CLIENTS", "llmbatch,floor,floor_chunks,sdk").split(",")
    before = os.environ.get("BENCH_BASELINE_SRC")
    out: dict[str, Any] = {"requests": n, "concurrency": conc}
    try:
        for provider in MODELS:
            row: dict[str, Any] = {}
            cmds = commands(provider, fake, jobs, n, conc, tmp)
            if before:
                # The same run with another checkout's llmbatch: before/after side by side.
                cmds = {"llmbatch_before": cmds["llmbatch"], **cmds}
            for name, cmd in cmds.items():
                if name.removesuffix("_before") not in only:
                    continue
                run_env = {**env, "PYTHONPATH": before} if name.endswith("_before") else env
                row[name] = measure(fake, f"{name}/{provider}", cmd, run_env, n)
                log(f"    {provider:9} {name:15} {row[name]}")
            for name in ("llmbatch", "llmbatch_before"):
                if name not in row:
                    continue
                lb = row[name]["cpu_ms_per_req"]
                if {"floor", "sdk"} <= row.keys():
                    row[name]["cpu_vs_floor"] = round(lb / row["floor"]["cpu_ms_per_req"], 2)
                    row[name]["sdk_vs_llmbatch"] = round(row["sdk"]["cpu_ms_per_req"] / lb, 2)
                if {name, "floor_chunks"} <= row.keys():
                    row[name]["cpu_vs_floor_chunks"] = round(
                        lb / row["floor_chunks"]["cpu_ms_per_req"], 2
                    )
            out[provider] = row
    finally:
        fake.stop()
    return out
