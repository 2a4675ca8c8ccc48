"""``run --dry-run``: the exact requests a run would send, keys redacted; nothing is sent.

The same check pass as a run (resume, ``--limit``, invalid lines), then for each
job that would run, the first attempt's URL, headers and body, built by the
providers' own body builders. No session, no connection, no lock, no output.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import IO, Any

import orjson

from llmbatch._config.settings import ProviderSettings, RunConfig
from llmbatch._core.jobs import LineError
from llmbatch._engine.plan import Plan, Planner, PreparedJob
from llmbatch._io.jobfile import iter_lines, open_jobs

# Header names whose values are credentials, whatever the provider calls them.
_SECRET_HEADER = re.compile(r"auth|key|token|secret|cookie|password", re.IGNORECASE)


def dry_run_requests(config: RunConfig) -> tuple[Plan, Iterator[dict[str, Any]], set[str]]:
    """Check the jobs as ``run`` would (keys may be unset); yield one request per job to run."""
    planner = Planner(config)
    plan = planner.plan()
    planner.check(plan, require_keys=False)
    notes: set[str] = set()
    return plan, _requests(planner, plan, notes), notes


def _requests(planner: Planner, plan: Plan, notes: set[str]) -> Iterator[dict[str, Any]]:
    cfg = planner.config
    existing = planner.existing
    done = existing.done if existing is not None and not cfg.fresh else None
    with open_jobs(cfg.jobs) as stream:
        for lineno, raw in iter_lines(stream):
            if lineno > plan.last_line:
                return
            if lineno in plan.invalid_lines:
                continue
            try:
                job = planner.parser.parse(raw, lineno)
            except LineError:
                continue  # changed since the check; a run would skip it too
            if done is not None and done.fingerprint(job.id) is not None:
                continue
            yield request_preview(planner.prepare(job), cfg, notes)


def request_preview(pj: PreparedJob, cfg: RunConfig, notes: set[str]) -> dict[str, Any]:
    """The first attempt of one job: where it goes, with which headers, and the body."""
    ref = pj.chain[0]
    settings = cfg.providers[ref.provider]
    line: dict[str, Any] = {"id": pj.job.id, "line": pj.job.line, "model": str(ref)}
    if settings.kind == "anthropic":
        from llmbatch.providers.anthropic import ANTHROPIC_VERSION, build_anthropic_body

        base = settings.resolved_base_url()
        line["url"] = base + "/v1/messages"
        line["headers"] = {"anthropic-version": ANTHROPIC_VERSION, **redacted_headers(settings)}
        line["body"] = build_anthropic_body(
            ref.model, pj.request, settings.structured_output, notes
        )
    elif settings.kind in ("openai", "azure"):
        from llmbatch.providers.openai import OpenAIWire

        wire = OpenAIWire.of(settings, cfg)
        line["url"] = wire.url(ref.model)
        line["headers"] = redacted_headers(settings)
        line["body"] = wire.body(ref.model, pj.request, settings.structured_output, notes)
    elif settings.kind == "gemini":
        from llmbatch.providers.gemini import preview

        line["url"], line["body"] = preview(settings, ref.model, pj.request, notes)
        line["headers"] = redacted_headers(settings, "x-goog-api-key")
    elif settings.kind == "bedrock":
        from llmbatch.providers.bedrock import build_bedrock_body, converse_url

        line["url"] = converse_url(settings.resolved_base_url(), ref.model)
        line["headers"] = redacted_headers(settings)
        line["headers"].setdefault("authorization", "AWS4-HMAC-SHA256 [SigV4, signed when sent]")
        line["body"] = build_bedrock_body(pj.request, settings.structured_output, notes)
    else:  # sim answers locally: show the request in the OpenAI shape it reads
        from llmbatch.providers.openai import build_openai_body

        line["url"] = None
        line["body"] = build_openai_body(ref.model, pj.request)
    if len(pj.chain) > 1:
        line["fallback"] = [str(r) for r in pj.chain[1:]]
    return line


def redacted_headers(
    settings: ProviderSettings, key_header: str = "authorization"
) -> dict[str, str]:
    """The headers that carry a key or a setting, every credential redacted."""
    out: dict[str, str] = {}
    env = settings.key_env()
    if env is not None:
        if settings.kind == "azure" and not env.endswith("_AD_TOKEN"):
            key_header = "api-key"
        bearer = "Bearer " if key_header == "authorization" else ""
        out[key_header] = f"{bearer}[redacted: ${env}]"
    for name, value in settings.headers:
        out[name] = f"[redacted: {len(value)} characters]" if _SECRET_HEADER.search(name) else value
    return out


def print_dry_run(cfg: RunConfig, out: IO[bytes], err: IO[str]) -> int:
    """Write one JSON line per request a run would send now to ``out``, a summary to ``err``."""
    plan, requests, notes = dry_run_requests(cfg)
    n = 0
    for line in requests:
        out.write(orjson.dumps(line, option=orjson.OPT_APPEND_NEWLINE))
        n += 1
    out.flush()
    for note in sorted(notes):
        err.write(f"llmbatch: note: {note}\n")
    left = f"; {plan.held_back} more left by --limit" if plan.held_back else ""
    err.write(
        f"llmbatch: dry run: {n} request(s) would be sent (first attempts only: retries, "
        f"repairs and fallbacks depend on the answers){left}. Nothing was sent.\n"
    )
    return 0
