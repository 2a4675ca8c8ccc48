"""The response cache as the runner uses it: keys once per job, hits, kept answers, single flight.

A hit answers a job before any budget or rate-limit slot is held; a complete,
valid answer is kept under the job's own question. Identical shareable questions
(temperature 0, sent) in flight together go out once: the others wait for the
first and take its answer from the cache.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio

from llmbatch._cache.records import encode_answer, hit_result
from llmbatch._cache.store import ResponseCache
from llmbatch._core.clock import Clock
from llmbatch._core.events import CacheHit, EventBus
from llmbatch._core.jobs import Request
from llmbatch._core.models import ModelRef
from llmbatch._core.results import JobResult
from llmbatch._engine.plan import PreparedJob
from llmbatch.providers._base import Answer

CUT = frozenset({"max_tokens", "length"})  # an answer cut short is never cached


@dataclass(slots=True)
class AnswerCache:
    """The runner's side of the response cache (``cache`` None: no cache)."""

    cache: ResponseCache | None
    key_of: Callable[[ModelRef, Request, str], str | bytes] | None
    clock: Clock
    bus: EventBus
    _flights: dict[str | bytes, anyio.Event] = field(default_factory=dict)  # shareable, in flight
    on: bool = field(init=False)  # a cache and a way to key it: asked twice a job

    def __post_init__(self) -> None:
        self.on = self.cache is not None and self.key_of is not None

    def key(self, pj: PreparedJob, ref: ModelRef) -> str | bytes:
        """The cache key of the job's own question to ``ref``, computed once."""
        key_of = self.key_of
        assert key_of is not None
        if ref is pj.chain[0]:
            key = pj.cache_key
            if key is None:
                key = pj.cache_key = key_of(ref, pj.request, pj.job.id)
            return key
        keys = pj.cache_keys
        if keys is None:
            keys = pj.cache_keys = {}
        key = keys.get(ref)
        if key is None:
            key = keys[ref] = key_of(ref, pj.request, pj.job.id)
        return key

    def prefetch(self, jobs: list[PreparedJob]) -> None:
        """Look the next jobs up at once (one query, not one a job)."""
        if self.cache is not None and self.key_of is not None:
            self.cache.prefetch([self.key(pj, ref) for pj in jobs for ref in pj.chain])

    def hit(self, pj: PreparedJob) -> JobResult | None:
        """The first model of the chain with a cached answer answers the job."""
        cache = self.cache
        if cache is None or self.key_of is None:
            return None
        for ref in pj.chain:
            key = pj.cache_key if ref is pj.chain[0] else None  # made by prefetch, as a rule
            found = cache.lookup(key if key is not None else self.key(pj, ref))
            if found is not None:
                now = self.clock.time()
                self.bus.emit(CacheHit(now, pj.job.id, ref.provider, ref.model, found.cost_usd))
                return hit_result(
                    found, job_id=pj.job.id, metadata=pj.job.metadata, fingerprint=pj.fingerprint
                )
        return None

    def keep(
        self, pj: PreparedJob, ref: ModelRef, answer: Answer, parsed: Any, cost: float | None
    ) -> None:
        """A complete, valid answer, kept under the job's own question."""
        if self.cache is None or self.key_of is None or answer.stop_reason in CUT:
            return
        value = encode_answer(
            answer.text, parsed, answer.usage, cost, answer.stop_reason, ref.model, ref.provider
        )
        key = pj.cache_key if ref is pj.chain[0] else None
        self.cache.store_encoded(key if key is not None else self.key(pj, ref), value, cost)

    def shareable(self, pj: PreparedJob) -> bool:
        """Whether the job's answer is shared across ids (so in-flight twins may wait)."""
        if not self.on:
            return False
        key = pj.cache_key  # made by hit() (or prefetch) already, as a rule
        if key is None:
            key = self.key(pj, pj.chain[0])
        return bool(getattr(key, "shared", False))

    async def single_flight(
        self, pj: PreparedJob, ask: Callable[[], Awaitable[JobResult | None]]
    ) -> JobResult | None:
        """Identical shareable questions in flight together: the first asks, the others
        wait for its answer and take it from the cache (if it failed, the next one asks)."""
        key = self.key(pj, pj.chain[0])
        while (flight := self._flights.get(key)) is not None:
            await flight.wait()
            found = self.hit(pj)
            if found is not None:
                return found
        flight = self._flights[key] = anyio.Event()
        try:
            return await ask()
        finally:
            del self._flights[key]
            flight.set()
