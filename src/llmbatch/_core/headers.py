"""What responses say about limits: rate-limit headers, ``retry-after``, reset times.

OpenAI's ``x-ratelimit-*`` and Anthropic's ``anthropic-ratelimit-*`` become one
``RateLimitHint``; the limiters read hints, never headers.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime


@dataclass(slots=True)
class RateLimitHint:
    """What a response said about the provider's limits (None where it said nothing)."""

    requests_limit: float | None = None
    requests_remaining: float | None = None
    requests_reset_s: float | None = None
    tokens_limit: float | None = None
    tokens_remaining: float | None = None
    tokens_reset_s: float | None = None


_GO_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


def parse_go_duration(text: str) -> float | None:
    """``6m0s``, ``12ms``, ``1h2m3.5s`` → seconds (OpenAI's x-ratelimit-reset-*)."""
    text = text.strip()
    if not text:
        return None
    total = 0.0
    num = ""
    i = 0
    matched = False
    while i < len(text):
        c = text[i]
        if c.isdigit() or c == ".":
            num += c
            i += 1
            continue
        unit = ""
        while i < len(text) and not (text[i].isdigit() or text[i] == "."):
            unit += text[i]
            i += 1
        if not num or unit not in _GO_UNITS:
            return None
        total += float(num) * _GO_UNITS[unit]
        num = ""
        matched = True
    if num:  # a bare number: seconds
        total += float(num)
        matched = True
    return total if matched else None


def parse_reset(value: str | None, now: float | None = None) -> float | None:
    """A reset given as a Go duration, plain seconds, or an RFC 3339 time → seconds from now."""
    if not value:
        return None
    value = value.strip()
    if "T" in value and ("-" in value[:10]):
        try:
            when = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        now_ts = time.time() if now is None else now
        return max(0.0, when.timestamp() - now_ts)
    return parse_go_duration(value)


def parse_retry_after(headers: dict[str, str]) -> float | None:
    """``retry-after-ms`` wins over ``retry-after`` (seconds or an HTTP date), as the SDKs do."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            value = float(ms) / 1000
            if math.isfinite(value) and value >= 0:
                return value
        except ValueError:
            pass
    ra = headers.get("retry-after")
    if ra:
        try:
            value = float(ra)
            if math.isfinite(value) and value >= 0:
                return value
        except ValueError:
            from email.utils import parsedate_to_datetime

            try:
                when = parsedate_to_datetime(ra)
                return max(0.0, when.timestamp() - time.time())
            except (TypeError, ValueError):
                return None
    return None


def _num(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return None


def hint_from_headers(headers: dict[str, str]) -> RateLimitHint | None:
    """OpenAI ``x-ratelimit-*`` or Anthropic ``anthropic-ratelimit-*`` headers, if any."""
    if any(
        key in headers
        for key in (
            "x-ratelimit-limit-requests",
            "x-ratelimit-remaining-requests",
            "x-ratelimit-limit-tokens",
            "x-ratelimit-remaining-tokens",
        )
    ):
        return RateLimitHint(
            requests_limit=_num(headers.get("x-ratelimit-limit-requests")),
            requests_remaining=_num(headers.get("x-ratelimit-remaining-requests")),
            requests_reset_s=parse_reset(headers.get("x-ratelimit-reset-requests")),
            tokens_limit=_num(headers.get("x-ratelimit-limit-tokens")),
            tokens_remaining=_num(headers.get("x-ratelimit-remaining-tokens")),
            tokens_reset_s=parse_reset(headers.get("x-ratelimit-reset-tokens")),
        )
    if "anthropic-ratelimit-requests-limit" in headers:
        # Anthropic counts tokens three ways (all, input, output): the scarcest decides.
        remaining: float | None = None
        reset: float | None = None
        for kind in ("tokens", "input-tokens", "output-tokens"):
            left = _num(headers.get(f"anthropic-ratelimit-{kind}-remaining"))
            if left is not None and (remaining is None or left < remaining):
                remaining = left
                reset = parse_reset(headers.get(f"anthropic-ratelimit-{kind}-reset"))
        return RateLimitHint(
            requests_limit=_num(headers.get("anthropic-ratelimit-requests-limit")),
            requests_remaining=_num(headers.get("anthropic-ratelimit-requests-remaining")),
            requests_reset_s=parse_reset(headers.get("anthropic-ratelimit-requests-reset")),
            tokens_limit=_num(headers.get("anthropic-ratelimit-tokens-limit")),
            tokens_remaining=remaining,
            tokens_reset_s=reset,
        )
    return None
