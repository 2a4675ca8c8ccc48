"""``run --ray``'s "rate limits in force": each actor's limits, as one run's report has them.

Every actor keeps its own limiter per model (its share of ``--rpm``/``--tpm`` and
``[limits]``, or what it learned from its own 429s and headers), so the cluster's
pace is their sum; with ``--shared`` each actor describes the one limit all of them
hold in Redis, so it is that limit, once. What each actor met (429s, back-off, requests
sent) adds up either way.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

_ADDED = ("rate_limited", "backoff_s", "sent")


def merge_limits(parts: Iterable[Mapping[str, Mapping[str, Any]]]) -> dict[str, dict[str, Any]]:
    """The actors' ``RunReport.limits`` (model → what its limiter says) as one."""
    by_model: dict[str, list[Mapping[str, Any]]] = {}
    for part in parts:
        for model, described in part.items():
            by_model.setdefault(model, []).append(described)
    return {model: _merged(described) for model, described in by_model.items()}


def _merged(described: list[Mapping[str, Any]]) -> dict[str, Any]:
    out = dict(described[0])
    shared = "shared" in out  # one limit held in Redis for all: said once, not summed
    for key in ("rpm", "tpm"):
        values = [d[key] for d in described if d.get(key) is not None]
        if not values:
            out[key] = None
        else:
            out[key] = round(max(values) if shared else sum(values), 1)
    out["source"] = "/".join(sorted({str(d.get("source")) for d in described}))
    for key in _ADDED:
        total = sum(d.get(key) or 0 for d in described)
        out[key] = round(total, 2) if isinstance(total, float) else total
    if not shared:
        out["workers"] = len(described)
    return out
