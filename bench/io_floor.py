"""The engine's I/O floor: read the job file with orjson, write one result line per job.

usage: io_floor.py JOBS OUT

What any batch runner must do at the least, with a result line shaped like ours
(same keys, an answer of the sim's typical length), so jobs/s of the sim engine
can be read against it.
"""

from __future__ import annotations

import sys

import orjson

ANSWER = " ".join(["word"] * 120) + "."


def main() -> None:
    jobs, out = sys.argv[1], sys.argv[2]
    dumps, loads = orjson.dumps, orjson.loads
    with open(jobs, "rb") as src, open(out, "wb") as dst:
        for line in src:
            job = loads(line)
            result = {
                "id": job.get("id"),
                "status": "ok",
                "output": ANSWER,
                "parsed": None,
                "provider": "sim",
                "model": "claude-haiku-4-5",
                "usage": {
                    "input_tokens": 19,
                    "output_tokens": 150,
                    "cache_read_tokens": 0,
                    "cache_write_tokens": 0,
                },
                "cost_usd": 0.0008,
                "latency_ms": 0.1,
                "ttft_ms": 0.0,
                "attempts": 1,
                "error": None,
                "metadata": job.get("metadata"),
                "stop_reason": "end_turn",
                "fingerprint": "c2b816502355523a",
            }
            dst.write(dumps(result) + b"\n")


if __name__ == "__main__":
    main()
