"""The one exception hierarchy of llmbatch.

LLMBatchError
├── UsageError            bad flags, config or environment; nothing was sent (exit 2)
│   └── ConfigError       llmbatch.toml is wrong
├── InputError            one or more job lines are invalid; nothing was sent (exit 2)
├── ResumeConflict        the output file disagrees with the jobs file (exit 2)
├── OutputLocked          another run holds the output file (exit 2)
├── OutputError           the output cannot be written (disk full, I/O error); resumable
├── SharedStoreError      a shared ledger or limiter store failed; budgets fail closed (exit 5)
└── ProviderError         one attempt at one request failed; carries ``error_type``
    ├── RateLimited       429
    ├── Overloaded        529, ``overloaded_error``
    ├── ServerError       409, 5xx
    ├── ProviderTimeout   408, 504, our own timeouts (also a TimeoutError)
    ├── ConnectionFailed  resets, refused connections, truncated streams (also a ConnectionError)
    ├── BadRequest        400, 413, 422
    ├── AuthError         401, 403
    ├── NotFound          404
    ├── ContentFiltered   refusals and content filters
    └── OtherProviderError anything else

Retry logic matches only these classes; foreign exceptions are translated at
one seam in each provider adapter.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Self


class LLMBatchError(Exception):
    """Root of every error llmbatch raises on purpose."""


def sole_own_error(group: BaseExceptionGroup[BaseException]) -> LLMBatchError | None:
    """The first of a task group's errors when all of them are ours (to surface as
    themselves, not wrapped), else None."""
    own = [e for e in group.exceptions if isinstance(e, LLMBatchError)]
    return own[0] if own and len(own) == len(group.exceptions) else None


class UsageError(LLMBatchError):
    """The command line, config or environment is wrong; nothing was sent."""


class ConfigError(UsageError):
    """llmbatch.toml (or --config) is wrong."""


@dataclass(frozen=True, slots=True)
class LineProblem:
    """One invalid job line: where it is and what is wrong."""

    path: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


class InputError(LLMBatchError):
    """Job lines are invalid. ``problems`` lists each with its line number."""

    def __init__(self, problems: Sequence[LineProblem]) -> None:
        self.problems = list(problems)
        n = len(self.problems)
        super().__init__(
            f"{n} invalid line{'s' if n != 1 else ''}; nothing was sent. "
            "Fix them, or pass --skip-invalid to run the valid lines."
        )


class ResumeConflict(LLMBatchError):
    """Jobs already answered in the output now ask for something else."""


class OutputLocked(LLMBatchError):
    """Another llmbatch run is writing the same output file."""


class OutputError(LLMBatchError):
    """The output file cannot be written (disk full, quota, I/O error); what was written stays."""


class SharedStoreError(LLMBatchError):
    """The budget ledger or shared store (SQLite, Redis) cannot be read or written."""


class ProviderError(LLMBatchError):
    """One attempt failed. ``error_type`` is the SPEC's ``error.type`` value."""

    error_type = "other"
    retryable = False
    # True when no connection was made (refused, no route, DNS, TLS handshake): nothing
    # was sent, so a create that failed this way made nothing at the provider.
    nothing_sent = False
    # A 429 that says nothing of our pace (a flex "resource unavailable"): the engine
    # waits and retries it, but the rate limiter does not learn from it.
    teaches_limit = True

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.retry_after = retry_after
        self.request_id = request_id
        # Set by adapters when known: the rate-limit headers of the failed response,
        # and tokens billed before a stream broke (a Usage).
        self.limits: object | None = None
        self.usage: object | None = None
        # A setting of ours was refused and has been changed (structured output stepped
        # down): send again at once; it is not the provider failing, so not a try.
        self.retry_now = False

    def to_dict(self) -> dict[str, object]:
        return {"type": self.error_type, "message": self.message, "status": self.status}

    def with_usage(self, usage: object | None) -> Self:
        """Attach the tokens billed before this attempt failed; returns self for ``raise``."""
        self.usage = usage
        return self


class RateLimited(ProviderError):
    error_type = "rate_limited"
    retryable = True


class Overloaded(ProviderError):
    error_type = "overloaded"
    retryable = True


class ServerError(ProviderError):
    error_type = "server_error"
    retryable = True


class ProviderTimeout(ProviderError, TimeoutError):
    error_type = "timeout"
    retryable = True


class ConnectionFailed(ProviderError, ConnectionError):
    error_type = "connection"
    retryable = True


class BadRequest(ProviderError):
    error_type = "bad_request"


class AuthError(ProviderError):
    error_type = "auth"


class NotFound(ProviderError):
    error_type = "not_found"


class ContentFiltered(ProviderError):
    error_type = "content_filter"


class OtherProviderError(ProviderError):
    error_type = "other"


ERROR_TYPES = (
    "rate_limited",
    "overloaded",
    "server_error",
    "timeout",
    "connection",
    "bad_request",
    "auth",
    "not_found",
    "schema_invalid",
    "content_filter",
    "budget",
    "other",
)


def error_for_status(status: int, message: str, *, body_type: str | None = None) -> ProviderError:
    """Map an HTTP status (and the provider's error ``type``) to the most specific class."""
    cls: type[ProviderError]
    if body_type == "overloaded_error" or status == 529:
        cls = Overloaded
    elif status == 429 or body_type == "rate_limit_error":
        cls = RateLimited
    elif status in (401, 403):
        cls = AuthError
    elif status == 404:
        cls = NotFound
    elif status in (408, 504):
        cls = ProviderTimeout
    elif status in (400, 413, 422):
        cls = BadRequest
    elif status == 409 or status >= 500:
        cls = ServerError
    else:
        cls = OtherProviderError
    return cls(message, status=status)
