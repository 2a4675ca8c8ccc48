"""``run --ray``'s blocks: the jobs file's raw lines, a few thousand at a time, for the actors.

The driver decodes no job it does not have to: on a new output without shards a
block is the lines as read (newline-joined bytes) and their line numbers; when
resuming, or with ``--shard``, each line's id alone is read (``JobParser.job_id``).
Columnar inputs (Parquet, CSV, ``hf://``) come through ``job_records`` as one JSON
line a row, as for a local run.
"""

from __future__ import annotations

from array import array
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

import anyio

from llmbatch._core.jobs import LineError
from llmbatch._engine.plan import Plan, Planner
from llmbatch._io.jobfile import job_records
from llmbatch._io.resume import ExistingOutput
from llmbatch._io.shard import shard_of

BLOCK = 4096  # job lines a block at most; fewer near the end, so the actors finish together
MIN_BLOCK = 256


@dataclass(slots=True)
class Block:
    """Job lines for one actor call: their line numbers, and the lines newline-joined."""

    linenos: array[int]
    data: bytes

    def without(self, done: array[int]) -> Block | None:
        """The lines not in ``done`` (line numbers): what a stopped or lost actor left."""
        gone = set(done)
        keep = [
            (n, line)
            for n, line in zip(self.linenos, self.data.split(b"\n"), strict=True)
            if n not in gone
        ]
        if not keep:
            return None
        return Block(array("q", (n for n, _ in keep)), b"\n".join(line for _, line in keep))


def read_blocks(
    planner: Planner, plan: Plan, existing: ExistingOutput | None, notes: list[str], actors: int
) -> Iterator[Block]:
    """The planned jobs not yet done, in file order, in blocks."""
    config = planner.config
    done = existing.done if existing is not None and len(existing.done) else None
    shard = config.shard
    job_id = planner.parser.job_id
    invalid, last_line = plan.invalid_lines, plan.last_line
    left = plan.todo
    size = _size(left, actors)
    numbers: array[int] = array("q")
    lines: list[bytes] = []
    for lineno, raw in job_records(config.jobs, config.columns):
        if lineno > last_line:
            break
        if lineno in invalid:
            continue
        if done is not None or shard is not None:
            try:
                jid = job_id(raw, lineno)
            except LineError as exc:  # the file was rewritten under us since the check
                notes.append(f"{config.display_name}:{lineno}: {exc} (skipped)")
                continue
            if done is not None and done.fingerprint(jid) is not None:
                continue
            if shard is not None and shard_of(jid, shard[1]) != shard[0]:
                continue
        numbers.append(lineno)
        lines.append(raw[:-1] if raw.endswith(b"\n") else raw)  # newline-joined below
        if len(lines) >= size:
            yield Block(numbers, b"\n".join(lines))
            left -= len(lines)
            size = _size(left, actors)
            numbers, lines = array("q"), []
    if lines:
        yield Block(numbers, b"\n".join(lines))


def _size(left: int, actors: int) -> int:
    """Full blocks while much is left; then smaller, so no actor is left alone at the end;
    and never so big that a few jobs go to one actor while another has none."""
    actors = max(1, actors)
    floor = min(MIN_BLOCK, -(-left // actors))  # a small run: one block each, even
    return max(1, floor, min(BLOCK, left // (4 * actors)))


@dataclass
class BlockQueue:
    """Blocks to hand out: the file's, and those a stopped actor gave back unrun."""

    blocks: Iterator[Block]
    returned: deque[Block] = field(default_factory=deque)
    in_flight: int = 0
    changed: anyio.Event = field(default_factory=anyio.Event)

    async def take(self) -> Block | None:
        """The next block; None once none is left and none in flight can come back."""
        while True:
            if self.returned:
                block: Block | None = self.returned.popleft()
            else:
                block = next(self.blocks, None)
            if block is not None:
                self.in_flight += 1
                return block
            if not self.in_flight:
                return None
            await self.changed.wait()

    def settled(self) -> None:
        """A block came back (its unrun jobs, if any, are in ``returned`` by now)."""
        self.in_flight -= 1
        self.changed.set()
        self.changed = anyio.Event()
