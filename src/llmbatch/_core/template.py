"""Prompt templates: ``{field}`` and ``{a.b}`` filled from a JSON record; ``{{`` is a brace."""

from __future__ import annotations

import re
from typing import Any

import orjson

_FIELD = re.compile(r"\{\{|\}\}|\{([^{}]*)\}")


class TemplateError(ValueError):
    pass


class MissingField(KeyError):
    """The record has no value for a field the template names (``null`` when ``null``)."""

    def __init__(self, field: str, null: bool = False) -> None:
        super().__init__(field)
        self.field = field
        self.null = null


class Template:
    """A compiled template. Parsing happens once; filling is a list join."""

    __slots__ = ("_parts", "fields", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        parts: list[str | tuple[str, ...]] = []
        pos = 0
        for m in _FIELD.finditer(text):
            parts.append(text[pos : m.start()])
            token = m.group(0)
            if token == "{{":
                parts.append("{")
            elif token == "}}":
                parts.append("}")
            else:
                name = m.group(1).strip()
                if not re.fullmatch(r"[^\s.{}]+(\.[^\s.{}]+)*", name):
                    raise TemplateError(f"bad template field {token!r}: use {{name}} or {{a.b}}")
                parts.append(tuple(name.split(".")))
            pos = m.end()
        rest = text[pos:]
        if "{" in rest or "}" in rest:
            raise TemplateError("unbalanced brace in template: write {{ or }} for a literal brace")
        parts.append(rest)
        self._parts = [p for p in parts if p != ""]
        self.fields = [".".join(p) for p in self._parts if isinstance(p, tuple)]
        if not self.fields:
            raise TemplateError("template names no {field}: every job would get the same prompt")

    @property
    def static_head(self) -> str:
        """The text before the first field: the same in every prompt (a cacheable prefix)."""
        head = []
        for part in self._parts:
            if not isinstance(part, str):
                break
            head.append(part)
        return "".join(head)

    def render(self, record: dict[str, Any]) -> str:
        out: list[str] = []
        for part in self._parts:
            if isinstance(part, str):
                out.append(part)
                continue
            value: Any = record
            for key in part:
                if isinstance(value, dict) and key in value:
                    value = value[key]
                elif isinstance(value, list) and key.isdigit() and int(key) < len(value):
                    value = value[int(key)]
                else:
                    raise MissingField(".".join(part))
            if isinstance(value, str):
                out.append(value)
            elif value is None:
                # Not rendered as "null" or "": a prompt with a hole is not worth paying for.
                raise MissingField(".".join(part), null=True)
            else:
                out.append(orjson.dumps(value).decode())
        return "".join(out)
