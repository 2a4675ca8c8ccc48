"""Gemini explicit context caching: one ``cachedContents`` entry per prefix group.

The plan sets ``Request.cache.explicit_ttl_s`` on the jobs of a group whose entry
pays for itself (``_engine/gemini_cache.py``). The first of them to be sent
creates the entry (``POST /v1beta/cachedContents`` with the model, the system
instruction and the leading contents, and a ``ttl``); the others wait on the
group's lock, then send only what follows the prefix with ``cachedContent``
naming it. A failed create is not retried: the group is sent in full (Gemini's
implicit cache may still read it). Every entry is deleted when the provider
closes, at the end of a run or after a signal stopped it.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

import anyio
import orjson

from llmbatch._core.prefix import PrefixInfo
from llmbatch.providers.gemini_wire import API_VERSION, model_path

if TYPE_CHECKING:
    import aiohttp

CREATE_TIMEOUT_S = 60.0
DELETE_TIMEOUT_S = 10.0


def split_body(
    model: str, body: dict[str, Any], info: PrefixInfo
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(the entry to create, the request without the cached part); None: not splittable.

    The request keeps its ``generationConfig``; it loses ``systemInstruction``
    (a request naming a cache may not set one) and the leading contents.
    """
    contents = list(body.get("contents") or ())
    cached: dict[str, Any] = {"model": model_path(model)}
    if "systemInstruction" in body:
        cached["systemInstruction"] = body["systemInstruction"]
    lead = info.messages if info.end in ("messages", "template") else 0
    if len(contents) <= lead:
        return None
    head = contents[:lead]
    rest = contents[lead:]
    if info.end == "template":
        parts = rest[0].get("parts") or []
        text = parts[0].get("text") if len(parts) == 1 and isinstance(parts[0], dict) else None
        if not isinstance(text, str) or not 0 < info.split < len(text):
            return None
        head.append({"role": rest[0].get("role", "user"), "parts": [{"text": text[: info.split]}]})
        rest = [{**rest[0], "parts": [{"text": text[info.split :]}]}, *rest[1:]]
    elif info.end != "system" and info.end != "messages":
        return None
    if head:
        cached["contents"] = head
    if len(cached) == 1:
        return None  # nothing to cache
    request = {k: v for k, v in body.items() if k not in ("systemInstruction", "contents")}
    request["contents"] = rest
    return cached, request


def entry_key(cached: dict[str, Any]) -> str:
    return hashlib.blake2b(
        orjson.dumps(cached, option=orjson.OPT_SORT_KEYS), digest_size=16
    ).hexdigest()


class ExplicitCaches:
    """The run's ``cachedContents`` entries: created once per group, deleted at the end."""

    def __init__(self, base_url: str, headers: dict[str, str], proxy: str | None) -> None:
        self.base_url = base_url
        self.headers = {k: v for k, v in headers.items() if k != "accept"}
        self.proxy = proxy
        self.names: dict[str, str | None] = {}  # entry key → its name (None: create failed)
        self._locks: dict[str, anyio.Lock] = {}
        self.created: list[str] = []  # every entry made, deleted at the end
        self.failed: list[str] = []  # why creates failed (for the report's notes)

    async def name_for(
        self, session: aiohttp.ClientSession, key: str, cached: dict[str, Any], ttl_s: int
    ) -> str | None:
        """The entry's name, created on first use (one create per key); None: send in full."""
        if key in self.names:
            return self.names[key]
        lock = self._locks.setdefault(key, anyio.Lock())
        async with lock:
            if key not in self.names:
                self.names[key] = await self._create(session, {**cached, "ttl": f"{ttl_s}s"})
        return self.names[key]

    def forget(self, key: str) -> None:
        """The entry is gone (expired, deleted elsewhere): the group goes in full from now."""
        self.names[key] = None

    async def _create(self, session: aiohttp.ClientSession, entry: dict[str, Any]) -> str | None:
        import aiohttp

        url = f"{self.base_url}/{API_VERSION}/cachedContents"
        try:
            async with session.post(
                url,
                data=orjson.dumps(entry),
                headers=self.headers,
                proxy=self.proxy,
                timeout=aiohttp.ClientTimeout(total=CREATE_TIMEOUT_S),
            ) as resp:
                raw = await resp.read()
                if resp.status != 200:
                    self.failed.append(f"HTTP {resp.status}")
                    return None
            name = orjson.loads(raw).get("name")
        except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError, AttributeError) as exc:
            self.failed.append(type(exc).__name__)
            return None
        if not isinstance(name, str) or not name.startswith("cachedContents/"):
            self.failed.append("an answer without a cachedContents name")
            return None
        self.created.append(name)
        return name

    async def delete_all(self, session: aiohttp.ClientSession) -> None:
        """Delete every entry this run created (errors ignored: the ttl ends them anyway)."""
        import aiohttp

        names, self.created = self.created, []
        self.names = {k: None for k in self.names}
        for name in names:
            try:
                async with session.delete(
                    f"{self.base_url}/{API_VERSION}/{name}",
                    headers=self.headers,
                    proxy=self.proxy,
                    timeout=aiohttp.ClientTimeout(total=DELETE_TIMEOUT_S),
                ) as resp:
                    await resp.read()
            except (aiohttp.ClientError, TimeoutError):
                continue
