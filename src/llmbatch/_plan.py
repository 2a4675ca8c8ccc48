"""The check pass: every job resolved, checked and fingerprinted before anything is sent."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Any

import orjson

from ._config import RunConfig
from ._exceptions import InputError, LineProblem, ResumeConflict, UsageError
from ._jobs import Job, JobParser, LineError, Request, validate_file
from ._models import ModelRef
from ._pricing import PriceBook
from ._results import ExistingOutput, fp_int, read_existing
from ._schema import check_schema, schema_key
from ._template import Template, TemplateError


@dataclass(slots=True)
class PreparedJob:
    job: Job
    request: Request  # defaults applied
    chain: list[ModelRef]
    fingerprint: str


@dataclass(slots=True)
class Plan:
    """What the check pass found: runnable count, models in use, problems."""

    total_valid: int = 0
    last_line: int = 0  # lines appended during the run wait for the next one
    todo: int = 0
    skipped_done: int = 0
    invalid_lines: set[int] = field(default_factory=set)
    problems: list[LineProblem] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)
    conflict_count: int = 0
    models: set[ModelRef] = field(default_factory=set)


def fingerprint(ref: ModelRef, request: Request) -> str:
    """A hash of everything that decides the answer: the model and the request as sent."""
    data = orjson.dumps(
        [
            str(ref),
            request.system,
            request.messages,
            request.max_tokens,
            request.temperature,
            request.schema,
            request.body,
        ],
        option=orjson.OPT_SORT_KEYS,
    )
    return hashlib.blake2b(data, digest_size=8).hexdigest()


class Planner:
    """Resolves each job (defaults, model chain, fingerprint) and checks the whole file."""

    def __init__(self, config: RunConfig) -> None:
        self.config = config
        template = None
        template = None
        if config.template is not None:
            try:
                template = Template(config.template)
            except TemplateError as exc:
                raise UsageError(f"--template: {exc}") from None
        self.parser = JobParser(
            template=template,
            providers=tuple(config.providers),
            has_default_model=config.model is not None,
        )
        self.prices = PriceBook(
            config.prices,
            {
                name: s.base_url
                for name, s in config.providers.items()
                if s.base_url and name not in ("anthropic", "openai", "sim")
            },
        )
        self.existing: ExistingOutput | None = (
            ExistingOutput(config.output) if config.output else None
        )
        self._schemas_checked: set[bytes] = set()

    # -- per-job resolution ---------------------------------------------------

    def chain(self, job: Job) -> list[ModelRef]:
        """The models a job tries, in order: its own (or --model), then the fallbacks."""
        cfg = self.config
        r = job.request
        model = r.model or cfg.model
        if model is None:  # the parser already refused this; keep mypy and readers sure
            raise LineError("no model")
        if cfg.provider is not None:
            model = ModelRef(cfg.provider, model.model)
        fallback = r.fallback if r.fallback is not None else cfg.fallback
        chain = [model]
        for ref in fallback:
            if cfg.provider is not None:
                ref = ModelRef(cfg.provider, ref.model)
            if ref not in chain:
                chain.append(ref)
        return chain

    def prepare(self, job: Job) -> PreparedJob:
        cfg = self.config
        r = job.request
        chain = self.chain(job)
        model = chain[0]
        request = Request(
            messages=r.messages,
            system=r.system if r.system is not None else cfg.system,
            model=model,
            max_tokens=r.max_tokens or cfg.max_tokens,
            temperature=r.temperature if r.temperature is not None else cfg.temperature,
            schema=r.schema if r.schema is not None else cfg.schema,
            wire_format=r.wire_format,
            body=r.body,
        )
        return PreparedJob(job, request, chain, fingerprint(model, request))

    def _check_job_schema(self, schema: dict[str, Any]) -> str | None:
        key = schema_key(schema)
        if key in self._schemas_checked:
            return None
        try:
            check_schema(schema, "schema")
        except UsageError as exc:
            return str(exc)
        self._schemas_checked.add(key)
        return None

    def plan(self) -> Plan:
        """Read the output (for resume) and check every job line. Sends nothing."""
        cfg = self.config
        if cfg.output is not None and not cfg.fresh:
            self.existing = read_existing(cfg.output, retry_failed=cfg.retry_failed)
        plan = Plan()
        done = self.existing.done if self.existing else None

        def on_job(job: Job) -> str | None:
            try:
                chain = self.chain(job)
            except LineError as exc:
                return str(exc)
            if job.request.schema is not None:
                problem = self._check_job_schema(job.request.schema)
                if problem:
                    return problem
            plan.models.update(chain)
            if done is not None:
                stored = done.fingerprint(job.id)
                if stored is not None:
                    # Only a job answered before needs its fingerprint here: a fresh
                    # one gets it when it runs.
                    plan.skipped_done += 1
                    if stored and stored != fp_int(self.prepare(job).fingerprint):
                        plan.conflict_count += 1
                        if len(plan.conflicts) < 5:
                            plan.conflicts.append(f"{job.id} (line {job.line})")
                    return None
            plan.todo += 1
            return None

        summary = validate_file(cfg.jobs, self.parser, cfg.display_name, on_job=on_job)
        plan.problems = summary.problems
        plan.invalid_lines = summary.invalid_lines
        plan.last_line = summary.last_line
        plan.total_valid = summary.valid
        return plan

    def check(self, plan: Plan) -> None:
        """Refuse before anything is sent: bad lines, changed jobs, missing keys, unpriced caps."""
        cfg = self.config
        if plan.problems and not cfg.skip_invalid:
            raise InputError(plan.problems)
        if plan.conflict_count:
            raise ResumeConflict(
                f"{plan.conflict_count} job(s) already answered in {cfg.output} now ask for "
                f"something else (prompt, model or settings changed): "
                f"{', '.join(plan.conflicts)}{' …' if plan.conflict_count > 5 else ''}. "
                "Nothing was sent. Use a new --output, or --fresh to start over "
                "(the old output is kept as a backup)."
            )
        for ref in sorted(plan.models, key=str):
            settings = cfg.providers[ref.provider]
            env = settings.key_env()
            if env is not None:
                if not os.environ.get(env):
                    raise UsageError(
                        f"{env} is not set: jobs use {ref}. Export it, or run offline "
                        f"with --model sim:{ref.model}. Nothing was sent."
                    )
            if cfg.max_cost is not None and self.prices.price(ref) is None:
                raise UsageError(
                    f"--max-cost needs a price for {ref}, and none is known. Add one to "
                    f'llmbatch.toml:\n  [prices."{ref}"]\n  input = 0.5   # USD per million '
                    "tokens\n  output = 1.5\nNothing was sent."
                )
