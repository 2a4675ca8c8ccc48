"""Embedding runs on the one engine: inputs packed into prepared jobs, one answer per pack.

    lines ──EmbedSource──▶ PreparedJob(pack) ──engine──▶ JobResult(pack) ──EmbedSink──▶ rows

``EmbedSource`` is a source transform: it reads embedding lines and packs their
texts, per model and dimensions, up to the provider's count and token caps
(``_core.embed.CAPS``). A text seen before in the run is not sent again: its row
points at the slot of the pack that carries it (in flight: the row rides along)
or takes the vector kept from a written pack (``Recent``) or the response cache.
Each pack is a ``PreparedJob`` whose request carries the pack (``Request.embed``)
and whose input estimates are set from its texts: budgets reserve its worst case,
the rate limiter takes its tokens, a 429 retries that pack alone.

``EmbedAdapter`` wraps each provider the engine uses: a pack goes to the
provider's embeddings endpoint (``providers.embeddings``); anything else passes.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from llmbatch._core.embed import EmbedCaps, EmbedJob, EmbedPack, decode_vector, token_bound
from llmbatch._core.exceptions import ProviderError
from llmbatch._core.jobs import Job, LineError, Request
from llmbatch._core.models import ModelRef
from llmbatch._core.usage import Usage
from llmbatch._engine.plan import PreparedJob
from llmbatch.providers._base import Answer, Provider
from llmbatch.providers._errors import unexpected_shape
from llmbatch.providers.embeddings import embed

if TYPE_CHECKING:
    from llmbatch._cache.store import ResponseCache

GroupKey = tuple[ModelRef, int | None]


@dataclass(slots=True)
class EmbedCounts:
    """What the embedding run sent and wrote (the report's embedding block)."""

    inputs: int = 0  # rows read to embed this run
    texts_sent: int = 0
    requests: int = 0  # requests that carried texts
    tokens: int = 0
    deduplicated: int = 0  # rows whose text was sent once for several
    cache_hits: int = 0  # texts answered by the response cache
    vectors: int = 0  # vectors written
    failed: int = 0  # rows written as failed
    cost_usd: float = 0.0
    dimensions: set[int] = field(default_factory=set)


class EmbedState:
    """What the source and the sink share: where each text of the run was sent, the
    vectors of packs written lately (up to ``keep_bytes``), the response cache.

    ``seen[group][hash]`` is the pack and slot that carries a text. While that pack
    is not written, a repeat rides along in it; once written, its matrix is kept
    until ``keep_bytes`` of newer packs push it out (a whole pack at a time), and a
    repeat takes its vector from there; after that, the text is sent again (or found
    in the response cache).
    """

    def __init__(
        self,
        cache: ResponseCache | None = None,
        cache_key: Callable[[ModelRef, int | None, str], str | bytes] | None = None,
        keep_bytes: int = 8 << 20,
    ) -> None:
        self.seen: dict[GroupKey, dict[int, tuple[EmbedPack, int]]] = {}
        self.kept: deque[tuple[EmbedPack, Any]] = deque()
        self.kept_bytes = 0
        self.keep_bytes = keep_bytes
        self.cache = cache
        self.cache_key = cache_key
        self.counts = EmbedCounts()

    def written(self, pack: EmbedPack, matrix: Any) -> None:
        """A pack's rows are on disk: its vectors are kept a while for repeats."""
        pack.done = True
        if matrix is None:
            self._forget(pack)
            return
        if not pack.hashes:  # a batch's pack (fetch): no text of it is looked up again
            if self.cache is not None and self.cache_key is not None:
                self._to_cache(pack, matrix)
            return
        pack.kept = matrix
        self.kept.append((pack, matrix))
        self.kept_bytes += matrix.nbytes
        while self.kept_bytes > self.keep_bytes and len(self.kept) > 1:
            old, m = self.kept.popleft()
            self.kept_bytes -= m.nbytes
            self._forget(old)
        if self.cache is not None and self.cache_key is not None:
            self._to_cache(pack, matrix)

    def _forget(self, pack: EmbedPack) -> None:
        seen = self.seen.get((pack.model, pack.dimensions), {})
        for h in pack.hashes:
            entry = seen.get(h)
            if entry is not None and entry[0] is pack:
                del seen[h]
        pack.kept = None

    def _to_cache(self, pack: EmbedPack, matrix: Any) -> None:
        from llmbatch._cache.records import CachedAnswer
        from llmbatch._core.embed import encode_vector

        assert self.cache is not None and self.cache_key is not None
        m = pack.model
        for slot in pack.send_slots:
            text = pack.texts[slot]
            kept = CachedAnswer(
                encode_vector(matrix[slot]), None, Usage(), 0.0, "embedded", m.model, m.provider
            )
            self.cache.store(self.cache_key(m, pack.dimensions, text), kept)


class EmbedSource:
    """Embedding lines in, packs out (a source transform for the engine)."""

    def __init__(
        self,
        records: Callable[[], Iterator[tuple[int, EmbedJob | None]]],
        resolve: Callable[[EmbedJob], ModelRef],
        caps: Callable[[ModelRef], EmbedCaps],
        state: EmbedState,
        *,
        dedupe: bool = True,
    ) -> None:
        self.records = records
        self.resolve = resolve
        self.caps = caps
        self.state = state
        self.dedupe = dedupe
        self._seq = 0
        self.notes: list[str] = []

    def __iter__(self) -> Iterator[PreparedJob]:
        building: dict[GroupKey, EmbedPack] = {}
        for _, job in self.records():
            if job is None:
                continue
            ref = self.resolve(job)
            group = (ref, job.dimensions)
            pack = building.get(group)
            caps = self.caps(ref)
            if pack is None:
                pack = building[group] = self._new(ref, job.dimensions)
            elif not self._fits(pack, job, caps):
                yield self._prepared(pack)
                pack = building[group] = self._new(ref, job.dimensions)
            self._add(pack, job, group)
        for pack in building.values():
            if pack.rows:
                yield self._prepared(pack)

    def _new(self, ref: ModelRef, dims: int | None) -> EmbedPack:
        self._seq += 1
        return EmbedPack(self._seq, ref, dims)

    @staticmethod
    def _fits(pack: EmbedPack, job: EmbedJob, caps: EmbedCaps) -> bool:
        if len(pack.texts) + len(job.texts) > caps.inputs:
            return False
        more = sum(token_bound(t) for t in job.texts)
        return pack.tokens_bound + more <= caps.tokens

    def _add(self, pack: EmbedPack, job: EmbedJob, group: GroupKey) -> None:
        state = self.state
        seen = state.seen.get(group)
        if seen is None:
            seen = state.seen[group] = {}
        counts = state.counts
        dedupe = self.dedupe
        for i, text in enumerate(job.texts):
            h = hash(text)  # this process only: the index lives one run
            target, slot = pack, -1
            entry = seen.get(h) if dedupe else None
            if entry is not None and entry[0].texts[entry[1]] == text:
                counts.deduplicated += 1
                if not entry[0].done:
                    target, slot = entry  # rides along in the pack that carries it
                else:
                    slot = self._slot(pack, text, h)
                    pack.known[slot] = entry[0].kept[entry[1]]
            if slot < 0:
                slot = self._slot(pack, text, h)
                pack.tokens_bound += token_bound(text)
                seen[h] = (pack, slot)
            target.ids.append(job.id)
            target.index.append(i)
            target.slot.append(slot)
            target.metadata.append(job.metadata)
        counts.inputs += len(job.texts)

    @staticmethod
    def _slot(pack: EmbedPack, text: str, h: int) -> int:
        pack.texts.append(text)
        pack.hashes.append(h)
        return len(pack.texts) - 1

    def _from_cache(self, pack: EmbedPack) -> None:
        state = self.state
        cache, key_of = state.cache, state.cache_key
        if cache is None or key_of is None:
            return
        todo = pack.send_slots
        keys = [key_of(pack.model, pack.dimensions, pack.texts[i]) for i in todo]
        cache.prefetch(keys)
        for slot, key in zip(todo, keys, strict=True):
            found = cache.lookup(key)
            if found is not None:
                pack.known[slot] = decode_vector(found.text)
                state.counts.cache_hits += 1

    def _prepared(self, pack: EmbedPack) -> PreparedJob:
        self._from_cache(pack)
        sent = pack.send_slots
        worst = est = 8
        for i in sent:
            text = pack.texts[i]
            worst += len(text) if text.isascii() else len(text.encode())
            est += len(text) // 4 + 1
        ref = pack.model
        request = Request(
            messages=[{"role": "user", "content": f"embeddings pack {pack.seq}"}],
            model=ref,
            max_tokens=1,
            embed=pack,
        )
        job = Job(f"pack-{pack.seq}", pack.seq, request, pack)
        pj = PreparedJob(job, request, [ref], pack_fingerprint(pack))
        pj._estimates = (worst, est)
        return pj


def pack_fingerprint(pack: EmbedPack) -> str:
    data = f"{pack.model}|{pack.dimensions}|{pack.seq}".encode()
    return hashlib.blake2b(data, digest_size=8).hexdigest()


class EmbedAdapter:
    """A provider as the engine sees it in an embedding run: packs go to its embeddings."""

    def __init__(self, inner: Provider, counts: EmbedCounts) -> None:
        self.inner = inner
        self.name = inner.name
        self.notes = inner.notes
        self.counts = counts
        self.honours_deadline = getattr(inner, "honours_deadline", False)

    async def send(self, model: str, request: Request, time_limit: float) -> Answer:
        pack = request.embed
        if not isinstance(pack, EmbedPack):
            return await self.inner.send(model, request, time_limit)
        sent = pack.send_slots
        if not sent:  # every text known already: nothing to ask
            pack.vectors = None
            return Answer("", Usage(), "embedded", 0.0, None)
        texts = [pack.texts[i] for i in sent]
        self.counts.requests += 1
        got = await embed(self.inner, model, texts, pack.dimensions, time_limit)
        vectors = got.vectors
        if vectors.shape[0] != len(texts):
            raise unexpected_shape(f"{vectors.shape[0]} embeddings for {len(texts)} inputs")
        if pack.dimensions is not None and vectors.shape[1] != pack.dimensions:
            raise _wrong_dimensions(vectors.shape[1], pack.dimensions)
        pack.vectors = vectors
        pack.tokens = got.tokens
        self.counts.texts_sent += len(texts)
        self.counts.tokens += got.tokens
        usage = Usage(got.tokens, 0)
        return Answer("", usage, "embedded", got.latency_ms, None, got.request_id, got.limits)

    async def aclose(self) -> None:
        await self.inner.aclose()


def _wrong_dimensions(got: int, asked: int) -> ProviderError:
    err = unexpected_shape(f"vectors of {got} dimensions; {asked} were asked for")
    err.retryable = False
    return err


def parse_records(
    lines: Iterator[tuple[int, bytes]],
    parse: Callable[[bytes, int], EmbedJob],
    skip: Callable[[EmbedJob], bool],
    invalid: set[int],
    notes: list[str],
    display: str,
) -> Iterator[tuple[int, EmbedJob | None]]:
    """The lines as jobs to embed: invalid, done and other shards' lines left out."""
    for lineno, raw in lines:
        if lineno in invalid:
            continue
        try:
            job = parse(raw, lineno)
        except LineError as exc:
            notes.append(f"{display}:{lineno}: {exc} (skipped)")
            continue
        if skip(job):
            continue
        yield lineno, job
