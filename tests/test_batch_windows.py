"""Rolling budgets hold for batch work: a batch is booked at its worst case when it is
submitted, and that booking is replaced by what it really cost once it is fetched
(SQLite and Redis ledgers), once however often a fetch is killed and run again."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import pytest

from llmbatch._batch.context import batch_context
from llmbatch._batch.fetch import fetch
from llmbatch._batch.run import run_with_batches
from llmbatch._batch.status import batch_cancel
from llmbatch._batch.submit import submit
from llmbatch._budget.bookings import settle_booking
from llmbatch._budget.ledger import Hold
from llmbatch._budget.redis import RedisLedger, connect, redis_status
from llmbatch._budget.sqlite import SqliteLedger
from llmbatch._budget.sqlite_status import ledger_status
from llmbatch._budget.windows import HOUR, Window, safe_url
from llmbatch._config.settings import RunConfig
from llmbatch._core.batch_price import batch_price
from llmbatch._core.models import ModelRef
from llmbatch._core.usage import Usage
from llmbatch._io.batch_state import BatchState
from llmbatch._observe.progress import NoProgress
from llmbatch._report.report import RunReport
from llmbatch.testing import FakeClock
from tests.batchutil import OA, VirtualClock, jobs_file
from tests.fakebatch import FakeBatch
from tests.redis_server import RedisServer

MAX_TOKENS = 4000  # the worst case: the fake's answers are a few tokens, far below it
PER_HOUR = Window("cost", HOUR, 1.0, "--budget-per-hour")


class Killed(BaseException):
    """The process dies here (nothing after it runs, nothing catches it)."""


def run_batch(cfg: RunConfig, clock: VirtualClock) -> RunReport:
    report, _run = anyio.run(
        lambda: run_with_batches(
            cfg,
            mode="batch",
            poll=600,
            clock=clock,
            progress=NoProgress(),
            handle_signals=False,
            say=lambda _m: None,
        )
    )
    return report


def worst_output(clock: VirtualClock) -> float:
    """One job's output at its token cap, at the batch price: nearly all of its worst case."""
    cfg = RunConfig(jobs=Path("x"))
    price, _ = batch_price(cfg.price_book(), cfg.prices, ModelRef("openai", OA), clock.time())
    assert price is not None
    return price.cost(Usage(0, MAX_TOKENS))


def bill(fb: FakeBatch, clock: VirtualClock) -> float:
    """What the fake charged for every batch request it answered."""
    cfg = RunConfig(jobs=Path("x"))
    price, _ = batch_price(cfg.price_book(), cfg.prices, ModelRef("openai", OA), clock.time())
    assert price is not None
    return sum(price.cost(Usage(i, o)) for i, o in fb.billed().values())


def reserved(output: Path) -> list[float]:
    return [c.reserve_cost for c in BatchState.load(output).chunks.values()]


def window_spent(cfg: RunConfig, now: float) -> float:
    """What the hour window of the run's ledger counts as spent now."""
    if cfg.shared:
        uses = anyio.run(lambda: redis_status(cfg.shared or "", "default"))
    else:
        assert cfg.ledger is not None
        uses = ledger_status(cfg.ledger, "default", now)
    return next(u.spent_cost for u in uses if u.seconds == HOUR)


def two_runs(fb: FakeBatch, tmp_path: Path, shared: str | None) -> None:
    """Two `run --mode batch` in one hour: the first's worst case would leave no room for
    the second, its real cost does."""
    clock = VirtualClock(fb)
    jobs = jobs_file(tmp_path, 2, (OA, OA))
    cap = 2.5 * worst_output(clock)  # the first run's 2 jobs fit, then not 1 more job
    kw: dict[str, Any] = {"budget_per_hour": cap, "max_tokens": MAX_TOKENS, "shared": shared}
    if shared is None:
        kw["ledger"] = tmp_path / "ledger.sqlite"
    first = RunConfig(jobs=jobs, output=tmp_path / "first.jsonl", **kw)
    started = clock.time()
    one = run_batch(first, clock)
    assert one.ok == 2 and one.stopped_by is None
    (worst,) = reserved(tmp_path / "first.jsonl")
    assert worst <= cap < worst + worst / 2  # unsettled, not one job of a second run fits
    real = bill(fb, clock)
    assert 0 < real < worst / 100
    assert window_spent(first, clock.time()) == pytest.approx(real, abs=1e-12)
    assert clock.time() - started < HOUR / 2  # the second run is in the same hour
    second = RunConfig(jobs=jobs, output=tmp_path / "second.jsonl", **kw)
    two = run_batch(second, clock)
    assert two.ok == 2 and two.stopped_by is None  # admitted: the window held the real cost
    assert reserved(tmp_path / "second.jsonl") == [pytest.approx(worst)]
    assert len(fb.created) == 2 and len(fb.api.records) == 0  # all by batch
    assert bill(fb, clock) <= cap
    assert window_spent(second, clock.time()) == pytest.approx(bill(fb, clock), abs=1e-12)
    for output in ("first.jsonl", "second.jsonl"):
        chunks = BatchState.load(tmp_path / output).chunks.values()
        assert all(c.window_settled for c in chunks)


def test_a_fetched_batch_frees_its_worst_case_in_the_window(fb: FakeBatch, tmp_path: Path) -> None:
    two_runs(fb, tmp_path, None)


def test_a_fetched_batch_frees_its_worst_case_in_redis(
    fb: FakeBatch, tmp_path: Path, redis_server: RedisServer
) -> None:
    two_runs(fb, tmp_path, redis_server.url)


# -- settling twice -------------------------------------------------------------------


def test_settling_twice_in_sqlite_counts_the_real_cost_once(tmp_path: Path) -> None:
    clock = FakeClock(start=1_000_000.0)
    path = tmp_path / "ledger.sqlite"

    async def main() -> list[dict[str, Any]]:
        led = SqliteLedger(path, "default", [PER_HOUR], clock)
        await led.open()
        records = []
        for key in ("a", "b"):
            hold = await led.reserve(0.4, 1000)
            assert isinstance(hold, Hold)
            records.append(await led.book(hold, 0.4, 1000, key))
        await led.aclose()
        return records

    a, b = anyio.run(main)
    assert ledger_status(path, "default", clock.time())[0].spent_cost == pytest.approx(0.8)
    clock.advance(600)
    for _ in range(2):  # a fetch killed after settling, then run again
        assert anyio.run(lambda: settle_booking(a, 0.05, 100, None))
    use = ledger_status(path, "default", clock.time())[0]
    assert use.spent_cost == pytest.approx(0.45) and use.spent_tokens == 1100
    # The real cost stays where the booking was: it ages out when the worst case would have.
    clock.advance(HOUR - 600 + 1)
    assert ledger_status(path, "default", clock.time())[0].spent_cost == 0


@pytest.mark.anyio
async def test_settling_twice_in_redis_counts_the_real_cost_once(
    redis_server: RedisServer,
) -> None:
    clock = FakeClock()
    led = RedisLedger(
        await connect(redis_server.url),
        "default",
        [PER_HOUR],
        clock,
        where=safe_url(redis_server.url),
    )
    records = []
    for key in ("a", "b"):
        hold = await led.reserve(0.4, 1000)
        assert isinstance(hold, Hold)
        records.append(await led.book(hold, 0.4, 1000, key))
    await led.aclose()
    hour = next(u for u in await redis_status(redis_server.url, "default") if u.seconds == HOUR)
    assert hour.spent_cost == pytest.approx(0.8) and hour.held_cost == 0
    for _ in range(3):
        assert await settle_booking(records[0], 0.05, 100, redis_server.url)
    uses = await redis_status(redis_server.url, "default")
    assert [u.spent_cost for u in uses] == [pytest.approx(0.45)] * 2  # hour and day
    assert [u.spent_tokens for u in uses] == [1100, 1100]
    # Another server (or none) cannot settle it: it is kept for one that can.
    assert not await settle_booking(records[1], 0.0, 0, None)
    assert not await settle_booking(records[1], 0.0, 0, "redis://127.0.0.1:1/0")


# -- a fetch killed, then run again ---------------------------------------------------


def _submitted(
    fb: FakeBatch, tmp_path: Path, shared: str | None, end: bool = True
) -> tuple[RunConfig, float]:
    clock = VirtualClock(fb)
    kw: dict[str, Any] = {"budget_per_hour": 1.0, "max_tokens": MAX_TOKENS, "shared": shared}
    if shared is None:
        kw["ledger"] = tmp_path / "ledger.sqlite"
    cfg = RunConfig(jobs=jobs_file(tmp_path, 4, (OA, OA)), output=tmp_path / "out.jsonl", **kw)
    assert anyio.run(lambda: submit(cfg, clock=clock)).jobs == 4
    (worst,) = reserved(tmp_path / "out.jsonl")
    assert window_spent(cfg, clock.time()) == pytest.approx(worst)
    if end:
        fb.advance(700)  # the batch has ended
    return cfg, worst


@pytest.mark.parametrize("store", ["sqlite", "redis"])
@pytest.mark.parametrize("killed", ["after the ledger", "before the ledger"])
def test_a_killed_fetch_run_again_settles_once(
    fb: FakeBatch,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    store: str,
    killed: str,
) -> None:
    shared = request.getfixturevalue("redis_server").url if store == "redis" else None
    cfg, worst = _submitted(fb, tmp_path, shared)
    clock = VirtualClock(fb)
    real_append = BatchState.append

    def dies(self: BatchState, event: dict[str, Any]) -> None:
        if event["ev"] == "window_settled":
            raise Killed
        real_append(self, event)

    async def dies_first(*_a: Any) -> bool:
        raise Killed

    if killed == "after the ledger":  # settled there, not yet in the batch state
        monkeypatch.setattr(BatchState, "append", dies)
    else:  # the lines are written and the chunk closed, the ledger not yet told
        monkeypatch.setattr("llmbatch._batch.windows.settle_booking", dies_first)
    with pytest.raises(Killed):
        anyio.run(lambda: fetch(cfg, clock=clock))
    state = BatchState.load(tmp_path / "out.jsonl")
    (chunk,) = state.chunks.values()
    assert chunk.state == "closed" and not chunk.window_settled
    monkeypatch.undo()
    rep = anyio.run(lambda: fetch(cfg, clock=clock))
    assert rep.closed == 0 and rep.still_open == 0  # nothing left but the settling
    (chunk,) = BatchState.load(tmp_path / "out.jsonl").chunks.values()
    assert chunk.window_settled and chunk.spent is not None
    real = bill(fb, clock)
    assert chunk.spent[0] == pytest.approx(real) and real < worst / 100
    assert window_spent(cfg, clock.time()) == pytest.approx(real, abs=1e-12)  # once
    anyio.run(lambda: fetch(cfg, clock=clock))  # and again: nothing changes
    assert window_spent(cfg, clock.time()) == pytest.approx(real, abs=1e-12)


# -- canceled, lost, never sent ---------------------------------------------------------


def test_a_canceled_batch_settles_to_what_it_billed(fb: FakeBatch, tmp_path: Path) -> None:
    cfg, _worst = _submitted(fb, tmp_path, None, end=False)  # canceled while in progress
    clock = VirtualClock(fb)

    async def cancel() -> None:
        async with batch_context(cfg, clock=clock) as ctx:
            await batch_cancel(ctx)

    anyio.run(cancel)
    fb.advance(60)
    rep = anyio.run(lambda: fetch(cfg, clock=clock))
    assert rep.closed == 1 and rep.batch_jobs == 0 and bill(fb, clock) == 0
    assert window_spent(cfg, clock.time()) == 0


def test_a_lost_batch_keeps_its_worst_case(fb: FakeBatch, tmp_path: Path) -> None:
    """Whether a lost batch ran, and what it cost, cannot be known: its booking stays."""
    cfg, worst = _submitted(fb, tmp_path, None)
    clock = VirtualClock(fb)
    for b in fb.batches.values():
        b.deleted = True  # the provider no longer knows it
    for _ in range(2):  # two polls say so: lost
        anyio.run(lambda: fetch(cfg, clock=clock))
    (chunk,) = BatchState.load(tmp_path / "out.jsonl").chunks.values()
    assert chunk.state == "lost" and not chunk.window_settled
    assert window_spent(cfg, clock.time()) == pytest.approx(worst)


def test_a_chunk_never_sent_settles_to_nothing(tmp_path: Path) -> None:
    state = BatchState.load(tmp_path / "out.jsonl", writable=True)
    booking = {"store": "sqlite", "path": str(tmp_path / "l"), "scope": "s", "id": "x"}
    for local, reason in (("c1", "not created"), ("c2", "unproven"), ("c3", "lost")):
        state.append(
            {"ev": "intent", "local": local, "provider": "openai", "model": OA, "count": 1}
            | {"at": 0.0, "reserve_cost": 1.0, "bookings": [booking]}
        )
        ev = "lost" if reason == "lost" else "abandoned"
        state.append({"ev": ev, "local": local, "reason": reason, "unsent": local == "c1"})
    assert [(c.local, cost, tokens) for c, cost, tokens in state.to_settle()] == [("c1", 0, 0)]


@pytest.mark.parametrize("embed", [False, True])
async def test_a_create_that_reached_no_provider_is_abandoned_unsent(
    tmp_path: Path, embed: bool
) -> None:
    """Chat and embedding submissions create their batches through one create_chunk: a
    create refused before any connection leaves a chunk that settles to nothing."""
    from dataclasses import dataclass

    from llmbatch._batch.context import BatchContext, create_chunk
    from llmbatch._core.exceptions import ProviderError

    @dataclass
    class Line:
        row: dict[str, Any]
        line: bytes
        cost: float
        tokens: int

    class Unreachable:
        async def create(self, key: str, lines: list[bytes]) -> Any:
            err = ProviderError("connection refused")
            err.nothing_sent = True
            raise err

    output = tmp_path / "out.jsonl"
    state = BatchState.load(output, writable=True)
    ctx = BatchContext(RunConfig(jobs=tmp_path / "j.jsonl", output=output), state, FakeClock())
    booking = {"store": "sqlite", "path": str(tmp_path / "l"), "scope": "s", "id": "x"}
    chunk = [Line({"cid": "c-0", "id": "a"}, b'{"x": 1}', 0.5, 10)]
    with pytest.raises(ProviderError):
        await create_chunk(
            ctx, ModelRef("openai", OA), Unreachable(), chunk,  # type: ignore[arg-type]
            price=None, nonce="n", booked=[booking],
            extra={"inputs": 1, "embed": True} if embed else None,
        )  # fmt: skip
    [record] = BatchState.load(output).chunks.values()
    assert (record.state, record.unsent, record.reserve_cost) == ("abandoned", True, 0.5)
    assert [cost for _, cost, _ in BatchState.load(output).to_settle()] == [0.0]


def test_a_redis_booking_waits_for_a_fetch_that_reaches_redis(
    fb: FakeBatch, tmp_path: Path, redis_server: RedisServer
) -> None:
    cfg, worst = _submitted(fb, tmp_path, redis_server.url)
    clock = VirtualClock(fb)
    rep = anyio.run(lambda: fetch(replace(cfg, shared=None), clock=clock))
    assert rep.closed == 1 and any("keep their batches' worst case" in n for n in rep.notes)
    assert redis_server.url in " ".join(rep.notes)  # (no password in this URL to hide)
    assert window_spent(cfg, clock.time()) == pytest.approx(worst)
    anyio.run(lambda: fetch(cfg, clock=clock))
    (chunk,) = BatchState.load(tmp_path / "out.jsonl").chunks.values()
    assert chunk.window_settled
    assert window_spent(cfg, clock.time()) == pytest.approx(bill(fb, clock), abs=1e-12)


def test_a_booking_keeps_no_redis_password() -> None:
    assert safe_url("redis://user:hunter2@10.0.0.5:6379/2") == "redis://10.0.0.5:6379/2"
