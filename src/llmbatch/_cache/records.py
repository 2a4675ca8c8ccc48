"""What the response cache holds and tells: an answer as it was bought, a run's use of
the cache, the file's contents (``cache stats``), and a hit as a result line."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from llmbatch._core.usage import Usage

if TYPE_CHECKING:
    from llmbatch._core.results import JobResult


@dataclass(frozen=True, slots=True)
class CachedAnswer:
    """A complete, valid answer as it was bought."""

    text: str
    parsed: Any
    usage: Usage
    cost_usd: float | None  # what it cost then: what a hit saves
    stop_reason: str | None
    model: str
    provider: str
    created: float = 0.0  # wall clock; set by the cache on store

    def to_json(self) -> bytearray:
        """The answer as the cache stores it (:func:`encode_answer`)."""
        return encode_answer(
            self.text, self.parsed, self.usage, self.cost_usd, self.stop_reason,
            self.model, self.provider,
        )  # fmt: skip

    @classmethod
    def from_json(cls, raw: bytes | bytearray, created: float) -> CachedAnswer:
        d = orjson.loads(raw)
        return cls(
            text=d["text"],
            parsed=d.get("parsed"),
            usage=Usage.from_dict(d.get("usage")),
            cost_usd=d.get("cost_usd"),
            stop_reason=d.get("stop_reason"),
            model=str(d.get("model")),
            provider=str(d.get("provider")),
            created=created,
        )


def encode_answer(
    text: str,
    parsed: Any,
    usage: Usage,
    cost_usd: float | None,
    stop_reason: str | None,
    model: str,
    provider: str,
) -> bytearray:
    """An answer as the cache stores it (what :meth:`CachedAnswer.from_json` reads).

    Copied to its own size: orjson's bytes keep the buffer they were built in (8 KiB
    for a short answer, 128 KiB for a vector), and the cache holds a batch of them
    until it writes. The copy is a bytearray: the one blob type sqlite3 binds as it
    is (bytes go through its adapter registry first).

    What is empty is left out (no ``parsed``, token counts of 0), a tenth of the
    bytes of a short answer; :meth:`CachedAnswer.from_json`, in this version and
    earlier ones, reads a missing field as empty."""
    answer = {
        "text": text,
        "usage": usage.to_compact_dict(),
        "cost_usd": cost_usd,
        "stop_reason": stop_reason,
        "model": model,
        "provider": provider,
    }
    if parsed is not None:
        answer["parsed"] = parsed
    return bytearray(orjson.dumps(answer))


@dataclass(frozen=True, slots=True)
class CacheStatistics:
    """This run's use of the cache, for the report."""

    hits: int
    saved_usd: float
    stores: int
    disabled: str | None  # why it was turned off mid-run, if it was

    def to_dict(self) -> dict[str, Any]:
        return {"hits": self.hits, "saved_usd": round(self.saved_usd, 6)}


@dataclass(frozen=True, slots=True)
class CacheContents:
    """What the cache file holds, for ``llmbatch cache stats``."""

    path: str
    entries: int
    bytes: int
    hits: int  # over every run that used it
    saved_usd: float
    oldest: float | None
    newest: float | None
    shared: int = 0  # answers shared across job ids (temperature 0, sent)
    per_job: int = 0  # answers kept for their own job id (sampled)
    unrecorded: int = 0  # stored before llmbatch recorded which


def hit_result(
    answer: CachedAnswer, *, job_id: str, metadata: Any, fingerprint: str | None
) -> JobResult:
    """The result line of a job answered from the cache: nothing spent this run."""
    from llmbatch._core.results import JobResult
    from llmbatch._core.states import Status

    return JobResult(
        id=job_id,
        status=Status.OK,
        output=answer.text,
        parsed=answer.parsed,
        provider=answer.provider,
        model=answer.model,
        usage=Usage(),
        cost_usd=0.0,
        latency_ms=None,
        ttft_ms=None,
        attempts=0,
        error=None,
        metadata=metadata,
        stop_reason=answer.stop_reason,
        fingerprint=fingerprint,
        cache={"hit": True, "saved_usd": answer.cost_usd},
    )
