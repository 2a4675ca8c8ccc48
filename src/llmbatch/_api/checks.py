"""``llmbatch validate`` and ``llmbatch estimate``: a jobs file's check pass; nothing is sent."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmbatch._api.options import configured
from llmbatch._config.settings import RunConfig
from llmbatch._core.models import ModelRef
from llmbatch._core.pricing import Price, PriceBook
from llmbatch._engine.estimate import estimate_jobs, render_problems
from llmbatch._engine.estimate import render_estimate as render_chat_estimate
from llmbatch._engine.plan import Plan, Planner

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["estimate_file", "plan_file", "render_estimate", "render_problems"]


def plan_file(jobs: str | Path, flags: Mapping[str, Any], config_file: Path | None) -> Plan:
    """Every line of JOBS checked as a run would (its problems in ``plan.problems``)."""
    with configured(jobs, flags, config_file) as cfg:
        return Planner(cfg).plan()


def estimate_file(
    jobs: str | Path, flags: Mapping[str, Any], config_file: Path | None
) -> dict[str, Any]:
    """Jobs counted, tokens estimated, the worst-case cost (``render_estimate`` shows it).

    An embedding file (its first line asks for embeddings) is read with the ``embed``
    command's defaults (``JOBS.vectors.parquet`` counted as done; a columnar source's
    text column): lines, inputs, packed requests, tokens, cost (``"kind": "embeddings"``).
    """
    from llmbatch._api.files import embedding_lines

    with configured(jobs, flags, config_file) as cfg:
        if not embedding_lines(cfg):
            return estimate_jobs(cfg)
        from llmbatch._run.embed_preview import estimate_embeddings

        # A pipe was spooled to a file: read it again from there.
        with configured(cfg.jobs, {**flags, "embed": True}, config_file) as ecfg:
            ecfg.jobs_display = cfg.jobs_display
            return estimate_embeddings(ecfg, _embed_batch_price(ecfg))


def render_estimate(est: dict[str, Any], console: Console) -> None:
    """The estimate as a table (chat jobs, or an embedding file's)."""
    if est.get("kind") == "embeddings":
        from llmbatch._run.embed_preview import render_embed_estimate

        render_embed_estimate(est, console)
    else:
        render_chat_estimate(est, console)


def _embed_batch_price(cfg: RunConfig) -> Callable[[PriceBook, ModelRef], Price | None]:
    """What embeddings cost by batch, as ``--mode batch`` prices them (None: no batch)."""
    import time

    from llmbatch._batch.embed_submit import embed_batch_price, embeds_by_batch

    at = time.time()

    def price(book: PriceBook, ref: ModelRef) -> Price | None:
        if not embeds_by_batch(cfg.providers[ref.provider]):
            return None
        return embed_batch_price(book, cfg, ref, at)[0]

    return price
