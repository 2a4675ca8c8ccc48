"""How long to wait before retrying a failed attempt."""

from __future__ import annotations

import random


def backoff_delay(
    tries: int, retry_after: float | None, *, cap: float = 60.0, rng: random.Random | None = None
) -> float:
    """Exponential with full jitter, capped; the server's retry-after wins."""
    r = rng or random
    if retry_after is not None and retry_after >= 0:
        return min(retry_after, cap) + r.uniform(0, 0.25)
    ceiling = min(cap, 0.5 * (2 ** (tries - 1)))
    return r.uniform(0, ceiling)
