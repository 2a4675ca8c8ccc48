"""OpenAI ``/v1/embeddings`` on the fake API (and Azure's paths to it), with its caps and faults.

Mounted on a ``FakeAPI`` (``FakeEmbed(api)`` before ``api.start()``). It answers as
OpenAI does: ``data[i].embedding`` as JSON floats or, with ``encoding_format:
"base64"``, the little-endian float32 bytes in base64; ``usage.prompt_tokens``.
It refuses what OpenAI refuses: more than ``max_inputs`` inputs, more than
``max_tokens`` tokens in one request (400), and answers 429 for scripted texts or
the next ``faults``. ``test_embed.py`` checks that the ``openai`` SDK parses what it
sends. Vectors are deterministic from each text (``vector_of``), so a test can
say which vector a text must have had.
"""

from __future__ import annotations

import base64
import hashlib
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
from aiohttp import web

from tests.fakeapi import FakeAPI


def vector_of(text: str, dim: int) -> Any:
    """The fake's vector for ``text``: float32, from the text's hash."""
    seed = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")
    return np.random.default_rng(seed).standard_normal(dim).astype(np.float32)


def tokens_of(text: str) -> int:
    """The fake's tokenizer: about four characters a token."""
    return len(text) // 4 + 1


@dataclass
class EmbedRecord:
    inputs: list[str]
    tokens: int
    encoding: str
    dimensions: int | None
    status: int
    path: str


@dataclass
class FakeEmbed:
    api: FakeAPI
    max_inputs: int = 2048
    max_tokens: int = 300_000
    default_dimensions: int = 64
    answer_floats: bool = False  # answer JSON floats even when base64 is asked for
    refuses_base64: bool = False  # 400 for encoding_format base64 (some compatible servers)
    faults: list[int] = field(default_factory=list)  # statuses for the next requests
    fail_text: dict[str, list[int]] = field(default_factory=dict)  # text → statuses per try
    records: list[EmbedRecord] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self.api.route_hooks.append(self.mount)

    def mount(self, app: web.Application) -> None:
        app.router.add_post("/v1/embeddings", self._handle)
        app.router.add_post("/openai/v1/embeddings", self._handle)
        app.router.add_post("/openai/deployments/{deployment}/embeddings", self._handle)
        app.router.add_post("/v1beta/models/{model}:batchEmbedContents", self._gemini)

    @property
    def texts_sent(self) -> list[str]:
        return [t for r in self.records if r.status == 200 for t in r.inputs]

    async def _handle(self, request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        texts = body.get("input")
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, list) or not texts:
            return self._error(400, "'input' must be a non-empty string or array", texts, body)
        encoding = body.get("encoding_format") or "float"
        dims = body.get("dimensions")
        tokens = sum(tokens_of(t) for t in texts)
        if self.refuses_base64 and encoding == "base64":
            return self._error(400, "encoding_format: only 'float' is supported", texts, body)
        status = self._fault(texts)
        if status is not None:
            return self._error(status, "Rate limit reached for requests", texts, body)
        if len(texts) > self.max_inputs:
            message = f"'$.input' is invalid: at most {self.max_inputs} inputs a request"
            return self._error(400, message, texts, body)
        if tokens > self.max_tokens:
            message = f"Requested {tokens} tokens, max {self.max_tokens} tokens per request"
            return self._error(400, message, texts, body)
        dim = dims or self.default_dimensions
        data = []
        for i, text in enumerate(texts):
            vec = vector_of(text, dim)
            if encoding == "base64" and not self.answer_floats:
                emb: Any = base64.b64encode(vec.astype("<f4").tobytes()).decode()
            else:
                emb = [float(x) for x in vec]
            data.append({"object": "embedding", "index": i, "embedding": emb})
        self._record(texts, tokens, encoding, dims, 200, request.path)
        payload = {
            "object": "list",
            "data": data,
            "model": body.get("model"),
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        return web.Response(
            body=orjson.dumps(payload),
            content_type="application/json",
            headers={"x-request-id": "req_embed"},
        )

    async def _gemini(self, request: web.Request) -> web.Response:
        """Gemini's ``batchEmbedContents``: ``requests[].content.parts[].text`` in,
        ``embeddings[].values`` out (JSON floats), at most 100 requests a call."""
        body = orjson.loads(await request.read())
        reqs = body.get("requests") or []
        texts = ["".join(p.get("text", "") for p in r["content"]["parts"]) for r in reqs]
        if len(reqs) > 100:
            self._record(texts, 0, "gemini", None, 400, request.path)
            error = {"code": 400, "message": "at most 100 requests", "status": "INVALID_ARGUMENT"}
            return web.Response(
                status=400, body=orjson.dumps({"error": error}), content_type="application/json"
            )
        dims = reqs[0].get("outputDimensionality") if reqs else None
        model = request.match_info["model"]
        if any(r.get("model") != f"models/{model}" for r in reqs):
            return web.Response(status=400, text="each request names the model")
        values = [[float(x) for x in vector_of(t, dims or self.default_dimensions)] for t in texts]
        self._record(texts, sum(tokens_of(t) for t in texts), "gemini", dims, 200, request.path)
        payload = {"embeddings": [{"values": v} for v in values]}
        return web.Response(body=orjson.dumps(payload), content_type="application/json")

    def _fault(self, texts: list[str]) -> int | None:
        with self._lock:
            if self.faults:
                return self.faults.pop(0)
            for text, statuses in self.fail_text.items():
                if text in texts and statuses:
                    return statuses.pop(0)
        return None

    def _record(
        self, texts: list[str], tokens: int, encoding: str, dims: Any, status: int, path: str
    ) -> None:
        with self._lock:
            self.records.append(EmbedRecord(list(texts), tokens, encoding, dims, status, path))

    def _error(self, status: int, message: str, texts: Any, body: dict[str, Any]) -> web.Response:
        inputs = texts if isinstance(texts, list) else []
        tokens = sum(tokens_of(t) for t in inputs if isinstance(t, str))
        self._record(
            inputs, tokens, str(body.get("encoding_format")), body.get("dimensions"), status, ""
        )
        err_type = "rate_limit_exceeded" if status == 429 else "invalid_request_error"
        headers = {"x-request-id": "req_embed"}
        if status == 429:
            headers["retry-after-ms"] = "10"
        return web.Response(
            status=status,
            body=orjson.dumps(
                {"error": {"message": message, "type": err_type, "param": None, "code": None}}
            ),
            content_type="application/json",
            headers=headers,
        )
