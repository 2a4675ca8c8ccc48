"""A scriptable provider double: queue faults per prompt, inspect what was sent."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

import anyio

from llmbatch import RateLimited, RunConfig, ServerError
from llmbatch._core.exceptions import AuthError
from llmbatch._core.jobs import Request
from llmbatch._core.usage import Usage
from llmbatch.providers._base import Answer, Provider

STEPS = ("ok", "429", "500", "401", "foreign")


class ScriptedProvider:
    """Answers from a script per job prompt (then ``default``); records every send.

    Steps: ``ok``, ``429``, ``500``, ``401`` and ``foreign`` (an AttributeError, as an
    adapter bug would raise). ``models`` scripts a fixed step per model name.
    """

    name = "scripted"

    def __init__(
        self,
        script: dict[str, list[str]] | None = None,
        hold: float = 0.0,
        default: str = "ok",
        models: dict[str, str] | None = None,
        usage: Usage | None = None,
    ) -> None:
        self.notes: set[str] = set()
        self.script = defaultdict(list, script or {})
        self.hold = hold
        self.default = default
        self.models = models or {}
        self.usage = usage or Usage(10, 5)
        self.sent: list[Request] = []
        self.sent_models: list[str] = []
        self.in_flight = 0
        self.peak = 0

    async def send(self, model: str, request: Request, time_limit: float) -> Answer:
        self.sent.append(request)
        self.sent_models.append(model)
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            await anyio.sleep(self.hold)
            prompt = str(request.messages[0]["content"])
            steps = self.script[prompt]
            step = self.models.get(model) or (steps.pop(0) if steps else self.default)
            if step == "429":
                raise RateLimited("slow down", status=429, retry_after=0.0)
            if step == "500":
                raise ServerError("oops", status=500)
            if step == "401":
                raise AuthError("invalid x-api-key", status=401)
            if step == "foreign":
                raise AttributeError("'list' object has no attribute 'get'")
            return Answer(
                text=f"answer to {prompt}",
                usage=self.usage,
                stop_reason="end_turn",
                latency_ms=1.0,
                ttft_ms=0.5,
            )
        finally:
            self.in_flight -= 1

    async def aclose(self) -> None:
        return None


def factory(provider: ScriptedProvider) -> Callable[[str, RunConfig], Provider]:
    def make(name: str, cfg: RunConfig) -> Provider:
        return provider

    return make
