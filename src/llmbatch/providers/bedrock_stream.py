"""Reading a Bedrock ``ConverseStream`` answer, and Bedrock's errors mapped to ours.

Events arrive as event-stream frames (``providers/eventstream.py``):
``messageStart``, ``contentBlockStart``/``contentBlockDelta``/``contentBlockStop``,
``messageStop`` (the finish reason), then ``metadata`` (usage, latency). An
exception frame (``:message-type: exception``) ends the stream with the error it
names. A stream that ends before ``messageStop`` is incomplete: retryable, never ok.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import orjson

from llmbatch._core.exceptions import (
    AuthError,
    BadRequest,
    ConnectionFailed,
    ContentFiltered,
    NotFound,
    ProviderError,
    ProviderTimeout,
    RateLimited,
    ServerError,
    error_for_status,
)
from llmbatch._core.headers import RateLimitHint
from llmbatch._core.jobs import Request, estimate_input_tokens
from llmbatch._core.usage import Usage
from llmbatch.providers._base import Answer
from llmbatch.providers._errors import text_field, token_count, unexpected_shape
from llmbatch.providers._http import now_ms
from llmbatch.providers.eventstream import Frame

# Bedrock's error codes (an HTTP error's x-amzn-ErrorType / __type, or a stream's
# :exception-type, which starts lower-case), lower-cased → our class.
_ERRORS: dict[str, type[ProviderError]] = {
    "throttlingexception": RateLimited,
    # "not ready" is a cold model, not our pace: transient, but no lesson for the limiter
    "modelnotreadyexception": ServerError,
    "serviceunavailableexception": ServerError,
    "internalserverexception": ServerError,
    "modelstreamerrorexception": ServerError,
    "modelerrorexception": ServerError,
    "modeltimeoutexception": ProviderTimeout,
    "validationexception": BadRequest,
    "accessdeniedexception": AuthError,
    "unrecognizedclientexception": AuthError,
    "invalidsignatureexception": AuthError,
    "incompletesignature": AuthError,
    "expiredtokenexception": AuthError,
    "resourcenotfoundexception": NotFound,
}
CONTENT_FILTERS = ("content_filtered", "guardrail_intervened")


def bedrock_error(code: str | None, status: int | None, message: str) -> ProviderError:
    """The error for a Bedrock error code (else the HTTP status, as every provider's)."""
    cls = _ERRORS.get((code or "").lower())
    text = message or code or (f"HTTP {status}" if status else "error")
    if cls is None:
        return error_for_status(status or 500, text, body_type=code)
    return cls(f"{code}: {text}" if code and code not in text else text, status=status)


def error_code(headers: Mapping[str, str], body: Any) -> str | None:
    """The error type: ``x-amzn-ErrorType`` (``Name:namespace``), else the body's ``__type``."""
    header = headers.get("x-amzn-errortype") or headers.get("x-amzn-ErrorType")
    if header:
        return header.split(":", 1)[0].strip() or None
    if isinstance(body, dict):
        kind = body.get("__type") or body.get("code") or body.get("Code")
        if isinstance(kind, str) and kind:
            return kind.rsplit("#", 1)[-1].split(":", 1)[0]
    return None


def error_message(body: Any, raw: bytes) -> str:
    if isinstance(body, dict):
        for key in ("message", "Message"):
            if isinstance(body.get(key), str):
                return str(body[key])
        return ""
    return raw.decode("utf-8", "replace").strip()[:500]


def parse_body(raw: bytes) -> Any:
    try:
        return orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        return None


class ConverseStream:
    """Reads one ConverseStream answer (or a whole Converse one), frame by frame."""

    __slots__ = (
        "_redact",
        "done",
        "error",
        "metadata",
        "parts",
        "started",
        "stop_reason",
        "stopped",
        "ttft",
        "usage",
    )

    def __init__(self, started: float, redact: Callable[[str], str]) -> None:
        self.started = started
        self._redact = redact
        self.parts: list[str] = []
        self.usage: Usage | None = None
        self.stop_reason: str | None = None
        self.ttft: float | None = None
        self.error: ProviderError | None = None
        self.stopped = False  # messageStop seen
        self.metadata = False  # metadata (usage) seen
        self.done = False  # nothing more to read

    def spent(self) -> Usage | None:
        return self.usage

    def feed(self, frame: Frame) -> None:
        headers = frame.headers
        kind = headers.get(":message-type")
        if kind == "exception":
            code = str(headers.get(":exception-type") or "")
            body = parse_body(frame.payload)
            message = self._redact(error_message(body, frame.payload))
            self._fail(bedrock_error(code, None, message))
            return
        if kind == "error":
            code = str(headers.get(":error-code") or "")
            message = self._redact(str(headers.get(":error-message") or ""))
            self._fail(bedrock_error(code, None, message))
            return
        if kind != "event":
            raise unexpected_shape(f"an event-stream message of type {kind!r}")
        data = orjson.loads(frame.payload) if frame.payload else {}
        if not isinstance(data, dict):
            raise unexpected_shape(f"an event that is {type(data).__name__}, not an object")
        event = headers.get(":event-type")
        if event == "contentBlockDelta":
            delta = data.get("delta") or {}
            text = text_field(delta.get("text"))  # reasoning and tool deltas are not the answer
            if text:
                if self.ttft is None:
                    self.ttft = now_ms(self.started)
                self.parts.append(text)
        elif event == "messageStop":
            self.stop_reason = text_field(data.get("stopReason"))
            self.stopped = True
        elif event == "metadata":
            self.usage = _usage(data.get("usage") or {})
            self.metadata = True
        self.done = self.stopped and self.metadata

    def _fail(self, err: ProviderError) -> None:
        err.status = None  # the HTTP status was 200; the exception type says what went wrong
        self.error = err
        self.done = True

    def whole(self, raw: bytes) -> None:
        """A non-streamed Converse answer: ``output.message.content[].text``."""
        data = orjson.loads(raw)
        if not isinstance(data, dict):
            raise unexpected_shape(f"an answer that is {type(data).__name__}, not an object")
        message = (data.get("output") or {}).get("message") or {}
        for block in message.get("content") or ():
            if isinstance(block, dict):
                self.parts.append(text_field(block.get("text")) or "")
        self.ttft = now_ms(self.started)
        self.stop_reason = text_field(data.get("stopReason"))
        self.stopped = self.stop_reason is not None
        if data.get("usage") is not None:
            self.usage = _usage(data["usage"])
            self.metadata = True
        self.done = True

    def answer(
        self,
        request: Request,
        hint: RateLimitHint | None,
        request_id: str | None,
        notes: set[str],
    ) -> Answer:
        """The Answer, once the body has ended; or the ProviderError of an incomplete one."""
        if self.error is not None:
            raise self.error.with_usage(self.usage)
        if not self.stopped:
            raise ConnectionFailed("the stream ended before messageStop (truncated)").with_usage(
                self.usage
            )
        usage = self.usage
        if usage is None:
            # messageStop came, the metadata after it did not: estimate, so budgets still hold.
            notes.add("a Bedrock stream ended without its metadata event: its usage is estimated")
            usage = Usage(estimate_input_tokens(request), max(1, len("".join(self.parts)) // 4))
        if self.stop_reason is None:
            raise ConnectionFailed("the stream ended without a finish reason").with_usage(usage)
        if self.stop_reason in CONTENT_FILTERS:
            raise ContentFiltered(
                f"the answer was filtered (stopReason: {self.stop_reason})"
            ).with_usage(usage)
        return Answer(
            text="".join(self.parts),
            usage=usage,
            stop_reason=self.stop_reason,
            latency_ms=now_ms(self.started),
            ttft_ms=self.ttft,
            request_id=request_id,
            limits=hint,
        )


def _usage(u: Any) -> Usage:
    # Bedrock's inputTokens leaves out cache reads and writes; ours includes them.
    if not isinstance(u, dict):
        raise unexpected_shape(f"usage that is {type(u).__name__}, not an object")
    read = token_count(u.get("cacheReadInputTokens"))
    write = token_count(u.get("cacheWriteInputTokens"))
    uncached = token_count(u.get("inputTokens"))
    return Usage(uncached + read + write, token_count(u.get("outputTokens")), read, write)
