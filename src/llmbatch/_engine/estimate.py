"""``llmbatch estimate``: jobs, tokens and cost before anything is sent."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from llmbatch._config.settings import RunConfig
from llmbatch._core.batch_price import batch_price
from llmbatch._core.jobs import LineError, estimate_input_tokens
from llmbatch._core.models import ModelRef
from llmbatch._core.prefix import PrefixInfo
from llmbatch._core.pricing import LONG_WRITE_FACTOR, Price
from llmbatch._core.usage import Usage
from llmbatch._engine.gemini_cache import explicit_saving, storage_price
from llmbatch._io.jobfile import iter_lines, open_jobs
from llmbatch._io.resume import read_existing

if TYPE_CHECKING:
    from rich.console import Console

    from llmbatch._core.pricing import PriceBook
    from llmbatch._engine.plan import Planner, PreparedJob
    from llmbatch._engine.prefix import PrefixGroups

# What "expected" assumes a job writes: the typical length of a short answer,
# capped by the job's max_tokens.
TYPICAL_OUTPUT_TOKENS = 250
MAX_PROBLEMS_SHOWN = 20


def estimate_jobs(config: RunConfig) -> dict[str, Any]:
    from llmbatch._engine.plan import Planner

    planner = Planner(config)
    existing = None
    if config.output is not None and config.output.exists():
        existing = read_existing(config.output, retry_failed=config.retry_failed)
    per_model: dict[str, dict[str, Any]] = {}
    other = OtherPrices(config)
    total = invalid = done = 0
    problems: list[str] = []
    prefixed: list[tuple[ModelRef, list[PrefixInfo]]] = []
    with open_jobs(config.jobs) as stream:
        for lineno, raw in iter_lines(stream):
            try:
                pj = planner.prepare(planner.parser.parse(raw, lineno))
            except LineError as exc:
                invalid += 1
                if len(problems) < MAX_PROBLEMS_SHOWN:
                    problems.append(f"{config.display_name}:{lineno}: {exc}")
                continue
            total += 1
            if existing is not None and pj.job.id in existing.done:
                done += 1
                continue
            _count_job(per_model, pj, planner.prices, config.max_tokens, other)
            cands = planner.prefix_candidates(pj.chain[0], pj.request)
            if cands:
                planner.prefixes.count(cands)
                prefixed.append((pj.chain[0], cands))
            else:
                planner.prefixes.todo += 1
    _round_costs(per_model)
    prompt_cache = predict_prompt_cache(planner, prefixed)
    priced = [m for m in per_model.values() if m["priced"]]
    # Nothing priced: no figure at all, rather than a $0 that reads as "free".
    nothing_priced = bool(per_model) and not priced
    return {
        "jobs": {"total": total, "done": done, "left": total - done, "invalid_lines": invalid},
        "problems": problems,
        "by_model": per_model,
        "input_tokens": sum(m["input_tokens"] for m in per_model.values()),
        "worst_case_usd": None
        if nothing_priced
        else round(sum(m["worst_case_usd"] for m in priced), 6),
        "expected_usd": None
        if nothing_priced
        else round(sum(m["expected_usd"] for m in priced), 6),
        "unpriced_models": sorted(k for k, m in per_model.items() if not m["priced"]),
        "spent_usd_so_far": round(existing.cost_usd, 6) if existing else 0.0,
        "prompt_cache": prompt_cache,
        "assumptions": {
            "input_tokens": "about 4 characters a token plus a few per message",
            "expected_output_tokens": f"min(max_tokens, {TYPICAL_OUTPUT_TOKENS}) per job",
            "worst_case": "every job writes max_tokens",
            "prompt_cache": "costs above are without it; with it, each shared prefix long enough "
            "for its model is written once (OpenAI: once per cache key) and read by the rest",
        },
    }


class OtherPrices:
    """What the jobs would cost in a provider Batch API and at OpenAI's flex tier."""

    def __init__(self, config: RunConfig) -> None:
        self.config = config
        self.online = config.price_book(tiers=False)
        flex = RunConfig(jobs=config.jobs, providers=config.providers, prices=config.prices)
        flex.service_tier = "flex"
        self.flex_book = flex.price_book()
        self.at = time.time()
        self._batch: dict[ModelRef, Price | None] = {}

    def batch(self, ref: ModelRef) -> Price | None:
        if ref not in self._batch:
            price = None
            if self.config.providers[ref.provider].has_batch_api():
                found, note = batch_price(self.online, self.config.prices, ref, self.at)
                price = found if note is None else None  # only a real batch price
            self._batch[ref] = price
        return self._batch[ref]

    def flex(self, ref: ModelRef) -> Price | None:
        if self.flex_book.tier(ref.provider) is None:
            return None  # not an OpenAI-shaped provider: no flex tier
        return self.flex_book.price(ref)


def predict_prompt_cache(
    planner: Planner, prefixed: list[tuple[ModelRef, list[PrefixInfo]]]
) -> dict[str, Any]:
    """What the provider's prompt cache should save on the jobs left, per prefix group."""
    groups = planner.prefixes
    found: dict[str, dict[str, Any]] = {}
    for ref, cands in prefixed:
        kind = planner.config.providers[ref.provider].kind
        info = groups.choose(cands, kind, ref.model, "", False)
        if info is None or info.key in found:
            continue
        row: dict[str, Any] = {
            "group": info.key,
            "model": str(ref),
            "jobs": info.group_size,
            "prefix_tokens": info.tokens,
            "min_tokens": info.min_tokens,
            "cacheable": info.mark,
            "saved_usd": 0.0,
        }
        price = planner.prices.price(ref)
        if info.mark and price is not None:
            saving = _group_saving(info, kind, price, groups, ref.model)
            row["saved_usd"] = round(saving, 6)
        found[info.key] = row
    rows = sorted(found.values(), key=lambda r: (-r["jobs"], r["group"]))
    return {
        "enabled": planner.config.prompt_cache != "off",
        "saved_usd": round(sum(r["saved_usd"] for r in rows), 6),
        "groups": rows,
    }


def _group_saving(
    info: PrefixInfo, kind: str, price: Price, groups: PrefixGroups, model: str
) -> float:
    n, p = info.group_size, info.tokens
    base, read = price.input.base, price.cache_read.base
    if kind == "anthropic":
        write = base * LONG_WRITE_FACTOR if groups.ttl(n) == "1h" else price.cache_write.base
        return ((n - 1) * p * (base - read) - p * (write - base)) / 1_000_000
    cold = groups.key_shards(n) if kind == "openai" else 1  # one miss per cache key
    implicit = (n - cold) * p * (base - read) / 1_000_000
    if kind == "gemini" and not groups.batch:  # the run makes a cachedContents entry if it pays
        explicit = explicit_saving(n, p, base, read, storage_price(model), groups.run_seconds())
        return explicit if explicit > 0 else implicit
    return implicit


def _count_job(
    per_model: dict[str, dict[str, Any]],
    pj: PreparedJob,
    prices: PriceBook,
    max_tokens: int,
    other: OtherPrices,
) -> None:
    """Add one job's tokens and costs (worst case, expected) to its first model's totals."""
    ref = pj.chain[0]
    m = per_model.setdefault(
        str(ref),
        {
            "jobs": 0,
            "input_tokens": 0,
            "max_output_tokens": 0,
            "expected_output_tokens": 0,
            "worst_case_usd": 0.0,
            "expected_usd": 0.0,
            "expected_batch_usd": None,
            "expected_flex_usd": None,
            "priced": True,
        },
    )
    in_tokens = estimate_input_tokens(pj.request)
    out_max = pj.request.max_tokens or max_tokens
    out_typ = min(out_max, TYPICAL_OUTPUT_TOKENS)
    m["jobs"] += 1
    m["input_tokens"] += in_tokens
    m["max_output_tokens"] += out_max
    m["expected_output_tokens"] += out_typ
    price = prices.price(ref)
    if price is None:
        m["priced"] = False
    else:
        m["worst_case_usd"] += price.cost(Usage(in_tokens, out_max))
        m["expected_usd"] += price.cost(Usage(in_tokens, out_typ))
    for key, alt in (
        ("expected_batch_usd", other.batch(ref)),
        ("expected_flex_usd", other.flex(ref)),
    ):
        if alt is not None:
            m[key] = (m[key] or 0.0) + alt.cost(Usage(in_tokens, out_typ))


def _round_costs(per_model: dict[str, dict[str, Any]]) -> None:
    """Costs to 6 places; a model with any unpriced job has none (None)."""
    for m in per_model.values():
        if not m["priced"]:
            m["worst_case_usd"] = m["expected_usd"] = None
        else:
            m["worst_case_usd"] = round(m["worst_case_usd"], 6)
            m["expected_usd"] = round(m["expected_usd"], 6)
        for key in ("expected_batch_usd", "expected_flex_usd"):
            if m[key] is not None:
                m[key] = round(m[key], 6)


def render_estimate(est: dict[str, Any], console: Console) -> None:
    from rich.table import Table

    jobs = est["jobs"]
    console.print(
        f"[bold]{jobs['total']}[/] jobs · {jobs['done']} already done · "
        f"[bold]{jobs['left']}[/] left · {jobs['invalid_lines']} invalid lines"
    )
    table = Table(title="estimate for the jobs left (nothing sent)", title_justify="left")
    cols = ("model", "jobs", "input tok", "expected out", "expected", "batch", "flex", "worst case")
    for col in cols:
        table.add_column(col, justify="left" if col == "model" else "right")
    for key, m in est["by_model"].items():
        table.add_row(
            key,
            str(m["jobs"]),
            f"{m['input_tokens']:,}",
            f"{m['expected_output_tokens']:,}",
            "unpriced" if m["expected_usd"] is None else f"${m['expected_usd']:,.4f}",
            "-" if m["expected_batch_usd"] is None else f"${m['expected_batch_usd']:,.4f}",
            "-" if m["expected_flex_usd"] is None else f"${m['expected_flex_usd']:,.4f}",
            "unpriced" if m["worst_case_usd"] is None else f"${m['worst_case_usd']:,.4f}",
        )
    console.print(table)
    partly = " + unpriced" if est["unpriced_models"] else ""
    console.print(
        f"expected {_usd(est['expected_usd'])}{partly} · "
        f"worst case {_usd(est['worst_case_usd'])}{partly} · "
        f"spent so far on this output ${est['spent_usd_so_far']:,.4f}"
    )
    console.print(f"[dim]expected assumes {est['assumptions']['expected_output_tokens']}[/]")
    pc = est.get("prompt_cache") or {}
    cacheable = [g for g in pc.get("groups") or () if g["cacheable"]]
    if cacheable:
        console.print(
            f"prompt cache: {len(cacheable)} shared prefix group(s) worth caching · "
            f"about ${pc['saved_usd']:,.4f} saved against no caching"
        )
    elif pc.get("groups"):
        console.print("[dim]prompt cache: shared prefixes too short for their model to cache[/]")
    if est["unpriced_models"]:
        console.print(
            f"[yellow]unpriced: {', '.join(est['unpriced_models'])} (no known price; "
            'add one under \\[prices."PROVIDER:MODEL"] in llmbatch.toml)[/]'
        )


def _usd(value: float | None) -> str:
    return "unpriced" if value is None else f"${value:,.4f}"


def render_problems(est: dict[str, Any], stream: Any) -> None:
    """Why lines are invalid (the first few), as ``PATH:LINE: message``, for stderr."""
    for problem in est["problems"]:
        stream.write(f"{problem}\n")
    more = est["jobs"]["invalid_lines"] - len(est["problems"])
    if more > 0:
        stream.write(f"… and {more} more invalid line(s); `llmbatch validate` lists them all\n")
