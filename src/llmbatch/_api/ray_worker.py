"""One Ray actor of ``run --ray``: one engine (a ``Runner``) over blocks of job lines.

The driver sends raw job lines (already checked, and not yet done in the
output); the worker parses and prepares them with the same ``Planner`` and runs
them through its runner, whose limits, breakers, budgets and connections last
as long as the actor. Blocks run one at a time (the driver keeps the next one
queued), so the actor holds its share of ``-c`` exactly. Results go back as
encoded result lines; only the driver writes the output.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import anyio

from llmbatch._api.runner import Runner
from llmbatch._budget.ledger import BudgetLedger
from llmbatch._config.settings import RunConfig
from llmbatch._core.jobs import LineError
from llmbatch._core.results import JobResult
from llmbatch._engine.plan import Planner, PreparedJob
from llmbatch._engine.sinks import CallbackSink

_PART_S = 0.05  # how long finished results wait for others before going back together
_PART_LINES = 256  # or until this many have finished


@dataclass(frozen=True, slots=True)
class ClusterBudget:
    """``--max-cost``/``--max-total-tokens`` held for the whole cluster in Redis (``--shared``):
    one ledger scope per run, a window longer than any run."""

    scope: str
    max_cost: float | None
    max_tokens: int | None


@dataclass(frozen=True, slots=True)
class BlockDone:
    """What one block gave back."""

    lines: list[bytes]  # result lines, as the output holds them
    stopped_by: str | None  # the worker's StopReason value, once it stopped
    fatal: str | None


class EngineWorker:
    """The body of a ``run --ray`` actor (``ray.remote`` wraps it in the driver)."""

    def __init__(
        self,
        config: RunConfig,
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
        self.planner = Planner(config)

    async def open(self) -> int:
        """Open the runner's services; returns the process id (for the driver's notes)."""
        import os

        ledgers = await self._cluster_ledgers()
        self.runner = Runner(config=self.config, ledgers=ledgers)
        await self.runner.open()
        return os.getpid()

    async def _cluster_ledgers(self) -> list[BudgetLedger]:
        budget = self.cluster_budget
        if budget is None or self.config.shared is None:
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
        results = await runner.run_prepared(self._prepared(block))
        lines = [r.to_json() for r in results]
        return BlockDone(lines, self._stopped_by(), session.fatal)

    def _stopped_by(self) -> str | None:
        """Why the worker stopped; the cluster's --max-cost ledger full is "budget"."""
        assert self.runner is not None
        reason = _value(self.runner.session.stopper.stopped_by)
        if reason == "budget_window" and self.cluster_budget is not None:
            from llmbatch._budget.windows import windows_from_config

            if not windows_from_config(self.config):
                return "budget"
        return reason

    async def stream_block(self, block: Sequence[tuple[int, bytes]]) -> AsyncIterator[BlockDone]:
        """``run_block``, its result lines sent back as they finish (a Ray streaming
        generator): what reached the driver is written there even if this worker dies."""
        runner = self.runner
        assert runner is not None, "open() first"
        session = runner.session
        if session.stopper.stopping:
            yield BlockDone([], self._stopped_by(), session.fatal)
            return
        jobs = self._prepared(block)
        send, receive = anyio.create_memory_object_stream[list[bytes]](math.inf)

        def write(results: Sequence[JobResult]) -> None:
            send.send_nowait([r.to_json() for r in results])

        async def drive() -> None:
            with send:
                await runner.run_into(jobs, CallbackSink(write))

        async with anyio.create_task_group() as tg:
            tg.start_soon(drive)
            async with receive:
                async for lines in receive:
                    # What finishes in the next moment goes in the same part: each part
                    # costs the driver a Ray object, and a kill loses at most that moment.
                    with anyio.move_on_after(_PART_S):
                        while len(lines) < _PART_LINES:
                            try:
                                lines.extend(await receive.receive())
                            except anyio.EndOfStream:
                                break
                    yield BlockDone(lines, None, None)
        yield BlockDone([], self._stopped_by(), session.fatal)

    def _prepared(self, block: Sequence[tuple[int, bytes]]) -> list[PreparedJob]:
        parse, prepare = self.planner.parser.parse, self.planner.prepare
        jobs = []
        for lineno, raw in block:
            try:
                jobs.append(prepare(parse(raw, lineno)))
            except LineError:
                continue  # the driver checked it; a file rewritten since is its note
        return jobs

    async def stop(self, reason: str) -> None:
        """No new requests (a signal at the driver): those in flight finish and come back."""
        if self.runner is not None:
            from llmbatch._core.stops import StopReason

            self.runner.session.stop(StopReason(reason))

    async def close(self) -> dict[str, Any]:
        """Close the runner; its notes for the driver's report."""
        runner = self.runner
        if runner is None:
            return {"notes": []}
        await runner.aclose()
        return {"notes": list(runner.report().notes)}


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
