"""AWS Bedrock's ConverseStream endpoint on the loopback FakeAPI, in real event-stream frames.

``POST /model/{modelId}/converse-stream`` answers with ``application/vnd.amazon.eventstream``
frames (prelude, string headers, JSON payload, CRC32s) in the order Bedrock sends
them: ``messageStart``, ``contentBlockDelta``…, ``contentBlockStop``, ``messageStop``,
``metadata``. Errors are rest-json: the status, ``x-amzn-ErrorType`` and
``{"message": …}``. ``test_bedrock.py`` checks that boto3 parses all of it.

Mount with ``FakeBedrock(api)`` before ``api.start()``. Faults come from the
FakeAPI's rules and chaos (its fault names, plus the ones below); a record's
``body`` is the Converse body with the model id from the path under ``"model"``.
With ``credentials`` set, every request must carry a valid SigV4 signature for
them (checked with botocore), else 403 ``InvalidSignatureException``.
"""

from __future__ import annotations

import asyncio
import hmac
import math
import re
import struct
import time
from binascii import crc32
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from tests.fakeapi import (
    ERROR_EVENT,
    HANG,
    NO_FINISH,
    OK,
    REFUSE,
    RESET,
    STALL,
    TRUNCATE,
    FakeAPI,
    Record,
)

# Bedrock-only faults (besides the FakeAPI's and HTTP statuses as strings)
CUT_FRAME = "cut_frame"  # the body ends in the middle of a frame
BAD_CRC = "bad_crc"  # a frame whose message CRC is wrong
STREAM_THROTTLE = "stream_throttle"  # a throttlingException frame inside the 200 stream
GUARDRAIL = "guardrail"  # stopReason guardrail_intervened
NO_METADATA = "no_metadata"  # messageStop, then the end: no usage
MODEL_NOT_READY = "model_not_ready"  # 429 ModelNotReadyException

ERROR_TYPES = {
    400: "ValidationException",
    403: "AccessDeniedException",
    404: "ResourceNotFoundException",
    408: "ModelTimeoutException",
    424: "ModelErrorException",
    429: "ThrottlingException",
    500: "InternalServerException",
    503: "ServiceUnavailableException",
}
EVENTSTREAM = "application/vnd.amazon.eventstream"
_AUTH = re.compile(
    r"AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([^/]+)/([^/]+)/aws4_request, "
    r"SignedHeaders=([^,]+), Signature=([0-9a-f]{64})"
)


# -- the framing ---------------------------------------------------------------------------


def frame(headers: dict[str, str], payload: bytes) -> bytes:
    """One event-stream message with string headers (type 7)."""
    head = b"".join(
        bytes([len(k)]) + k.encode() + b"\x07" + struct.pack(">H", len(v.encode())) + v.encode()
        for k, v in headers.items()
    )
    total = 12 + len(head) + len(payload) + 4
    prelude = struct.pack(">II", total, len(head))
    prelude += struct.pack(">I", crc32(prelude))
    body = prelude + head + payload
    return body + struct.pack(">I", crc32(body))


def event(kind: str, data: dict[str, Any]) -> bytes:
    headers = {":event-type": kind, ":content-type": "application/json", ":message-type": "event"}
    return frame(headers, orjson.dumps(data))


def exception(kind: str, message: str) -> bytes:
    headers = {
        ":exception-type": kind,
        ":content-type": "application/json",
        ":message-type": "exception",
    }
    return frame(headers, orjson.dumps({"message": message}))


def error_response(
    status: int, message: str, code: str | None = None, retry_after: str | None = None
) -> web.Response:
    code = code or ERROR_TYPES.get(status, "InternalServerException")
    headers = {
        "x-amzn-ErrorType": f"{code}:http://internal.amazon.com/coral/com.amazon.bedrock/",
        "x-amzn-RequestId": "req-fake-error",
    }
    if retry_after is not None:
        headers["retry-after"] = retry_after
    return web.json_response({"message": message}, status=status, headers=headers)


@dataclass
class FakeBedrock:
    api: FakeAPI
    credentials: tuple[str, str] | None = None  # (access key id, secret): check SigV4
    chunk_size: int | None = None  # write the stream in pieces of this many bytes
    cache_write_tokens: int = 0
    rejects_output_config: bool = False  # a model without native structured output

    def __post_init__(self) -> None:
        self.api.route_hooks.append(self.mount)
        self.bad_signatures = 0
        self.paths: list[str] = []  # each request's path as it arrived (percent-encoded)

    def mount(self, app: web.Application) -> None:
        app.router.add_post("/model/{model_id}/converse-stream", self._converse)

    # -- the handler -----------------------------------------------------------------------

    async def _converse(self, request: web.Request) -> web.StreamResponse:
        api = self.api
        raw = await request.read()
        body = dict(orjson.loads(raw))
        body["model"] = request.match_info["model_id"]
        self.paths.append(request.raw_path)
        headers = {k.lower(): v for k, v in request.headers.items()}
        record = Record("bedrock", body, headers, OK, at=time.monotonic())
        with api._lock:
            api.records.append(record)
            api.in_flight += 1
            api.peak_in_flight = max(api.peak_in_flight, api.in_flight)
        try:
            denied = self._denied(request, headers, raw)
            if denied is not None:
                record.outcome = "403"
                return denied
            if self.rejects_output_config and "outputConfig" in body:
                record.outcome = "structured_rejected"
                return error_response(
                    400, "This model doesn't support the outputConfig.textFormat field."
                )
            fault, wait = api._plan_with_wait(body)
            record.outcome = fault
            if fault == RESET:
                assert request.transport is not None
                request.transport.abort()
                raise asyncio.CancelledError
            if fault == HANG:
                await asyncio.sleep(3600)
            if fault == MODEL_NOT_READY:
                return error_response(429, "Model is not ready", "ModelNotReadyException")
            if fault.isdigit():
                return self._error(int(fault), wait)
            try:
                return await self._stream(request, body, record, fault)
            except ConnectionResetError:
                record.outcome = "client_gone"
                raise asyncio.CancelledError from None
        finally:
            with api._lock:
                api.in_flight -= 1

    def _denied(
        self, request: web.Request, headers: dict[str, str], raw: bytes
    ) -> web.Response | None:
        auth = headers.get("authorization", "")
        if self.credentials is not None:
            if not self._signature_ok(request, headers, raw):
                self.bad_signatures += 1
                token = headers.get("x-amz-security-token", "")
                # echoes the session token it got, as a careless server might
                return error_response(
                    403,
                    f"The request signature we calculated does not match (token {token}).",
                    "InvalidSignatureException",
                )
            return None
        expected = self.api.expected_key
        if expected is not None and auth != f"Bearer {expected}":
            # echoes what it got, as a careless server might: the client must redact it
            return error_response(403, f"Invalid API Key format: {auth}")
        return None

    def _signature_ok(self, request: web.Request, headers: dict[str, str], raw: bytes) -> bool:
        """Recompute the SigV4 signature of what arrived (botocore), compare."""
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials

        assert self.credentials is not None
        match = _AUTH.fullmatch(headers.get("authorization", ""))
        if match is None:
            return False
        access, _day, region, service, signed, signature = match.groups()
        if access != self.credentials[0] or service != "bedrock":
            return False
        names = signed.split(";")
        if "host" not in names or "x-amz-date" not in names:
            return False
        kept = {n: headers[n] for n in names if n != "host" and n in headers}
        url = f"http://{headers['host']}{request.raw_path}"
        req = AWSRequest(method="POST", url=url, data=raw, headers=kept)
        req.context["timestamp"] = headers["x-amz-date"]
        creds = Credentials(access, self.credentials[1], headers.get("x-amz-security-token"))
        auth = SigV4Auth(creds, service, region)
        expected = auth.signature(auth.string_to_sign(req, auth.canonical_request(req)), req)
        return hmac.compare_digest(expected, signature)

    def _error(self, status: int, wait: float | None) -> web.Response:
        api = self.api
        retry_after = None
        if wait is not None and api.window_retry == "until_free":
            retry_after = f"{max(1, math.ceil(wait))}"
        elif status == 429 and api.retry_after is not None:
            retry_after = f"{api.retry_after:g}"
        return error_response(status, f"simulated {status}", retry_after=retry_after)

    async def _stream(
        self, request: web.Request, body: dict[str, Any], record: Record, fault: str
    ) -> web.StreamResponse:
        api = self.api
        text = api._answer_text(body)
        words = api.chunks(text)
        max_tokens = (body.get("inferenceConfig") or {}).get("maxTokens") or 4096
        stop = "end_turn"
        if len(words) > max_tokens:
            words, stop = words[:max_tokens], "max_tokens"
        stop = {REFUSE: "content_filtered", GUARDRAIL: "guardrail_intervened"}.get(fault, stop)
        record.input_tokens = api.input_tokens_of(body)
        record.output_tokens = len(words)
        record.cache_read = api.cache_read_tokens
        headers = {"content-type": EVENTSTREAM, "x-amzn-RequestId": "req-fake"}
        resp = web.StreamResponse(status=200, headers=headers)
        await resp.prepare(request)
        await self._write(resp, event("messageStart", {"p": "abcd", "role": "assistant"}))
        if fault == STALL:
            await asyncio.sleep(3600)
        if api.ttft_s:
            await asyncio.sleep(api.ttft_s)
        step = max(0.0, api.latency_s - api.ttft_s) / max(1, len(words) - 1)
        cut = (ERROR_EVENT, TRUNCATE, CUT_FRAME, BAD_CRC, STREAM_THROTTLE)
        for i, w in enumerate(words):
            if i and step:
                await asyncio.sleep(step)
            data = {"contentBlockIndex": 0, "delta": {"text": w}, "p": "ab"}
            delta = event("contentBlockDelta", data)
            if fault in cut and i == len(words) // 2:
                await self._write(resp, self._fault_bytes(fault, delta))
                await resp.write_eof()
                return resp
            await self._write(resp, delta)
        await self._write(resp, event("contentBlockStop", {"contentBlockIndex": 0, "p": "a"}))
        if fault != NO_FINISH:
            await self._write(resp, event("messageStop", {"stopReason": stop, "p": "abc"}))
        if fault != NO_METADATA:
            await self._write(resp, event("metadata", self._metadata(record)))
        await asyncio.sleep(0.001)
        await resp.write_eof()
        return resp

    def _metadata(self, record: Record) -> dict[str, Any]:
        read, write = record.cache_read, self.cache_write_tokens
        usage = {
            "inputTokens": record.input_tokens - read - write,
            "outputTokens": record.output_tokens,
            "totalTokens": record.input_tokens + record.output_tokens,
            "cacheReadInputTokens": read,
            "cacheWriteInputTokens": write,
        }
        return {"usage": usage, "metrics": {"latencyMs": 123}, "p": "abcdef"}

    @staticmethod
    def _fault_bytes(fault: str, delta: bytes) -> bytes:
        if fault == ERROR_EVENT:
            return exception("modelStreamErrorException", "The model stream broke. Retry.")
        if fault == STREAM_THROTTLE:
            return exception("throttlingException", "Too many tokens, please wait.")
        if fault == CUT_FRAME:
            return delta[: len(delta) // 2]
        if fault == BAD_CRC:
            return delta[:-1] + bytes([delta[-1] ^ 0xFF])
        return b""  # TRUNCATE: a clean end before messageStop

    async def _write(self, resp: web.StreamResponse, data: bytes) -> None:
        if not data:
            return
        size = self.chunk_size
        if size is None:
            await resp.write(data)
            return
        for i in range(0, len(data), size):
            await resp.write(data[i : i + size])
