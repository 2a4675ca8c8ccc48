"""``llmbatch run JOBS --ray [ADDRESS]``: the jobs file on Ray actors, the output here.

The driver is a ``FileRun``: it plans and checks the jobs file, resumes on the
output (the same rules: ``Planner``, ``FileSource``), then hands blocks of raw
job lines to N actors (``_api/ray_worker.py``), each one engine with its share
of ``-c``. Results come back per block and the driver alone writes them through
the ``OutputSink`` (one write per block, fsync'd as always), so a killed driver
loses only blocks still in flight, and the next run resumes.

Limits and budgets hold for the cluster as a whole: with ``--shared redis://…``
exactly (the Redis limiter and ledgers, and ``--max-cost`` in a ledger scope of
its own); without, each actor takes an even share (said in the report's notes).
"""

from __future__ import annotations

import itertools
import uuid
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import anyio
import orjson

from llmbatch._api.ray_worker import BlockDone, ClusterBudget, EngineWorker, worker_env
from llmbatch._config.settings import ModelLimits, RunConfig
from llmbatch._core.events import JobEnded
from llmbatch._core.exceptions import UsageError
from llmbatch._core.results import JobResult
from llmbatch._core.stops import StopReason
from llmbatch._engine.plan import BatchSeed, Plan
from llmbatch._engine.sinks import OutputSink
from llmbatch._engine.sources import FileSource
from llmbatch._io.resume import ExistingOutput
from llmbatch._run.online import FileRun

_BLOCK = 512  # job lines per block: small enough that a kill re-pays little
_QUEUED = 2  # blocks per actor at once: the next one waits there, ready
Block = list[tuple[int, bytes, str]]  # (line number, raw line, job id)


def connect(address: str, *, quiet: bool = False) -> bool:
    """Join (``auto``, ``ray://…``, ``HOST:PORT``) or start (``local``) Ray; True if
    this process started it (and so shuts it down)."""
    try:
        import ray
    except ImportError:
        raise UsageError(
            "--ray needs Ray: pip install 'llmbatch[ray]'. Nothing was sent."
        ) from None
    if ray.is_initialized():
        return False
    import logging

    kwargs: dict[str, Any] = {
        "include_dashboard": False,
        "log_to_driver": False,
        "logging_level": logging.ERROR if quiet else logging.WARNING,
    }
    try:
        if address == "local":
            ray.init(**kwargs)
        else:
            ray.init(address=address, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = "a running cluster" if address == "auto" else address
        raise UsageError(
            f"--ray {address}: cannot reach {where} ({exc}). Start one (`ray start --head`), "
            "or pass --ray alone for a local Ray. Nothing was sent."
        ) from None
    return True


@dataclass
class _Actor:
    handle: Any
    stopped: bool = False


@dataclass
class _Queue:
    """Blocks to hand out: the file's, and those a stopped actor gave back unrun."""

    blocks: Iterator[Block]
    returned: deque[Block] = field(default_factory=deque)
    in_flight: int = 0
    changed: anyio.Event = field(default_factory=anyio.Event)

    async def take(self) -> Block | None:
        """The next block; None once none is left and none in flight can come back."""
        while True:
            if self.returned:
                block: Block | None = self.returned.popleft()
            else:
                block = next(self.blocks, None)
            if block is not None:
                self.in_flight += 1
                return block
            if not self.in_flight:
                return None
            await self.changed.wait()

    def settled(self) -> None:
        """A block came back (its unrun jobs, if any, are in ``returned`` by now)."""
        self.in_flight -= 1
        self.changed.set()
        self.changed = anyio.Event()


class RayRun(FileRun):
    """``run --ray``: this process plans, resumes and writes; Ray actors run the engines."""

    def __init__(self, config: RunConfig, *, address: str, workers: int | None, **kw: Any):
        if config.mode != "online":
            raise UsageError("--ray runs jobs online; it does not go with --mode batch|auto")
        if config.output is None:
            raise UsageError("--ray writes the output file itself: give --output a file")
        super().__init__(config, **kw)
        self.address = address
        self.want_workers = workers
        self.split_note: str | None = None

    async def open_services(self, *, cache: bool = True) -> None:
        self.services_open = True  # the actors open theirs; this process only writes

    async def _run_file(
        self, plan: Plan, existing: ExistingOutput | None, seeds: dict[str, BatchSeed]
    ) -> None:
        import ray

        source = FileSource(self.planner, plan, existing, seeds)
        if seeds:
            self.notes.append("--ray: jobs left by provider batches start over online")
        sink = OutputSink(self.config.output)
        started = connect(self.address, quiet=self.config.quiet)
        actors: list[_Actor] = []
        try:
            n = self._worker_count(ray, plan.todo)
            configs, budget = self._actor_configs(n)
            cpus = cpus_of(ray)
            remote = ray.remote(num_cpus=min(1.0, cpus / n), max_restarts=0)(EngineWorker)
            env = worker_env(self.config)
            actors = [_Actor(remote.remote(cfg, budget, env)) for cfg in configs]
            await _gather([a.handle.open.remote() for a in actors])
            blocks = _blocks((line, raw, job.id) for line, raw, job in source.lines())
            await self._dispatch(actors, _Queue(blocks), sink)
        finally:
            sink.close()
            self.notes.extend(source.notes)
            await self._close_actors(ray, actors)
            if started:
                ray.shutdown()

    def _worker_count(self, ray: Any, todo: int) -> int:
        n = self.want_workers or int(cpus_of(ray))
        return max(1, min(n, max(1, todo)))

    def _actor_configs(self, n: int) -> tuple[list[RunConfig], ClusterBudget | None]:
        spent = (self.run_budget.spent_cost, self.run_budget.spent_tokens)
        configs, budget, note = split_config(self.config, n, *spent)
        if note:
            self.split_note = note
            self.notes.append(note)
        return configs, budget

    async def _dispatch(self, actors: list[_Actor], queue: _Queue, sink: OutputSink) -> None:
        async def feed(actor: _Actor) -> None:
            while not actor.stopped and not self.stopper.stopping:
                block = await queue.take()
                if block is None:
                    return
                try:
                    await self._run_block(actor, block, queue, sink, actors)
                finally:
                    queue.settled()

        async def pass_stop() -> None:  # a signal here stops the workers' engines too
            with self.stopper.interruptible():
                await anyio.sleep_forever()
            reason = self.stopper.stopped_by or StopReason.SIGNAL
            for actor in actors:
                actor.handle.stop.remote(reason.value)

        async with anyio.create_task_group() as tg:
            if self.handles_signals:
                tg.start_soon(self.watch_signals)
            tg.start_soon(pass_stop)
            async with anyio.create_task_group() as feeders:
                for actor in actors:
                    for _ in range(_QUEUED):
                        feeders.start_soon(feed, actor)
            tg.cancel_scope.cancel()

    async def _run_block(
        self, actor: _Actor, block: Block, queue: _Queue, sink: OutputSink, actors: list[_Actor]
    ) -> None:
        written: set[str] = set()
        payload = [(line, raw) for line, raw, _ in block]
        try:
            async for ref in actor.handle.stream_block.remote(payload):
                done: BlockDone = await ref
                written |= self._write(sink, done.lines)
        except Exception as exc:  # a lost actor: the others take what it did not send back
            actor.stopped = True
            left = [entry for entry in block if entry[2] not in written]
            if left:
                queue.returned.append(left)
            self.notes.append(
                f"a Ray worker was lost ({type(exc).__name__}); its block went to the others "
                "(answers it had not sent back are paid again)"
            )
            if all(a.stopped for a in actors):
                self.fatal = self.fatal or "every Ray worker was lost; the rest is resumable"
            return
        if done.fatal and not self.fatal:
            self.fatal = done.fatal
        if done.stopped_by is not None:
            actor.stopped = True
            self._worker_stopped(done, block, written, queue, actors)

    def _worker_stopped(
        self,
        done: BlockDone,
        block: Block,
        written: set[str],
        queue: _Queue,
        actors: list[_Actor],
    ) -> None:
        """A worker stopped (its share spent, auth, a full window): its unrun jobs go to
        the others; once none is left running, the run stops for that reason."""
        left = [entry for entry in block if entry[2] not in written]
        if left:
            queue.returned.append(left)
        reason = StopReason(done.stopped_by or StopReason.BUDGET)
        if reason in (StopReason.AUTH, StopReason.SHARED_STORE) or all(a.stopped for a in actors):
            self.stopper.stop(reason)

    def _write(self, sink: OutputSink, lines: list[bytes]) -> set[str]:
        """Write a block's result lines (one write), then count them as the engine would."""
        if not lines:
            return set()
        sink.write_lines(lines)
        now = self.clock.time()
        emit = self.bus.emit
        ids = set()
        loads, written = orjson.loads, JobResult.from_written
        for line in lines:
            d = loads(line)
            try:
                result = written(d)
            except (KeyError, TypeError):  # not expected: the workers wrote them
                result = JobResult.from_line(d)
            ids.add(result.id)
            self.stats.add_spend(result)  # the attempts were the worker's
            emit(JobEnded(now, result))
        stats = self.stats
        done = stats.done
        projected = stats.cost_usd / done * self._todo if done else None
        self.progress.update(stats, stats.cost_usd, projected)
        self.progress.tick()
        return ids

    async def _close_actors(self, ray: Any, actors: list[_Actor]) -> None:
        with anyio.CancelScope(shield=True):
            for actor in actors:
                try:
                    closed = await actor.handle.close.remote()
                    self.notes.extend(n for n in closed["notes"] if n not in self.notes)
                except Exception:  # lost already; said when it was
                    pass
                ray.kill(actor.handle)


def split_config(
    cfg: RunConfig, n: int, spent_cost: float = 0.0, spent_tokens: int = 0
) -> tuple[list[RunConfig], ClusterBudget | None, str | None]:
    """Each of ``n`` workers' config: its share of -c, and of the limits and caps unless
    ``--shared`` holds them for all (then the caps go to a Redis ledger: the budget)."""
    left_cost = None if cfg.max_cost is None else max(0.0, cfg.max_cost - spent_cost)
    left_tokens = (
        None if cfg.max_total_tokens is None else max(0, cfg.max_total_tokens - spent_tokens)
    )
    base = replace(
        cfg,
        output=None,
        no_cache=True,
        report=None,
        html=None,
        log_json=None,
        otlp=None,
        quiet=True,
        limits=dict(cfg.limits),
        providers=dict(cfg.providers),
    )
    budget = note = None
    if cfg.shared:
        if left_cost is not None or left_tokens is not None:
            budget = ClusterBudget(f"ray-run:{uuid.uuid4().hex}", left_cost, left_tokens)
        base.max_cost = base.max_total_tokens = None
    else:
        base.max_cost = None if left_cost is None else left_cost / n
        base.max_total_tokens = None if left_tokens is None else max(1, left_tokens // n)
        base.rpm = None if cfg.rpm is None else cfg.rpm / n
        base.tpm = None if cfg.tpm is None else cfg.tpm / n
        base.limits = {k: _share(v, n) for k, v in cfg.limits.items()}
        if n > 1:
            note = (
                f"--ray without --shared: -c, --rpm/--tpm, [limits] and --max-cost/"
                f"--max-total-tokens are split evenly across {n} workers (each holds "
                "its share); --shared redis://… holds them for the cluster as a whole"
            )
    configs = []
    for i in range(n):
        share = cfg.concurrency // n + (1 if i < cfg.concurrency % n else 0)
        configs.append(replace(base, concurrency=max(1, share)))
    return configs, budget, note


def cpus_of(ray: Any) -> float:
    """The CPUs the cluster offers."""
    resources: dict[str, float] = ray.cluster_resources()
    return max(1.0, float(resources.get("CPU", 1.0)))


def _share(limits: ModelLimits, n: int) -> ModelLimits:
    def part(value: float | None) -> float | None:
        return None if value is None else value / n

    return replace(
        limits,
        rpm=part(limits.rpm),
        tpm=part(limits.tpm),
        input_tpm=part(limits.input_tpm),
        output_tpm=part(limits.output_tpm),
    )


def _blocks(entries: Iterator[tuple[int, bytes, str]]) -> Iterator[Block]:
    while block := list(itertools.islice(entries, _BLOCK)):
        yield block


async def _gather(refs: list[Any]) -> list[Any]:
    return [await ref for ref in refs]
