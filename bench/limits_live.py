"""Learned limits end to end: the real engine, in-process, against the loopback fake API.

usage: python bench/limits_live.py [SRC_DIR] [--new-backoff] [--only NAME_PART] [--runs N]
                                  [--trace]

SRC_DIR is the llmbatch source to measure (default: this checkout's src; for
"before", extract an older commit: ``git archive 5e567f2 src | tar -x -C /tmp/before``).
``--new-backoff`` swaps ``Engine._backoff`` for ``_retry.Backoff`` (what the lead's
integration does). ``--runs N`` repeats each scenario; ``--trace`` prints every
change of the learned rate. Wall-clock figures of this machine, so run it on a quiet one.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import orjson

ROOT = Path(__file__).resolve().parent.parent
SRC = Path(sys.argv[1]) if len(sys.argv) > 1 and not sys.argv[1].startswith("-") else ROOT / "src"
sys.path.insert(0, str(SRC))
sys.path.insert(1, str(ROOT))

from llmbatch._config.settings import RunConfig  # noqa: E402
from llmbatch._core.events import LimitChanged  # noqa: E402
from llmbatch._core.models import ModelRef  # noqa: E402
from llmbatch._run.online import FileRun as Engine  # noqa: E402
from llmbatch._run.online import run_jobs_async  # noqa: E402
from tests.fakeapi import FakeAPI  # noqa: E402

GIVE_UP_S = 150.0

if "--new-backoff" in sys.argv:
    from llmbatch._core.retry import Backoff

    def _backoff(self: Any, tries: int, retry_after: float | None) -> float:
        return Backoff(cap=self.config.backoff_cap).delay(tries, retry_after)

    Engine._backoff = _backoff  # type: ignore[method-assign]


def _scenarios() -> list[tuple[str, dict[str, Any], int, float | None, int]]:
    chaos = {"429": 0.08, "500": 0.05, "529": 0.05, "reset": 0.03}
    rpm_window = {"window_limit": 10, "window_s": 0.5, "rate_limit_headers": False}
    rows: list[tuple[str, dict[str, Any], int, float | None, int]] = [
        # name, fake settings, jobs, --rpm, first N jobs draw one 429
        ("clean", {}, 300, None, 0),
        ("8% 429 (quota left)", {"chaos": {"429": 0.08}}, 300, None, 0),
        ("8% 429 + 5% 500 + 5% 529 + 3% reset", {"chaos": chaos}, 300, None, 0),
        ("first 30 jobs draw one 429, 200", {}, 200, None, 30),
    ]
    # A genuine 600/min in 5 s windows of 50, no rate-limit headers: sliding or fixed
    # windows; its 429s say "retry-after: 1", the real wait, or nothing.
    for kind in ("sliding", "fixed"):
        for label, retry in (("retry-after 1", {}), ("until free", {"window_retry": "until_free"}),
                             ("no retry-after", {"retry_after": None})):  # fmt: skip
            window = {"window_limit": 50, "window_s": 5.0, "rate_limit_headers": False,
                      "window_kind": kind, **retry}  # fmt: skip
            rows.append((f"600/min {kind}, {label}", window, 600, None, 0))
    rows.append(("--rpm 1200, 0.5 s windows", rpm_window, 600, 1200.0, 0))
    return rows


async def _one(settings: dict[str, Any], jobs: int, rpm: float | None, burst: int) -> str:
    fake = FakeAPI(latency_s=0.2, **{"retry_after": 1.0, **settings}).start()
    for i in range(burst):
        fake.add_rule(f"Question {i}:", "429")
    os.environ["OPENAI_BASE_URL"] = fake.url + "/v1"
    os.environ["OPENAI_API_KEY"] = "sk-bench"
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "jobs.jsonl"
            rows = [
                {"id": f"j{i}", "prompt": f"Question {i}: what is {i} + {i}?"} for i in range(jobs)
            ]
            path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
            os.environ["XDG_CACHE_HOME"] = tmp  # an empty response cache: every job is sent
            cfg = RunConfig(
                jobs=path, output=Path(tmp) / "out.jsonl", model=ModelRef("openai", "gpt-4o-mini"),
                concurrency=32, rpm=rpm, quiet=True, max_attempts=20,
            )  # fmt: skip
            started = time.monotonic()
            report: Any = None
            with anyio.move_on_after(GIVE_UP_S):
                report = await run_jobs_async(cfg, handle_signals=False, sinks=_sinks(started))
            elapsed = time.monotonic() - started
            done = sum(
                1 for line in (Path(tmp) / "out.jsonl").read_bytes().splitlines() if b'"ok"' in line
            )
    finally:
        fake.stop()
    ok_times = sorted(r.at for r in fake.records if r.outcome == "ok")
    pace = (len(ok_times) - 1) / (ok_times[-1] - ok_times[0]) if len(ok_times) > 1 else 0.0
    limited = sum(1 for r in fake.records if r.outcome == "429")
    rpm_learned = None
    if report is not None:
        rpm_learned = next(iter(report.to_dict().get("limits", {}).values()), {}).get("rpm")
    return (
        f"{done:>4}/{jobs:<4} {elapsed:6.1f}s  {pace:6.1f} ok/s  "
        f"{limited / max(1, len(fake.records)) * 100:5.1f}% 429  rpm {rpm_learned}"
    )


class _Trace:
    """Prints each change of the learned rate, seconds from the start."""

    def __init__(self, started: float) -> None:
        self.started = started

    def emit(self, event: object) -> None:
        if isinstance(event, LimitChanged):
            at = time.monotonic() - self.started
            print(f"  {at:6.2f}s {event.rpm_before} -> {event.rpm_after} {event.reason}")


def _sinks(started: float) -> list[Any]:
    return [_Trace(started)] if "--trace" in sys.argv else []


def main() -> None:
    print(f"source: {SRC}  new backoff: {'--new-backoff' in sys.argv}")
    only = sys.argv[sys.argv.index("--only") + 1] if "--only" in sys.argv else ""
    runs = int(sys.argv[sys.argv.index("--runs") + 1]) if "--runs" in sys.argv else 1
    for name, settings, jobs, rpm, burst in _scenarios():
        if only not in name:
            continue
        for _ in range(runs):
            print(f"{name:38} {anyio.run(_one, settings, jobs, rpm, burst)}", flush=True)


if __name__ == "__main__":
    main()
