"""llmbatch on Ray (``pip install 'llmbatch[ray]'``).

    import ray, llmbatch.ray

    ds = ray.data.read_json("prompts.jsonl")          # rows with "prompt" or "messages"
    out = llmbatch.ray.process(ds, model="anthropic:claude-haiku-4-5", concurrency=64,
                               max_cost=20.0, shared="redis://redis:6379/0")
    out.write_parquet("results/")

Each of ``workers`` Ray actors runs one llmbatch engine with its share of
``concurrency``; rate limits and budgets hold for the cluster as a whole with
``shared=`` (Redis), else each actor holds an even share. A job that fails is a
row with ``status == "failed"`` and its ``error``. Files: ``llmbatch run JOBS --ray``.
"""

from __future__ import annotations

from llmbatch._api.ray_data import RESULT_COLUMNS, process

__all__ = ["RESULT_COLUMNS", "process"]
