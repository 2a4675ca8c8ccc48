"""``llmbatch validate`` and ``llmbatch estimate``: a jobs file's check pass; nothing is sent."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from llmbatch._api.options import configured
from llmbatch._engine.estimate import estimate_jobs, render_estimate, render_problems
from llmbatch._engine.plan import Plan, Planner

__all__ = ["estimate_file", "plan_file", "render_estimate", "render_problems"]


def plan_file(jobs: str | Path, flags: Mapping[str, Any], config_file: Path | None) -> Plan:
    """Every line of JOBS checked as a run would (its problems in ``plan.problems``)."""
    with configured(jobs, flags, config_file) as cfg:
        return Planner(cfg).plan()


def estimate_file(
    jobs: str | Path, flags: Mapping[str, Any], config_file: Path | None
) -> dict[str, Any]:
    """Jobs counted, tokens estimated, the worst-case cost (``render_estimate`` shows it)."""
    with configured(jobs, flags, config_file) as cfg:
        return estimate_jobs(cfg)
