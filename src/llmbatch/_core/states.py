"""The states a job, an attempt or a breaker can be in: enums with one home.

Each is a ``StrEnum``: its value is what result lines, reports and event logs say,
so comparing with the plain string keeps working.
"""

from __future__ import annotations

import enum


class Status(enum.StrEnum):
    """A result line's ``status`` (SPEC §3)."""

    OK = "ok"
    FAILED = "failed"


class BreakerState(enum.StrEnum):
    """A model's circuit breaker: closed (requests go) or open (skipped for a while)."""

    CLOSED = "closed"
    OPEN = "open"


class AttemptOutcome(enum.StrEnum):
    """What one request came to: an answer, or the ``error.type`` of its failure (SPEC §3)."""

    OK = "ok"
    RATE_LIMITED = "rate_limited"
    OVERLOADED = "overloaded"
    SERVER_ERROR = "server_error"
    TIMEOUT = "timeout"
    CONNECTION = "connection"
    BAD_REQUEST = "bad_request"
    AUTH = "auth"
    NOT_FOUND = "not_found"
    CONTENT_FILTER = "content_filter"
    OTHER = "other"
