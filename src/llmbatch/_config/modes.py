"""How a run is carried out (``--mode``), and the durations its flags take."""

from __future__ import annotations

import enum
import re

from llmbatch._core.exceptions import UsageError


class Mode(enum.StrEnum):
    """``--mode``: online requests only, the Batch APIs first, or batches until a deadline."""

    ONLINE = "online"
    BATCH = "batch"
    AUTO = "auto"


MODES = tuple(m.value for m in Mode)
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def duration_seconds(text: str) -> float | None:
    """``90``, ``90s``, ``30m``, ``2h``, ``1h30m``, ``2w`` → seconds; None if not a duration."""
    text = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([smhdw])", text)
    if not parts or re.sub(r"\s+", "", text) != "".join(n + u for n, u in parts):
        return None
    return sum(float(n) * _UNIT[u] for n, u in parts)


def parse_duration(text: str, flag: str = "--batch-deadline") -> float:
    """:func:`duration_seconds`, or a usage error naming ``flag``."""
    seconds = duration_seconds(text)
    if seconds is None:
        raise UsageError(f"{flag} {text!r}: write a duration such as 90s, 30m, 2h, 1h30m")
    return seconds
