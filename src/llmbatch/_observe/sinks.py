"""What watches a run besides the progress display: the flags' checks and the sinks they make.

``build_sinks(config)`` is what the engine calls (once, before the run starts) to
get the ``--log-json`` and ``--otlp`` sinks for its EventBus; ``close_sinks`` in a
``finally`` flushes them even when the run ends without a RunEnded event.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from llmbatch._core.exceptions import UsageError

if TYPE_CHECKING:
    from llmbatch._config.settings import RunConfig
    from llmbatch._core.events import EventSink


def run_secrets(config: RunConfig) -> list[str]:
    """Every API key this run could send: no sink may ever write one."""
    secrets = []
    for settings in config.providers.values():
        env = settings.key_env()
        value = os.environ.get(env) if env else None
        if value:
            secrets.append(value)
    return secrets


def build_sinks(config: RunConfig) -> list[EventSink]:
    """The sinks ``--log-json`` and ``--otlp`` ask for (none by default).

    :raises UsageError: the log file cannot be opened.
    """
    sinks: list[EventSink] = []
    secrets = run_secrets(config)
    if config.log_json is not None:
        from llmbatch._observe.jsonlog import JsonEventLog

        try:
            sinks.append(
                JsonEventLog(config.log_json, log_prompts=config.log_prompts, secrets=secrets)
            )
        except OSError as exc:
            raise UsageError(f"--log-json {config.log_json}: {exc.strerror}") from None
    if config.otlp is not None:
        from llmbatch._observe.otel import OtelExporter

        sinks.append(OtelExporter(config.otlp, secrets=secrets))
    return sinks


def close_sinks(sinks: list[EventSink]) -> None:
    """Flush and release every sink that holds something (idempotent)."""
    for sink in sinks:
        close = getattr(sink, "close", None)
        if close is not None:
            close()
