"""Is this path a budget ledger llmbatch can use? Asked before a ledger is opened.

A ledger that cannot be used is a setup problem that waiting does not mend (a
directory, a file that is not SQLite, another program's database): exit 2 with
what to do, never "resumable" (exit 5) and never an internal error.
"""

from __future__ import annotations

from pathlib import Path

from llmbatch._core.exceptions import UsageError
from llmbatch._io.sqlitefile import Found, probe

LEDGER_TABLES = frozenset({"spend", "leases", "bookings"})


def ledger_unusable(path: Path, why: str, *, broken: bool = True) -> UsageError:
    """The error for a ledger file that cannot be used, saying what to do."""
    todo = (
        "If it is a ledger that broke, move it aside (its windows then start empty: the "
        "spend it recorded is forgotten), or give --ledger another file"
        if broken
        else "Give --ledger a file of its own (a new path is fine)"
    )
    return UsageError(f"budget ledger {path} cannot be used: {why}. {todo}")


def check_ledger_file(path: Path) -> None:
    """Refuse (UsageError) a ``--ledger`` path that is not a ledger, absent, or empty."""
    found = probe(path)
    if found.found in (Found.MISSING, Found.EMPTY):
        return
    if found.found is Found.SQLITE and set(found.tables) <= LEDGER_TABLES:
        return
    if found.found is Found.SQLITE:
        raise ledger_unusable(
            path,
            f"it is {found.describe()}, not a budget ledger; it was left untouched",
            broken=False,
        )
    broken = found.found in (Found.NOT_SQLITE, Found.BROKEN_SQLITE)
    raise ledger_unusable(path, f"it is {found.describe()}", broken=broken)
