"""The report's ``batch`` block: jobs answered by provider batches, their cost and saving."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmbatch._core.models import ModelRef
from llmbatch._core.pricing import PriceBook
from llmbatch._core.usage import Usage
from llmbatch._io.batch_state import BatchState
from llmbatch._io.resume import iter_result_lines


@dataclass(frozen=True, slots=True)
class BatchPart:
    """What the batch phase of a run did: jobs answered by batch and their cost."""

    jobs: int
    cost_usd: float
    online_cost_usd: float
    canceled_at_deadline: int
    stopped_by_budget: bool

    @property
    def saved_usd(self) -> float:
        return self.online_cost_usd - self.cost_usd

    def to_dict(self) -> dict[str, Any]:
        return {
            "jobs": self.jobs,
            "cost_usd": round(self.cost_usd, 6),
            "online_cost_usd": round(self.online_cost_usd, 6),
            "saved_usd": round(self.online_cost_usd - self.cost_usd, 6),
            "canceled_at_deadline": self.canceled_at_deadline,
        }


def batch_part_from_results(path: Path, prices: dict[str, Any] | None = None) -> BatchPart:
    """The report's ``batch`` block from a results file: lines that carry ``"batch"``."""

    book = PriceBook(prices or {})
    state = BatchState.load(path)
    # Billed by requests that came back without an answer: in no line, paid all the same.
    jobs, cost, online = 0, state.billed_cost, state.billed_online
    for _, _, line, _ in iter_result_lines(path):
        if line is None or "batch" not in line:
            continue
        jobs += 1
        c = float(line.get("cost_usd") or 0.0)
        cost += c
        ref = ModelRef(str(line.get("provider")), str(line.get("model")))
        o = book.cost(ref, Usage.from_dict(line.get("usage")))
        online += c if o is None else o
    return BatchPart(jobs, cost, online, 0, False)
