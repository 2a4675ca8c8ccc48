"""Structured output that adapts to the server: step down when the field itself is rejected.

Servers that speak a wire format differ in what structured output they accept
(vLLM, llama.cpp, Ollama, gateways). When one rejects the structured-output
field — an error of any status whose message names it — the provider switches,
for the rest of the run, to the next mode down, says so once in its notes, and
makes that attempt's error retryable at once: a deterministic rejection is never
repeated.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from llmbatch._core.exceptions import ProviderError

OPENAI_MODES = ("json_schema", "json_object", "prompt")
ANTHROPIC_MODES = ("output_config", "prompt")
# Gemini: generationConfig.responseJsonSchema (JSON Schema), then responseSchema (its
# OpenAPI subset), then the schema in the system instruction.
GEMINI_MODES = ("response_json_schema", "response_schema", "prompt")

_NAMES_THE_FIELD = re.compile(
    r"response_format|json_schema|output_config|outputConfig|response_?json_?schema"
    r"|response_?schema|response_?mime_?type",
    re.IGNORECASE,
)

_SAID = {
    "json_object": 'response_format {"type": "json_object"}, with the schema in a system message',
    "prompt": "the schema in a system message (no structured-output field)",
    "response_schema": "generationConfig.responseSchema (Gemini's OpenAPI subset of the schema)",
}

SCHEMA_INSTRUCTION = (
    "Answer with only a JSON value that validates against this JSON Schema, "
    "no prose and no code fences:\n"
)


def schema_instruction(schema: dict[str, Any]) -> str:
    """The system text that asks for JSON matching ``schema`` (validated here afterwards)."""
    return SCHEMA_INSTRUCTION + orjson.dumps(schema).decode()


class StructuredModes:
    """The structured-output mode one provider uses now, and the ones it may fall back to."""

    def __init__(self, modes: tuple[str, ...], configured: str, notes: set[str]) -> None:
        self.modes = modes
        # "native" (the config's word) is the first mode of the wire format.
        self.mode = modes[0] if configured == "native" else configured
        if self.mode not in modes:
            raise ValueError(f"unknown structured output mode {configured!r}")
        self.notes = notes

    def adapt(self, err: ProviderError, used: str | None) -> None:
        """If ``err`` rejects the structured field sent in mode ``used``, step down.

        ``used`` is None when the attempt carried no structured field of ours.
        The error becomes retryable with ``retry_after = 0``: retry at once.
        """
        if used is None or used == self.modes[-1] or not _NAMES_THE_FIELD.search(err.message):
            return
        if self.mode == used:  # not yet moved by a concurrent attempt that failed alike
            self.mode = self.modes[self.modes.index(used) + 1]
            status = f"HTTP {err.status}" if err.status is not None else "an error"
            self.notes.add(
                f"the server rejected structured output as {used} ({status}: "
                f"{_first_line(err.message)}); switched to {_SAID[self.mode]} for the rest "
                "of the run"
            )
        err.retryable = True
        err.retry_after = 0.0
        err.retry_now = True


def _first_line(message: str) -> str:
    line = message.strip().splitlines()[0] if message.strip() else ""
    return line if len(line) <= 160 else line[:160] + "…"


# OpenAI strict structured outputs accept a subset of JSON Schema.
_STRICT_UNSUPPORTED = {
    "minLength",
    "maxLength",
    "pattern",
    "format",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
    "minItems",
    "maxItems",
    "uniqueItems",
    "patternProperties",
    "minProperties",
    "maxProperties",
}


def fits_strict(schema: Any) -> bool:
    """Does ``schema`` follow OpenAI strict mode's rules (all required, no extras, no bounds)?"""
    if isinstance(schema, list):
        return all(fits_strict(s) for s in schema)
    if not isinstance(schema, dict):
        return True
    if _STRICT_UNSUPPORTED & schema.keys():
        return False
    if schema.get("type") == "object" or "properties" in schema:
        props = schema.get("properties", {})
        if schema.get("additionalProperties") is not False:
            return False
        if set(schema.get("required", [])) != set(props):
            return False
    for key in ("properties", "$defs", "definitions"):
        if isinstance(schema.get(key), dict) and not all(
            fits_strict(s) for s in schema[key].values()
        ):
            return False
    for key in ("items", "anyOf", "allOf", "oneOf"):
        if key in schema and not fits_strict(schema[key]):
            return False
    return True


def strict_or_note(schema: dict[str, Any], notes: set[str] | None) -> bool:
    """Whether ``schema`` goes in OpenAI strict mode (chat completions and Responses
    alike); when it cannot, the run is told once, in ``notes``."""
    strict = fits_strict(schema)
    if not strict and notes is not None:
        notes.add(
            f"schema {schema_name(schema)!r} does not fit OpenAI strict mode "
            "(every property required, additionalProperties false, no bounds or "
            "formats): sent with strict: false, and validated here"
        )
    return strict


def schema_name(schema: dict[str, Any]) -> str:
    title = schema.get("title")
    if isinstance(title, str):
        name = re.sub(r"[^A-Za-z0-9_-]", "_", title)[:64]
        if name:
            return name
    return "output"
