"""The embedding block of a run's report: inputs, tokens, requests, cost, vectors, dimensions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class EmbedReport:
    """What an embedding run sent and wrote (the run's jobs, above it, are its packs)."""

    inputs: int  # rows read to embed this run
    texts_sent: int  # distinct texts sent (repeats and cache hits are not)
    requests: int  # requests that carried texts
    tokens: int
    cost_usd: float
    vectors: int  # vectors written
    failed: int  # rows written as failed
    deduplicated: int  # rows whose text was already sent or known this run
    cache_hits: int  # texts the response cache answered
    dimensions: tuple[int, ...]
    skipped_done: int = 0  # rows the output held already

    @property
    def inputs_per_request(self) -> float:
        return self.texts_sent / self.requests if self.requests else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "inputs": self.inputs,
            "texts_sent": self.texts_sent,
            "requests": self.requests,
            "inputs_per_request": round(self.inputs_per_request, 1),
            "tokens": self.tokens,
            "cost_usd": round(self.cost_usd, 10),
            "vectors": self.vectors,
            "failed": self.failed,
            "deduplicated": self.deduplicated,
            "cache_hits": self.cache_hits,
            "dimensions": list(self.dimensions),
            "skipped_done": self.skipped_done,
        }

    def line(self) -> str:
        dims = ", ".join(str(d) for d in self.dimensions) or "—"
        return (
            f"{self.vectors:,} vectors ({dims} dimensions) from {self.inputs:,} inputs · "
            f"{self.texts_sent:,} texts in {self.requests:,} requests "
            f"({self.inputs_per_request:,.0f} a request) · {self.tokens:,} tokens · "
            f"${self.cost_usd:,.4f} · {self.deduplicated:,} repeats sent once · "
            f"{self.cache_hits:,} from the cache · {self.failed:,} failed"
        )
