"""Learned limits before and after, side by side, on a simulated provider in virtual time.

usage: python bench/limits_sim.py [BEFORE_COMMIT]

"Before" is ModelGate as of BEFORE_COMMIT (default 5e567f2, wave 1) with the
engine's full-jitter backoff, run on the same fake clock through a shim; "after"
is the current ModelGate with ``_retry.Backoff``. Same seeded server, same jobs.
Figures are virtual seconds: a property of the algorithm, not of this machine.
"""

from __future__ import annotations

import random
import subprocess
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from llmbatch._config.settings import ModelLimits  # noqa: E402
from llmbatch._core.retry import Backoff  # noqa: E402
from llmbatch._limits.ratelimit import ModelGate  # noqa: E402
from llmbatch.testing import FakeClock  # noqa: E402
from tests.limits_sim import SimResult, SimServer, simulate  # noqa: E402

_CLOCK: list[FakeClock] = []  # the clock the old gate reads, through the shim


def _old_gate_class(commit: str) -> Any:
    source = subprocess.run(
        ["git", "show", f"{commit}:src/llmbatch/_ratelimit.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    module = types.ModuleType("llmbatch._ratelimit_before")
    module.__package__ = "llmbatch"
    sys.modules[module.__name__] = module  # dataclasses look their module up
    exec(compile(source, "_ratelimit_before.py", "exec"), module.__dict__)
    module.__dict__["time"] = types.SimpleNamespace(monotonic=lambda: _CLOCK[-1].monotonic())
    module.__dict__["anyio"] = types.SimpleNamespace(
        sleep=lambda s: _CLOCK[-1].sleep(s), Lock=anyio.Lock
    )
    return module.ModelGate


def _full_jitter(rng: random.Random) -> Callable[[int, float | None], float]:
    def delay(tries: int, retry_after: float | None) -> float:
        if retry_after is not None and retry_after >= 0:
            return min(retry_after, 60.0) + rng.uniform(0, 0.25)
        return rng.uniform(0, min(60.0, 0.5 * (2 ** (tries - 1))))

    return delay


NO_HEADERS = {"headers": False}
WINDOWS_600 = {"limit": 50, "window_s": 5.0}
FAKE_600 = {**WINDOWS_600, **NO_HEADERS, "sliding": True, "limit_retry_after": 1.0}
LLMOCK = {"limit": 60, "window_s": 60.0, "bucket": True}
OPEN = ModelLimits()
SCENARIOS: list[tuple[str, ModelLimits, dict[str, Any], int, float]] = [
    # name, limits, server, jobs, give up after (virtual s)
    ("clean, 300 jobs", OPEN, {}, 300, 600),
    ("8% 429 (quota left), 300", OPEN, {"noise_429": 0.08}, 300, 600),
    ("8% 429 + 13% 5xx (quota left)", OPEN, {"noise_429": 0.08, "noise_5xx": 0.13}, 300, 600),
    ("8% 429, no headers, 300", OPEN, {"noise_429": 0.08, **NO_HEADERS}, 300, 600),
    ("10% 429 (quota left), 3000", OPEN, {"noise_429": 0.10}, 3000, 600),
    ("first 30 draw a 429, 200", OPEN, {"burst_429s": 30}, 200, 600),
    ("first 30 429, no headers, 200", OPEN, {"burst_429s": 30, **NO_HEADERS}, 200, 600),
    ("600/min in 5 s windows, no hdrs", OPEN, {**WINDOWS_600, **NO_HEADERS}, 1500, 900),
    ("600/min in 5 s windows, headers", OPEN, WINDOWS_600, 1500, 900),
    ("600/min sliding, retry-after 1 (fake)", OPEN, FAKE_600, 1500, 900),
    (
        "--rpm 1200, 0.5 s windows",
        ModelLimits(rpm=1200),
        {"limit": 10, "window_s": 0.5, **NO_HEADERS},
        1500,
        900,
    ),
    ("llmock 60/min bucket, headers", OPEN, LLMOCK, 100, 900),
    ("llmock 60/min bucket, no hdrs", OPEN, {**LLMOCK, **NO_HEADERS}, 100, 900),
]


async def _one(gate_cls: Any, backoff: Any, limits: ModelLimits, server: dict[str, Any],
               jobs: int, until: float) -> tuple[SimResult, Any]:  # fmt: skip
    clock = FakeClock()
    _CLOCK.append(clock)
    try:
        gate = gate_cls(limits) if gate_cls is not ModelGate else ModelGate(limits, clock=clock)
        result = await simulate(
            gate, SimServer(clock, **server), jobs=jobs, concurrency=32, backoff=backoff,
            until=until,
        )  # fmt: skip
        return result, gate
    finally:
        _CLOCK.pop()


def _row(result: SimResult, gate: Any) -> str:
    rpm = gate.describe()["rpm"]
    rpm_s = "open" if rpm is None else f"{rpm:,.0f}"
    return (
        f"{result.done:>4}/{result.jobs:<4} {result.elapsed:7.1f}s "
        f"{result.pace():6.1f}/s {result.rejected_share * 100:5.1f}% {rpm_s:>9}"
    )


def _per_10s(result: SimResult) -> str:
    counts = [sum(1 for t in result.sends if k * 10 <= t < (k + 1) * 10) for k in range(5)]
    return " → ".join(str(c) for c in counts)


def main() -> None:
    commit = sys.argv[1] if len(sys.argv) > 1 else "5e567f2"
    old = _old_gate_class(commit)
    head = f"{'scenario (-c 32, 200 ms)':38} | {'before: done   time   ok/s  429% rpm':40} | after"
    print(head)
    for name, limits, server, jobs, until in SCENARIOS:
        before, bgate = anyio.run(
            _one, old, _full_jitter(random.Random(11)), limits, server, jobs, until
        )
        after, agate = anyio.run(
            _one, ModelGate, Backoff(rng=random.Random(11)).delay, limits, server, jobs, until
        )
        print(f"{name:38} | {_row(before, bgate):40} | {_row(after, agate)}", flush=True)
        if name.startswith("10%"):
            print(f"{'  sends per 10 s':38} | {_per_10s(before):40} | {_per_10s(after)}")


if __name__ == "__main__":
    main()
