"""The records ``RateLearner`` keeps: a change of the learned rate, a cut on trial, a spent
quota being measured, and one window of outcomes."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RateChange:
    """The learned rate moved (requests per second; None: no limit)."""

    before: float | None
    after: float | None
    reason: str
    hold_until: float | None = None  # send nothing before this: the quota is spent


@dataclass(slots=True)
class Trial:
    at: float  # counting starts here (after any pause); judged a HORIZON later or more
    rate_before: float | None
    hot_before: float | None
    ratio: float  # pace-429 share of outcomes when we cut
    sent_rate: float  # sends per second when we cut
    counts: list[int]  # since ``at``: ok, pace 429s, noise 429s, sends


@dataclass(slots=True)
class Measure:
    """A spent quota being measured: the successes one quota let through, until it frees."""

    first: float  # the oldest request sent within a horizon when the quota ran out
    until: float  # nothing is sent before this
    span_end: float  # the quota surely freed by then (a retry-after less its rounding)
    ok: int  # successes from ``first`` on, so far
    rate_before: float | None  # the rate before the hold
    precise: bool = False  # a sub-second retry-after said when the quota frees


@dataclass(slots=True)
class Window:
    start: float
    ok: int = 0
    pace: int = 0
    noise: int = 0
    sends: int = 0
