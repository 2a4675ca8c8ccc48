"""What ``batch submit`` did: the batches it created, the jobs it held back, and why."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class SubmittedBatch:
    provider: str
    model: str
    id: str
    jobs: int


@dataclass(frozen=True, slots=True)
class SubmitReport:
    """What ``batch submit`` did."""

    batches: list[SubmittedBatch]
    jobs: int
    skipped_done: int
    skipped_open: int
    not_submitted: int  # left out by the budget
    stopped_by: str | None
    reserved_cost: float
    notes: list[str] = field(default_factory=list)
    left_online: int = 0  # no model of the chain has a Batch API (``run --mode``)
    from_cache: int = 0  # answered by the response cache: left to the run, never submitted
    window_message: str | None = None  # a rolling window had no room for the rest
    stuck: int = 0  # jobs pending from earlier batches that this submit could not send

    @property
    def exit_code(self) -> int:
        """3 budget, 4 a rolling window full; 1 nothing sent while pending jobs remain
        that submit cannot send (a cron loop "fetch, 6 → submit" must end); else 0."""
        if self.stopped_by in ("budget", "budget_window"):
            return {"budget": 3, "budget_window": 4}[self.stopped_by]
        return 1 if self.stuck and not self.jobs else 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "batches": [vars_of(b) for b in self.batches],
            "jobs": self.jobs,
            "skipped_done": self.skipped_done,
            "skipped_open": self.skipped_open,
            "not_submitted": self.not_submitted,
            "stopped_by": self.stopped_by,
            "reserved_cost_usd": round(self.reserved_cost, 6),
            "left_online": self.left_online,
            "from_cache": self.from_cache,
            "stuck_pending": self.stuck,
            "notes": self.notes,
        }


def vars_of(b: SubmittedBatch) -> dict[str, Any]:
    return {"provider": b.provider, "model": b.model, "id": b.id, "jobs": b.jobs}
