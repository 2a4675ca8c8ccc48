"""One Ray actor of ``run --ray``: one engine (a ``Runner``) over blocks of job lines.

The driver sends blocks of raw job lines (already checked, and not yet done in
the output: newline-joined bytes and their line numbers); the worker parses and
prepares them with the same ``Planner`` and runs them through its runner, whose
limits, breakers, budgets and connections last as long as the actor. Blocks run
one at a time (the driver keeps the next one queued), so the actor holds its
share of ``-c`` exactly. Results go back in parts as they finish (``Part``: the
result lines already encoded, one bytes object, their line numbers, and a
``ResultDigest`` of what the report needs), so the driver writes each part with
one write and decodes nothing; only the driver writes the output.
"""

from __future__ import annotations

import asyncio
import math
from array import array
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectSendStream

from llmbatch._api.runner import Runner
from llmbatch._budget.ledger import BudgetLedger
from llmbatch._config.settings import RunConfig
from llmbatch._core.collector import quiet_gc
from llmbatch._core.events import (
    AttemptEnded,
    BreakerChanged,
    BudgetStopped,
    Event,
    LimitChanged,
)
from llmbatch._core.jobs import LineError
from llmbatch._core.results import JobResult
from llmbatch._engine.feed import JobFeed
from llmbatch._engine.plan import Planner, PreparedJob
from llmbatch._engine.sinks import CallbackSink
from llmbatch._observe.digest import ResultDigest

_PART_S = 0.2  # how long finished results wait for others before going back together
_PART_LINES = 2048  # or until this many have finished


@dataclass(frozen=True, slots=True)
class ClusterBudget:
    """``--max-cost``/``--max-total-tokens`` held for the whole cluster in Redis (``--shared``):
    one ledger scope per run, a window longer than any run."""

    scope: str
    max_cost: float | None
    max_tokens: int | None


@dataclass(frozen=True, slots=True)
class BlockDone:
    """What one block gave back (``run_block``), or the end of its stream (``stream_block``)."""

    lines: list[bytes]  # result lines, as the output holds them
    stopped_by: str | None  # the worker's StopReason value, once it stopped
    fatal: str | None
    events: tuple[Event, ...] = ()  # what the worker's engine said since its last part


@dataclass(frozen=True, slots=True)
class Part:
    """Results of one block as they finish (``stream_block``): one write for the driver."""

    data: bytes  # result lines, each ending in a newline, as the output holds them
    linenos: bytes  # array("q") of their jobs' line numbers, in the same order
    digest: ResultDigest  # what the report needs of them: the driver decodes no line
    # For the driver's --log-json/--otlp (only when it has them): the attempts and the
    # limit, breaker and budget changes of these jobs, in order, ahead of their results.
    events: tuple[Event, ...] = ()


class EngineWorker:
    """The body of a ``run --ray`` actor (``ray.remote`` wraps it in the driver)."""

    def __init__(
        self,
        config: RunConfig | None = None,
        cluster_budget: ClusterBudget | None = None,
        env: dict[str, str | None] | None = None,
    ) -> None:
        import os

        if env is not None:  # the driver's keys and settings, not the ones Ray started with
            for name in list(os.environ):
                if name not in env and (
                    name.startswith(_ENV_PREFIXES) or name.endswith("_API_KEY")
                ):
                    del os.environ[name]
        for name, value in (env or {}).items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        self.config = config
        self.cluster_budget = cluster_budget
        self.runner: Runner | None = None
        self.planner = Planner(config) if config is not None else None
        self.notes: list[str] = []
        self.said: list[Event] | None = None  # events kept for the driver (open(events=True))
        # The actor's one engine run over the blocks it is given (``_feed_block``).
        self._feed: JobFeed | None = None
        self._engine: asyncio.Task[None] | None = None
        self._blocks: dict[str, _Open] = {}  # job id → its block, until answered
        self._failed: Exception | None = None

    async def open(
        self,
        config: RunConfig | None = None,
        cluster_budget: ClusterBudget | None = None,
        events: bool = False,
    ) -> int:
        """Open the runner's services (``config``: when the actor was made before the
        driver knew it; ``events``: the driver logs events, so they go back with the
        parts); returns the process id (for the driver's notes)."""
        import os

        if config is not None:
            self.config, self.cluster_budget = config, cluster_budget
        assert self.config is not None, "a config, to the constructor or to open()"
        ledgers = await self._cluster_ledgers()
        self.runner = Runner(config=self.config, ledgers=ledgers)
        session = self.runner.session
        self.planner = Planner(self.config, session.services.prices)
        # The driver counts what the report needs from each part's digest: the session's
        # own statistics would only count every job twice here.
        for sink in (session.stats, session.timeline):
            session.bus.remove(sink)
        if events:
            self.said = []
            session.bus.add(_Kept(self.said))
        await self.runner.open()
        quiet_gc()  # the actor's process is llmbatch's own: its collector set as the CLI's
        return os.getpid()

    async def _cluster_ledgers(self) -> list[BudgetLedger]:
        budget = self.cluster_budget
        if budget is None or self.config is None or self.config.shared is None:
            return []
        from llmbatch._budget.redis import RedisLedger, connect
        from llmbatch._budget.windows import DAY, Window, lease_seconds
        from llmbatch._core.clock import SYSTEM_CLOCK

        windows = []
        # The ledger's longest window: a run's cap held exactly for its first 24 hours
        # (past that, spend older than a day stops counting against it).
        forever = DAY
        if budget.max_cost is not None:
            windows.append(Window("cost", forever, budget.max_cost, "--max-cost"))
        if budget.max_tokens is not None:
            tokens = float(budget.max_tokens)
            windows.append(Window("tokens", forever, tokens, "--max-total-tokens"))
        client = await connect(self.config.shared)
        return [RedisLedger(client, budget.scope, windows, SYSTEM_CLOCK, hold_s=lease_seconds())]

    async def run_block(self, block: Sequence[tuple[int, bytes]]) -> BlockDone:
        runner = self.runner
        assert runner is not None, "open() first"
        session = runner.session
        if session.stopper.stopping:
            return BlockDone([], self._stopped_by(), session.fatal)
        results = await runner.run_prepared(self._prepared(block)[0])
        lines = [r.to_json() for r in results]
        return BlockDone(lines, self._stopped_by(), session.fatal)

    def _stopped_by(self) -> str | None:
        """Why the worker stopped; the cluster's --max-cost ledger full is "budget"."""
        assert self.runner is not None
        reason = _value(self.runner.session.stopper.stopped_by)
        if reason == "budget_window" and self.cluster_budget is not None and self.config:
            from llmbatch._budget.windows import windows_from_config

            if not windows_from_config(self.config):
                return "budget"
        return reason

    async def stream_block(self, linenos: bytes, data: bytes) -> AsyncIterator[Part | BlockDone]:
        """A block of job lines (``data``, newline-joined; ``linenos``, an array("q") of
        their line numbers) run, its results sent back in parts as they finish (a Ray
        streaming generator: what reached the driver is written there even if this
        worker dies), then a ``BlockDone`` saying whether the worker stopped."""
        runner = self.runner
        assert runner is not None, "open() first"
        session = runner.session
        if session.stopper.stopping:
            yield BlockDone([], self._stopped_by(), session.fatal, self._said())
            return
        numbers = array("q")
        numbers.frombytes(linenos)
        jobs, line_of = self._prepared(zip(numbers, data.split(b"\n"), strict=True))
        send, receive = anyio.create_memory_object_stream[Sequence[JobResult]](math.inf)
        self._feed_block(jobs, line_of, _Open(send, len(jobs)))
        async with receive:
            async for results in receive:
                # What finishes in the next moment goes in the same part: each part
                # costs the driver a Ray object, and a kill loses at most that moment.
                batch, n = [results], len(results)
                with anyio.move_on_after(_PART_S):
                    while n < _PART_LINES:
                        try:
                            more = await receive.receive()
                        except anyio.EndOfStream:
                            break
                        batch.append(more)
                        n += len(more)
                yield self._part(batch, line_of)
        if self._failed is not None:  # the engine itself failed: the driver's to handle
            raise self._failed
        yield BlockDone([], self._stopped_by(), session.fatal, self._said())

    def _feed_block(self, jobs: list[PreparedJob], line_of: dict[str, int], block: _Open) -> None:
        """The block's jobs into the actor's one engine run (started with the first):
        a block's jobs start as soon as slots free up, not after the last retry of the
        block before it; their results come back to the block through ``_route``."""
        if self._failed is not None:  # the engine failed on an earlier block: said again
            raise self._failed
        if not jobs:
            block.send.close()
            return
        for job_id in line_of:
            self._blocks[job_id] = block
        if self._feed is None or (self._engine is not None and self._engine.done()):
            self._feed = JobFeed()
            self._engine = asyncio.get_running_loop().create_task(self._run_feed(self._feed))
        self._feed.add(jobs)

    async def _run_feed(self, feed: JobFeed) -> None:
        """The actor's engine run: as long as the feed, or until the run stops; every
        block still open ends with it (its jobs not run go back to the driver)."""
        assert self.runner is not None
        try:
            await self.runner.run_into(feed, CallbackSink(self._route))
        except Exception as exc:
            self._failed = exc
        finally:
            for block in set(self._blocks.values()):  # each open block once
                block.send.close()
            self._blocks.clear()

    def _route(self, results: Sequence[JobResult]) -> None:
        """Each result to its block; a block whose every job is answered is closed."""
        blocks = self._blocks
        got: dict[_Open, list[JobResult]] = {}
        for r in results:
            block = blocks.pop(r.id, None)
            if block is not None:
                got.setdefault(block, []).append(r)
        for block, answered in got.items():
            block.send.send_nowait(answered)
            block.left -= len(answered)
            if block.left <= 0:
                block.send.close()

    def _said(self) -> tuple[Event, ...]:
        """The events kept since the last part (none unless the driver asked)."""
        said = self.said
        if not said:
            return ()
        out = tuple(said)
        said.clear()
        return out

    def _part(self, batch: list[Sequence[JobResult]], line_of: dict[str, int]) -> Part:
        assert self.runner is not None
        digest = ResultDigest(self.runner.session.services.prices)
        add = digest.add
        lines, numbers = [], array("q")
        for results in batch:
            for r in results:
                lines.append(r.to_json())
                numbers.append(line_of[r.id])
                add(r)
        return Part(b"".join(lines), numbers.tobytes(), digest.sealed(), self._said())

    def _prepared(
        self, block: Iterable[tuple[int, bytes]]
    ) -> tuple[list[PreparedJob], dict[str, int]]:
        assert self.planner is not None
        parse, prepare = self.planner.parser.parse, self.planner.prepare
        jobs, line_of = [], {}
        for lineno, raw in block:
            try:
                job = parse(raw, lineno)
            except LineError as exc:  # the driver checked it: the file changed since
                self.notes.append(f"line {lineno}: {exc} (skipped: the file changed)")
                continue
            jobs.append(prepare(job))
            line_of[job.id] = lineno
        return jobs, line_of

    async def stop(self, reason: str) -> None:
        """No new requests (a signal at the driver): those in flight finish and come back."""
        if self.runner is not None:
            from llmbatch._core.stops import StopReason

            self.runner.session.stop(StopReason(reason))

    async def close(self) -> dict[str, Any]:
        """Close the runner; its notes and its limits in force for the driver's report."""
        runner = self.runner
        if runner is None:
            return {"notes": [], "limits": {}}
        if self._feed is not None and self._engine is not None:
            self._feed.close()  # what was given is done by now: the run ends
            await self._engine
        await runner.aclose()
        report = runner.report()
        return {"notes": [*self.notes, *report.notes], "limits": report.limits}


@dataclass(eq=False, slots=True)
class _Open:
    """A block being run: where its results go, and how many it still waits for."""

    send: MemoryObjectSendStream[Sequence[JobResult]]
    left: int


class _Kept:
    """The worker's events the driver's --log-json/--otlp show (its own run's start and
    end, and a job's end from its result line, it says itself)."""

    def __init__(self, into: list[Event]) -> None:
        self.into = into

    def emit(self, event: Event) -> None:
        if isinstance(event, _FORWARDED):
            self.into.append(event)


_FORWARDED = (AttemptEnded, LimitChanged, BreakerChanged, BudgetStopped)


# What the driver's environment says that a worker needs too: keys, endpoints, proxies,
# llmbatch's own settings. Handed over as an actor argument (never a Ray runtime_env,
# whose contents Ray shows in its dashboard and state API).
_ENV_PREFIXES = (
    "LLMBATCH_",
    "ANTHROPIC_",
    "OPENAI_",
    "GEMINI_",
    "GOOGLE_",
    "AZURE_",
    "AWS_",
    "XDG_",
)
_ENV_NAMES = (
    "NO_PROXY",
    "no_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
)


def worker_env(config: RunConfig) -> dict[str, str | None]:
    """The variables a worker takes from the driver: set, or (None) unset there too."""
    import os

    names = set(_ENV_NAMES)
    names.update(n for n in os.environ if n.startswith(_ENV_PREFIXES) or n.endswith("_API_KEY"))
    for settings in config.providers.values():
        env = settings.key_env()
        if env:
            names.add(env)
    env_out: dict[str, str | None] = {n: os.environ.get(n) for n in names}
    return env_out


def _value(reason: Any) -> str | None:
    return None if reason is None else str(getattr(reason, "value", reason))
