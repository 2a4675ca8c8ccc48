"""The one seam where foreign exceptions become the project's ProviderError classes.

Everything that can go wrong during one attempt — aiohttp and socket errors,
timeouts (aiohttp's, anyio's ``fail_after``), JSON that does not parse, a payload
of an unexpected shape (``KeyError``, ``TypeError``, ``AttributeError``,
``ValueError``, ``IndexError``), text that is not UTF-8 — leaves
:func:`translate_errors` as a ProviderError, with the original as ``__cause__``
and every message redacted. Retry logic then matches only our own classes.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import orjson

from llmbatch._core.exceptions import (
    ConnectionFailed,
    OtherProviderError,
    ProviderError,
    ProviderTimeout,
)
from llmbatch._core.usage import Usage

__all__ = [
    "Attempt",
    "redact",
    "text_field",
    "token_count",
    "translate_errors",
    "translate_exception",
    "unexpected_shape",
]

_MESSAGE_LIMIT = 300  # a huge or binary line must not become a huge error message
_KEYLIKE = re.compile(r"\b(sk-(?:ant-)?[A-Za-z0-9_\-]{6})[A-Za-z0-9_\-]{8,}")


def redact(text: str, key: str | None) -> str:
    """Remove an API key (ours, or anything shaped like one) from text we show."""
    if key:
        text = text.replace(key, "[redacted]")
    return _KEYLIKE.sub(r"\1…[redacted]", text)


@dataclass(slots=True)
class Attempt:
    """What the seam knows of the attempt it guards: how to read the tokens spent so far."""

    spent: Callable[[], Usage | None] | None = None


def unexpected_shape(detail: str) -> OtherProviderError:
    """The error for a payload that parses but is not what the wire format promises."""
    return _other(f"unexpected event shape from the provider: {_clip(detail)}")


def _other(message: str) -> OtherProviderError:
    # A garbled payload is one bad attempt (a proxy, a busy server), not a verdict on
    # the request: unlike an unknown HTTP status, it is worth another try.
    err = OtherProviderError(message)
    err.retryable = True
    return err


def text_field(value: Any) -> str | None:
    """A text field of an event: a string, or None when absent."""
    if value is None or isinstance(value, str):
        return value
    raise unexpected_shape(f"a text field that is {type(value).__name__}, not a string")


def token_count(value: Any) -> int:
    """A token count of an event: a non-negative integer, or 0 when absent."""
    if value is None:
        return 0
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        if value == int(value):
            return int(value)
    raise unexpected_shape(f"a token count that is {value!r:.40}")


@contextmanager
def translate_errors(
    *,
    key: str | None = None,
    idle_timeout: float | None = None,
    timeout_message: str = "timed out waiting for the provider",
) -> Iterator[Attempt]:
    """Guard one attempt: only ProviderError subclasses leave this block.

    ``key`` is redacted from every message; ``idle_timeout`` names the silence
    limit in the message of a read timeout; ``timeout_message`` is the message of
    any other timeout (the engine passes its ``--timeout`` wording). Tokens the
    attempt reported through ``Attempt.spent`` are attached to the error.
    """
    attempt = Attempt()
    try:
        yield attempt
    except ProviderError as exc:
        _attach_usage(exc, attempt)
        raise
    except Exception as exc:
        err = translate_exception(
            exc, key=key, idle_timeout=idle_timeout, timeout_message=timeout_message
        )
        if err is None:
            raise  # not foreign: one of our own errors, or a bug that must be seen
        _attach_usage(err, attempt)
        raise err from exc


def translate_exception(
    exc: Exception,
    *,
    key: str | None = None,
    idle_timeout: float | None = None,
    timeout_message: str = "timed out waiting for the provider",
) -> ProviderError | None:
    """The ProviderError for a foreign exception, or None when ``exc`` is not foreign."""
    if isinstance(exc, ProviderError):
        return exc
    if isinstance(exc, ExceptionGroup):
        # e.g. every address of a host refused: the group is foreign if all of it is
        inner = [
            translate_exception(
                e, key=key, idle_timeout=idle_timeout, timeout_message=timeout_message
            )
            for e in exc.exceptions
        ]
        return inner[0] if inner and all(e is not None for e in inner) else None
    text = _clip(redact(_text_of(exc), key))
    aio = _aiohttp_error(exc, text, idle_timeout)
    if aio is not None:
        return aio
    if isinstance(exc, TimeoutError):
        return ProviderTimeout(timeout_message)
    if isinstance(exc, ConnectionError | EOFError | OSError):
        return ConnectionFailed(f"connection failed: {type(exc).__name__}: {text}")
    if isinstance(exc, orjson.JSONDecodeError):
        return _other(f"the provider sent an event that is not valid JSON: {text}")
    if isinstance(exc, UnicodeError):
        return _other(f"the provider sent text that is not valid UTF-8: {text}")
    if isinstance(exc, KeyError | TypeError | AttributeError | ValueError | IndexError):
        return unexpected_shape(f"{type(exc).__name__}: {text}")
    return None


def _aiohttp_error(exc: Exception, text: str, idle_timeout: float | None) -> ProviderError | None:
    aiohttp = sys.modules.get("aiohttp")
    if aiohttp is None:
        return None  # never imported (the sim provider): nothing of it can be raised
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return ProviderTimeout(f"could not connect in time: {text}")
    if isinstance(exc, aiohttp.ServerTimeoutError):
        limit = f" for more than {idle_timeout:g} s" if idle_timeout is not None else ""
        return ProviderTimeout(f"the stream went silent{limit}")
    if isinstance(exc, aiohttp.ClientPayloadError):
        return ConnectionFailed(f"the response was cut off: {text}")
    if isinstance(exc, aiohttp.ClientConnectionError):
        return ConnectionFailed(f"connection failed: {type(exc).__name__}: {text}")
    if isinstance(exc, aiohttp.ClientError):
        return _other(f"HTTP error: {type(exc).__name__}: {text}")
    from aiohttp import http_exceptions

    if isinstance(exc, http_exceptions.HttpProcessingError):
        return ConnectionFailed(f"the provider sent a malformed HTTP message: {text}")
    return None


def _attach_usage(err: ProviderError, attempt: Attempt) -> None:
    if err.usage is None and attempt.spent is not None:
        err.usage = attempt.spent()


def _text_of(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:  # some foreign exceptions cannot print themselves half-built
        return type(exc).__name__


def _clip(text: str) -> str:
    return text if len(text) <= _MESSAGE_LIMIT else text[:_MESSAGE_LIMIT] + "…"
