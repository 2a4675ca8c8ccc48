"""Azure OpenAI: OpenAI's wire format on a resource endpoint, the deployment as the model.

``azure:DEPLOYMENT`` reaches ``{AZURE_OPENAI_ENDPOINT}/openai/v1/chat/completions``
(the v1 API, the deployment name in ``model``) or, with ``azure_path =
"deployment"``, the older ``/openai/deployments/{DEPLOYMENT}/chat/completions
?api-version=...``. The key goes in an ``api-key`` header; an Entra ID token
(``AZURE_OPENAI_AD_TOKEN``) as a bearer. ``--api responses`` works on both paths.
A prompt Azure's content filter stops (HTTP 400, code ``content_filter``) is a
content filter, as an answer it filters is.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from llmbatch._core.exceptions import ContentFiltered, ProviderError, UsageError
from llmbatch._core.headers import RateLimitHint
from llmbatch.providers._http import parse_error_body
from llmbatch.providers.batch_openai import OpenAIBatchClient
from llmbatch.providers.openai import OpenAIProvider, OpenAIWire

if TYPE_CHECKING:
    from llmbatch._config.settings import ProviderSettings, RunConfig

AD_TOKEN_ENV = "AZURE_OPENAI_AD_TOKEN"


def azure_auth(key_env: str | None, key: str | None) -> dict[str, str]:
    """The credential header: ``api-key``, or a bearer for an Entra ID token."""
    if not key:
        return {}
    if key_env == AD_TOKEN_ENV:
        return {"authorization": f"Bearer {key}"}
    return {"api-key": key}


def check_endpoint(settings: ProviderSettings, base_url: str) -> None:
    if not base_url:
        raise UsageError(
            f"AZURE_OPENAI_ENDPOINT is not set (needed by provider {settings.name}): "
            "https://RESOURCE.openai.azure.com, or base_url in [providers."
            f"{settings.name}]"
        )


class AzureProvider(OpenAIProvider):
    def __init__(self, settings: ProviderSettings, config: RunConfig) -> None:
        check_endpoint(settings, settings.resolved_base_url())
        super().__init__(settings, config)

    def auth_headers(self) -> dict[str, str]:
        return azure_auth(self.key_env, self.api_key)

    def _http_error(
        self,
        status: int,
        raw: bytes,
        headers: Mapping[str, str],
        hint: RateLimitHint | None,
        request_id: str | None,
    ) -> ProviderError:
        err = super()._http_error(status, raw, headers, hint, request_id)
        _, _, code = parse_error_body(raw)
        if status == 400 and code == "content_filter":
            filtered = ContentFiltered(f"Azure's content filter stopped the prompt: {err.message}")
            filtered.status, filtered.request_id = status, request_id
            return filtered
        return err


class AzureBatchClient(OpenAIBatchClient):
    """Azure's Global Batch: OpenAI's files and batches on the resource endpoint.

    The lines' ``url`` is ``/chat/completions`` (or ``/responses``) and their
    ``model`` a Global-Batch deployment; on the deployment path every call carries
    ``api-version``. Limits as OpenAI's: 50,000 requests and 200 MB a file.
    """

    def __init__(self, settings: ProviderSettings, config: RunConfig) -> None:
        check_endpoint(settings, settings.resolved_base_url())
        super().__init__(settings, config)
        if not settings.batch_endpoint:
            self.endpoint = self.endpoint.removeprefix("/v1")
        if settings.azure_path == "deployment":
            wire = OpenAIWire.of(settings, config)
            self.query = {"api-version": wire.api_version}

    def auth_headers(self) -> dict[str, str]:
        return azure_auth(self.key_env, self.api_key)
