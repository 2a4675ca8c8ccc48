"""``llmbatch.ray.process``: a ``ray.data.Dataset`` of requests through llmbatch engines.

Each Ray Data actor holds one ``EngineWorker`` (the same as ``run --ray``'s) on an
event loop of its own, so its limits, breakers, budgets and connections last
across the blocks it is given. Every row comes back with the result columns; a
row that is not a valid request, or whose job failed, is a failed row, never an
exception that ends the dataset.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

import orjson

from llmbatch._api.ray_run import cpus_of, split_config, unshared_windows
from llmbatch._api.ray_worker import ClusterBudget, EngineWorker, worker_env
from llmbatch._api.runner import Runner
from llmbatch._config.settings import RunConfig
from llmbatch._core.exceptions import UsageError
from llmbatch._core.jobs import LineError

T = TypeVar("T")

# The columns each row gains (Arrow types fixed, so blocks always agree).
RESULT_COLUMNS = (
    ("status", "string"),  # "ok" | "failed" | "not_run" (a cap or stop came first)
    ("output", "string"),
    ("parsed", "string"),  # JSON text of the structured output, with a schema
    ("error", "string"),  # JSON text of {"type", "message", "status"}
    ("provider", "string"),
    ("model", "string"),
    ("cost_usd", "float64"),
    ("input_tokens", "int64"),
    ("output_tokens", "int64"),
    ("attempts", "int64"),
    ("latency_ms", "float64"),
)


class RowEngine:
    """The ``map_batches`` callable class: one engine per actor, across its batches."""

    def __init__(
        self, config: RunConfig, budget: ClusterBudget | None, env: dict[str, str | None]
    ) -> None:
        self.worker = EngineWorker(config, budget, env)
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self._call(self.worker.open())

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def __call__(self, batch: Any) -> Any:
        import pyarrow as pa

        rows: list[dict[str, Any]] = batch.to_pylist()
        planner = self.worker.planner
        assert planner is not None, "the worker was given its config"
        parse = planner.parser.parse
        block: list[tuple[int, bytes]] = []
        ids: list[str | None] = []
        errors: dict[int, str] = {}
        seen: set[str] = set()
        for i, row in enumerate(rows):
            line = {k: v for k, v in row.items() if v is not None}
            line.setdefault("id", f"row-{i}")
            try:
                raw = orjson.dumps(line)
                job = parse(raw, i + 1)
                if job.id in seen:
                    raise LineError(f"duplicate id {job.id!r} in one batch")
            except (LineError, TypeError) as exc:
                errors[i] = str(exc)
                ids.append(None)
                continue
            seen.add(job.id)
            ids.append(job.id)
            block.append((i + 1, raw))
        done = self._call(self.worker.run_block(block)) if block else None
        by_id = {}
        for raw_line in done.lines if done else []:
            result = orjson.loads(raw_line)
            by_id[result["id"]] = result
        columns: dict[str, list[Any]] = {name: [] for name, _ in RESULT_COLUMNS}
        for i, job_id in enumerate(ids):
            _add_row(columns, by_id.get(job_id) if job_id else None, errors.get(i), done)
        table = batch
        for name, kind in RESULT_COLUMNS:
            array = pa.array(columns[name], type=getattr(pa, kind)())
            if name in table.column_names:
                table = table.drop_columns([name])
            table = table.append_column(name, array)
        return table

    def __del__(self) -> None:
        try:
            self._call(self.worker.close())
            self.loop.call_soon_threadsafe(self.loop.stop)
        except Exception:  # the process is going away
            pass


def _add_row(
    columns: dict[str, list[Any]], line: dict[str, Any] | None, invalid: str | None, done: Any
) -> None:
    if line is None:
        if invalid is not None:
            error = {"type": "invalid_request", "message": invalid, "status": None}
            status = "failed"
        else:
            why = getattr(done, "stopped_by", None) or "stopped"
            error = {"type": "not_run", "message": f"not run: {why}", "status": None}
            status = "not_run"
        line = {"status": status, "error": error}
    usage = line.get("usage") or {}
    parsed, failure = line.get("parsed"), line.get("error")
    values = {
        "status": line.get("status"),
        "output": line.get("output"),
        "parsed": None if parsed is None else orjson.dumps(parsed).decode(),
        "error": None if failure is None else orjson.dumps(failure).decode(),
        "provider": line.get("provider"),
        "model": line.get("model"),
        "cost_usd": line.get("cost_usd"),
        "input_tokens": usage.get("input_tokens"),
        "output_tokens": usage.get("output_tokens"),
        "attempts": line.get("attempts"),
        "latency_ms": line.get("latency_ms"),
    }
    for name, value in values.items():
        columns[name].append(value)


def _check_windows_are_shared(config: RunConfig, ray: Any) -> None:
    """A rolling budget on a cluster of several nodes needs ``shared=``: without it each
    node would hold its own SQLite ledger, and spend the whole budget."""
    nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
    unshared = unshared_windows(config)
    if nodes > 1 and unshared:
        names = ", ".join(f"{flag.removeprefix('--').replace('-', '_')}=" for flag in unshared)
        raise UsageError(
            f"llmbatch.ray.process: {names} on a Ray cluster of {nodes} nodes needs a "
            "ledger every node shares: pass shared='redis://HOST:PORT/DB' (the SQLite "
            "ledger is one machine's file)"
        )


def process(
    dataset: Any,
    model: str | None = None,
    *,
    workers: int | None = None,
    batch_size: int = 256,
    **options: Any,
) -> Any:
    """Run every row of ``dataset`` (job-line shapes: ``prompt``, ``messages``, …, plus
    any other columns, kept) and return a dataset with the result columns added.

    ``workers``: Ray actors, one engine each (default: one per CPU the cluster offers);
    the other options are ``llmbatch.run``'s (``concurrency`` and the caps are split
    across the workers, or held in Redis for all with ``shared=``). Lazy, as Ray Data is.
    """
    import ray

    if "provider" in options and not isinstance(options["provider"], str | type(None)):
        raise TypeError("llmbatch.ray.process: provider= objects cannot go to Ray workers")
    config = Runner(model, **options).config
    cpus = cpus_of(ray)
    _check_windows_are_shared(config, ray)
    n = workers or int(cpus)
    configs, budget, _ = split_config(config, n)
    return dataset.map_batches(
        RowEngine,
        fn_constructor_args=(configs[0], budget, worker_env(config)),
        batch_size=batch_size,
        batch_format="pyarrow",
        concurrency=n,
        num_cpus=min(1.0, cpus / n),
    )
