"""Why a run stopped before its last job: one enum, one home."""

from __future__ import annotations

import enum


class StopReason(enum.StrEnum):
    """The report's ``stopped_by`` (SPEC §6); the value is what the report and logs say."""

    SIGNAL = "signal"  # SIGINT / SIGTERM: exit 128 + the signal
    BUDGET = "budget"  # --max-cost / --max-total-tokens: exit 3
    BUDGET_WINDOW = "budget_window"  # a rolling window is full: exit 4
    AUTH = "auth"  # authentication refused, again and again: exit 2
    OUTPUT_CLOSED = "output_closed"  # `-o - | head`: exit 128 + SIGPIPE
    OUTPUT_ERROR = "output_error"  # the output cannot be written (disk full): exit 5
    SHARED_STORE = "shared_store"  # the shared budget store failed: exit 5


# Stops after which a job cut mid-retry is left unwritten (it runs again on resume).
HARD_STOPS = frozenset(
    {StopReason.SIGNAL, StopReason.AUTH, StopReason.OUTPUT_CLOSED, StopReason.SHARED_STORE}
)
