"""JSON Schema: checking schemas, pulling JSON out of answers, validating, and sampling."""

from __future__ import annotations

import random
import re
from functools import lru_cache
from typing import Any

import orjson

from llmbatch._core.exceptions import UsageError

_FENCE = re.compile(r"```(?:json|JSON)?\s*\n(.*?)```", re.DOTALL)


def check_schema(schema: Any, where: str) -> None:
    """Raise UsageError if ``schema`` is not a valid JSON Schema (meta-schema check)."""
    import jsonschema

    if not isinstance(schema, dict):
        raise UsageError(f"{where}: a JSON Schema must be a JSON object")
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        cls.check_schema(schema)
    except jsonschema.SchemaError as exc:
        path = "/".join(str(p) for p in exc.path) or "(root)"
        raise UsageError(f"{where}: not a valid JSON Schema at {path}: {exc.message}") from None
    check_refs(schema, where)


# Keywords whose values are data, not schemas: a "$ref" inside them is not a reference.
_DATA_KEYWORDS = frozenset({"const", "enum", "examples", "default"})
# Keywords whose values map names to schemas: every value is a schema, whatever its name.
_SCHEMA_MAPS = frozenset(
    {"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"}
)


def _registry(schema: dict[str, Any]) -> Any:
    """A registry holding only ``schema`` (and what it embeds): nothing is ever fetched."""
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT202012

    resource = Resource.from_contents(schema, default_specification=DRAFT202012)
    return Registry().with_resource("", resource).crawl()


def check_refs(schema: dict[str, Any], where: str) -> None:
    """Resolve every ``$ref`` now (no network): one to nowhere would fail after paying."""
    from referencing.exceptions import Unresolvable

    registry = _registry(schema)
    for location, base, ref in _refs(schema, "", ()):
        try:
            _follow(registry.resolver(base_uri=base), ref, where)
        except Unresolvable:
            at = "/".join(location) or "(root)"
            remote = not ref.startswith("#")
            why = (
                "references to other documents are not fetched; copy the schema in under $defs"
                if remote
                else "the pointer leads nowhere in this schema"
            )
            raise UsageError(f"{where}: $ref {ref!r} at {at} cannot be resolved: {why}") from None


def _follow(resolver: Any, ref: str, where: str) -> None:
    """Resolve ``ref`` and the chain of bare ``$ref``s it leads to; a loop never validates."""
    seen: set[int] = set()
    while True:
        resolved = resolver.lookup(ref)
        target = resolved.contents
        if not isinstance(target, dict) or not isinstance(target.get("$ref"), str):
            return
        if id(target) in seen:
            raise UsageError(f"{where}: $ref {ref!r} leads to a loop of references")
        seen.add(id(target))
        resolver, ref = resolved.resolver, target["$ref"]


def _refs(node: Any, base: str, location: tuple[str, ...]) -> Any:
    """Each (location, base URI, $ref) in a schema, following ``$id`` for the base."""
    from urllib.parse import urljoin

    if isinstance(node, list):
        for i, item in enumerate(node):
            yield from _refs(item, base, (*location, str(i)))
        return
    if not isinstance(node, dict):
        return
    if isinstance(node.get("$id"), str):
        base = urljoin(base, node["$id"]).partition("#")[0]
    if isinstance(node.get("$ref"), str):
        yield location, base, node["$ref"]
    for key, value in node.items():
        if key in _DATA_KEYWORDS:
            continue
        if key in _SCHEMA_MAPS and isinstance(value, dict):
            for name, sub in value.items():
                yield from _refs(sub, base, (*location, key, str(name)))
        else:
            yield from _refs(value, base, (*location, key))


@lru_cache(maxsize=64)
def _validator_for(schema_json: bytes) -> Any:
    import jsonschema

    schema = orjson.loads(schema_json)
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    # Our own registry: jsonschema's default would fetch a remote $ref over the network.
    return cls(schema, format_checker=cls.FORMAT_CHECKER, registry=_registry(schema))


def schema_key(schema: dict[str, Any]) -> bytes:
    return orjson.dumps(schema, option=orjson.OPT_SORT_KEYS)


def extract_json(text: str) -> Any:
    """The JSON value in an answer: the whole text, a fenced block, or the first balanced value.

    Raises ValueError when there is none.
    """
    stripped = text.strip()
    try:
        return orjson.loads(stripped)
    except orjson.JSONDecodeError:
        pass
    for m in _FENCE.finditer(text):
        try:
            return orjson.loads(m.group(1).strip())
        except orjson.JSONDecodeError:
            continue
    for start, ch in enumerate(text):
        if ch in "{[":
            end = _balanced_end(text, start)
            if end is not None:
                try:
                    return orjson.loads(text[start:end])
                except orjson.JSONDecodeError:
                    continue
    raise ValueError("the answer holds no JSON value")


def _balanced_end(text: str, start: int) -> int | None:
    depth = 0
    in_string = False
    escaped = False
    for i in range(start, len(text)):
        c = text[i]
        if in_string:
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == '"':
                in_string = False
        elif c == '"':
            in_string = True
        elif c in "{[":
            depth += 1
        elif c in "}]":
            depth -= 1
            if depth == 0:
                return i + 1
    return None


def validate_answer(text: str, schema: dict[str, Any]) -> tuple[Any, str | None]:
    """Return (parsed value, None) when valid, else (None or the value, a short error)."""
    try:
        value = extract_json(text)
    except ValueError as exc:
        return None, str(exc)
    from referencing.exceptions import Unresolvable

    validator = _validator_for(schema_key(schema))
    try:
        errors = sorted(validator.iter_errors(value), key=lambda e: list(e.path))
    except (Unresolvable, RecursionError) as exc:  # the check pass refuses these already
        return value, f"the schema cannot be used: {type(exc).__name__}"
    if not errors:
        return value, None
    shown = []
    for err in errors[:5]:
        path = "/".join(str(p) for p in err.absolute_path) or "(root)"
        shown.append(f"at {path}: {err.message}")
    more = f" (+{len(errors) - 5} more)" if len(errors) > 5 else ""
    return value, "; ".join(shown) + more


# -- sampling: the sim provider's structured answers -----------------------

_WORDS = (
    "alpha beta gamma delta amber river stone cedar maple harbor summit meadow "
    "copper silver orbit vector signal pixel lumen quartz tidal ember willow"
).split()


def sample_instance(schema: dict[str, Any], rng: random.Random) -> Any:
    """A value that satisfies ``schema`` (the common keywords), drawn from ``rng``."""
    return _sample(schema, rng, schema, 0)


def _resolve(schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    seen = 0
    while "$ref" in schema and seen < 32:
        ref = schema["$ref"]
        if not isinstance(ref, str) or not ref.startswith("#"):
            return {}
        node: Any = root
        for part in ref.lstrip("#").strip("/").split("/"):
            if not part:
                continue
            part = part.replace("~1", "/").replace("~0", "~")
            node = node.get(part, {}) if isinstance(node, dict) else {}
        schema = node if isinstance(node, dict) else {}
        seen += 1
    return schema


def _sample(schema: Any, rng: random.Random, root: dict[str, Any], depth: int) -> Any:
    if schema is True or not isinstance(schema, dict):
        return None if depth > 0 else {}
    schema = _resolve(schema, root)
    if "const" in schema:
        return schema["const"]
    if "enum" in schema and schema["enum"]:
        return rng.choice(schema["enum"])
    if "allOf" in schema:
        return _sample(_merge_all_of(schema, root), rng, root, depth)
    for key in ("anyOf", "oneOf"):
        if key in schema and schema[key]:
            return _sample(schema[key][0], rng, root, depth)
    typ = _type_of(schema)
    if typ == "object":
        return _sample_object(schema, rng, root, depth)
    if typ == "array":
        return _sample_array(schema, rng, root, depth)
    if typ == "integer":
        return _sample_integer(schema, rng)
    if typ == "number":
        lo_f, hi_f = _bounds(schema, integer=False)
        return round(rng.uniform(lo_f, hi_f), 2) if hi_f - lo_f > 0.02 else lo_f
    if typ == "boolean":
        return rng.random() < 0.5
    if typ == "null":
        return None
    return _sample_string(schema, rng)


def _merge_all_of(schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    """One schema from an ``allOf``: properties and required joined, other keys the last."""
    merged: dict[str, Any] = {}
    for sub in schema["allOf"]:
        sub = _resolve(sub, root)
        for k, v in sub.items():
            if k in ("properties",) and k in merged:
                merged[k] = {**merged[k], **v}
            elif k == "required" and k in merged:
                merged[k] = list({*merged[k], *v})
            else:
                merged[k] = v
    rest = {k: v for k, v in schema.items() if k != "allOf"}
    return {**merged, **rest}


def _type_of(schema: dict[str, Any]) -> Any:
    """The one type to sample: the first non-null of a list, else guessed from the keys."""
    typ = schema.get("type")
    if isinstance(typ, list):
        non_null = [t for t in typ if t != "null"]
        typ = non_null[0] if non_null else "null"
    if typ is None:
        if "properties" in schema:
            typ = "object"
        elif "items" in schema:
            typ = "array"
        else:
            typ = "string"
    return typ


def _sample_object(
    schema: dict[str, Any], rng: random.Random, root: dict[str, Any], depth: int
) -> dict[str, Any]:
    props: dict[str, Any] = schema.get("properties", {})
    required = set(schema.get("required", []))
    out: dict[str, Any] = {}
    for name, sub in props.items():
        if name in required or depth < 3:
            out[name] = _sample(sub, rng, root, depth + 1)
    for name in required - out.keys():
        extra = schema.get("additionalProperties")
        out[name] = _sample(extra if isinstance(extra, dict) else {}, rng, root, depth + 1)
    return out


def _sample_array(
    schema: dict[str, Any], rng: random.Random, root: dict[str, Any], depth: int
) -> list[Any]:
    items = schema.get("items", {})
    lo = int(schema.get("minItems", 1 if depth < 3 else 0))
    hi = int(schema.get("maxItems", max(lo, 3)))
    n = rng.randint(lo, max(lo, hi))
    if isinstance(schema.get("prefixItems"), list):
        prefix = [_sample(s, rng, root, depth + 1) for s in schema["prefixItems"]]
        return prefix + [
            _sample(items, rng, root, depth + 1) for _ in range(max(0, n - len(prefix)))
        ]
    values = [_sample(items, rng, root, depth + 1) for _ in range(n)]
    if schema.get("uniqueItems"):
        unique: list[Any] = []
        for v in values:
            if v not in unique:
                unique.append(v)
        values = unique
    return values


def _sample_integer(schema: dict[str, Any], rng: random.Random) -> int:
    lo_i, hi_i = _bounds(schema, integer=True)
    value_i = rng.randint(int(lo_i), int(hi_i))
    step = schema.get("multipleOf")
    if isinstance(step, int) and step > 0:
        value_i = (value_i // step) * step
        if value_i < lo_i:
            value_i += step
    return value_i


def _bounds(schema: dict[str, Any], *, integer: bool) -> tuple[float, float]:
    lo = schema.get("minimum", 0)
    hi = schema.get("maximum", max(lo, 0) + 100)
    if "exclusiveMinimum" in schema and isinstance(schema["exclusiveMinimum"], int | float):
        lo = schema["exclusiveMinimum"] + (1 if integer else 0.01)
    if "exclusiveMaximum" in schema and isinstance(schema["exclusiveMaximum"], int | float):
        hi = schema["exclusiveMaximum"] - (1 if integer else 0.01)
    if hi < lo:
        hi = lo
    return lo, hi


def _sample_string(schema: dict[str, Any], rng: random.Random) -> str:
    fmt = schema.get("format")
    if fmt == "email":
        return f"{rng.choice(_WORDS)}.{rng.choice(_WORDS)}@example.com"
    if fmt == "date":
        return f"2026-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
    if fmt == "date-time":
        return f"2026-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T12:00:00Z"
    if fmt in ("uri", "url"):
        return f"https://example.com/{rng.choice(_WORDS)}"
    if fmt == "uuid":
        return f"{rng.getrandbits(32):08x}-0000-4000-8000-{rng.getrandbits(48):012x}"
    lo = int(schema.get("minLength", 1))
    hi = int(schema.get("maxLength", max(lo, 40)))
    words = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(1, 4)))
    while len(words) < lo:
        words += " " + rng.choice(_WORDS)
    return words[:hi] if hi >= lo else words[:lo]
