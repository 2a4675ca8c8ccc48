"""``batch submit`` and ``batch fetch`` (and ``status``'s pending count) for embedding files.

The same pieces ``run --mode batch`` uses (``_batch.embed_run``), one command at a
time: submit checks every line, refuses (exit 2, nothing sent) a model whose
provider has no embeddings batch here, and submits the lines not done and not in
an open batch; fetch writes what ended into the output (JSONL or Parquet parts,
merged at its end) and says what is pending. The output lock is held throughout.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from llmbatch._batch.context import (
    BatchContext,
    ClientFactory,
    batch_context,
    default_client_factory,
    recover,
)
from llmbatch._batch.embed_run import EmbedBatchRun
from llmbatch._batch.embed_submit import (
    embeddings_client_factory,
    embeds_by_batch,
    open_embed_ids,
    submit_embeddings,
)
from llmbatch._batch.fetch import FetchReport
from llmbatch._batch.submitted import SubmitReport
from llmbatch._config.settings import RunConfig
from llmbatch._core.clock import SYSTEM_CLOCK, Clock
from llmbatch._io.batch_state import BatchState
from llmbatch._io.npy import npy_path
from llmbatch._io.resume import ExistingOutput, read_existing
from llmbatch._io.vectors import is_parquet, read_existing_vectors


def embedding_lines(config: RunConfig) -> bool:
    """Whether the first line of the jobs file asks for embeddings (``input``, no prompt)."""
    import orjson

    from llmbatch._core.embed import is_embed_record
    from llmbatch._io.jobfile import job_records

    for _, raw in job_records(config.jobs, config.columns):
        try:
            return is_embed_record(orjson.loads(raw))
        except orjson.JSONDecodeError:
            return False
    return False


def is_embed_state(state: BatchState) -> bool:
    """Whether an output's batches carry embedding packs (their rows list ``ids``)."""
    for chunk in state.chunks.values():
        rows = state.read_jobs(chunk.local)
        if rows:
            return "ids" in rows[0]
    return False


def read_done(output: Path) -> ExistingOutput:
    if is_parquet(output):
        return read_existing_vectors(output, retry_failed=False)
    return read_existing(output, retry_failed=False)


def pending_lines(state: BatchState, existing: ExistingOutput) -> int:
    """Lines a batch handed back unanswered (or a lost batch held), in no open batch and
    with no row in the output: submit them again, or run them."""
    ids = set(state.handed_back)
    for c in state.chunks.values():
        if c.state in ("abandoned", "lost"):
            ids.update(i for r in state.read_jobs(c.local) for i in r["ids"])
    ids -= open_embed_ids(state)
    return sum(1 for i in ids if existing.done.fingerprint(i) is None)


async def submit_embed_file(
    config: RunConfig,
    *,
    batch_size: int | None = None,
    clock: Clock = SYSTEM_CLOCK,
    client_factory: ClientFactory | None = None,
) -> SubmitReport:
    """``batch submit EMB``: check, then the lines not done by batch."""
    run = EmbedBatchRun(config, handle_signals=False, clock=clock)
    factory = embeddings_client_factory(client_factory or default_client_factory)
    run.lock()
    try:
        run.check()
        assert run.plan is not None
        for ref, _ in run.plan.groups:
            if not embeds_by_batch(config.providers[ref.provider]):
                factory(ref.provider, config)  # refused (exit 2) before anything is sent
        await run.open_services(cache=False)
        run.open_cache()
        try:
            async with batch_context(config, clock=clock, factory=factory, locked=True) as ctx:
                return await submit_embeddings(ctx, run, batch_size=batch_size)
        finally:
            run.close_cache()
            await run.close_services()
    finally:
        run.unlock()


async def fetch_embed_output(
    config: RunConfig,
    *,
    wait: bool = False,
    poll: float = 60.0,
    clock: Clock = SYSTEM_CLOCK,
    client_factory: ClientFactory | None = None,
) -> FetchReport:
    """``batch fetch OUT`` for embedding batches: rows of every ended batch into OUT."""
    out = config.output
    assert out is not None
    beside = npy_path(out)  # no --npy here: the matrix beside OUT, if there is one
    config = replace(config, npy=beside if beside != out and beside.exists() else None)
    run = EmbedBatchRun(config, handle_signals=False, clock=clock)
    factory = embeddings_client_factory(client_factory or default_client_factory)
    run.lock()
    try:
        run.existing = read_done(out)
        run.cut_torn()
        run.open_cache()
        try:
            async with batch_context(config, clock=clock, factory=factory, locked=True) as ctx:
                return await _fetch(ctx, run, wait, poll)
        finally:
            run.close_cache()
    finally:
        run.unlock()


async def _fetch(ctx: BatchContext, run: EmbedBatchRun, wait: bool, poll: float) -> FetchReport:
    assert run.config.output is not None
    await recover(ctx)
    sink = run.sink()
    fetcher = run.fetcher(ctx, sink)
    try:
        while True:
            still = await fetcher.poll()
            if not still or not wait:
                break
            await ctx.clock.sleep(poll)
    finally:
        sink.close()
    t = fetcher.totals
    return FetchReport(
        ok=t.ok_lines,
        failed=t.failed_lines,
        returned=t.returned,
        still_open=still,
        closed=t.closed,
        cost_usd=t.cost_usd,
        online_cost_usd=t.online_cost_usd,
        batch_jobs=t.packs,
        notes=ctx.notes,
        refused=t.refused,
        pending=pending_lines(ctx.state, read_done(run.config.output)),
    )
