"""The check pass: every job resolved, checked and fingerprinted before anything is sent."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Any

import orjson

from llmbatch._budget.open import check_ledger
from llmbatch._config.paths import check_run_paths
from llmbatch._config.settings import RunConfig
from llmbatch._core.exceptions import InputError, LineProblem, ResumeConflict, UsageError
from llmbatch._core.jobs import Job, JobParser, LineError, Request, estimate_input_tokens
from llmbatch._core.keys import check_base_url, check_key
from llmbatch._core.models import ModelRef
from llmbatch._core.prefix import PrefixInfo
from llmbatch._core.pricing import PriceBook
from llmbatch._core.schema import check_schema, schema_key
from llmbatch._core.template import Template, TemplateError
from llmbatch._core.usage import Usage
from llmbatch._engine.gemini_cache import with_explicit_cache
from llmbatch._engine.prefix import PrefixGroups, candidates
from llmbatch._io.jobfile import validate_file
from llmbatch._io.results_parquet import read_existing_results
from llmbatch._io.resume import ExistingOutput, fp_int, read_existing
from llmbatch._io.shard import add_sibling_done, shard_of
from llmbatch._io.vectors import is_parquet
from llmbatch.providers.factory import check_credentials


@dataclass(frozen=True, slots=True)
class BatchSeed:
    """Where one job resumes after its provider-batch rounds (online, or in a fetch repair)."""

    fingerprint: str | None  # the job's, when it went to the batch (a changed job starts anew)
    position: int = 0  # its place in the model chain
    text: str | None = None  # a paid batch answer that missed the schema
    problem: str = ""
    usage: Usage | None = None
    cost: float | None = 0.0
    rounds: int = 0
    batch: dict[str, str] | None = None  # the result line's ``batch`` field

    @property
    def repairs(self) -> bool:
        return self.text is not None


@dataclass(slots=True)
class PreparedJob:
    """A checked job, ready to send: defaults applied, model chain resolved, fingerprinted."""

    job: Job
    request: Request  # defaults applied
    chain: list[ModelRef]
    fingerprint: str
    prefix: PrefixInfo | None = None  # its prefix group (prompt caching); also request.cache
    seed: BatchSeed | None = None  # what earlier batch rounds left this job
    _estimates: tuple[int, int] | None = None
    # The response cache's keys, computed once: the first model's, then the fallbacks'.
    cache_key: str | bytes | None = None
    cache_keys: dict[ModelRef, str | bytes] | None = None

    def input_estimates(self) -> tuple[int, int]:
        """(worst case, estimate) of the request's input tokens, counted once per job."""
        if self._estimates is None:
            r = self.request
            self._estimates = (
                estimate_input_tokens(r, conservative=True),
                estimate_input_tokens(r),
            )
        return self._estimates


@dataclass(slots=True)
class Plan:
    """What the check pass found: runnable count, models in use, problems."""

    total_valid: int = 0
    last_line: int = 0  # lines appended during the run wait for the next one
    todo: int = 0
    held_back: int = 0  # valid jobs not yet done, past --limit: left for a later run
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
    h = _FINGERPRINT.copy()  # a copy of a fresh state: cheaper than a new hash's arguments
    h.update(data)
    return h.hexdigest()


_FINGERPRINT = hashlib.blake2b(digest_size=8)


class Planner:
    """Resolves each job (defaults, model chain, fingerprint) and checks the whole file."""

    def __init__(self, config: RunConfig, prices: PriceBook | None = None) -> None:
        self.config = config
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
            include_input=config.include_input,
        )
        self.prices = prices or config.price_book()
        self.existing: ExistingOutput | None = (
            ExistingOutput(config.output) if config.output else None
        )
        self._schemas_checked: set[bytes] = set()
        self.prefixes = self._prefix_groups()
        self._template_head = template.static_head if template is not None else None
        self._chains: dict[tuple[ModelRef | None, tuple[ModelRef, ...] | None], list[ModelRef]] = {}
        self._default_chain: list[ModelRef] | None = None  # the chain of a job naming no model
        self.last_plan: Plan | None = None  # what plan() found last (the CLI reads held_back)

    # -- per-job resolution ---------------------------------------------------

    def owns(self, job: Job) -> bool:
        """Whether this run's shard (``--shard I/N``) holds the job; always without one."""
        shard = self.config.shard
        return shard is None or shard_of(job.id, shard[1]) == shard[0]

    def chain_of(self, job: Job) -> list[ModelRef]:
        """The job's models in turn: its own (or the default), then the fallbacks.

        Jobs share a handful of chains: each is built once (do not change the list).
        """
        r = job.request
        if r.model is None and r.fallback is None and self._default_chain is not None:
            return self._default_chain  # most jobs: the run's model and fallbacks
        memo_key = (r.model, None if r.fallback is None else tuple(r.fallback))
        chain = self._chains.get(memo_key)
        if chain is not None:
            return chain
        cfg = self.config
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
        self._chains[memo_key] = chain
        if memo_key == (None, None):
            self._default_chain = chain
        return chain

    def prepare(self, job: Job) -> PreparedJob:
        cfg = self.config
        chain = self.chain_of(job)
        model = chain[0]
        # The parsed request (the job's own: the parser made it) takes the run's
        # defaults in place: no second request a job.
        request = job.request
        request.model = model
        if request.system is None:
            request.system = cfg.system
        request.max_tokens = request.max_tokens or cfg.max_tokens
        if request.temperature is None:
            request.temperature = cfg.temperature
        if request.schema is None:
            request.schema = cfg.schema
        fp = request.fingerprint = fingerprint(model, request)
        pj = PreparedJob(job, request, chain, fp)
        if self.last_plan is not None and (cands := self.prefix_candidates(model, request)):
            # The groups are counted: each job takes its own.
            settings = cfg.providers[model.provider]
            routed = model.provider == "openai" or "openai.azure.com" in (settings.base_url or "")
            chosen = self.prefixes.choose(cands, settings.kind, model.model, job.id, routed)
            if chosen is not None and chosen.mark and settings.kind == "gemini":
                chosen = self._gemini_explicit(model, chosen)
            pj.prefix = request.cache = chosen
        return pj

    def _gemini_explicit(self, model: ModelRef, info: PrefixInfo) -> PrefixInfo:
        """A Gemini group's prefix, with a ``cachedContents`` life when one pays for itself."""
        price = self.prices.price(model)
        if price is None or self.prefixes.batch:
            return info  # a batch takes no cachedContents (and is half price anyway)
        cfg = self.config
        if any(
            cap is not None
            for cap in (cfg.max_cost, cfg.max_total_tokens, cfg.budget_per_hour, cfg.budget_per_day)
        ):
            # An entry's write and storage are billed outside any attempt: with a cap on
            # spend, implicit caching only, so nothing is ever spent that the caps did not hold.
            return info
        run_s = self.prefixes.run_seconds()
        return with_explicit_cache(
            info, model.model, price.input.base, price.cache_read.base, run_s
        )

    def _prefix_groups(self) -> PrefixGroups:
        cfg = self.config
        return PrefixGroups(cfg.concurrency, cfg.prompt_cache != "off", cfg.mode != "online")

    def prefix_candidates(self, model: ModelRef, request: Request) -> list[PrefixInfo]:
        """The nested cacheable prefixes (``_engine/prefix.py``) of a job's request as it
        is (the run's ``--system`` filling a missing one), shortest first."""
        kind = self.config.providers[model.provider].kind
        if kind == "sim":
            return []  # the offline provider keeps no prompt cache: nothing to group or warm
        return candidates(model, kind, request, self._template_head, self.config.system)

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
        self._read_existing()
        plan = Plan()
        self.last_plan = None
        self.prefixes = self._prefix_groups()
        done = self.existing.done if self.existing and len(self.existing.done) else None
        limit_line = 0
        sharded = cfg.shard is not None

        seen_chains: set[int] = set()

        def on_job(job: Job) -> str | None:
            nonlocal limit_line
            try:
                chain = self.chain_of(job)
            except LineError as exc:
                return str(exc)
            if job.request.schema is not None:
                problem = self._check_job_schema(job.request.schema)
                if problem:
                    return problem
            if sharded and not self.owns(job):
                return None
            if id(chain) not in seen_chains:
                seen_chains.add(id(chain))
                plan.models.update(chain)
            if done is not None:
                stored = done.fingerprint(job.id)
                if stored is not None:
                    plan.skipped_done += 1
                    if stored and stored != fp_int(self.prepare(job).fingerprint):
                        plan.conflict_count += 1
                        if len(plan.conflicts) < 5:
                            plan.conflicts.append(f"{job.id} (line {job.line})")
                    return None
            if cfg.limit is not None and plan.todo >= cfg.limit:
                plan.held_back += 1  # checked like every line, but not run this time
                return None
            plan.todo += 1
            limit_line = job.line
            self.prefixes.count(self.prefix_candidates(chain[0], job.request))
            return None

        summary = validate_file(
            cfg.jobs, self.parser, cfg.display_name, on_job=on_job, columns=cfg.columns
        )
        plan.problems = summary.problems
        plan.invalid_lines = summary.invalid_lines
        plan.last_line = summary.last_line
        if cfg.limit is not None and plan.held_back:
            # The producer stops after the line of the Nth job to run.
            plan.last_line = limit_line
        plan.total_valid = summary.valid
        self.last_plan = plan
        return plan

    def _read_existing(self) -> None:
        """What the output holds already (nothing with ``--fresh`` or no output file)."""
        cfg = self.config
        if cfg.output is None or cfg.fresh:
            return
        if is_parquet(cfg.output):
            self.existing = read_existing_results(cfg.output, retry_failed=cfg.retry_failed)
            return
        self.existing = read_existing(cfg.output, retry_failed=cfg.retry_failed)
        if cfg.shard is not None:
            add_sibling_done(self.existing, cfg.output, retry_failed=cfg.retry_failed)

    def check(self, plan: Plan, *, require_keys: bool = True) -> None:
        """Refuse before anything is sent: bad lines, changed jobs, missing keys, unpriced caps.

        ``require_keys=False`` (``--dry-run``) still refuses a key that cannot be sent.
        """
        cfg = self.config
        # Again here for configs built by hand (library use); the CLI checked more paths.
        check_run_paths(cfg)
        check_ledger(cfg)
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
        caps = (
            ("--max-cost", cfg.max_cost),
            ("--budget-per-hour", cfg.budget_per_hour),
            ("--budget-per-day", cfg.budget_per_day),
        )
        cost_caps = [flag for flag, value in caps if value is not None]
        for ref in sorted(plan.models, key=str):
            settings = cfg.providers[ref.provider]
            if settings.kind == "azure" and not settings.resolved_base_url():
                raise UsageError(
                    f"AZURE_OPENAI_ENDPOINT is not set: jobs use {ref}. Export it "
                    "(https://RESOURCE.openai.azure.com) or set base_url in "
                    f"[providers.{ref.provider}]. Nothing was sent."
                )
            if settings.kind != "sim":
                check_base_url(settings.resolved_base_url(), f"provider {ref.provider}")
            env = settings.key_env()
            if env is not None:
                if not os.environ.get(env):
                    if require_keys:
                        raise UsageError(
                            f"{env} is not set: jobs use {ref}. Export it, or run offline "
                            f"with --model sim:{ref.model}. Nothing was sent."
                        )
                else:
                    check_key(env, needed_by=f"jobs that use {ref}")
            if require_keys:
                check_credentials(settings)  # what one key variable cannot say (Bedrock's SigV4)
            if cost_caps and self.prices.price(ref) is None:
                raise UsageError(
                    f"{cost_caps[0]} needs a price for {ref}, and none is known. Add one to "
                    f'llmbatch.toml:\n  [prices."{ref}"]\n  input = 0.5   # USD per million '
                    "tokens\n  output = 1.5\nNothing was sent."
                )
