"""Issue 21.1: recovery never adopts another output's batch, and an answer is only ever
written for the request that produced it (a per-submission nonce in every custom_id)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest

from llmbatch._batch.context import batch_context
from llmbatch._batch.fetch import fetch
from llmbatch._batch.status import batch_cancel
from llmbatch._batch.submit import submit
from llmbatch._config.settings import RunConfig
from llmbatch._core.exceptions import ProviderTimeout
from tests.batchutil import VirtualClock
from tests.conftest import fake_env, read_jsonl, run_cli, write_jsonl
from tests.fakeapi import FakeAPI
from tests.fakebatch import FakeBatch
from tests.fakebatch_wire import Item

AN = "claude-haiku-4-5"


@pytest.fixture
def fb() -> Iterator[FakeBatch]:
    api = FakeAPI(retry_after=0.01)
    batch = FakeBatch(api)
    api.start()
    try:
        yield batch
    finally:
        api.stop()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def two_files(tmp_path: Path, model: str = AN) -> tuple[Path, Path]:
    """A.jsonl and B.jsonl: the same eight ids, other prompts."""
    a = [{"id": f"job-{i}", "prompt": f"Alpha question {i}", "model": model} for i in range(8)]
    b = [{"id": f"job-{i}", "prompt": f"Bravo question {i}", "model": model} for i in range(8)]
    return write_jsonl(tmp_path / "A.jsonl", a), write_jsonl(tmp_path / "B.jsonl", b)


def assert_own_answers(out: Path, word: str) -> None:
    lines = read_jsonl(out)
    assert sorted(x["id"] for x in lines) == sorted(f"job-{i}" for i in range(8))
    for x in lines:
        assert x["status"] == "ok" and word in x["output"], x
        assert x["batch"]["custom_id"].startswith(x["id"] + "_")


@pytest.mark.parametrize("model", [AN, "gpt-4o-mini"])
def test_a_refused_connection_is_not_sent_and_adopts_nothing(
    fb: FakeBatch, tmp_path: Path, model: str
) -> None:
    env = fake_env(fb.api)
    a, b = two_files(tmp_path, model)
    a_out, b_out = tmp_path / "A.out.jsonl", tmp_path / "B.out.jsonl"
    assert run_cli("batch", "submit", str(a), "-o", str(a_out), env=env).code == 0
    closed = {
        **env,
        "ANTHROPIC_BASE_URL": f"http://127.0.0.1:{closed_port()}",
        "OPENAI_BASE_URL": f"http://127.0.0.1:{closed_port()}/v1",
    }
    refused = run_cli("batch", "submit", str(b), "-o", str(b_out), env=closed)
    assert refused.code == 1, refused.output
    again = run_cli("batch", "submit", str(b), "-o", str(b_out), env=env)
    assert again.code == 0, again.output
    assert "found batch" not in again.stderr
    assert len(fb.created) == 2  # B's own batch, made now
    a_batch, b_batch = (fb.batches[bid] for _, bid, _ in fb.created)
    assert all("Bravo" in str(it.body) for it in b_batch.items)
    # Cancelling B's batches leaves A's alone.
    assert run_cli("batch", "cancel", str(b_out), env=env).code == 0
    assert a_batch.cancel_at is None and b_batch.cancel_at is not None
    fb.advance(3600)
    assert run_cli("batch", "fetch", str(a_out), env=env).code == 0
    assert_own_answers(a_out, "Alpha")
    fetched = run_cli("batch", "fetch", str(b_out), env=env)
    assert "Alpha" not in b_out.read_text() if b_out.exists() else True
    assert fetched.code == 6, fetched.output  # all canceled: back to pending
    assert run_cli("batch", "submit", str(b), "-o", str(b_out), env=env).code == 0
    fb.advance(3600)
    assert run_cli("batch", "fetch", str(b_out), env=env).code == 0
    assert_own_answers(b_out, "Bravo")


# -- interrupted creates (timeouts, kill -9): in process, on the fake's virtual time -----


def _interrupting_factory(fb: FakeBatch, make_foreign: bool) -> Any:
    """Batch clients whose first create times out without reaching the provider; with
    ``make_foreign``, another output's batch of the same size appears meanwhile."""
    from llmbatch._batch.context import default_client_factory

    state = {"failed": False}

    def factory(name: str, config: RunConfig) -> Any:
        client = default_client_factory(name, config)
        real_create = client.create

        async def create(key: str, lines: list[bytes]) -> Any:
            if state["failed"]:
                return await real_create(key, lines)
            state["failed"] = True
            if make_foreign:
                items = [Item(f"job-{i}", {"model": AN, "max_tokens": 50,
                              "messages": [{"role": "user", "content": f"Alpha {i}"}]})
                         for i in range(len(lines))]  # fmt: skip
                fb._make("anthropic", items)
            raise ProviderTimeout("POST /v1/messages/batches: timed out")

        client.create = create  # type: ignore[method-assign]
        return client

    return factory


def _b_config(tmp_path: Path) -> RunConfig:
    _, b = two_files(tmp_path)
    return RunConfig(jobs=b, output=tmp_path / "B.out.jsonl")


def test_a_batch_made_after_an_interrupted_create_is_checked_not_trusted(
    fb: FakeBatch, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another output's batch of the same size appears just after B's create timed out:
    it may be B's, so it is adopted unverified; cancel leaves it alone, and fetch refuses
    its lines (none was sent from here), gives the jobs back, and B gets its own answers."""
    for k, v in fake_env(fb.api).items():
        monkeypatch.setenv(k, v)
    clock = VirtualClock(fb)
    cfg = _b_config(tmp_path)
    factory = _interrupting_factory(fb, make_foreign=True)
    sub = anyio.run(lambda: submit(cfg, clock=clock, client_factory=factory))
    assert sub.jobs == 8 and any("may be its" in n for n in sub.notes), sub.notes
    (_, foreign_id, _) = fb.created[0]

    async def cancel() -> list[Any]:
        async with batch_context(cfg, clock=clock) as ctx:
            return await batch_cancel(ctx)

    rows = anyio.run(cancel)
    assert fb.batches[foreign_id].cancel_at is None and fb.calls["msgbatch_cancel"] == 0
    assert [r.state for r in rows] == ["not canceled (unproven)"]
    fb.advance(3600)
    rep = anyio.run(lambda: fetch(cfg, clock=clock))
    assert rep.refused == 8 and rep.ok == 0 and rep.pending == 8 and rep.exit_code == 6
    assert any("refused 8 result line(s)" in n for n in rep.notes)
    assert cfg.output is not None and not (cfg.output.exists() and cfg.output.read_text())
    again = anyio.run(lambda: submit(cfg, clock=clock))
    assert again.jobs == 8 and len(fb.created) == 2
    fb.advance(3600)
    done = anyio.run(lambda: fetch(cfg, clock=clock))
    assert done.ok == 8 and done.exit_code == 0 and done.pending == 0
    assert_own_answers(cfg.output, "Bravo")


def test_a_batch_made_before_the_intent_is_never_adopted(
    fb: FakeBatch, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A's batch (same ids, same size) exists; B's create times out before reaching the
    provider: nothing is adopted, the note says what an orphan may cost, B's jobs go again."""
    for k, v in fake_env(fb.api).items():
        monkeypatch.setenv(k, v)
    clock = VirtualClock(fb)
    a, _ = two_files(tmp_path)
    a_cfg = RunConfig(jobs=a, output=tmp_path / "A.out.jsonl")
    anyio.run(lambda: submit(a_cfg, clock=clock))
    fb.advance(5)
    cfg = _b_config(tmp_path)
    factory = _interrupting_factory(fb, make_foreign=False)
    with pytest.raises(ProviderTimeout):
        anyio.run(lambda: submit(cfg, clock=clock, client_factory=factory))
    again = anyio.run(lambda: submit(cfg, clock=clock))
    assert again.jobs == 8 and len(fb.created) == 2
    assert not any("found batch" in n for n in again.notes)
    fb.advance(3600)
    assert anyio.run(lambda: fetch(cfg, clock=clock)).ok == 8
    assert_own_answers(cfg.output, "Bravo")  # type: ignore[arg-type]


def test_an_ended_candidate_is_proven_by_its_custom_ids(
    fb: FakeBatch, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """kill -9 after the provider made B's batch; the next command runs after it ended:
    its results carry B's nonce, so it is adopted (verified) and nothing is paid twice.
    Another output's ended batch made meanwhile is proven not to be it."""
    for k, v in fake_env(fb.api).items():
        monkeypatch.setenv(k, v)
    clock = VirtualClock(fb)
    cfg = _b_config(tmp_path)
    fb.create_delay_s = 0.0

    from llmbatch._batch.context import default_client_factory

    def factory(name: str, config: RunConfig) -> Any:
        client = default_client_factory(name, config)
        real_create = client.create

        async def create(key: str, lines: list[bytes]) -> Any:
            await real_create(key, lines)  # made at the provider; the answer is lost
            items = [Item(f"job-{i}", {"model": AN, "max_tokens": 50,
                          "messages": [{"role": "user", "content": f"Alpha {i}"}]})
                     for i in range(len(lines))]  # fmt: skip
            fb._make("anthropic", items)
            raise ProviderTimeout("timed out")

        client.create = create  # type: ignore[method-assign]
        return client

    async def interrupted() -> None:
        # Only the create's reply is lost; recovery is left to the next command.
        from llmbatch._batch import context

        real = context.recover_chunk

        async def no_recover(ctx: Any, chunk: Any) -> None:
            return None

        monkeypatch.setattr("llmbatch._batch.context.recover_chunk", no_recover)
        try:
            await submit(cfg, clock=clock, client_factory=factory)
        finally:
            monkeypatch.setattr("llmbatch._batch.context.recover_chunk", real)

    with pytest.raises(ProviderTimeout):
        anyio.run(interrupted)
    fb.advance(3600)  # both batches ended
    rep = anyio.run(lambda: fetch(cfg, clock=clock))
    assert any("found batch" in n for n in rep.notes), rep.notes
    assert rep.ok == 8 and rep.refused == 0 and rep.exit_code == 0
    assert len(fb.created) == 2
    assert_own_answers(cfg.output, "Bravo")  # type: ignore[arg-type]


def test_a_line_this_output_did_not_send_is_refused_loudly(
    fb: FakeBatch, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for k, v in fake_env(fb.api).items():
        monkeypatch.setenv(k, v)
    clock = VirtualClock(fb)
    cfg = _b_config(tmp_path)
    anyio.run(lambda: submit(cfg, clock=clock))
    (_, bid, _) = fb.created[0]
    fb.batches[bid].items[0].custom_id = "job-0_deadbeef"  # another submission's id
    fb.advance(3600)
    rep = anyio.run(lambda: fetch(cfg, clock=clock))
    assert rep.refused == 1 and rep.ok == 7 and rep.pending == 1 and rep.exit_code == 6
    assert any("job-0_deadbeef" in n and "nothing was written" in n for n in rep.notes)
    assert cfg.output is not None
    assert sorted(x["id"] for x in read_jsonl(cfg.output)) == [f"job-{i}" for i in range(1, 8)]


def test_a_state_from_an_older_llmbatch_still_fetches(
    fb: FakeBatch, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """custom_ids without a nonce, an intent without one, the old OpenAI key: still read."""
    for k, v in fake_env(fb.api).items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr("llmbatch._batch.submitter.secrets.token_hex", lambda _n: "")
    clock = VirtualClock(fb)
    a, _ = two_files(tmp_path, "gpt-4o-mini")
    cfg = RunConfig(jobs=a, output=tmp_path / "old.jsonl")
    anyio.run(lambda: submit(cfg, clock=clock))
    (_, bid, _) = fb.created[0]
    log = tmp_path / "old.jsonl.batches" / "batches.jsonl"
    events = [orjson.loads(line) for line in log.read_bytes().splitlines()]
    for e in events:  # as an older llmbatch wrote them
        e.pop("nonce", None)
        e.pop("verified", None)
    log.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
    assert "job-0_" not in str(fb.batches[bid].items)
    monkeypatch.undo()
    for k, v in fake_env(fb.api).items():
        monkeypatch.setenv(k, v)
    fb.advance(3600)
    rep = anyio.run(lambda: fetch(cfg, clock=clock))
    assert rep.ok == 8 and rep.refused == 0 and rep.exit_code == 0
    assert cfg.output is not None
    assert {x["batch"]["custom_id"] for x in read_jsonl(cfg.output)} == {
        f"job-{i}" for i in range(8)
    }


def test_an_unproven_batch_does_not_hold_the_auto_deadline(
    fb: FakeBatch, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`run --mode auto` at its deadline: a batch adopted unverified is not canceled (it may
    be another output's) but given up, with what it may cost; its jobs run online."""
    from tests.test_batch_run import run_mode

    for k, v in fake_env(fb.api).items():
        monkeypatch.setenv(k, v)
    clock = VirtualClock(fb)
    cfg = _b_config(tmp_path)
    fb.process_s = 4 * 3600
    factory = _interrupting_factory(fb, make_foreign=True)
    assert anyio.run(lambda: submit(cfg, clock=clock, client_factory=factory)).jobs == 8
    rep = run_mode(cfg, clock, "auto", deadline=60)
    assert rep.exit_code == 0 and clock.slept <= 60 + 1
    assert fb.calls["msgbatch_cancel"] == 0
    assert cfg.output is not None
    lines = read_jsonl(cfg.output)
    assert len(lines) == 8 and all("Bravo" in x["output"] and "batch" not in x for x in lines)


def test_made_after_compares_whole_second_stamps_at_their_precision() -> None:
    from llmbatch._batch.context import _made_after

    assert _made_after(100.5, 100.2) and not _made_after(100.1, 100.2)
    assert _made_after(100.0, 100.7)  # a provider stamp in whole seconds
    assert not _made_after(99.0, 100.7)
