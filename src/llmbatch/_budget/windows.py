"""Rolling budget windows: what the flags ask for, and the factory that opens their ledgers.

``--budget-per-hour`` and friends limit spend over the last 3,600 / 86,400 seconds,
shared by every run that uses the same ledger (a SQLite file on this machine, or
Redis with ``--shared``) and the same ``--budget-scope``.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from llmbatch._budget.ledger import Refusal

if TYPE_CHECKING:
    from llmbatch._config.settings import RunConfig

HOUR = 3600.0
DAY = 86400.0


@dataclass(frozen=True, slots=True)
class Window:
    """One rolling limit: ``limit`` USD (``kind`` "cost") or tokens over the last ``seconds``."""

    kind: str  # "cost" | "tokens"
    seconds: float
    limit: float
    flag: str  # the flag that set it, for messages

    def describe(self, amount: float) -> str:
        return f"${amount:.4f}" if self.kind == "cost" else f"{int(amount)} tokens"


def windows_from_config(config: RunConfig) -> list[Window]:
    """The windows the run's flags ask for (none: no rolling budget)."""
    wanted = [
        ("cost", HOUR, config.budget_per_hour, "--budget-per-hour"),
        ("cost", DAY, config.budget_per_day, "--budget-per-day"),
        ("tokens", HOUR, config.tokens_per_hour, "--tokens-per-hour"),
        ("tokens", DAY, config.tokens_per_day, "--tokens-per-day"),
    ]
    return [Window(k, s, float(v), f) for k, s, v, f in wanted if v is not None]


def default_ledger_path() -> Path:
    """``$XDG_STATE_HOME/llmbatch/ledger.sqlite`` (``~/.local/state`` when unset)."""
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "llmbatch" / "ledger.sqlite"


def lease_seconds() -> float:
    """How long a dead process's room stays held before it counts as spent (tests shorten it)."""
    try:
        return max(0.5, float(os.environ.get("LLMBATCH_LEASE_S", "60")))
    except ValueError:
        return 60.0


def rfc3339(wall: float | None) -> str | None:
    """A wall-clock time as RFC 3339 in UTC (the report's ``resets_at``)."""
    if wall is None:
        return None
    return datetime.datetime.fromtimestamp(wall, datetime.UTC).isoformat(timespec="seconds")


def window_refusal(
    failing: list[tuple[Window, float, float]],
    need: dict[str, float],
    scope: str,
    resets_at: float | None,
    may_fit_later: bool,
) -> Refusal:
    """A Refusal naming each full window: (window, spent, held) with what the attempt needs."""
    parts = []
    for w, spent, held in failing:
        parts.append(
            f"{w.flag} {w.limit:g} (scope {scope!r}): {w.describe(spent)} spent and "
            f"{w.describe(held)} held in the last {int(w.seconds)} s, this attempt needs up "
            f"to {w.describe(need[w.kind])}"
        )
    message = "; ".join(parts)
    if resets_at is not None:
        message += f"; enough frees up at {rfc3339(resets_at)}"
    return Refusal("budget_window", message, resets_at=resets_at, may_fit_later=may_fit_later)


def safe_url(url: str) -> str:
    """A ``--shared`` URL without its password: fit to keep on disk and to show."""
    scheme, sep, rest = url.partition("://")
    return f"{scheme}{sep}{rest.rpartition('@')[2]}" if sep else url
