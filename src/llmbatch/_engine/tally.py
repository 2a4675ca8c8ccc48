"""What one job's attempts keep: the room each holds, what the job spent, each request sent.

Also the schema repair turn: the same question, the invalid answer and what was wrong.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from llmbatch._core.exceptions import ProviderError
from llmbatch._core.jobs import Request
from llmbatch._core.models import ModelRef
from llmbatch._core.results import JobResult, ResultError
from llmbatch._core.states import Status
from llmbatch._core.usage import Usage
from llmbatch._engine.plan import BatchSeed, PreparedJob
from llmbatch.providers._base import Answer


@dataclass(slots=True)  # one an attempt: not frozen, whose init costs 3× (never changed)
class Reservation:
    """What one attempt holds before it is sent."""

    cost: float  # worst case: input as UTF-8 bytes (never short) + max_tokens
    budget_tokens: int
    input_tokens: int  # what the providers' limiters count: an estimate + max_tokens
    output_tokens: int


@dataclass(slots=True)
class Tally:
    """What one job has spent and seen so far, over all its attempts and models."""

    pj: PreparedJob
    usage: Usage = field(default_factory=Usage)
    cost: float | None = 0.0
    attempts: int = 0
    carried: int = 0  # attempts made before this run (a batch's rounds), in ``attempts``
    repairs: int = 0
    fallbacks: int = 0
    errors: dict[str, int] = field(default_factory=dict)  # failed attempts by error.type
    last_error: ResultError | None = None
    last_text: str | None = None

    def add_spend(self, usage: Usage, cost: float | None) -> None:
        self.usage.add(usage)
        self.cost = None if (cost is None or self.cost is None) else self.cost + cost

    def failed_attempt(self, error_type: str) -> None:
        self.errors[error_type] = self.errors.get(error_type, 0) + 1

    def result(
        self,
        status: Status,
        ref: ModelRef,
        *,
        error: ResultError | None = None,
        output: str | None = None,
    ) -> JobResult:
        """The result line of a job that got no usable answer (``answered`` for one that
        did); a failed one keeps the last error and text unless ``error``/``output`` say
        otherwise. The tally is done with: its counts go in as they are."""
        job = self.pj.job
        failed = status is Status.FAILED
        if failed:
            error = error if error is not None else self.last_error
            output = output if output is not None else self.last_text
        return JobResult(
            id=job.id,
            status=status,
            output=output,
            parsed=None,
            provider=ref.provider,
            model=ref.model,
            usage=self.usage,
            cost_usd=self.cost,
            latency_ms=None,
            ttft_ms=None,
            attempts=self.attempts,
            error=error,
            metadata=job.metadata,
            input=job.input,
            stop_reason=None,
            fingerprint=self.pj.fingerprint,
            attempt_errors=self.errors,
            repairs=self.repairs,
            fallbacks=self.fallbacks,
            prefix_group=self.pj.prefix.key if self.pj.prefix is not None else None,
        )

    def answered(
        self,
        status: Status,
        ref: ModelRef,
        answer: Answer,
        parsed: Any = None,
        error: ResultError | None = None,
    ) -> JobResult:
        """The result of a job that got an answer (valid: ok; else ``error`` says why)."""
        pj = self.pj
        job = pj.job
        return JobResult(
            job.id, status, answer.text, parsed, ref.provider, ref.model, self.usage,
            self.cost, answer.latency_ms, answer.ttft_ms, self.attempts, error,
            job.metadata, answer.stop_reason, pj.fingerprint, self.errors, self.repairs,
            self.fallbacks, job.input,
            prefix_group=pj.prefix.key if pj.prefix is not None else None,
        )  # fmt: skip


class NotWritten:
    """The job ends without a result line: it runs again on the next run."""


NOT_WRITTEN = NotWritten()


@dataclass(slots=True)
class Sent:
    """One request that went out, and what came of it."""

    outcome: Answer | ProviderError
    started: float  # wall clock
    usage: Usage | None
    cost: float | None
    repair: bool
    request: Request | None = None  # kept only for --log-prompts


REPAIR_INSTRUCTION = (
    "Your previous answer is not valid against the required JSON Schema: {problem}. "
    "Answer again with only the corrected JSON value, no prose and no code fences."
)


def repair_request(request: Request, bad_answer: str, problem: str) -> Request:
    """The same question with the invalid answer and the validation error as a follow-up turn."""
    turns = [
        {"role": "assistant", "content": bad_answer or "(empty answer)"},
        {"role": "user", "content": REPAIR_INSTRUCTION.format(problem=problem)},
    ]
    return Request(
        messages=request.messages + turns,
        system=request.system,
        model=request.model,
        max_tokens=request.max_tokens,
        temperature=request.temperature,
        schema=request.schema,
        wire_format=request.wire_format,
        body=request.body,
        appended=(request.appended or []) + turns,
        cache=request.cache,  # the same prefix: a repair reads it from the provider's cache
    )


def begin_from_seed(
    seed: BatchSeed, tally: Tally, repair_attempts: int
) -> tuple[list[ModelRef], Request | JobResult | None]:
    """Where a job goes on after its batch rounds: the chain left to try and the first
    request (a repair turn of a paid answer that missed the schema), or the job's end."""
    pj = tally.pj
    start = min(seed.position, len(pj.chain) - 1)
    chain = pj.chain[start:]
    tally.fallbacks = start
    if seed.text is None:
        return chain, None
    tally.add_spend(seed.usage or Usage(), seed.cost)
    tally.attempts = tally.carried = seed.rounds
    tally.last_text = seed.text
    if repair_attempts <= 0:
        error = ResultError.schema_invalid(seed.problem)
        return chain, tally.result(Status.FAILED, chain[0], error=error, output=seed.text)
    tally.repairs += 1
    return chain, repair_request(pj.request, seed.text, seed.problem)
