"""How long to wait before the next attempt of a job.

Exponential backoff with *equal jitter*: half of each step is fixed and half is
random, so the gaps after successive failures grow (full jitter can draw a near
zero gap after the fifth timeout as easily as after the first, and retries after
a shared outage then bunch up), while jobs that failed together still spread out.
A server's ``retry-after`` wins, capped at the backoff cap, plus a little jitter
so that every request told "1 s" does not come back in the same millisecond.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

RETRY_AFTER_JITTER_S = 0.25
# The first step's ceiling, doubled per failure. Read when a delay is drawn, so the
# test suite (whose fakes fail on purpose hundreds of times) can shorten it.
BASE_S = 0.5


@dataclass(slots=True)
class Backoff:
    """The retry-delay policy: ``delay(tries, retry_after)`` in seconds."""

    cap: float = 60.0  # RunConfig.backoff_cap
    base: float | None = None  # the first step's ceiling; None: BASE_S
    rng: random.Random = field(default_factory=random.Random)

    def delay(self, tries: int, retry_after: float | None = None) -> float:
        """The wait after the ``tries``-th failed attempt (from 1) of a job."""
        if retry_after is not None and retry_after >= 0:
            return min(retry_after, self.cap) + self.rng.uniform(0, RETRY_AFTER_JITTER_S)
        base = BASE_S if self.base is None else self.base
        ceiling = min(self.cap, base * 2.0 ** (max(tries, 1) - 1))
        half = ceiling / 2.0
        return half + self.rng.uniform(0, half)
