"""Gemini's wire shapes: URLs and the ``GenerateContentRequest`` built from a job.

Used by the streamed provider (``gemini``), the Batch API client
(``batch_gemini``), ``batch submit`` and ``--dry-run``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from llmbatch._core.jobs import Request, text_of
from llmbatch.providers._structured import GEMINI_MODES, schema_instruction

API_VERSION = "v1beta"

# JSON Schema keys Gemini's responseSchema (an OpenAPI 3.0 subset) takes.
_OPENAPI_KEYS = {
    "type",
    "format",
    "title",
    "description",
    "nullable",
    "enum",
    "maxItems",
    "minItems",
    "properties",
    "required",
    "minProperties",
    "maxProperties",
    "minLength",
    "maxLength",
    "pattern",
    "example",
    "anyOf",
    "propertyOrdering",
    "default",
    "items",
    "minimum",
    "maximum",
}


def model_path(model: str) -> str:
    """``models/NAME`` for a bare name; a full resource name passes through."""
    return model if "/" in model else f"models/{model}"


def model_url(base_url: str, model: str, method: str) -> str:
    """``BASE/v1beta/models/NAME:method``."""
    return f"{base_url}/{API_VERSION}/{quote(model_path(model), safe='/')}:{method}"


def stream_url(base_url: str, model: str) -> str:
    return model_url(base_url, model, "streamGenerateContent") + "?alt=sse"


def _part(block: Any) -> dict[str, Any]:
    """One content block (OpenAI or Anthropic shape) as a Gemini part."""
    if not isinstance(block, dict):
        return {"text": str(block)}
    kind = block.get("type")
    if kind == "text":
        return {"text": str(block.get("text", ""))}
    if kind == "image_url":
        url = str((block.get("image_url") or {}).get("url", ""))
        m = re.match(r"data:([^;,]+);base64,(.*)", url, re.DOTALL)
        if m:
            return {"inlineData": {"mimeType": m.group(1), "data": m.group(2)}}
        return {"fileData": {"fileUri": url}}
    if kind == "image" and isinstance(block.get("source"), dict):
        src = block["source"]
        if src.get("type") == "base64":
            return {"inlineData": {"mimeType": src.get("media_type"), "data": src.get("data")}}
        return {"fileData": {"fileUri": str(src.get("url", ""))}}
    return {"text": text_of([block])}


def _parts(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"text": content}]
    if isinstance(content, list):
        return [_part(b) for b in content]
    return [{"text": text_of(content)}]


def build_gemini_body(
    model: str,
    request: Request,
    structured: str = "native",
    notes: set[str] | None = None,
    *,
    with_model: bool = False,
) -> dict[str, Any]:
    """The ``GenerateContentRequest`` of one attempt (the model goes in the URL, or in
    the body with ``with_model``: a Batch API request)."""
    messages = list(request.messages) + list(request.appended or ())
    contents = [
        {"role": "model" if m["role"] == "assistant" else "user", "parts": _parts(m["content"])}
        for m in messages
        if m["role"] in ("user", "assistant")
    ]
    body: dict[str, Any] = {"contents": contents}
    if with_model:
        body["model"] = model_path(model)
    system = [text_of(request.system)] if request.system is not None else []
    config: dict[str, Any] = {}
    if request.max_tokens:
        config["maxOutputTokens"] = request.max_tokens
    if request.temperature is not None:
        config["temperature"] = request.temperature
    if request.schema is not None:
        mode = GEMINI_MODES[0] if structured == "native" else structured
        if mode == "response_json_schema":
            config["responseMimeType"] = "application/json"
            config["responseJsonSchema"] = request.schema
        elif mode == "response_schema":
            config["responseMimeType"] = "application/json"
            config["responseSchema"] = openapi_schema(request.schema)
        else:
            system.append(schema_instruction(request.schema))
    if system:
        body["systemInstruction"] = {"parts": [{"text": s} for s in system]}
    if config:
        body["generationConfig"] = config
    return body


def openapi_schema(schema: Any, defs: Mapping[str, Any] | None = None) -> Any:
    """A JSON Schema cut down to what ``responseSchema`` takes ($refs inlined, one level)."""
    if isinstance(schema, list):
        return [openapi_schema(s, defs) for s in schema]
    if not isinstance(schema, dict):
        return schema
    defs = {**(defs or {}), **schema.get("$defs", {}), **schema.get("definitions", {})}
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.rsplit("/", 1)[-1] in defs:
        return openapi_schema(defs[ref.rsplit("/", 1)[-1]], {})
    out: dict[str, Any] = {}
    kind = schema.get("type")
    if isinstance(kind, list):  # ["string", "null"] → nullable string
        rest = [k for k in kind if k != "null"]
        if len(rest) < len(kind):
            out["nullable"] = True
        kind = rest[0] if rest else "string"
    for key, value in schema.items():
        if key not in _OPENAPI_KEYS or key == "type":
            continue
        if key == "properties" and isinstance(value, dict):
            out[key] = {k: openapi_schema(v, defs) for k, v in value.items()}
        elif key in ("items", "anyOf"):
            out[key] = openapi_schema(value, defs)
        else:
            out[key] = value
    if isinstance(kind, str):
        out["type"] = kind.upper()
    return out
