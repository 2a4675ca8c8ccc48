"""API keys and base URLs, checked before anything is sent; never echoed back.

A key with a control character (a key file saved with CRLF) or a base URL with
``user:pass@`` in it would otherwise fail deep in the HTTP client, in a message
that might quote them.
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit

from llmbatch._core.exceptions import UsageError


def key_problem(value: str) -> str | None:
    """Why ``value`` cannot be sent as a key, or None. Never quotes the key."""
    for ch in value:
        if ord(ch) < 32 or ord(ch) == 127:
            if ch in "\r\n":
                return "contains a line break (a key file saved with CRLF line endings?)"
            return "contains a control character"
        if ch.isspace():
            return "contains a space"
        if ord(ch) > 126:
            return "contains a non-ASCII character (pasted with typographic quotes?)"
    return None


def check_key(env: str, *, needed_by: str) -> None:
    """Refuse a missing or unsendable key in ``env`` (UsageError, exit 2)."""
    value = os.environ.get(env)
    if not value:
        raise UsageError(f"{env} is not set (needed by {needed_by}). Nothing was sent.")
    problem = key_problem(value)
    if problem:
        raise UsageError(f"{env} {problem}; fix the key. Nothing was sent.")


def base_url_problem(url: str) -> str | None:
    """Why ``url`` cannot be a provider's base URL, or None. Never quotes credentials."""
    if any(ord(ch) < 33 or ord(ch) == 127 for ch in url):
        return "contains a space or a control character"
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises on a port that is not a number
    except ValueError:
        return "is not a valid URL"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must start with http:// or https:// and name a host"
    if parts.username is not None or parts.password is not None:
        return (
            "carries a user name or password (user:pass@); they would be sent to the "
            "server in the clear. Give the key with api_key_env, or a header in "
            "[providers.NAME] headers"
        )
    return None


def check_base_url(url: str, where: str) -> None:
    problem = base_url_problem(url)
    if problem:
        shown = without_credentials(url)
        raise UsageError(f"{where}: base URL {shown!r} {problem}. Nothing was sent.")


def without_credentials(url: str) -> str:
    """``url`` fit to print: any ``user:password@`` is shown as ``…@``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(unparsable)"
    if "@" in parts.netloc:
        return parts._replace(netloc="…@" + parts.netloc.rpartition("@")[2]).geturl()
    return url


def check_otlp_url(url: str) -> None:
    """Refuse (UsageError) an ``--otlp`` URL that is not http(s) or carries credentials."""
    shown = without_credentials(url)
    try:
        parts = urlsplit(url)
        _ = parts.port
    except ValueError:
        raise UsageError(f"--otlp: {shown!r} is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"--otlp takes an http:// or https:// URL naming a host, got {shown!r}")
    if "@" in parts.netloc:
        raise UsageError(
            f"--otlp {shown!r} carries a user name or password (user:pass@), which would be "
            "printed and logged with the URL. Give credentials as a header instead: "
            "OTEL_EXPORTER_OTLP_HEADERS='authorization=Basic …'. Nothing was sent."
        )
