"""Requests in memory: ``llmbatch.Request`` objects or dicts in the job-line shapes.

Each goes through the same ``JobParser`` as a jobs-file line, so it meets the
same checks with the same messages; a bad one is named by its index.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from llmbatch._core.exceptions import InputError, LineProblem
from llmbatch._core.jobs import Job, JobParser, LineError


@dataclass(frozen=True, slots=True)
class Request:
    """One request: a ``prompt`` or ``messages``, and what a job line may set.

    ``model`` is ``"provider:model"`` (or a bare model name); None takes the
    runner's. ``id`` defaults to ``"request-<index>"``.
    """

    prompt: str | None = None
    messages: list[dict[str, Any]] | None = None
    id: str | int | None = None
    system: str | list[dict[str, Any]] | None = None
    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    schema: dict[str, Any] | None = None
    fallback: list[str] | None = None
    metadata: Any = None

    def to_dict(self) -> dict[str, Any]:
        """The job line this request stands for (fields left None are left out)."""
        line = {
            "id": self.id,
            "prompt": self.prompt,
            "messages": self.messages,
            "system": self.system,
            "model": self.model,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "schema": self.schema,
            "fallback": self.fallback,
            "metadata": self.metadata,
        }
        return {k: v for k, v in line.items() if v is not None}


RequestLike = Request | Mapping[str, Any] | str


def as_line(request: RequestLike, index: int) -> dict[str, Any]:
    """The job line of one request (a bare string is a prompt); ids default to the index."""
    if isinstance(request, Request):
        line = request.to_dict()
    elif isinstance(request, str):
        line = {"prompt": request}
    elif isinstance(request, Mapping):
        line = dict(request)
    else:
        raise LineError(
            f"expected an llmbatch.Request, a dict or a prompt string, got {type(request).__name__}"
        )
    if "id" not in line and "custom_id" not in line:
        line["id"] = f"request-{index}"
    return line


def parse_requests(requests: Iterable[RequestLike], parser: JobParser) -> Iterator[Job]:
    """Jobs of ``requests``, every one checked first.

    :raises InputError: any invalid request (its problems say ``request <index>``);
        nothing is yielded then.
    """
    jobs: list[Job] = []
    problems: list[LineProblem] = []
    ids: set[str] = set()
    for index, request in enumerate(requests):
        try:
            raw = orjson.dumps(as_line(request, index))
        except LineError as exc:
            problems.append(LineProblem("request", index, str(exc)))
            continue
        except TypeError as exc:
            problems.append(LineProblem("request", index, f"not JSON-serialisable ({exc})"))
            continue
        try:
            job = parser.parse(raw, index)
        except LineError as exc:
            problems.append(LineProblem("request", index, str(exc)))
            continue
        if job.id in ids:
            problems.append(LineProblem("request", index, f"duplicate id {job.id!r}"))
            continue
        ids.add(job.id)
        jobs.append(job)
    if problems:
        error = InputError(problems)
        shown = "".join(f"\n  request {p.line}: {p.message}" for p in problems[:20])
        more = f"\n  … and {len(problems) - 20} more" if len(problems) > 20 else ""
        n, s = len(problems), "s" if len(problems) != 1 else ""
        error.args = (f"{n} invalid request{s}; nothing was sent:{shown}{more}",)
        raise error
    return iter(jobs)
