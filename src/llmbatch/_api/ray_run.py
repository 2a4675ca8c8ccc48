"""``llmbatch run JOBS --ray [ADDRESS]``: the jobs file on Ray actors, the output here.

The driver is a ``FileRun``: it plans and checks the jobs file (while Ray starts
and the actors import llmbatch: ``_api/ray_cluster.py``), resumes on the output
(the same rules), then hands blocks of raw job lines (``_api/ray_blocks.py``: no
job decoded but for its id when resuming) to N actors (``_api/ray_worker.py``),
each one engine with its share of ``-c``, at most two blocks each at once.
Results come back in parts as they finish: the lines already encoded, one bytes
object the driver appends with one write (fsync'd as always), and a digest of
what the report needs, so the driver decodes no result. A killed driver loses
only parts still in flight, and the next run resumes.

Limits and budgets hold for the cluster as a whole: with ``--shared redis://…``
exactly (the Redis limiter and ledgers, and ``--max-cost`` in a ledger scope of
its own); without, each actor takes an even share (said in the report's notes).
"""

from __future__ import annotations

import importlib.util
import uuid
from array import array
from dataclasses import dataclass, replace
from typing import Any, Unpack

import anyio
import orjson

from llmbatch._api.ray_blocks import Block, BlockQueue, read_blocks
from llmbatch._api.ray_cluster import ClusterStart, connect, cpus_of
from llmbatch._api.ray_limits import merge_limits
from llmbatch._api.ray_worker import BlockDone, ClusterBudget, Part, worker_env
from llmbatch._budget.windows import windows_from_config
from llmbatch._config.settings import ModelLimits, RunConfig
from llmbatch._core.events import Event, JobEnded
from llmbatch._core.exceptions import LLMBatchError, OutputError, UsageError
from llmbatch._core.results import JobResult
from llmbatch._core.stops import StopReason
from llmbatch._engine.plan import BatchSeed, Plan
from llmbatch._engine.sinks import OutputSink
from llmbatch._io.resume import ExistingOutput
from llmbatch._observe.progress import show_status
from llmbatch._report.batch import BatchPart
from llmbatch._report.report import RunReport
from llmbatch._run.online import FileRun
from llmbatch._run.session import SessionOptions

__all__ = ["RayRun", "connect", "cpus_of", "split_config", "unshared_windows"]

_QUEUED = 2  # blocks per actor at once: the next one waits there, ready


@dataclass
class _Actor:
    handle: Any
    stopped: bool = False


class RayRun(FileRun):
    """``run --ray``: this process plans, resumes and writes; Ray actors run the engines."""

    def __init__(
        self,
        config: RunConfig,
        *,
        address: str,
        workers: int | None,
        **kw: Unpack[SessionOptions],
    ) -> None:
        if config.mode != "online":
            raise UsageError("--ray runs jobs online; it does not go with --mode batch|auto")
        if config.output is None:
            raise UsageError("--ray writes the output file itself: give --output a file")
        if importlib.util.find_spec("ray") is None:  # said before anything is touched
            raise UsageError("--ray needs Ray: pip install 'llmbatch[ray]'. Nothing was sent.")
        _check_windows_are_shared(config, address)
        super().__init__(config, **kw)
        self.address = address
        self.want_workers = workers
        self.split_note: str | None = None
        self._cluster: ClusterStart | None = None
        self._actor_limits: list[dict[str, dict[str, Any]]] = []  # each one's, as it closed

    async def run_locked(
        self, *, opened: bool = False, batch: BatchPart | None = None
    ) -> RunReport:
        # Ray starts, and the actors with it, while the jobs file is checked.
        env = worker_env(self.config)
        cluster = self._cluster = ClusterStart(
            self.address, self.want_workers, env, self.config.quiet
        )
        try:
            return await super().run_locked(opened=opened, batch=batch)
        finally:
            await anyio.to_thread.run_sync(cluster.close)

    def limits_in_force(self) -> dict[str, dict[str, Any]]:
        """The actors' limiters, as one (this process holds none)."""
        return merge_limits(self._actor_limits)

    async def open_services(self, *, cache: bool = True) -> None:
        self.services_open = True  # the actors open theirs; this process only writes

    async def _run_file(
        self, plan: Plan, existing: ExistingOutput | None, seeds: dict[str, BatchSeed]
    ) -> None:
        assert self._cluster is not None
        if seeds:
            self.notes.append("--ray: jobs left by provider batches start over online")
        sink = OutputSink(self.config.output)
        actors: list[_Actor] = []
        notes: list[str] = []
        try:
            where = "starting a local Ray" if self.address == "local" else "joining Ray"
            show_status(self.progress, f"{where}…")
            handles = await anyio.to_thread.run_sync(self._cluster.result)
            if not plan.todo:
                return  # all done already: no actor is opened
            actors = [_Actor(h) for h in handles[: max(1, min(len(handles), plan.todo))]]
            await self._open_actors(actors)
            blocks = read_blocks(self.planner, plan, existing, notes, len(actors))
            await self._dispatch(actors, BlockQueue(blocks), sink)
        finally:
            show_status(self.progress, None)
            sink.close()
            self.notes.extend(notes)
            await self._close_actors(actors)

    async def _open_actors(self, actors: list[_Actor]) -> None:
        """Each actor's engine opened with its config, the count shown as they open (on
        a cluster that adds nodes for them, this is where the run waits)."""
        configs, budget = self._actor_configs(len(actors))
        events = bool(self._observers)  # --log-json, --otlp: the workers' events too
        n = len(actors)
        show_status(self.progress, f"Ray workers ready: 0/{n}")
        opening = [
            a.handle.open.remote(c, budget, events) for a, c in zip(actors, configs, strict=True)
        ]
        for ready, ref in enumerate(opening, 1):  # all asked at once, counted in order
            try:
                await ref
            except Exception as exc:  # said as a local run says it, not as Ray's traceback
                raise _own_error(exc) from None
            show_status(self.progress, f"Ray workers ready: {ready}/{n}")
        show_status(self.progress, None)

    def _actor_configs(self, n: int) -> tuple[list[RunConfig], ClusterBudget | None]:
        spent = (self.run_budget.spent_cost, self.run_budget.spent_tokens)
        configs, budget, note = split_config(self.config, n, *spent)
        if note:
            self.split_note = note
            self.notes.append(note)
        return configs, budget

    async def _dispatch(self, actors: list[_Actor], queue: BlockQueue, sink: OutputSink) -> None:
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
                for _ in range(_QUEUED):  # round by round: each actor's first block first
                    for actor in actors:
                        feeders.start_soon(feed, actor)
            tg.cancel_scope.cancel()

    async def _run_block(
        self,
        actor: _Actor,
        block: Block,
        queue: BlockQueue,
        sink: OutputSink,
        actors: list[_Actor],
    ) -> None:
        written = _Written()
        done: BlockDone | None = None
        stream = actor.handle.stream_block.remote(block.linenos.tobytes(), block.data)
        parts = aiter(stream)
        while True:
            try:
                item: Part | BlockDone = await (await anext(parts))
            except StopAsyncIteration:
                break
            except Exception as exc:  # a lost actor: the others take what it did not send
                self._lost(actor, actors, exc)
                _give_back(queue, block, written)
                return
            if isinstance(item, BlockDone):
                done = item
                self._say(item.events)
            elif not self._write(sink, item):
                return  # the output cannot be written: the run stops (said), resumable
            else:
                written.add(item.linenos)
        if done is None:
            return
        if done.fatal and not self.fatal:
            self.fatal = done.fatal
        if done.stopped_by is not None:
            # A worker stopped (its share spent, auth, a full window): its unrun jobs go to
            # the others; once none is left running, the run stops for that reason.
            actor.stopped = True
            _give_back(queue, block, written)
            reason = StopReason(done.stopped_by)
            if reason in (StopReason.AUTH, StopReason.SHARED_STORE) or all(
                a.stopped for a in actors
            ):
                self.stopper.stop(reason)

    def _lost(self, actor: _Actor, actors: list[_Actor], exc: Exception) -> None:
        actor.stopped = True
        note = (
            f"a Ray worker was lost ({type(exc).__name__}); its jobs went to the others "
            "(answers it had not sent back are paid again)"
        )
        if note not in self.notes:
            self.notes.append(note)
        if all(a.stopped for a in actors):
            self.fatal = self.fatal or "every Ray worker was lost; the rest is resumable"

    def _write(self, sink: OutputSink, part: Part) -> bool:
        """A part's result lines, one write; counted from the digest the worker sent.
        False when the output cannot be written (a full disk): the run stops, as a local
        one does (what was written is kept; a torn last line is cut on resume)."""
        if not part.data:
            return True
        try:
            sink.write_lines([part.data])
        except OutputError as exc:
            self.fatal = self.fatal or str(exc)
            self.stopper.stop(StopReason.OUTPUT_ERROR)
            return False
        now = self.clock.time()
        digest = part.digest
        stats = self.stats
        stats.merge(digest.stats)
        self.timeline.add_jobs(now, digest.count, digest.jobs)
        if self._observers:  # --log-json, --otlp: a JobEnded a job, as a local run has
            self._say(part.events)
            lines = part.data.splitlines()
            self._say(tuple(JobEnded(now, JobResult.from_line(orjson.loads(x))) for x in lines))
        done = stats.done
        projected = stats.cost_usd / done * self._todo if done else None
        self.progress.update(stats, stats.cost_usd, projected)
        self.progress.tick()
        return True

    def _say(self, events: tuple[Event, ...]) -> None:
        """A worker's events (its attempts, limit, breaker and budget changes) to the
        driver's --log-json/--otlp."""
        for event in events:
            for observer in self._observers:
                observer.emit(event)

    async def _close_actors(self, actors: list[_Actor]) -> None:
        async def close(actor: _Actor) -> None:
            try:
                closed = await actor.handle.close.remote()
            except Exception:  # lost already; said when it was
                return
            said = {*self.notes, self.fatal}  # a worker's fatal note is the run's already
            self.notes.extend(n for n in closed["notes"] if n not in said)
            self._actor_limits.append(closed.get("limits") or {})

        with anyio.CancelScope(shield=True), anyio.move_on_after(30):
            async with anyio.create_task_group() as tg:
                for actor in actors:
                    tg.start_soon(close, actor)


class _Written:
    """The line numbers of a block's jobs written so far (kept as the parts' arrays)."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def add(self, linenos: bytes) -> None:
        self.parts.append(linenos)

    def linenos(self) -> array[int]:
        done = array("q")
        for part in self.parts:
            done.frombytes(part)
        return done


def _give_back(queue: BlockQueue, block: Block, written: _Written) -> None:
    left = block.without(written.linenos())
    if left is not None:
        queue.returned.append(left)


def unshared_windows(config: RunConfig) -> list[str]:
    """The rolling budgets (``--budget-per-hour`` and the like) a run holds in its SQLite
    ledger: a file every spender must share, so one machine's. With ``--shared`` they
    are held in Redis, for every node: then none."""
    if config.shared:
        return []
    return sorted({window.flag for window in windows_from_config(config)})


def _check_windows_are_shared(config: RunConfig, address: str) -> None:
    """A local Ray started by the run is this machine; a cluster joined may be many
    machines (or grow to be), each with a ledger file of its own."""
    flags = unshared_windows(config)
    if not flags or address == "local":
        return
    raise UsageError(
        f"{', '.join(flags)} with --ray {address}: a cluster's nodes need a ledger they all "
        "share, and the SQLite ledger is one machine's file. Add --shared "
        "redis://HOST:PORT/DB (the windows are then held in Redis for every node), or run "
        "with --ray alone (a local Ray on this machine). Nothing was sent."
    )


def _own_error(exc: Exception) -> Exception:
    """llmbatch's own error an actor raised (an unreachable ``--shared`` store, say), out
    of the Ray error that carries it with the actor's traceback; any other as it is."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, LLMBatchError) else exc


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
