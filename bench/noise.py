"""Issue 10's noisy scenarios against the loopback fake: learned limits, budgets, chaos.

    python bench/noise.py [--only NAME] [--limit-s 200]

(``--only server_600_per_min`` runs the sliding window; ``_fixed``, ``_until_free``
and ``_fixed_until_free`` are its variants.)

Each scenario runs the engine in-process (``run_jobs_async``) against
``tests/fakeapi.FakeAPI`` and prints one line: wall time, jobs ok, requests the
fake saw, its 429s, the learned rate, budget use. Run it on two checkouts to
compare (``PYTHONPATH=/other/checkout/src python bench/noise.py``).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from llmbatch import ModelRef, RunConfig, run_jobs_async
from llmbatch._core.pricing import PriceBook
from llmbatch._core.usage import Usage
from tests.fakeapi import FakeAPI

HAIKU = ModelRef("anthropic", "claude-haiku-4-5")


def _jobs(path: Path, n: int) -> Path:
    with path.open("wb") as f:
        for i in range(n):
            f.write(orjson.dumps({"id": f"j{i}", "prompt": f"Question {i}: {i} + {i}?"}) + b"\n")
    return path


def _bill(fake: FakeAPI) -> float:
    book = PriceBook()
    total = 0.0
    for rec in fake.records:
        if rec.outcome == "ok":
            total += book.cost(HAIKU, Usage(rec.input_tokens, rec.output_tokens)) or 0.0
    return total


def run(
    name: str, n: int, setup: Callable[[FakeAPI], None], limit_s: float, **cfg: Any
) -> dict[str, Any]:
    fake = FakeAPI()
    setup(fake)
    fake.start()
    os.environ.update(
        ANTHROPIC_BASE_URL=fake.url,
        ANTHROPIC_API_KEY="sk-ant-bench",
        NO_PROXY="*",
    )
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["XDG_CACHE_HOME"] = tmp  # an empty response cache: every job is sent
        config = RunConfig(
            jobs=_jobs(Path(tmp) / "jobs.jsonl", n),
            output=Path(tmp) / "out.jsonl",
            model=HAIKU,
            quiet=True,
        )
        for key, value in cfg.items():
            setattr(config, key, value)
        started = time.monotonic()
        report = None

        async def go() -> None:
            nonlocal report
            with anyio.move_on_after(limit_s):
                report = await run_jobs_async(config, handle_signals=False)

        anyio.run(go)
        wall = time.monotonic() - started
        ok = sum(1 for line in config.output.read_bytes().splitlines() if b'"ok"' in line)
    fake.stop()
    seen = fake.count()
    limited = fake.count("429")
    row: dict[str, Any] = {
        "scenario": name,
        "wall_s": round(wall, 1),
        "finished": report is not None,
        "ok": ok,
        "of": n,
        "requests": seen,
        "rejected_429": limited,
        "reject_ratio": round(limited / seen, 3) if seen else 0,
    }
    if report is not None:
        row["limits"] = {k: v.get("rpm") for k, v in report.limits.items()}
    if config.max_cost:
        row["budget_used"] = round(_bill(fake) / config.max_cost, 3)
    return row


def _pace(row: dict[str, Any], per_min: float) -> None:
    allowed = row["wall_s"] * per_min / 60
    row["pace"] = round((row["requests"] - row["rejected_429"]) / allowed, 2) if allowed else 0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only")
    ap.add_argument("--limit-s", type=float, default=200)
    args = ap.parse_args()
    lim = args.limit_s

    def chaos(p: dict[str, float], latency: float = 0.0) -> Callable[[FakeAPI], None]:
        def setup(f: FakeAPI) -> None:
            f.chaos = p
            f.retry_after = 1.0
            f.latency_s = latency

        return setup

    def burst(f: FakeAPI) -> None:
        for i in range(30):
            f.add_rule(f"Question {i}:", "429")
        f.retry_after = 1.0

    def window(
        limit: int, seconds: float, kind: str = "sliding", retry: str = "none"
    ) -> Callable[[FakeAPI], None]:
        def setup(f: FakeAPI) -> None:
            f.window_limit = limit
            f.window_s = seconds
            f.window_kind = kind
            f.retry_after = None  # "none": its 429s say nothing
            if retry == "until_free":
                f.window_retry = "until_free"  # the real wait, in whole seconds
            f.rate_limit_headers = False

        return setup

    def long_reply(f: FakeAPI) -> None:
        f.reply = " ".join(["word"] * 150)

    mixed = {"429": 0.08, "500": 0.05, "529": 0.05, "reset": 0.03}
    c32: dict[str, Any] = {"concurrency": 32}
    capped = {"max_tokens": 200, "max_cost": 0.06}
    table: list[tuple[str, int, Callable[[FakeAPI], None], dict[str, Any]]] = [
        ("random_429_8pct", 300, chaos({"429": 0.08}), c32),
        ("mixed_chaos_200ms", 300, chaos(mixed, 0.2), c32),
        ("clean_200ms", 300, chaos({}, 0.2), c32),
        ("burst_30_429s", 200, burst, c32),
        ("server_600_per_min", 200, window(50, 5.0), c32),
        ("server_600_per_min_fixed", 200, window(50, 5.0, "fixed"), c32),
        ("server_600_per_min_until_free", 200, window(50, 5.0, retry="until_free"), c32),
        ("server_600_per_min_fixed_until_free", 200, window(50, 5.0, "fixed", "until_free"), c32),
        ("rpm_1200_given", 200, window(10, 0.5), {**c32, "rpm": 1200}),
        ("budget_c32", 300, long_reply, {**c32, **capped}),
        ("budget_c64", 300, long_reply, {"concurrency": 64, **capped}),
    ]
    scenarios = {
        name: (lambda name=name, n=n, setup=setup, kw=kw: run(name, n, setup, lim, **kw))
        for name, n, setup, kw in table
    }
    for name, scenario in scenarios.items():
        if args.only and args.only != name:
            continue
        row = scenario()
        if name.startswith("server_600_per_min"):
            _pace(row, 600)
        if name == "rpm_1200_given":
            _pace(row, 1200)
        print(orjson.dumps(row).decode(), flush=True)


if __name__ == "__main__":
    main()
