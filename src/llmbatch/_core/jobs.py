"""Job lines: the three line shapes, templates, the request each becomes, and their checks."""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from llmbatch._core.models import BUILTIN_PROVIDERS, ModelRef, ModelSpecError, parse_model_spec
from llmbatch._core.prefix import PrefixInfo
from llmbatch._core.template import MissingField, Template

WireFormat = Literal["openai", "anthropic"]

_ROLES = frozenset({"user", "assistant", "system", "developer"})


@dataclass(slots=True)
class Request:
    """What a job asks for, in one shape whatever the line looked like.

    ``body`` keeps a Batch-API line's own body: when the job goes to the provider
    whose wire format it is already in, it is sent as it is.
    """

    messages: list[dict[str, Any]]
    system: Any = None
    model: ModelRef | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    schema: dict[str, Any] | None = None
    fallback: list[ModelRef] | None = None
    wire_format: WireFormat | None = None
    body: dict[str, Any] | None = None
    # Turns added after the job's own messages (schema repairs); adapters append
    # them to whatever messages they send, passthrough bodies included.
    appended: list[dict[str, Any]] | None = None
    # The plan's word on the cacheable prefix (prompt caching); not part of the question.
    cache: PrefixInfo | None = None
    # An embeddings pack (``_core.embed.EmbedPack``): the request asks for vectors.
    embed: Any = None
    # The plan's hash of the job as first sent (``_engine.plan.fingerprint``); None
    # when no plan made it. The offline provider derives its answer from it.
    fingerprint: str | None = None


@dataclass(slots=True)
class Job:
    id: str
    line: int
    request: Request
    metadata: Any = None
    input: Any = None  # with --include-input: what the line asked, for the result line


class LineError(ValueError):
    """This line is not a valid job; the message says why."""


@dataclass(slots=True)
class JobParser:
    """Turns one JSONL line into a Job. Holds what every line shares."""

    template: Template | None = None
    providers: Collection[str] = BUILTIN_PROVIDERS
    has_default_model: bool = True
    include_input: bool = False

    def parse(self, raw: bytes, lineno: int) -> Job:
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise LineError(f"not valid JSON ({exc.args[0].split(':')[0]})") from None
        if not isinstance(obj, dict):
            raise LineError(f"expected a JSON object, got {_json_kind(obj)}")
        if "params" in obj and "custom_id" in obj:
            job = self._anthropic_batch(obj, lineno)
        elif "body" in obj and ("custom_id" in obj or "url" in obj):
            job = self._openai_batch(obj, lineno)
        elif "prompt" in obj or "messages" in obj:
            job = self._native(obj, lineno)
        elif self.template is not None:
            job = self._record(obj, lineno)
        else:
            raise LineError(
                'no "prompt" or "messages" (and no --template to build a prompt from this record)'
            )
        if job.request.model is None and not self.has_default_model:
            raise LineError('no model: give the line a "model", or pass --model')
        if self.include_input:
            job.input = job_input(obj)
        return job

    def job_id(self, raw: bytes, lineno: int) -> str:
        """The id ``parse`` gives this line, found without building the job (``--ray``'s
        driver: resume and shards over lines the check pass found valid)."""
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise LineError(f"not valid JSON ({exc.args[0].split(':')[0]})") from None
        if not isinstance(obj, dict):
            raise LineError(f"expected a JSON object, got {_json_kind(obj)}")
        if "params" in obj and "custom_id" in obj:  # the shapes in parse()'s order
            value = obj["custom_id"]
        elif "body" in obj and ("custom_id" in obj or "url" in obj):
            value = obj.get("custom_id")
        elif "prompt" in obj or "messages" in obj:
            value = obj.get("id")
        else:
            value = obj.get("id", obj.get("custom_id"))
        return job_id_field(value, lineno)

    # -- shapes -------------------------------------------------------------

    def _native(self, obj: dict[str, Any], lineno: int) -> Job:
        prompt = obj.get("prompt")
        messages = obj.get("messages")
        if prompt is not None and messages is not None:
            raise LineError('give "prompt" or "messages", not both')
        if messages is None:
            if not isinstance(prompt, str) or not prompt or prompt.isspace():
                raise LineError('"prompt" must be a non-empty string')
            messages = [{"role": "user", "content": prompt}]
        else:
            messages = _check_messages(messages)
        get = obj.get
        system = get("system")
        if system is not None and not isinstance(system, (str, list)):
            raise LineError('"system" must be a string or a list of content blocks')
        # Most lines give none of these: a call each only for those they give.
        model = max_tokens = temperature = schema = fallback = None
        if (value := get("model")) is not None:
            model = self._model(value)
        if (value := get("max_tokens")) is not None:
            max_tokens = _max_tokens(value)
        if (value := get("temperature")) is not None:
            temperature = _temperature(value)
        if (value := get("schema")) is not None:
            schema = _schema(value)
        if (value := get("fallback")) is not None:
            fallback = self._fallback(value)
        # Request's first seven fields, in order (positional: a third cheaper than by name).
        request = Request(messages, system, model, max_tokens, temperature, schema, fallback)
        return Job(job_id_field(get("id"), lineno), lineno, request, get("metadata"))

    def _record(self, obj: dict[str, Any], lineno: int) -> Job:
        assert self.template is not None
        try:
            prompt = self.template.render(obj)
        except MissingField as exc:
            what = "is null in" if exc.null else "is missing from"
            raise LineError(f"template field {{{exc.field}}} {what} this record") from None
        request = Request(messages=[{"role": "user", "content": prompt}])
        return Job(job_id_field(obj.get("id", obj.get("custom_id")), lineno), lineno, request, obj)

    def _openai_batch(self, obj: dict[str, Any], lineno: int) -> Job:
        url = obj.get("url", "/v1/chat/completions")
        if url != "/v1/chat/completions":
            raise LineError(f'unsupported url {url!r}: only "/v1/chat/completions" is run')
        method = obj.get("method", "POST")
        if method != "POST":
            raise LineError(f'unsupported method {method!r}: Batch lines use "POST"')
        body = obj.get("body")
        if not isinstance(body, dict):
            raise LineError('"body" must be a JSON object')
        raw_messages = _check_messages(body.get("messages"), where="body.messages")
        system_parts = [m["content"] for m in raw_messages if m["role"] in ("system", "developer")]
        messages = [m for m in raw_messages if m["role"] not in ("system", "developer")]
        if not messages:
            raise LineError('"body.messages" has no user message')
        system: Any = None
        if system_parts:
            system = "\n\n".join(text_of(p) for p in system_parts)
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
        response_format = body.get("response_format")
        schema = None
        if isinstance(response_format, dict) and response_format.get("type") == "json_schema":
            js = response_format.get("json_schema")
            if isinstance(js, dict) and isinstance(js.get("schema"), dict):
                schema = js["schema"]
        request = Request(
            messages=messages,
            system=system,
            model=self._model(body.get("model")),
            max_tokens=_max_tokens(max_tokens),
            temperature=_temperature(body.get("temperature")),
            schema=schema,
            wire_format="openai",
            body=body,
        )
        return Job(job_id_field(obj.get("custom_id"), lineno), lineno, request, obj.get("metadata"))

    def _anthropic_batch(self, obj: dict[str, Any], lineno: int) -> Job:
        params = obj.get("params")
        if not isinstance(params, dict):
            raise LineError('"params" must be a JSON object')
        messages = _check_messages(params.get("messages"), where="params.messages")
        system = params.get("system")
        schema = None
        output_config = params.get("output_config")
        if isinstance(output_config, dict):
            fmt = output_config.get("format")
            if isinstance(fmt, dict) and isinstance(fmt.get("schema"), dict):
                schema = fmt["schema"]
        request = Request(
            messages=messages,
            system=system,
            model=self._model(params.get("model")),
            max_tokens=_max_tokens(params.get("max_tokens")),
            temperature=_temperature(params.get("temperature")),
            schema=schema,
            wire_format="anthropic",
            body=params,
        )
        return Job(job_id_field(obj.get("custom_id"), lineno), lineno, request, obj.get("metadata"))

    # -- fields -------------------------------------------------------------

    def _model(self, spec: Any) -> ModelRef | None:
        return model_field(spec, self.providers)

    def _fallback(self, specs: Any) -> list[ModelRef] | None:
        if specs is None:
            return None
        if isinstance(specs, str):
            specs = [specs]
        if not isinstance(specs, list) or not all(isinstance(s, str) for s in specs):
            raise LineError('"fallback" must be a model spec or a list of them')
        return [m for m in (self._model(s) for s in specs) if m is not None]


def job_input(obj: dict[str, Any]) -> dict[str, Any]:
    """What a line asked, as result lines carry it (``--include-input``): one key says the shape."""
    if "params" in obj and "custom_id" in obj:
        return {"params": obj["params"]}
    if "body" in obj and ("custom_id" in obj or "url" in obj):
        return {"body": obj["body"]}
    if "prompt" in obj or "messages" in obj:
        shown = {k: obj[k] for k in ("prompt", "messages", "system") if obj.get(k) is not None}
        return shown
    return {"record": obj}


def _json_kind(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return "a number"


def model_field(spec: Any, providers: Collection[str]) -> ModelRef | None:
    """A line's ``"model"`` (None when it has none), as every job shape reads it."""
    if spec is None:
        return None
    if not isinstance(spec, str):
        raise LineError('"model" must be a string')
    try:
        return parse_model_spec(spec, providers)
    except ModelSpecError as exc:
        raise LineError(str(exc)) from None


def job_id_field(value: Any, lineno: int) -> str:
    """A line's id (``line-N`` when it has none), as every job shape reads it."""
    if type(value) is str and value:  # the usual id: as it is
        return value
    if value is None:
        return f"line-{lineno}"
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise LineError("the job id must be a string or an integer")
    text = str(value)
    if not text:
        raise LineError("the job id is empty")
    return text


def _check_messages(messages: Any, where: str = "messages") -> list[dict[str, Any]]:
    if not isinstance(messages, list) or not messages:
        raise LineError(f'"{where}" must be a non-empty list of messages')
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise LineError(f'"{where}[{i}]" must be an object with "role" and "content"')
        role = m.get("role")
        if role not in _ROLES:
            raise LineError(f'"{where}[{i}].role" must be one of user, assistant, system')
        content = m.get("content")
        if not isinstance(content, str | list) or not content:
            raise LineError(f'"{where}[{i}].content" must be a non-empty string or list')
    return messages


def text_of(content: Any) -> str:
    """The text of a message content: a string, or the text blocks of a list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            b.get("text", "")
            for b in content
            if isinstance(b, dict) and b.get("type", "text") == "text"
        )
    return ""


def estimate_input_tokens(request: Request, *, conservative: bool = False) -> int:
    """Input tokens of a request: about four characters a token, plus a few per message.

    ``conservative`` counts UTF-8 bytes instead: no tokenizer makes more tokens
    than bytes, so a budget reserved from it is never short.
    """
    # Runs a few times per attempt: a plain loop, no intermediate lists.
    messages = request.messages
    if request.system is None and len(messages) == 1:
        content = messages[0].get("content")
        if type(content) is str:  # one prompt, the usual job: the same counts, sooner
            if conservative:
                return (len(content) if content.isascii() else len(content.encode())) + 12
            return max(1, -(-len(content) // 4) + 12)
    overhead = 4 * len(messages) + 8
    if conservative:
        size = _byte_len(request.system)
        for m in messages:
            size += _byte_len(m.get("content"))
        return size + overhead
    chars = len(text_of(request.system))
    for m in messages:
        chars += len(text_of(m.get("content")))
    return max(1, math.ceil(chars / 4) + overhead)


def _byte_len(content: Any) -> int:
    if isinstance(content, str):
        # ASCII text is one byte a character: no need to encode it to count.
        return len(content) if content.isascii() else len(content.encode())
    if isinstance(content, list):
        return len(orjson.dumps(content))
    return 0


def _max_tokens(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise LineError('"max_tokens" must be a positive integer')
    return value


def _temperature(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise LineError('"temperature" must be a number ≥ 0')
    return float(value)


def _schema(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise LineError('"schema" must be a JSON Schema object')
    return value


# Its public name: what a custom Provider is sent (llmbatch.ProviderRequest).
ProviderRequest = Request
