"""The Python API: ``llmbatch.run`` and ``llmbatch.Runner`` over the one engine.

A ``Runner`` is one ``RunSession`` kept open: its services (providers and their
connections, limits and breakers, budgets, the cache when asked) live as long as
the runner; each ``stream``/``run`` call is one ``Engine`` run over the requests
given, into the caller's hands. Nothing touches the disk or the process's
signals unless asked (``output=``, ``cache=``, ``handle_signals=``).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence, Sized
from pathlib import Path
from types import TracebackType
from typing import Any

import anyio
from anyio.abc import TaskGroup

from llmbatch._api.options import build_config, custom_providers
from llmbatch._api.requests import RequestLike, parse_requests
from llmbatch._api.results import Result
from llmbatch._budget.ledger import BudgetLedger
from llmbatch._config.settings import RunConfig
from llmbatch._core.clock import SYSTEM_CLOCK, Clock
from llmbatch._core.events import EventSink
from llmbatch._core.exceptions import UsageError
from llmbatch._core.loop import run_loop
from llmbatch._core.models import ModelRef
from llmbatch._core.results import JobResult
from llmbatch._engine.engine import ResultSink
from llmbatch._engine.plan import Plan, Planner, PreparedJob
from llmbatch._engine.sinks import CallbackSink, CollectSink, OutputSink
from llmbatch._report.report import RunReport
from llmbatch._run.session import RunSession
from llmbatch.providers._base import Provider
from llmbatch.providers.factory import default_provider_factory

_IN_LOOP = (
    "llmbatch.run() cannot be called inside a running event loop (a notebook, an async "
    "function): use the async form instead —\n"
    "    async with llmbatch.Runner(model=...) as runner:\n"
    "        results = await runner.run(requests)"
)


class Runner:
    """Runs requests in memory through one engine; limits, breakers, budgets and
    connections last as long as the runner (``async with``), across calls.

    Keyword arguments are the ``run`` command's flags by their Python names
    (``concurrency``, ``max_cost``, ``rpm``, ``budget_per_hour``, ``max_attempts``, …).
    ``provider``: a ``Provider`` object every job goes to, or a mapping name → object
    (``model="name:model"`` picks one). Side effects only when asked: ``output``
    (result lines appended to that file, with its lock and history), ``cache``
    (True: the user's response cache; a path: that one), ``shared`` (a Redis URL for
    limits and budgets shared with other runs), ``handle_signals`` (Ctrl-C stops).
    """

    def __init__(
        self,
        model: str | ModelRef | None = None,
        *,
        concurrency: int = 16,
        max_cost: float | None = None,
        schema: dict[str, Any] | None = None,
        fallback: Sequence[str | ModelRef] = (),
        provider: Provider | Mapping[str, Provider] | None = None,
        cache: bool | str | Path = False,
        output: str | Path | None = None,
        shared: str | None = None,
        handle_signals: bool = False,
        sinks: Sequence[EventSink] = (),
        clock: Clock = SYSTEM_CLOCK,
        config: RunConfig | None = None,
        ledgers: Sequence[BudgetLedger] = (),
        **options: Any,
    ) -> None:
        self._customs = custom_providers(provider)
        one = provider is not None and not isinstance(provider, Mapping)
        if config is None:
            config = build_config(
                model=model,
                fallback=fallback,
                schema=schema,
                output=output,
                cache=cache,
                shared=shared,
                customs=self._customs,
                one_provider=one,
                options={"concurrency": concurrency, "max_cost": max_cost, **options},
            )
        self.config = config
        self._session = RunSession(
            config,
            provider_factory=self._provider,
            handle_signals=handle_signals,
            sinks=sinks,
            ledgers=ledgers,
            clock=clock,
        )
        self._planner = Planner(config, self._session.services.prices)
        self._output: OutputSink | None = None
        self._tg: TaskGroup | None = None
        self._lock = anyio.Lock()
        self._opened = False
        self._closed = False
        self._final: RunReport | None = None

    def _provider(self, name: str, config: RunConfig) -> Provider:
        own = self._customs.get(name)
        return own if own is not None else default_provider_factory(name, config)

    @property
    def session(self) -> RunSession:
        """The session underneath (for llmbatch's own layers: the Ray workers)."""
        return self._session

    # -- opening and closing --------------------------------------------------------

    async def open(self) -> None:
        """Open the runner's services (``async with`` does it; ``stream`` needs that form)."""
        if self._opened:
            raise UsageError("a Runner is opened once")
        self._opened = True
        session = self._session
        session.lock()  # the output's lock (with output=) and --log-json/--otlp sinks
        try:
            await session.open_services(cache=not self.config.no_cache)
            if self.config.output is not None:
                self._output = OutputSink(self.config.output)
        except BaseException:
            await session.close_services()
            session.unlock()
            raise

    async def aclose(self) -> None:
        """Close the services; the report is final from here on."""
        if self._closed or not self._opened:
            return
        self._closed = True
        session = self._session
        try:
            await session.close_services()
        finally:
            if self._output is not None:
                self._output.close()
            self._final = session.finish()
            session.unlock()

    async def __aenter__(self) -> Runner:
        await self.open()
        try:
            self._tg = anyio.create_task_group()
            await self._tg.__aenter__()
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if self._tg is not None:
                if exc is not None:  # the caller's error goes on as itself
                    self._tg.cancel_scope.cancel()
                await self._tg.__aexit__(None, None, None)
        finally:
            self._tg = None
            await self.aclose()

    def report(self) -> RunReport:
        """The frozen report of every call so far (final once the runner is closed)."""
        if self._final is not None:
            return self._final
        return self._session.report()

    # -- running --------------------------------------------------------------------

    def prepare(self, requests: Iterable[RequestLike]) -> list[PreparedJob]:
        """Requests checked like job lines and resolved (defaults, model chain), or
        InputError / UsageError; nothing is sent."""
        planner = self._planner
        prepared = [planner.prepare(job) for job in parse_requests(requests, planner.parser)]
        plan = Plan(todo=len(prepared))
        for pj in prepared:
            plan.models.update(pj.chain)
        planner.check(plan)  # keys, prices for the caps, ledgers
        return prepared

    async def stream(self, requests: Iterable[RequestLike]) -> AsyncIterator[Result]:
        """Each request's result as it finishes (completion order). Requests are all
        checked before any is sent. Leaving the loop early cancels those in flight."""
        async for batch in self.stream_prepared(self.prepare(requests)):
            for result in batch:
                yield Result.of(result)

    async def stream_prepared(
        self, jobs: Sequence[PreparedJob] | Iterable[PreparedJob], size: int | None = None
    ) -> AsyncIterator[Sequence[JobResult]]:
        """Batches of results of prepared jobs (llmbatch's own layers use it)."""
        if self._tg is None or self._closed:
            raise UsageError("use the Runner inside `async with llmbatch.Runner(...) as runner:`")
        if size is None and isinstance(jobs, Sequence):
            size = len(jobs)
        send, receive = anyio.create_memory_object_stream[Sequence[JobResult]](math.inf)
        failure: list[BaseException] = []
        output = self._output

        def write(results: Sequence[JobResult]) -> None:
            if output is not None:
                output.write(results)
            send.send_nowait(list(results))

        async def drive() -> None:
            async with self._lock:
                try:
                    await self._session.run_engine(jobs, CallbackSink(write), size=size)
                except Exception as exc:  # raised to the caller, not to the task group
                    failure.append(exc)
                finally:
                    send.close()

        self._tg.start_soon(drive)
        finished = False
        try:
            async with receive:
                async for batch in receive:
                    yield batch
            finished = True
        finally:
            if not finished:
                self._session.cancel()
        if failure:
            raise failure[0]

    async def run(self, requests: Iterable[RequestLike]) -> list[Result]:
        """Every request's result, in the order of the requests (a job the run stopped
        before — a budget, a signal — has none)."""
        prepared = self.prepare(requests)
        order = {pj.job.id: i for i, pj in enumerate(prepared)}
        results = await self.run_prepared(prepared)
        results.sort(key=lambda r: order.get(r.id, 0))
        return [Result.of(r) for r in results]

    async def run_prepared(self, jobs: Sequence[PreparedJob]) -> list[JobResult]:
        """The results of prepared jobs, in completion order, run in the caller's task."""
        sink = CollectSink()
        await self.run_into(jobs, sink)
        return sink.results

    async def run_into(
        self, jobs: Iterable[PreparedJob], sink: ResultSink, *, size: int | None = None
    ) -> None:
        """Prepared jobs run in the caller's task, each batch of results into ``sink``
        (as it finishes; ``sink.write`` must not block). ``jobs`` may be open-ended (a
        ``JobFeed``: the run lasts until it is closed); ``size``: how many, if known."""
        if not self._opened or self._closed:
            raise UsageError("use the Runner inside `async with llmbatch.Runner(...) as runner:`")
        output = self._output
        if size is None and isinstance(jobs, Sized):
            size = len(jobs)
        async with self._lock:
            await self._session.run_engine(
                jobs, sink if output is None else _Tee(sink, output), size=size
            )


class _Tee:
    """Results handed on and appended to ``output=``."""

    def __init__(self, sink: ResultSink, output: OutputSink) -> None:
        self.sink, self.output = sink, output

    def write(self, results: Sequence[JobResult]) -> None:
        self.output.write(results)
        self.sink.write(results)

    def close(self) -> None:
        return None


def run(
    requests: Iterable[RequestLike],
    model: str | ModelRef | None = None,
    **options: Any,
) -> list[Result]:
    """Run ``requests`` and return their results, in order (see ``Runner`` for options).

    Blocks until done; inside a running event loop use ``async with Runner(...)``.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise RuntimeError(_IN_LOOP)
    requests = list(requests)

    async def main() -> list[Result]:
        async with Runner(model, **options) as runner:
            return await runner.run(requests)

    return run_loop(main)
