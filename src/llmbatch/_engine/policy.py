"""What happens after an attempt: retry, repair, fall back or stop — decided synchronously.

The policy reads an attempt's outcome and the job's counters and answers a
``Verdict``; it never awaits, sleeps or touches a limiter, so every rule here is
testable without an event loop. The runner (``_engine.attempts``) carries the
verdict out: it waits the delay, sends the repair turn, moves to the next model.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from llmbatch._core.exceptions import ProviderError


class Step(enum.Enum):
    """The runner's next step after one attempt."""

    RESEND = "resend"  # a setting of ours was refused and changed: send again now, uncounted
    RETRY = "retry"  # a transient fault: wait ``delay``, then the same model again
    NEXT_MODEL = "next_model"  # this model is done for the job: the fallback, if any
    FAIL = "fail"  # the job ends failed on this model
    AUTH = "auth"  # refused authentication: the runner decides (count, stop, withhold)


@dataclass(frozen=True, slots=True)
class Verdict:
    step: Step
    delay: float = 0.0


RESEND = Verdict(Step.RESEND)
NEXT_MODEL = Verdict(Step.NEXT_MODEL)
FAIL = Verdict(Step.FAIL)
AUTH = Verdict(Step.AUTH)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Retries only transient faults, at most ``max_attempts`` tries per model."""

    max_attempts: int
    backoff: Callable[[int, float | None], float]  # (tries so far, retry-after) -> seconds

    def after_error(
        self, err: ProviderError, tries: int, *, has_next: bool, breaker_open: bool
    ) -> Verdict:
        """``tries``: counted attempts on this model so far, this one included."""
        if err.retry_now:
            return RESEND
        if err.error_type == "auth":
            return AUTH
        if not err.retryable:
            return FAIL
        if tries >= self.max_attempts or (has_next and breaker_open):
            return NEXT_MODEL
        return Verdict(Step.RETRY, float(self.backoff(tries, err.retry_after)))


class Repair(enum.Enum):
    """After an answer that misses the schema."""

    ASK_AGAIN = "ask_again"  # the repair turn: the answer and what was wrong, asked again
    GIVE_UP = "give_up"  # no repairs left: the job fails schema_invalid


def after_schema_miss(repairs_left: int) -> Repair:
    return Repair.ASK_AGAIN if repairs_left > 0 else Repair.GIVE_UP
