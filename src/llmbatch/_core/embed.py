"""Embedding jobs: the line shape, the provider caps, and the pack many inputs travel in.

A line ``{"id": …, "input": "text" | ["text", …], "model": "openai:…", "dimensions": 512}``
asks for one vector per input. Inputs go to the provider in *packs*: one request
carries up to the provider's count and token caps (``CAPS``). A pack is a prepared
job like any other for the engine (budgets, limits, retries); its one answer
expands into one result row per input (``_io.vectors``).

Vectors are numpy float32 matrices from end to end: decoded with
``numpy.frombuffer`` (base64) or one ``numpy.asarray`` (a JSON list), never a
Python float per dimension on the way to the output.
"""

from __future__ import annotations

import base64
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from llmbatch._core.jobs import LineError, job_id_field, model_field
from llmbatch._core.models import BUILTIN_PROVIDERS, ModelRef

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    Matrix = npt.NDArray[np.float32]


VECTOR_COLUMN = "embedding"  # SPEC §16: the vectors, a fixed-size float32 list column


@dataclass(frozen=True, slots=True)
class EmbedCaps:
    """What one embeddings request may carry."""

    inputs: int  # texts a request
    tokens: int  # tokens a request, all texts together
    input_tokens: int  # tokens one text


# Per provider kind. OpenAI: 2,048 inputs and 300,000 tokens a request, 8,192 a text.
# Gemini batchEmbedContents: 100 requests a call, 2,048 tokens a text.
CAPS: dict[str, EmbedCaps] = {
    "openai": EmbedCaps(2048, 300_000, 8192),
    "azure": EmbedCaps(2048, 300_000, 8192),
    "gemini": EmbedCaps(100, 200_000, 2048),
    "sim": EmbedCaps(2048, 300_000, 8192),
}
BATCH_INPUTS = 50_000  # inputs in one /v1/embeddings provider batch


def caps_for(kind: str) -> EmbedCaps:
    return CAPS.get(kind, CAPS["openai"])  # compatible servers: OpenAI's caps


def token_bound(text: str) -> int:
    """Tokens a text may take, on the safe side, to pack by: a third of its UTF-8 bytes.

    Every tokenizer in use makes fewer tokens than that for text; it only packs.
    """
    size = len(text) if text.isascii() else len(text.encode())
    return max(1, (size + 2) // 3)


# -- the line ---------------------------------------------------------------------


@dataclass(slots=True)
class EmbedJob:
    """One embedding line: its texts (one vector each), model and dimensions."""

    id: str
    line: int
    texts: list[str]
    model: ModelRef | None
    dimensions: int | None
    metadata: Any = None


def is_embed_record(obj: Any) -> bool:
    """Whether a parsed line asks for embeddings (``input``, no prompt or messages)."""
    return (
        isinstance(obj, dict) and "input" in obj and "prompt" not in obj and "messages" not in obj
    )


@dataclass(slots=True)
class EmbedParser:
    """Turns one line into an EmbedJob, with the same file:line errors as chat lines."""

    providers: Collection[str] = BUILTIN_PROVIDERS
    has_default_model: bool = True
    max_inputs: int = 2048  # a line's inputs travel in one request

    def parse(self, raw: bytes, lineno: int) -> EmbedJob:
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise LineError(f"not valid JSON ({exc.args[0].split(':')[0]})") from None
        if not isinstance(obj, dict):
            raise LineError("expected a JSON object")
        return self.from_record(obj, lineno)

    def from_record(self, obj: dict[str, Any], lineno: int) -> EmbedJob:
        texts = self._texts(obj.get("input"))
        model = self._model(obj.get("model"))
        if model is None and not self.has_default_model:
            raise LineError('no model: give the line a "model", or pass --model')
        dims = obj.get("dimensions")
        if dims is not None and (isinstance(dims, bool) or not isinstance(dims, int) or dims < 1):
            raise LineError('"dimensions" must be a positive integer')
        return EmbedJob(
            job_id_field(obj.get("id"), lineno), lineno, texts, model, dims, obj.get("metadata")
        )

    def _texts(self, value: Any) -> list[str]:
        if isinstance(value, str):
            value = [value]
        elif not isinstance(value, list) or not value:
            raise LineError('"input" must be a non-empty string or a non-empty list of strings')
        for i, text in enumerate(value):
            if not isinstance(text, str) or not text.strip():
                raise LineError(f'"input[{i}]" must be a non-empty string')
        if len(value) > self.max_inputs:
            raise LineError(f'"input" has {len(value):,} texts; at most {self.max_inputs:,} a line')
        texts: list[str] = value
        return texts

    def _model(self, spec: Any) -> ModelRef | None:
        return model_field(spec, self.providers)


# -- the pack ---------------------------------------------------------------------


@dataclass(slots=True)
class EmbedPack:
    """Inputs of many lines that travel in one request, and where each row's vector is.

    ``texts`` are the distinct texts (slots); rows point at slots, so a text that
    repeats is sent once. ``known`` holds slots answered already (the response
    cache, an earlier pack): only the others are sent. The provider sets ``vectors``
    (one row per sent slot, in ``send_slots`` order) and ``tokens``.
    """

    seq: int
    model: ModelRef
    dimensions: int | None
    texts: list[str] = field(default_factory=list)
    hashes: list[int] = field(default_factory=list)
    tokens_bound: int = 0  # token_bound of the texts to send
    known: dict[int, Any] = field(default_factory=dict)  # slot -> float32 vector
    ids: list[str] = field(default_factory=list)  # one per row
    index: list[int] = field(default_factory=list)  # the row's place in its line's input
    slot: list[int] = field(default_factory=list)
    metadata: list[Any] = field(default_factory=list)
    vectors: Any = None  # the answer: float32 matrix, one row per sent slot
    tokens: int = 0  # the answer's usage
    requests: int = 0  # requests that carried texts (not those answered from memory)
    done: bool = False  # written (its rows are out)
    kept: Any = None  # once written: its slot matrix, kept a while for repeats

    @property
    def send_slots(self) -> list[int]:
        known = self.known
        return [i for i in range(len(self.texts)) if i not in known]

    @property
    def rows(self) -> int:
        return len(self.ids)

    def matrix(self) -> Matrix:
        """Every slot's vector, in slot order (after a successful answer)."""
        import numpy as np

        known = self.known
        if not known:
            return np.ascontiguousarray(self.vectors, dtype=np.float32)
        dim = len(next(iter(known.values()))) if self.vectors is None else self.vectors.shape[1]
        out = np.empty((len(self.texts), dim), dtype=np.float32)
        sent = self.send_slots
        if sent:
            out[sent] = self.vectors
        for i, vec in known.items():
            out[i] = vec
        return out


# -- decoding ---------------------------------------------------------------------


def decode_vectors(items: list[Any], key: str = "embedding") -> Matrix:
    """One float32 matrix from an embeddings answer's items (base64 or JSON floats)."""
    import numpy as np

    if not items:
        return np.empty((0, 0), dtype=np.float32)
    first = items[0][key] if key else items[0]
    if isinstance(first, str):
        # Each row decoded straight into its place: no joined copy of the whole answer.
        row = np.frombuffer(base64.b64decode(first), dtype="<f4")
        out = np.empty((len(items), len(row)), dtype=np.float32)
        out[0] = row
        for i in range(1, len(items)):
            text = items[i][key] if key else items[i]
            row = np.frombuffer(base64.b64decode(text), dtype="<f4")
            if len(row) != out.shape[1]:
                raise ValueError(f"embeddings of {out.shape[1]} and {len(row)} dimensions")
            out[i] = row
        return out
    rows = [item[key] if key else item for item in items]
    return np.asarray(rows, dtype=np.float32)


def encode_vector(vec: Any) -> str:
    """A float32 vector as base64 (little-endian), as the response cache keeps it."""
    import numpy as np

    return base64.b64encode(np.asarray(vec, dtype="<f4").tobytes()).decode()


def decode_vector(text: str) -> Any:
    import numpy as np

    return np.frombuffer(base64.b64decode(text), dtype="<f4").astype(np.float32)
