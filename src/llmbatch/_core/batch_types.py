"""What the provider Batch API clients hand the batch machinery, in one shape for both."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from llmbatch._core.exceptions import ProviderError
from llmbatch._core.usage import Usage

# Item kinds: "ok" answered (billed); "error" answered with an error (may be billed);
# "expired" / "canceled" not run (not billed): they go back to pending.
ITEM_KINDS = ("ok", "error", "expired", "canceled")


@dataclass(frozen=True, slots=True)
class BatchInfo:
    """One provider batch as last seen."""

    id: str
    status: str  # the provider's own word ("in_progress", "completed", "ended", ...)
    ended: bool  # nothing more will happen: results (if any) can be read
    total: int
    succeeded: int
    failed: int  # errored, expired and canceled together
    created_at: float
    expires_at: float | None
    output_ref: str | None = None  # OpenAI output_file_id / Anthropic results_url
    error_ref: str | None = None  # OpenAI error_file_id
    batch_error: str | None = None  # a whole-batch failure, e.g. "token_limit_exceeded: ..."
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def results_ready(self) -> bool:
        """Ended, and the results can be downloaded (OpenAI may lag with the output file)."""
        if not self.ended:
            return False
        if self.batch_error is not None:
            return True
        return self.output_ref is not None or self.succeeded == 0


@dataclass(slots=True)
class ItemResult:
    """The outcome of one request inside a batch."""

    custom_id: str
    kind: str  # one of ITEM_KINDS
    text: str | None = None
    usage: Usage | None = None
    stop_reason: str | None = None
    error: ProviderError | None = None
    vectors: Any = None  # an embeddings answer: a float32 matrix, one row per input


class BatchClient(Protocol):
    """One provider's Batch API. Raises ProviderError subclasses only."""

    name: str
    max_requests: int
    max_bytes: int

    def encode(self, custom_id: str, body: dict[str, object]) -> bytes:
        """One request as it goes into the batch (a JSONL line, or a JSON array element)."""

    async def create(self, key: str, lines: list[bytes]) -> BatchInfo: ...

    async def find(self, key: str, created_after: float, count: int) -> list[BatchInfo]:
        """Batches that may be the one an interrupted create made (recovery)."""

    async def get(self, batch_id: str) -> BatchInfo: ...

    async def cancel(self, batch_id: str) -> BatchInfo: ...

    async def results(self, info: BatchInfo) -> list[ItemResult]: ...

    async def aclose(self) -> None: ...
