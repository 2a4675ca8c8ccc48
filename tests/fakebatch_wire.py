"""The fake Batch APIs' objects and their wire shapes, as the SDKs' types define them."""

from __future__ import annotations

import base64
import datetime
from collections import Counter
from dataclasses import dataclass
from typing import Any

import orjson

from tests._fakewire_responses import whole_response

WINDOW_S = 24 * 3600
ANTHROPIC_EXPIRY_S = 24 * 3600


@dataclass
class Item:
    """One request inside a batch."""

    custom_id: str
    body: dict[str, Any]
    outcome: str | None = None  # None while unprocessed; "ok", "400", "500", "expired", ...
    answer: dict[str, Any] | None = None


@dataclass
class FakeBatchJob:
    """One batch, either provider's; ``kind`` says whose wire format."""

    kind: str
    id: str
    created_at: float
    items: list[Item]
    model: str | None = None
    input_file_id: str = ""
    metadata: dict[str, str] | None = None
    cancel_at: float | None = None
    ended_at: float | None = None
    status: str = "validating"
    failed_code: str | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    null_polls_left: int = 0
    stall_at: int | None = None  # processed count where it stops (expiry faults)
    deleted: bool = False
    endpoint: str = "/v1/chat/completions"

    @property
    def expires_at(self) -> float:
        return self.created_at + (WINDOW_S if self.kind == "openai" else ANTHROPIC_EXPIRY_S)


@dataclass
class FakeFile:
    id: str
    filename: str
    purpose: str
    data: bytes
    created_at: float


def oa_line(it: Item, req_id: str, now: float) -> bytes:
    line: dict[str, Any] = {"id": req_id, "custom_id": it.custom_id}
    if it.outcome == "ok" and it.answer is not None and "embed" in it.answer:
        line["response"] = {"status_code": 200, "request_id": "req_fake", "body": embed_body(it)}
        line["error"] = None
    elif it.outcome == "ok" and "input" in it.body:  # a Responses API request
        assert it.answer is not None
        i, o = it.answer["usage"]
        whole = whole_response(it.body.get("model"), it.answer["text"], i, o, "stop", 0)
        line["response"] = {"status_code": 200, "request_id": "req_fake", "body": whole}
        line["error"] = None
    elif it.outcome == "ok":
        assert it.answer is not None
        i, o = it.answer["usage"]
        body = {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": int(now),
            "model": it.body.get("model"),
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": it.answer["text"],
                        "refusal": None,
                    },
                    "finish_reason": "stop" if it.answer["stop"] == "end_turn" else "length",
                    "logprobs": None,
                }
            ],
            "usage": {"prompt_tokens": i, "completion_tokens": o, "total_tokens": i + o},
        }
        line["response"] = {"status_code": 200, "request_id": "req_fake", "body": body}
        line["error"] = None
    elif it.outcome in ("expired", "canceled"):
        code = "batch_expired" if it.outcome == "expired" else "batch_cancelled"
        line["response"] = None
        line["error"] = {"code": code, "message": f"This request was not executed ({code})."}
    else:
        status = int(it.outcome or 500)
        etype = "invalid_request_error" if status < 500 else "server_error"
        err = {"message": f"simulated {status}", "type": etype, "param": None, "code": None}
        failed: dict[str, Any] = {"error": err}
        if it.answer is not None:  # billed though it failed
            i, o = it.answer["usage"]
            failed["usage"] = {"prompt_tokens": i, "completion_tokens": o, "total_tokens": i + o}
        line["response"] = {"status_code": status, "request_id": "req_fake", "body": failed}
        line["error"] = None
    return orjson.dumps(line) + b"\n"


def embed_body(it: Item) -> dict[str, Any]:
    """What ``/v1/embeddings`` answers (``CreateEmbeddingResponse``), as a batch output
    line's ``response.body``: base64 little-endian float32, or JSON floats."""
    assert it.answer is not None
    data = []
    for i, vec in enumerate(it.answer["embed"]):
        if it.answer["encoding"] == "base64":
            emb: Any = base64.b64encode(vec.astype("<f4").tobytes()).decode()
        else:
            emb = [float(x) for x in vec]
        data.append({"object": "embedding", "index": i, "embedding": emb})
    tokens = it.answer["usage"][0]
    return {
        "object": "list",
        "data": data,
        "model": it.body.get("model"),
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def oa_batch(b: FakeBatchJob) -> dict[str, Any]:
    done = sum(1 for it in b.items if it.outcome == "ok")
    failed = sum(1 for it in b.items if it.outcome not in (None, "ok"))
    stamp = int(b.ended_at) if b.ended_at is not None else None
    output = b.output_file_id
    if b.status == "completed" and b.null_polls_left > 0:
        b.null_polls_left -= 1
        output = None  # the output file is still being written
    errors = None
    if b.failed_code is not None and b.status == "failed":
        errors = {
            "object": "list",
            "data": [
                {
                    "code": b.failed_code,
                    "message": f"Enqueued token limit reached for {b.model}.",
                    "param": None,
                    "line": None,
                }
            ],
        }
    return {
        "id": b.id,
        "object": "batch",
        "endpoint": b.endpoint,
        "model": b.model,
        "errors": errors,
        "input_file_id": b.input_file_id,
        "completion_window": "24h",
        "status": b.status,
        "output_file_id": output,
        "error_file_id": b.error_file_id,
        "created_at": int(b.created_at),
        "in_progress_at": int(b.created_at) + 1 if b.status != "validating" else None,
        "expires_at": int(b.expires_at),
        "finalizing_at": stamp if b.status == "completed" else None,
        "completed_at": stamp if b.status == "completed" else None,
        "failed_at": stamp if b.status == "failed" else None,
        "expired_at": stamp if b.status == "expired" else None,
        "cancelling_at": int(b.cancel_at) if b.cancel_at is not None else None,
        "cancelled_at": stamp if b.status == "cancelled" else None,
        "request_counts": {"total": len(b.items), "completed": done, "failed": failed},
        "metadata": b.metadata,
    }


def an_batch(b: FakeBatchJob, base: str) -> dict[str, Any]:
    counts = Counter(it.outcome for it in b.items)
    status = "ended" if b.ended_at is not None else "in_progress"
    if status == "in_progress" and b.cancel_at is not None:
        status = "canceling"
    return {
        "id": b.id,
        "type": "message_batch",
        "processing_status": status,
        "request_counts": {
            "processing": counts[None],
            "succeeded": counts["ok"],
            "errored": sum(n for k, n in counts.items() if k and k.isdigit()),
            "canceled": counts["canceled"],
            "expired": counts["expired"],
        },
        "created_at": rfc3339(b.created_at),
        "expires_at": rfc3339(b.expires_at),
        "ended_at": rfc3339(b.ended_at) if b.ended_at is not None else None,
        "archived_at": None,
        "cancel_initiated_at": rfc3339(b.cancel_at) if b.cancel_at is not None else None,
        "results_url": f"{base}/v1/messages/batches/{b.id}/results" if status == "ended" else None,
    }


def an_line(it: Item) -> bytes:
    result: dict[str, Any]
    if it.outcome == "ok":
        assert it.answer is not None
        i, o = it.answer["usage"]
        result = {
            "type": "succeeded",
            "message": {
                "id": "msg_fake",
                "type": "message",
                "role": "assistant",
                "model": it.body.get("model"),
                "content": [{"type": "text", "text": it.answer["text"]}],
                "stop_reason": it.answer["stop"],
                "stop_sequence": None,
                "usage": {
                    "input_tokens": i,
                    "output_tokens": o,
                    "cache_creation_input_tokens": 0,
                    "cache_read_input_tokens": 0,
                },
            },
        }
    elif it.outcome in ("expired", "canceled"):
        result = {"type": it.outcome}
    else:
        status = int(it.outcome or 500)
        etype = "invalid_request_error" if status < 500 else "api_error"
        result = {
            "type": "errored",
            "error": {
                "type": "error",
                "error": {"type": etype, "message": f"simulated {status}"},
                "request_id": "req_fake",
            },
        }
    return orjson.dumps({"custom_id": it.custom_id, "result": result}) + b"\n"


def file_obj(f: FakeFile) -> dict[str, Any]:
    return {
        "id": f.id,
        "object": "file",
        "bytes": len(f.data),
        "created_at": int(f.created_at),
        "filename": f.filename,
        "purpose": f.purpose,
        "status": "processed",
        "expires_at": None,
        "status_details": None,
    }


def rfc3339(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
