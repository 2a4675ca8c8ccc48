"""The most any ``run --ray`` can do on this cluster: two Ray actors, each running the
``--ray`` worker's own code (``EngineWorker.stream_block``) over half of the jobs, read
from disk where it runs. No driver reads, sends, receives or writes anything: what is
left is the engines alone, on Ray's processes.

``python bench/ray_ceiling.py ADDRESS JOBS_A JOBS_B`` (the ray section runs it on the
cluster it started) prints one JSON object: the wall seconds from both actors' first
block to their last, and each one's CPU seconds and jobs.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import ray


@ray.remote(num_cpus=1)
class Half:
    """One worker's engine, opened before the clock starts."""

    async def open(self) -> None:
        import os

        os.environ["LLMBATCH_SIM_LATENCY_MS"] = "0"
        from llmbatch._api.options import build_config
        from llmbatch._api.ray_run import split_config
        from llmbatch._api.ray_worker import EngineWorker

        cfg = build_config(model="sim:claude-haiku-4-5", fallback=[], schema=None,
                           output=None, cache=False, shared=None, customs={},
                           one_provider=False, options={"concurrency": 64})  # fmt: skip
        configs, budget, _ = split_config(cfg, 2)  # -c 64 over two, as --ray splits it
        self.worker = EngineWorker(None, None, None)
        await self.worker.open(configs[0], budget, False)

    async def run(self, path: str) -> dict[str, Any]:
        from array import array

        from llmbatch._api.ray_blocks import BLOCK  # run --ray's full block
        from llmbatch._api.ray_worker import Part

        lines = _lines(path)  # read at once, before its CPU is counted
        cpu = time.process_time()
        jobs = 0
        for start in range(0, len(lines), BLOCK):
            block = lines[start : start + BLOCK]
            numbers = array("q", range(start + 1, start + 1 + len(block)))
            async for item in self.worker.stream_block(numbers.tobytes(), b"\n".join(block)):
                if isinstance(item, Part):
                    jobs += item.digest.count
        return {"jobs": jobs, "cpu_s": round(time.process_time() - cpu, 3)}


def _lines(path: str) -> list[bytes]:
    with open(path, "rb") as f:
        return f.read().splitlines()


def main() -> None:
    address, *paths = sys.argv[1:]
    ray.init(address=address, log_to_driver=False)
    halves = [Half.remote() for _ in paths]  # type: ignore[attr-defined]
    ray.get([h.open.remote() for h in halves])
    started = time.perf_counter()
    done = ray.get([h.run.remote(p) for h, p in zip(halves, paths, strict=True)])
    wall = time.perf_counter() - started
    print(json.dumps({"wall_s": round(wall, 3), "actors": done}))
    ray.shutdown()


if __name__ == "__main__":
    main()
