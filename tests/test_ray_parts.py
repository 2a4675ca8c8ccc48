"""``run --ray``'s parts, without Ray: the digest a worker sends counts exactly what the
driver would have counted from the lines, a line's id is found as ``parse`` finds it,
and a block gives back exactly its unwritten lines."""

from __future__ import annotations

import pickle
from array import array

import orjson
import pytest

from llmbatch._api.ray_blocks import Block
from llmbatch._core.events import JobEnded
from llmbatch._core.jobs import JobParser, LineError
from llmbatch._core.template import Template
from llmbatch._observe.digest import ResultDigest
from llmbatch._observe.stats import RunStats
from llmbatch._observe.timeline import TimelineRecorder
from llmbatch._report.report import build_report
from tests.synthetic import synthetic_events


def test_digests_merged_count_what_the_results_count() -> None:
    results = [e.result for e in synthetic_events(300) if isinstance(e, JobEnded)]
    assert any(r.status != "ok" for r in results) and any(r.attempts > 1 for r in results)
    whole = RunStats()
    whole_timeline = TimelineRecorder()
    for r in results:
        whole.add(r)  # a result line's attempts and spend too, as the driver counted them
        whole_timeline.emit(JobEnded(0.0, r))
    merged = RunStats()
    timeline = TimelineRecorder((merged.latency, merged.ttft))  # as a session has them
    for start in range(0, len(results), 70):  # parts of 70, as workers send them
        digest = ResultDigest()
        for r in results[start : start + 70]:
            digest.add(r)
        part = pickle.loads(pickle.dumps(digest.sealed()))  # as Ray sends it
        assert part.count == len(results[start : start + 70])
        merged.merge(part.stats)
        timeline.add_jobs(0.0, part.count, part.jobs)
    assert build_report(merged, wall_s=1.0).to_dict() == build_report(whole, wall_s=1.0).to_dict()
    got, want = timeline.timeline(), whole_timeline.timeline()
    assert (got.latency, got.ttft, got.failed, got.failed_total) == (
        want.latency,
        want.ttft,
        want.failed,
        want.failed_total,
    )
    assert sorted(r.id for r in got.slowest) == sorted(r.id for r in want.slowest)


@pytest.mark.parametrize(
    "line",
    [
        {"id": "a", "prompt": "hi"},
        {"id": 7, "messages": [{"role": "user", "content": "hi"}]},
        {"prompt": "no id"},
        {"custom_id": "c1", "params": {"messages": [{"role": "user", "content": "x"}]}},
        {"custom_id": "c2", "body": {"messages": [{"role": "user", "content": "x"}]}},
        {"url": "/v1/chat/completions", "body": {"messages": [{"role": "user", "content": "x"}]}},
        {"custom_id": "c3", "topic": "t"},  # a record under --template
        {"id": "r1", "custom_id": "c4", "topic": "t"},
    ],
)
def test_a_lines_id_is_the_one_parse_gives(line: dict[str, object]) -> None:
    parser = JobParser(template=Template("About {topic}"))
    raw = orjson.dumps(line)
    assert parser.job_id(raw, 12) == parser.parse(raw, 12).id
    with pytest.raises(LineError):
        parser.job_id(b"[1]", 3)


def test_a_block_gives_back_its_unwritten_lines() -> None:
    block = Block(array("q", [3, 5, 9]), b'{"id":"a"}\n{"id":"b"}\n{"id":"c"}')
    left = block.without(array("q", [5]))
    assert left is not None
    assert list(left.linenos) == [3, 9] and left.data == b'{"id":"a"}\n{"id":"c"}'
    assert block.without(array("q", [3, 5, 9])) is None
