"""What the online run takes over from the provider batches of its output.

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
from typing import TYPE_CHECKING, Any

from llmbatch._core.events import Event, JobEnded, RunEnded
from llmbatch._core.models import ModelRef
from llmbatch._core.results import JobResult
from llmbatch._core.usage import Usage
from llmbatch._engine.tally import Tally, repair_request
from llmbatch._io.batch_state import BatchState, LineFingerprint

if TYPE_CHECKING:
    from llmbatch._budget.ledger import RunBudget
    from llmbatch._config.settings import RunConfig
    from llmbatch._core.events import EventBus
    from llmbatch._core.jobs import Request
    from llmbatch._engine.attempts import JobRunner
    from llmbatch._io.resume import ExistingOutput


def schema_error(problem: str) -> dict[str, Any]:
    """The error of a line whose answer still misses the schema."""
    return {
        "type": "schema_invalid",
        "message": f"the answer does not match the schema: {problem}",
        "status": None,
    }


@dataclass(frozen=True, slots=True)
class BatchSeed:
    """Where one job resumes online after its batch rounds."""

    fingerprint: str | None  # the job's, when it went to the batch (a changed job starts anew)
    position: int = 0  # its place in the model chain
    text: str | None = None  # a paid batch answer that missed the schema
    problem: str = ""
    usage: Usage | None = None
    cost: float | None = 0.0
    rounds: int = 0
    batch: dict[str, str] | None = None  # the result line's ``batch`` field

    @property
    def repairs(self) -> bool:
        return self.text is not None

    def begin(
        self, tally: Tally, repair_attempts: int
    ) -> tuple[list[ModelRef], Request | JobResult | None]:
        """The chain left to try and the first request (a repair turn), or the job's end."""
        pj = tally.pj
        start = min(self.position, len(pj.chain) - 1)
        chain = pj.chain[start:]
        tally.fallbacks = start
        if self.text is None:
            return chain, None
        tally.add_spend(self.usage or Usage(), self.cost)
        tally.attempts = tally.carried = self.rounds
        tally.last_text = self.text
        if repair_attempts <= 0:
            error = schema_error(self.problem)
            return chain, tally.result("failed", chain[0], error=error, output=self.text)
        tally.repairs += 1
        return chain, repair_request(pj.request, self.text, self.problem)


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


def take_over_batches(
    config: RunConfig,
    existing: ExistingOutput | None,
    runner: JobRunner,
    budget: RunBudget,
    bus: EventBus,
) -> None:
    """The engine's hook: seed the runner, count the batch spend, record repairs done."""
    if config.fresh or existing is None:
        return
    carry = batch_carry(config.output, existing.done.fingerprint)
    if carry is None:
        return
    runner.seeds = carry.seeds
    budget.spent_cost += carry.spent_cost
    budget.spent_tokens += carry.spent_tokens
    if carry.recorder is not None:
        bus.add(carry.recorder)
