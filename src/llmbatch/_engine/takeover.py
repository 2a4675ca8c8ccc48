"""What a run takes over from the provider batches of its output.

A job the batches left unwritten goes on online where they left it: at its
place in the model chain (a model that failed for good is not asked again), and
with a paid batch answer that missed the schema repaired, not asked again. The
repair is the ordinary repair turn of ``_attempts``: it counts against
``--max-attempts`` / ``--repair-attempts``, its cost is held like any attempt's,
and the job's one line carries both costs and its ``batch`` origin.

The batch cost that sits in no result line (billed requests that came back
without an answer, answers awaiting repair) counts against ``--max-cost``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmbatch._core.events import Event, JobEnded, RunEnded
from llmbatch._core.usage import Usage
from llmbatch._engine.plan import BatchSeed
from llmbatch._io.batch_state import BatchState, LineFingerprint


def seed_from_repair(e: dict[str, Any]) -> BatchSeed:
    return BatchSeed(
        fingerprint=e.get("fp"),
        position=int(e.get("pos") or 0),
        text=str(e.get("text") or ""),
        problem=str(e.get("problem") or ""),
        usage=Usage.from_dict(e.get("usage")),
        cost=None if e.get("cost") is None else float(e["cost"]),
        rounds=int(e.get("rounds") or 1),
        batch=e.get("batch"),
    )


def load_seeds(state: BatchState, line_fp: LineFingerprint) -> dict[str, BatchSeed]:
    """Seeds for every job not yet written that the batches moved on or answered badly."""
    seeds = {
        job_id: BatchSeed(fingerprint=state.position_fps.get(job_id), position=pos)
        for job_id, pos in state.positions.items()
        if pos and line_fp(job_id) is None
    }
    for job_id, e in state.pending_repairs(line_fp).items():
        seeds[job_id] = seed_from_repair(e)
    return seeds


class RepairRecorder:
    """Marks repaired jobs in the batch state at the end of the run, once their lines
    (holding the batch answers' cost) are synced: a mark never outlives its line on a
    power cut. Killed before that, the lines themselves still tell (same fingerprint).
    A job that changed since runs anew, and stays unmarked."""

    def __init__(self, state: BatchState, seeds: dict[str, BatchSeed]) -> None:
        self.state = state
        self.origins = {k: s.batch for k, s in seeds.items() if s.repairs}
        self.done: list[str] = []

    def flush(self) -> None:
        """Write the marks; call it only once the output is synced."""
        self.state.append_many([{"ev": "repaired", "id": i} for i in self.done])
        self.done = []

    def emit(self, event: Event) -> None:
        if isinstance(event, RunEnded):  # emitted after the writer's last fsync
            self.flush()
            return
        if not isinstance(event, JobEnded):
            return
        r = event.result
        if r.id in self.origins and r.batch is not None and r.batch == self.origins[r.id]:
            del self.origins[r.id]
            self.done.append(r.id)


@dataclass(frozen=True, slots=True)
class BatchCarry:
    """What an online run on an output takes from its batch state."""

    seeds: dict[str, BatchSeed]
    spent_cost: float
    spent_tokens: int
    recorder: RepairRecorder | None


def batch_carry(output: Path | None, line_fp: LineFingerprint) -> BatchCarry | None:
    """The output's batch state as the online run needs it; None when it has none."""
    if output is None or not BatchState(output).exists:
        return None
    state = BatchState.load(output, writable=True)  # the run holds the output lock
    seeds = load_seeds(state, line_fp)
    cost, tokens = state.spent(line_fp)
    recorder = RepairRecorder(state, seeds) if any(s.repairs for s in seeds.values()) else None
    return BatchCarry(seeds, cost, tokens, recorder)
