"""An embedding run: the check pass over embedding lines, then packs through the engine.

``EmbedRun`` is a ``RunSession`` like ``FileRun``: the same lock, services,
budgets, limits, signals, progress, history and report. What differs is around
the engine: lines are checked by ``EmbedParser``, the source packs their texts
(``_engine.embed.EmbedSource``), each provider is wrapped so a pack goes to its
embeddings endpoint, the sink expands each pack into rows (Parquet or JSONL), and
the report gains its embedding block. Resume reads the ids of the output
(Parquet: its ``id`` column and the part files a killed run left).
"""

from __future__ import annotations

import math
import time
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace

from llmbatch._config.settings import RunConfig
from llmbatch._core.clock import SYSTEM_CLOCK, Clock
from llmbatch._core.embed import CAPS, EmbedCaps, EmbedJob, EmbedParser, caps_for
from llmbatch._core.events import EventSink
from llmbatch._core.exceptions import LineProblem, UsageError
from llmbatch._core.jobs import LineError
from llmbatch._core.models import ModelRef
from llmbatch._engine.embed import EmbedAdapter, EmbedSource, EmbedState, parse_records
from llmbatch._engine.embed_sink import EmbedSink
from llmbatch._engine.plan import Plan, Planner
from llmbatch._io.jobfile import job_records
from llmbatch._io.resume import ExistingOutput, backup_output, cut_torn_tail, read_existing
from llmbatch._io.vectors import cut_torn_parts, is_parquet, parts_dir, read_existing_vectors
from llmbatch._observe.progress import ProgressSink
from llmbatch._report.embed import EmbedReport
from llmbatch._report.report import RunReport
from llmbatch._run.session import RunSession
from llmbatch.providers._base import Provider
from llmbatch.providers.factory import ProviderFactory


@dataclass(slots=True)
class EmbedPlan:
    """What the check pass over embedding lines found."""

    todo: int = 0  # lines to embed
    inputs: int = 0  # their texts
    skipped_done: int = 0
    invalid_lines: set[int] = field(default_factory=set)
    problems: list[LineProblem] = field(default_factory=list)
    groups: dict[tuple[ModelRef, int | None], int] = field(default_factory=dict)


class EmbedRun(RunSession):
    """``llmbatch embed`` (and ``run`` over embedding lines): vectors into the output."""

    def __init__(
        self,
        config: RunConfig,
        *,
        progress: ProgressSink | None = None,
        provider_factory: ProviderFactory | None = None,
        handle_signals: bool = True,
        sinks: Sequence[EventSink] = (),
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        super().__init__(
            config,
            progress=progress,
            provider_factory=provider_factory,
            handle_signals=handle_signals,
            sinks=sinks,
            clock=clock,
        )
        self.parser = EmbedParser(
            tuple(config.providers), has_default_model=config.model is not None
        )
        self.planner = Planner(config, self.services.prices)
        self.state = EmbedState()
        self.parquet = is_parquet(config.output)
        self.existing: ExistingOutput | None = None
        self.plan: EmbedPlan | None = None
        self._caps: dict[ModelRef, EmbedCaps] = {}

    def _provider(self, name: str) -> Provider:
        provider = self.providers.get(name)
        if provider is None:
            inner = self._factory(name, self.config)
            provider = self.providers[name] = EmbedAdapter(inner, self.state.counts)
        return provider

    def resolve(self, job: EmbedJob) -> ModelRef:
        cfg = self.config
        model = job.model or cfg.model
        if model is None:
            raise LineError("no model")
        if cfg.provider is not None:
            model = ModelRef(cfg.provider, model.model)
        return model

    def caps(self, ref: ModelRef) -> EmbedCaps:
        caps = self._caps.get(ref)
        if caps is None:
            settings = self.config.providers.get(ref.provider)
            caps = caps_for(settings.kind) if settings is not None else CAPS["openai"]
            most = self.config.inputs_per_request
            if most is not None and most < caps.inputs:
                caps = replace(caps, inputs=most)
            self._caps[ref] = caps
        return caps

    def records(self) -> Iterator[tuple[int, bytes]]:
        return job_records(self.config.jobs, self.config.columns)

    def check_pass(self) -> EmbedPlan:
        """Every line checked (file:line errors), ids done skipped; nothing sent.

        Memory: 8 bytes an id (their hashes, sorted at the end to find repeats).
        """
        cfg = self.config
        if cfg.output is not None and not cfg.fresh:
            if self.parquet:
                self.existing = read_existing_vectors(cfg.output, retry_failed=cfg.retry_failed)
            else:
                self.existing = read_existing(cfg.output, retry_failed=cfg.retry_failed)
        done = self.existing.done if self.existing else None
        plan = EmbedPlan()
        keys = array("q")
        display = cfg.display_name
        parse, resolve, caps = self.parser.parse, self.resolve, self.caps
        for lineno, raw in self.records():
            try:
                job = parse(raw, lineno)
                ref = resolve(job)
                most = caps(ref).inputs
                if len(job.texts) > most:
                    raise LineError(
                        f'"input" has {len(job.texts):,} texts; {ref.provider} takes at most '
                        f"{most:,} a request"
                    )
            except LineError as exc:
                plan.problems.append(LineProblem(display, lineno, str(exc)))
                continue
            keys.append(hash(job.id))
            if done is not None and done.fingerprint(job.id) is not None:
                plan.skipped_done += 1
                continue
            plan.todo += 1
            plan.inputs += len(job.texts)
            group = (ref, job.dimensions if job.dimensions is not None else cfg.dimensions)
            plan.groups[group] = plan.groups.get(group, 0) + len(job.texts)
        self._repeated_ids(keys, plan)
        plan.invalid_lines = {p.line for p in plan.problems}
        self.plan = plan
        return plan

    def _repeated_ids(self, keys: array[int], plan: EmbedPlan) -> None:
        """Lines whose id an earlier line has: problems (a second pass finds them)."""
        import numpy as np

        ordered = np.sort(np.frombuffer(keys, dtype=np.int64))  # 8 bytes an id, not 40
        repeated = set(ordered[1:][ordered[1:] == ordered[:-1]].tolist())
        del ordered
        if not repeated:
            return
        first: dict[str, int] = {}
        for lineno, raw in self.records():
            try:
                job = self.parser.parse(raw, lineno)
            except LineError:
                continue
            if hash(job.id) not in repeated:
                continue
            if job.id in first:
                message = f"duplicate id {job.id!r} (first on line {first[job.id]})"
                plan.problems.append(LineProblem(self.config.display_name, lineno, message))
            else:
                first[job.id] = lineno
        plan.problems.sort(key=lambda p: p.line)

    def parse_line(self, raw: bytes, lineno: int) -> EmbedJob:
        job = self.parser.parse(raw, lineno)
        if job.dimensions is None:
            job.dimensions = self.config.dimensions
        return job

    async def run(self) -> RunReport:
        self.lock()
        try:
            return await self.run_locked()
        finally:
            self.unlock()

    async def run_locked(self) -> RunReport:
        cfg = self.config
        try:
            plan = self.check_pass()
            check = Plan(problems=plan.problems, models={ref for ref, _ in plan.groups})
            self.planner.check(check)
            for ref in check.models:
                self.refuse_unembeddable(ref)
            await self.open_services(cache=False)
            if not cfg.no_cache:
                from llmbatch._cache.store import open_cache

                self.state.cache = open_cache(cfg)
                self.state.cache_key = self._embed_key
            self._prepare_output()
            self.services.limits_for(check.models)
            packs = sum(math.ceil(n / self.caps(ref).inputs) for (ref, _), n in plan.groups.items())
            self.started(packs, plan.skipped_done, check.models)
            await self._run_packs(plan)
        finally:
            if self.state.cache is not None:
                self.state.cache.close()
                self.state.cache = None
            await self.close_services()
        report = self.finish(
            skipped_done=plan.skipped_done,
            cost_before=self.existing.cost_usd if self.existing else 0.0,
            invalid_lines=sorted(plan.invalid_lines),
        )
        return replace(report, embedding=self._embed_report(plan))

    async def _run_packs(self, plan: EmbedPlan) -> None:
        cfg = self.config
        done = self.existing.done if self.existing else None

        def skip(job: EmbedJob) -> bool:
            return done is not None and done.fingerprint(job.id) is not None

        def records() -> Iterator[tuple[int, EmbedJob | None]]:
            return parse_records(
                self.records(),
                self.parse_line,
                skip,
                plan.invalid_lines,
                self.notes,
                cfg.display_name,
            )

        source = EmbedSource(records, self.resolve, self.caps, self.state)
        sink = EmbedSink(cfg.output, self.state, parquet=self.parquet, npy=cfg.npy)
        try:
            await self.run_engine(source, sink)
        finally:
            sink.close()

    def refuse_unembeddable(self, ref: ModelRef) -> None:
        kind = self.config.providers[ref.provider].kind
        if kind in ("anthropic", "bedrock"):
            raise UsageError(
                f"{ref}: {kind} offers no embeddings endpoint here; use an OpenAI, Azure, "
                "Gemini or compatible provider (or sim). Nothing was sent."
            )

    def _embed_key(self, ref: ModelRef, dims: int | None, text: str) -> bytes:
        from llmbatch._core.jobs import Request

        request = Request(messages=[{"role": "user", "content": text}], max_tokens=dims or 0)
        request.body = {"embeddings": True, "dimensions": dims}
        request.temperature = 0  # a vector is the same for everyone: shared across ids
        return self._cache_key(ref, request, "")

    def _prepare_output(self) -> None:
        cfg = self.config
        if cfg.output is None:
            return
        if cfg.fresh:
            backup = backup_output(cfg.output)
            if backup is not None:
                self.notes.append(f"--fresh: the old output was moved to {backup}")
            if self.parquet and parts_dir(cfg.output).exists():
                parts_dir(cfg.output).rename(backup_output_name(cfg.output))
            matrix = cfg.npy
            if matrix is not None and matrix.exists():
                matrix.rename(f"{matrix}.{time.strftime('%Y%m%d-%H%M%S')}.bak")
            return
        existing = self.existing
        if existing is None:
            return
        if existing.torn_at is not None and self.parquet:
            n = cut_torn_parts(cfg.output)
            self.notes.append(
                f"removed {n} part file(s) left unreadable by an interrupted run; "
                "their rows run again"
            )
        elif existing.torn_at is not None:
            cut_torn_tail(existing)
            self.notes.append("cut a torn last line left by an interrupted run; it runs again")
        self.run_budget.count_spent(existing.cost_usd, existing.tokens)

    def _embed_report(self, plan: EmbedPlan) -> EmbedReport:
        c = self.state.counts
        return EmbedReport(
            inputs=c.inputs,
            texts_sent=c.texts_sent,
            requests=c.requests,
            tokens=c.tokens,
            cost_usd=c.cost_usd,
            vectors=c.vectors,
            failed=c.failed,
            deduplicated=c.deduplicated,
            cache_hits=c.cache_hits,
            dimensions=tuple(sorted(c.dimensions)),
            skipped_done=plan.skipped_done,
        )


def backup_output_name(path: object) -> str:
    return f"{path}.parts.{time.strftime('%Y%m%d-%H%M%S')}.bak"
