"""Embedding jobs into OpenAI-style provider batches: each pack becomes one
``/v1/embeddings`` line.

The packs are the online run's (``_engine.embed.EmbedSource``: the provider's
count and token caps, a text repeated inside a pack sent once, texts the response
cache knows not sent at all). Each pack is one line ``{"custom_id", "method":
"POST", "url": "/v1/embeddings", "body": {"model", "input", "encoding_format":
"base64", "dimensions"?}}``; a batch holds one model and one endpoint, at most
50,000 inputs (OpenAI's cap), ``--batch-size`` inputs, and the client's line and
byte caps. What fetch needs to write the rows sits in the chunk's jobs file: per
pack its ids, input indexes, slots and metadata, the texts sent (for the response
cache once answered), and the vectors the cache gave (base64 float32).

Each pack holds its worst case (a token a byte) at the batch price against
``--max-cost`` / ``--max-total-tokens`` and is booked in the rolling windows
(``--budget-per-hour/day``) at submit, as chat batches are.

A pack takes no rows of later lines once it is out (``EmbedState._forget``): each
line's inputs sit in one pack, so a line is written whole or not at all. A text
repeated in two packs is sent twice (later runs find it in the response cache).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from llmbatch._batch.context import BatchContext, ClientFactory, create_chunk
from llmbatch._batch.submitted import SubmitReport, SubmittedBatch
from llmbatch._batch.windows import fit_windows
from llmbatch._budget.ledger import BudgetLedger, Hold, Refusal, RunBudget
from llmbatch._core.batch_price import batch_price
from llmbatch._core.batch_types import BatchClient
from llmbatch._core.embed import BATCH_INPUTS, EmbedCaps, EmbedJob, EmbedPack, encode_vector
from llmbatch._core.exceptions import UsageError
from llmbatch._core.models import ModelRef
from llmbatch._core.pricing import Price, PriceBook, Rate
from llmbatch._core.usage import Usage
from llmbatch._engine.embed import EmbedSource, EmbedState, parse_records
from llmbatch._engine.plan import PreparedJob
from llmbatch._io.batch_state import BatchState
from llmbatch.providers.embeddings import openai_body

if TYPE_CHECKING:
    from llmbatch._config.settings import ProviderSettings, RunConfig
    from llmbatch._run.embed import EmbedRun

# OpenAI bills embeddings sent by batch at half the online price (its pricing page:
# text-embedding-3-small $0.02 online, $0.01 batch per 1M tokens). genai-prices has
# no batch variant for embedding models: this factor stands in for it.
EMBED_BATCH_FACTOR = 0.5
_BYTES_MARGIN = 0.98


def embeds_by_batch(settings: ProviderSettings) -> bool:
    """Whether this provider's embeddings can go by batch here: OpenAI, Azure, and
    services that copy OpenAI's Batch API (``batch = true``). Gemini's is not built."""
    return settings.kind in ("openai", "azure") and settings.has_batch_api()


def embeddings_client_factory(inner: ClientFactory) -> ClientFactory:
    """Batch clients pointed at the embeddings endpoint (one endpoint a batch)."""

    def make(name: str, config: RunConfig) -> BatchClient:
        settings = config.providers[name]
        if not embeds_by_batch(settings):
            raise UsageError(
                f"{name}: embeddings by batch are built for OpenAI, Azure and OpenAI-style "
                f"batch services only ({settings.kind} is not); run them with --mode online. "
                "Nothing was sent."
            )
        client = inner(name, config)
        point = getattr(client, "for_embeddings", None)
        if point is not None:
            point()
        return client

    return make


def embed_batch_price(
    book: PriceBook, config: RunConfig, ref: ModelRef, at: float
) -> tuple[Price | None, str | None]:
    """The price an embeddings batch pays, and a note saying where it comes from."""
    price, note = batch_price(book, config.prices, ref, at)
    if note is None or price is None:
        return price, note
    _, provider_id, _ = book.genai_ref(ref)
    if provider_id not in ("openai", "azure"):
        return price, note  # a compatible service's batch price is its own: online stands
    half = Price(
        _scaled(price.input),
        _scaled(price.output),
        _scaled(price.cache_read),
        _scaled(price.cache_write),
        f"{price.source}, batch: 50%",
    )
    return half, (
        f"{ref}: embeddings by batch at half the online price (OpenAI's batch discount; "
        "genai-prices has no batch price for embedding models)"
    )


def _scaled(rate: Rate) -> Rate:
    f = EMBED_BATCH_FACTOR
    return Rate(rate.base * f, tuple((n, p * f) for n, p in rate.tiers))


def open_embed_ids(state: BatchState) -> set[str]:
    """Embedding line ids sitting in a batch not yet closed: never sent again meanwhile."""
    return {i for c in state.open_chunks() for r in state.read_jobs(c.local) for i in r["ids"]}


@dataclass(slots=True)
class _Line:
    """One pack as it goes into its batch."""

    row: dict[str, Any]
    line: bytes
    cost: float
    tokens: int
    inputs: int  # texts sent
    lines: int  # job lines (ids) in the pack


class EmbedSubmitter:
    """Packs the lines not yet done into batches and creates them, within the budgets."""

    def __init__(
        self,
        ctx: BatchContext,
        run: EmbedRun,
        *,
        batch_size: int | None,
        budget: RunBudget,
        windows: list[BudgetLedger],
    ) -> None:
        self.ctx = ctx
        self.run = run
        self.batch_inputs = min(BATCH_INPUTS, batch_size or BATCH_INPUTS)
        self.budget = budget
        self.windows = windows
        self.state = EmbedState(run.state.cache, run.state.cache_key)
        self.nonce = secrets.token_hex(4)
        self.prices: dict[ModelRef, Price | None] = {}
        self.batches: list[SubmittedBatch] = []
        self.jobs = self.inputs = self.skipped_open = self.left_online = 0
        self.from_cache = self.not_submitted = 0
        self.stopped_by: str | None = None
        self.window_refusal: Refusal | None = None
        self._seq = 0
        self._held = open_embed_ids(ctx.state)

    # -- which lines go ------------------------------------------------------------

    def _skip(self, job: EmbedJob) -> bool:
        run = self.run
        done = run.existing.done if run.existing else None
        if done is not None and done.fingerprint(job.id) is not None:
            return True
        if job.id in self._held:
            self.skipped_open += 1
            return True
        ref = run.resolve(job)
        rounds = self.ctx.state.rounds[job.id]
        if not embeds_by_batch(self.ctx.config.providers[ref.provider]) or (
            rounds >= self.ctx.config.max_attempts
        ):
            self.left_online += 1  # (`batch submit` refused such models before sending)
            return True
        return False

    def _caps(self, ref: ModelRef) -> EmbedCaps:
        caps = self.run.caps(ref)
        return replace(caps, inputs=min(caps.inputs, self.batch_inputs))

    def records(self) -> Iterator[tuple[int, EmbedJob | None]]:
        run = self.run
        assert run.plan is not None
        return parse_records(
            run.records(),
            run.parse_line,
            self._skip,
            run.plan.invalid_lines,
            run.notes,
            run.config.display_name,
        )

    # -- packs into chunks ---------------------------------------------------------

    async def submit(self) -> None:
        """Every pack into a chunk of its (model, dimensions); full chunks are created."""
        source = EmbedSource(self.records, self.run.resolve, self._caps, self.state)
        chunks: dict[tuple[ModelRef, int | None], list[_Line]] = {}
        for pj in source:
            pack = pj.request.embed
            assert isinstance(pack, EmbedPack)
            self.state._forget(pack)  # no later line's rows ride along: it is out
            if not pack.send_slots:  # every text in the cache: the online part writes it
                self.from_cache += len(set(pack.ids))
                continue
            item = self._line(pack, pj)
            chunk = chunks.setdefault((pack.model, pack.dimensions), [])
            if chunk and not self._room(pack.model, chunk, item):
                await self._flush(pack.model, chunk)
                chunk.clear()
            chunk.append(item)
        for (ref, _), chunk in chunks.items():
            if chunk:
                await self._flush(ref, chunk)

    def price(self, ref: ModelRef) -> Price | None:
        if ref not in self.prices:
            book = self.run.services.prices
            price, note = embed_batch_price(book, self.ctx.config, ref, self.ctx.clock.time())
            self.prices[ref] = price
            if note:
                self.ctx.notes.append(note)
        return self.prices[ref]

    def _line(self, pack: EmbedPack, pj: PreparedJob) -> _Line:
        self._seq += 1
        ref = pack.model
        sent = pack.send_slots
        texts = [pack.texts[i] for i in sent]
        cid = f"p{self._seq}_{self.nonce}"
        body = openai_body(ref.model, texts, pack.dimensions, "base64")
        line = self.ctx.client(ref.provider).encode(cid, body)
        worst = pj.input_estimates()[0]
        price = self.price(ref)
        row = {
            "cid": cid,
            "id": cid,
            "ids": pack.ids,
            "index": pack.index,
            "slot": pack.slot,
            "meta": pack.metadata,
            "n": len(pack.texts),
            "send": sent,
            "texts": texts,
            "dims": pack.dimensions,
            "known": {str(k): encode_vector(v) for k, v in pack.known.items()},
        }
        cost = 0.0 if price is None else price.cost(Usage(worst, 0))
        return _Line(row, line, cost, worst, len(sent), len(set(pack.ids)))

    def _room(self, ref: ModelRef, chunk: list[_Line], item: _Line) -> bool:
        client = self.ctx.client(ref.provider)
        if len(chunk) + 1 > client.max_requests:
            return False
        if sum(x.inputs for x in chunk) + item.inputs > self.batch_inputs:
            return False
        size = sum(len(x.line) + 1 for x in chunk) + len(item.line) + 1
        return size <= int(client.max_bytes * _BYTES_MARGIN)

    async def _flush(self, ref: ModelRef, chunk: list[_Line]) -> None:
        if self.stopped_by is not None:  # a cap held an earlier chunk back: this one too
            self.not_submitted += sum(x.lines for x in chunk)
            return
        chunk = self._fit(chunk)
        booked: list[dict[str, Any]] = []
        if chunk and self.windows:
            chunk, booked = await self._fit_windows(chunk)
        if chunk:
            await self._create(ref, chunk, booked)

    def _fit(self, chunk: list[_Line]) -> list[_Line]:
        """The head of ``chunk`` that the run's caps hold room for; the rest waits."""
        for i, item in enumerate(chunk):
            if not isinstance(self.budget.reserve_now(item.cost, item.tokens), Hold):
                self._held_back("budget", chunk[i:])
                return chunk[:i]
        return chunk

    async def _fit_windows(self, chunk: list[_Line]) -> tuple[list[_Line], list[dict[str, Any]]]:
        """The head of ``chunk`` the rolling windows have room for, booked there at its
        worst case now, and where (the chunk's intent keeps it: its real cost replaces
        the booking once the batch ends, as for chat batches: ``_batch.windows``)."""
        prefix = f"batch-{self.ctx.state.uid}-{self.nonce}"
        items = [(p.cost, p.tokens) for p in chunk]
        n, booked, refusal = await fit_windows(self.windows, items, prefix)
        if refusal is not None:
            self.window_refusal = refusal
        if n < len(chunk):
            self._held_back("budget_window", chunk[n:])
        return chunk[:n], booked

    def _held_back(self, why: str, rest: list[_Line]) -> None:
        self.stopped_by = self.stopped_by or why
        self.not_submitted += sum(x.lines for x in rest)

    async def _create(
        self, ref: ModelRef, chunk: list[_Line], booked: list[dict[str, Any]]
    ) -> None:
        inputs = sum(p.inputs for p in chunk)
        batch_id = await create_chunk(
            self.ctx, ref, self.ctx.client(ref.provider), chunk,
            price=self.prices.get(ref), nonce=self.nonce, booked=booked,
            extra={"inputs": inputs, "embed": True},
        )  # fmt: skip
        self.batches.append(SubmittedBatch(ref.provider, ref.model, batch_id, len(chunk)))
        self.jobs += sum(p.lines for p in chunk)
        self.inputs += inputs

    def report(self, skipped_done: int) -> SubmitReport:
        notes = self.ctx.notes
        if self.from_cache:
            notes.append(
                f"{self.from_cache} line(s) have every vector in the response cache; they "
                "were not submitted (the online part writes them for $0)"
            )
        if self.left_online:
            notes.append(
                f"{self.left_online} line(s) have no embeddings batch here (Gemini, sim, or "
                "out of batch rounds); they run online"
            )
        return SubmitReport(
            batches=self.batches,
            jobs=self.jobs,
            skipped_done=skipped_done,
            skipped_open=self.skipped_open,
            not_submitted=self.not_submitted,
            stopped_by=self.stopped_by,
            reserved_cost=self.ctx.state.reserved()[0],
            notes=notes,
            left_online=self.left_online,
            from_cache=self.from_cache,
            window_message=self.window_refusal.message if self.window_refusal else None,
        )


async def submit_embeddings(
    ctx: BatchContext, run: EmbedRun, *, batch_size: int | None
) -> SubmitReport:
    """The lines ``run.check_pass()`` left to do, by batch. The run has its services
    (ledgers) and its cache open; ``ctx`` holds the output's batch state."""
    from llmbatch._batch.context import recover

    cfg = ctx.config
    await recover(ctx)
    budget = RunBudget(cfg.max_cost, cfg.max_total_tokens)
    if run.existing is not None:
        budget.count_spent(run.existing.cost_usd, run.existing.tokens)
    budget.count_spent(ctx.state.billed_cost, ctx.state.billed_tokens)
    budget.hold_elsewhere(*ctx.state.reserved())
    windows = [x for x in run.budgets.ledgers if not isinstance(x, RunBudget)]
    sub = EmbedSubmitter(ctx, run, batch_size=batch_size, budget=budget, windows=windows)
    await sub.submit()
    assert run.plan is not None
    return sub.report(run.plan.skipped_done)
