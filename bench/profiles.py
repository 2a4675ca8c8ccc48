"""Profiles of llmbatch on the TLS workload and on the sim engine, into bench/out/.

usage: python bench/profiles.py [N_TLS_REQUESTS] [N_SIM_JOBS]

For each of openai, anthropic (TLS fake) and sim: a cProfile dump
(``<name>.prof``) with its top entries by own time (``<name>.txt``), and, if
py-spy is installed, a flame graph (``<name>.svg``, a separate run: py-spy samples
from outside and costs the client nothing).
"""

from __future__ import annotations

import io
import pstats
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from common import BENCH, PY, write_prompts
from tls_bench import MODELS, TLSFake

OUT = BENCH / "out"


def summarise(prof: Path) -> None:
    """The top 30 functions by own time, then by cumulative time, as text."""
    text = io.StringIO()
    stats = pstats.Stats(str(prof), stream=text)
    stats.sort_stats("tottime").print_stats(30)
    stats.sort_stats("cumulative").print_stats(40)
    prof.with_suffix(".txt").write_text(text.getvalue())


def profile(name: str, args: list[str], env: dict[str, str]) -> None:
    prof = OUT / f"{name}.prof"
    full_env = {**__import__("os").environ, **env}
    subprocess.run([PY, "-m", "cProfile", "-o", str(prof), "-m", "llmbatch", *args],
                   env=full_env, check=True, stdout=subprocess.DEVNULL)  # fmt: skip
    summarise(prof)
    spy = shutil.which("py-spy") or str(Path(PY).parent / "py-spy")
    if Path(spy).exists():
        svg = OUT / f"{name}.svg"
        subprocess.run([spy, "record", "-o", str(svg), "-r", "200", "--", PY, "-m", "llmbatch",
                        *args], env=full_env, check=False, capture_output=True)  # fmt: skip
    print(f"{name}: {prof.with_suffix('.txt')}", flush=True)


def main() -> None:
    n_tls = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    n_sim = int(sys.argv[2]) if len(sys.argv) > 2 else 50_000
    OUT.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="llmbatch-prof-") as d:
        tmp = Path(d)
        jobs = tmp / "tls.jsonl"
        write_prompts(jobs, n_tls)
        (tmp / "cert").mkdir()
        fake = TLSFake(tmp / "cert")
        env = fake.client_env()
        try:
            for provider, model in MODELS.items():
                args = ["run", str(jobs), "-m", f"{provider}:{model}", "-c", "256", "--quiet",
                        "-o", str(tmp / "out.jsonl"), "--fresh"]  # fmt: skip
                profile(f"tls-{provider}", args, env)
        finally:
            fake.stop()
        sim_jobs = tmp / "sim.jsonl"
        write_prompts(sim_jobs, n_sim)
        args = ["run", str(sim_jobs), "-m", "sim:claude-haiku-4-5", "-c", "256", "--quiet",
                "-o", str(tmp / "sim.out.jsonl"), "--fresh"]  # fmt: skip
        profile("sim", args, {"LLMBATCH_SIM_LATENCY_MS": "0"})


if __name__ == "__main__":
    main()
