"""What a report needs of some results, gathered where they ran and merged where they are
written (``run --ray``: the workers build one per part, the driver never decodes a line)."""

from __future__ import annotations

from llmbatch._core.pricing import PriceBook
from llmbatch._core.results import JobResult
from llmbatch._observe.stats import RunStats
from llmbatch._observe.timeline import JobsDigest


class ResultDigest:
    """The run statistics (attempts and spend included) and the timeline's jobs of some
    results: ``RunStats.merge`` and ``TimelineRecorder.add_jobs`` take them in."""

    __slots__ = ("count", "jobs", "stats")

    def __init__(self, prices: PriceBook | None = None) -> None:
        self.stats = RunStats(prices=prices)  # prompt-cache savings need the prices
        self.jobs = JobsDigest(fed=(self.stats.latency, self.stats.ttft))  # one histogram each
        self.count = 0

    def add(self, result: JobResult) -> None:
        self.stats.add(result)
        self.jobs.add(result)
        self.count += 1

    def sealed(self) -> ResultDigest:
        """Ready to travel: the price book stays where it is."""
        self.stats.prices = None
        return self
