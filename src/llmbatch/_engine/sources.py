"""Where prepared jobs come from: the jobs file (its second pass), or jobs in memory.

A source is any iterable of ``PreparedJob``; the engine's workers pull from one
iterator, so a source is read only as fast as jobs are started.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from llmbatch._core.jobs import Job, LineError
from llmbatch._io.jobfile import job_records

if TYPE_CHECKING:
    from llmbatch._engine.plan import BatchSeed, Plan, Planner, PreparedJob
    from llmbatch._io.resume import ExistingOutput


class FileSource:
    """The jobs file again, after its check pass: each planned job not yet done, in order.

    Jobs the output already holds, lines found invalid, other shards' jobs and
    lines past ``--limit`` are skipped; a job that earlier batch rounds left
    behind carries its ``seed``.
    """

    def __init__(
        self,
        planner: Planner,
        plan: Plan,
        existing: ExistingOutput | None,
        seeds: dict[str, BatchSeed] | None = None,
    ) -> None:
        self.planner = planner
        self.plan = plan
        self.existing = existing
        self.seeds = seeds or {}
        self.notes: list[str] = []

    def __len__(self) -> int:
        return self.plan.todo

    def __iter__(self) -> Iterator[PreparedJob]:
        prepare, seeds = self.planner.prepare, self.seeds
        for _, _, job in self.lines():
            pj = prepare(job)
            if seeds:
                pj.seed = seeds.pop(job.id, None)
            yield pj

    def lines(self) -> Iterator[tuple[int, bytes, Job]]:
        """(line number, raw line, job) of each job to run: what ``__iter__`` prepares."""
        done = self.existing.done if self.existing and len(self.existing.done) else None
        plan, planner = self.plan, self.planner
        invalid, last_line = plan.invalid_lines, plan.last_line
        parse, owns = planner.parser.parse, planner.owns
        sharded = planner.config.shard is not None
        config = planner.config
        for lineno, raw in job_records(config.jobs, config.columns):
            if lineno > last_line:
                return
            if lineno in invalid:
                continue
            try:
                job = parse(raw, lineno)
            except LineError as exc:
                # The file was rewritten under us since the check: skip, say so.
                self.notes.append(f"{config.display_name}:{lineno}: {exc} (skipped)")
                continue
            if done is not None and done.fingerprint(job.id) is not None:
                continue
            if sharded and not owns(job):
                continue  # another shard's
            yield lineno, raw, job
