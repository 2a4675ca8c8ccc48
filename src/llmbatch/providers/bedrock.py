"""AWS Bedrock, through the Converse API, streamed (``POST /model/{modelId}/converse-stream``).

The model is a Bedrock model id (``anthropic.claude-haiku-4-5-20251001-v1:0``,
``amazon.nova-lite-v1:0``), an inference profile (``us.anthropic.…``) or an ARN;
it goes into the path percent-encoded, as the AWS SDKs send it. The endpoint is
``https://bedrock-runtime.{region}.amazonaws.com`` (``AWS_REGION``), or
``BEDROCK_BASE_URL`` / ``base_url``.

Two ways in: a Bedrock API key (``AWS_BEARER_TOKEN_BEDROCK``, sent as a plain
bearer token), or AWS credentials (the standard variables, profiles, SSO…) with
``llmbatch[aws]``, where botocore only signs each request (SigV4); the request
itself goes out on our own aiohttp session either way.

Structured output is native: ``outputConfig.textFormat`` with a JSON schema
(given as a string); a model that rejects it gets the schema in the system
prompt for the rest of the run (``_structured.py``).
"""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import orjson

from llmbatch._config.provider_settings import BEDROCK_TOKEN_ENV, aws_region
from llmbatch._core.exceptions import BadRequest, ProviderError, UsageError
from llmbatch._core.headers import RateLimitHint, parse_retry_after
from llmbatch._core.jobs import Request
from llmbatch.providers._base import Answer
from llmbatch.providers._errors import Attempt, redact
from llmbatch.providers._http import HttpProvider, _drain
from llmbatch.providers._structured import StructuredModes, schema_instruction
from llmbatch.providers.bedrock_stream import (
    ConverseStream,
    bedrock_error,
    error_code,
    error_message,
    parse_body,
)
from llmbatch.providers.eventstream import new_decoder

if TYPE_CHECKING:
    import aiohttp

    from llmbatch._config.settings import ProviderSettings, RunConfig

BEDROCK_MODES = ("outputConfig", "prompt")
EVENTSTREAM = "application/vnd.amazon.eventstream"
SIGNING_NAME = "bedrock"  # bedrock-runtime signs as "bedrock"


def converse_url(base_url: str, model: str) -> str:
    """The ConverseStream URL of ``model``; ``:`` and ``/`` of ids and ARNs percent-encoded."""
    return f"{base_url}/model/{quote(model, safe='-._~')}/converse-stream"


# -- the body ---------------------------------------------------------------------------


def build_bedrock_body(
    request: Request, structured: str = "native", notes: set[str] | None = None
) -> dict[str, Any]:
    """The Converse body of one attempt (the model is in the URL, not here).

    System and developer messages join ``system``; a schema goes out as
    ``outputConfig.textFormat`` ("native"/"outputConfig"), or as an instruction
    in ``system`` ("prompt").
    """
    system = _system_blocks(request.system)
    messages: list[dict[str, Any]] = []
    for m in [*request.messages, *(request.appended or ())]:
        if m["role"] in ("system", "developer"):
            system.extend(_blocks(m["content"]))
        else:
            messages.append({"role": m["role"], "content": _blocks(m["content"])})
    inference: dict[str, Any] = {"maxTokens": request.max_tokens or 1024}
    if request.temperature is not None:
        inference["temperature"] = request.temperature
    body: dict[str, Any] = {"messages": messages, "inferenceConfig": inference}
    if request.schema is not None:
        if structured in ("native", "outputConfig"):
            body["outputConfig"] = output_config(request.schema)
        else:
            system.append({"text": schema_instruction(request.schema)})
    if system:
        body["system"] = system
    return body


def output_config(schema: dict[str, Any]) -> dict[str, Any]:
    """Converse's native structured output: the JSON schema, as a string."""
    title = schema.get("title")
    name = re.sub(r"[^A-Za-z0-9_-]", "_", title)[:64] if isinstance(title, str) else ""
    definition = {"schema": orjson.dumps(schema).decode(), "name": name or "output"}
    return {"textFormat": {"type": "json_schema", "structure": {"jsonSchema": definition}}}


def _system_blocks(system: Any) -> list[dict[str, Any]]:
    if system is None:
        return []
    return [b for b in _blocks(system) if b.get("text") != ""]


def _blocks(content: Any) -> list[dict[str, Any]]:
    """Message content (a string, OpenAI or Anthropic blocks) → Converse content blocks."""
    if isinstance(content, str):
        return [{"text": content}]
    out: list[dict[str, Any]] = []
    for block in content:
        if not isinstance(block, dict):
            raise BadRequest(f"a content block that is {type(block).__name__}, not an object")
        kind = block.get("type")
        if kind == "text":
            out.append({"text": block.get("text", "")})
        elif kind == "image_url":
            out.append(_image(str((block.get("image_url") or {}).get("url", ""))))
        elif kind == "image" and isinstance(block.get("source"), dict):
            source = block["source"]
            url = f"data:{source.get('media_type')};base64,{source.get('data')}"
            out.append(_image(url if source.get("type") == "base64" else ""))
        elif kind is None:
            out.append(block)  # already a Converse block ({"text"}, {"image"}, {"cachePoint"}…)
        else:
            raise BadRequest(f"content blocks of type {kind!r} cannot be sent to Bedrock Converse")
    return out


def _image(url: str) -> dict[str, Any]:
    match = re.fullmatch(r"data:image/(png|jpeg|gif|webp);base64,(.*)", url, re.DOTALL)
    if match is None:
        raise BadRequest(
            "Bedrock Converse takes images as base64 data: URLs (png, jpeg, gif, webp)"
        )
    base64.b64decode(match.group(2), validate=True)  # a bad one fails here, not at AWS
    return {"image": {"format": match.group(1), "source": {"bytes": match.group(2)}}}


# -- credentials --------------------------------------------------------------------------


class SigV4:
    """Signs each request with AWS credentials; botocore does the signing, nothing else."""

    def __init__(self, credentials: Any, region: str) -> None:
        self.credentials = credentials
        self.region = region

    def sign(self, url: str, data: bytes, headers: Mapping[str, str]) -> dict[str, str]:
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest

        signed = {k: headers[k] for k in ("content-type", "accept")}
        request = AWSRequest(method="POST", url=url, data=data, headers=signed)
        # Refreshable credentials (SSO, assumed roles) renew here when they are due.
        SigV4Auth(self.credentials.get_frozen_credentials(), SIGNING_NAME, self.region).add_auth(
            request
        )
        return {**headers, **dict(request.headers.items())}

    def secrets(self) -> list[str]:
        frozen = self.credentials.get_frozen_credentials()
        return [s for s in (frozen.secret_key, frozen.token) if s]


def sigv4_signer(settings: ProviderSettings) -> SigV4:
    """A signer from the standard AWS credential chain, or a UsageError that says what to set."""
    name = settings.name
    try:
        import botocore.session
    except ImportError:
        raise UsageError(
            f"provider {name} (Bedrock) needs {BEDROCK_TOKEN_ENV} (a Bedrock API key), or "
            "AWS credentials with the aws extra: pip install 'llmbatch[aws]'. Nothing was sent."
        ) from None
    credentials = botocore.session.Session().get_credentials()
    if credentials is None:
        raise UsageError(
            f"provider {name} (Bedrock): {BEDROCK_TOKEN_ENV} is not set and no AWS "
            "credentials were found (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, "
            "~/.aws/credentials, SSO…). Nothing was sent."
        )
    region = aws_region(settings)
    if not region:
        raise UsageError(
            f"provider {name} (Bedrock): signing with AWS credentials needs a region: set "
            "AWS_REGION. Nothing was sent."
        )
    return SigV4(credentials, region)


def check_credentials(settings: ProviderSettings) -> None:
    """Refuse a run that could not authenticate (UsageError), before anything is sent."""
    settings.resolved_base_url()  # a region, or a base URL
    if settings.key_env() is None:
        sigv4_signer(settings)


# -- the provider ---------------------------------------------------------------------------


class BedrockProvider(HttpProvider):
    def __init__(self, settings: ProviderSettings, config: RunConfig) -> None:
        super().__init__(settings, config)
        self.headers = {
            "content-type": "application/json",
            "accept": EVENTSTREAM,
            "user-agent": "llmbatch/0.1",
            **dict(settings.headers),
        }
        self.signer: SigV4 | None = None
        if self.api_key:
            self.headers["authorization"] = f"Bearer {self.api_key}"
        else:
            self.signer = sigv4_signer(settings)
        self.structured = StructuredModes(BEDROCK_MODES, settings.structured_output, self.notes)

    def _redact(self, text: str) -> str:
        # The current secrets: refreshable credentials (SSO, roles) change while a run lasts.
        for secret in self.signer.secrets() if self.signer is not None else ():
            text = text.replace(secret, "[redacted]")
        return redact(text, self.api_key)

    async def _send(self, model: str, request: Request, attempt: Attempt) -> Answer:
        mode = self.structured.mode
        body = build_bedrock_body(request, mode, self.notes)
        url = converse_url(self.base_url, model)
        data = orjson.dumps(body)
        headers = self.headers if self.signer is None else self.signer.sign(url, data, self.headers)
        stream = ConverseStream(time.perf_counter(), self._redact)
        attempt.spent = stream.spent
        try:
            hint, request_id = await self._converse(url, data, headers, stream)
        except ProviderError as err:
            self.structured.adapt(err, mode if request.schema is not None else None)
            raise
        return stream.answer(request, hint, request_id, self.notes)

    async def _converse(
        self, url: str, data: bytes, headers: Mapping[str, str], stream: ConverseStream
    ) -> tuple[RateLimitHint | None, str | None]:
        """POST and feed the answer's frames to ``stream``; (rate-limit hint, request id)."""
        from yarl import URL

        # encoded=True: the path goes out exactly as built (and, with SigV4, as signed).
        return await self._post(
            URL(url, encoded=True), data, headers, stream, _read_frames, ("x-amzn-requestid",)
        )

    def _http_error(
        self,
        status: int,
        raw: bytes,
        headers: Mapping[str, str],
        hint: RateLimitHint | None,
        request_id: str | None,
    ) -> ProviderError:
        body = parse_body(raw)
        err = bedrock_error(
            error_code(headers, body), status, self._redact(error_message(body, raw))
        )
        err.retry_after = parse_retry_after(headers)  # type: ignore[arg-type]
        err.request_id = request_id
        err.limits = hint
        return err


async def _read_frames(resp: aiohttp.ClientResponse, stream: ConverseStream) -> None:
    """Feed the frames of ``resp`` to ``stream``; a body that ends inside a frame is torn."""
    decoder = new_decoder()
    async for chunk in resp.content.iter_any():
        for frame in decoder.feed(chunk):
            stream.feed(frame)
            if stream.done:
                await _drain(resp)
                return
    decoder.close()
