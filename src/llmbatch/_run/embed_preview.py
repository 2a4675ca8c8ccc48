"""Embedding files before anything is sent: ``llmbatch estimate`` and ``--dry-run``.

Both go through the run's own pieces, so they count what a run would send: the
check pass (``EmbedRun.check_pass``: every line checked, ids already in the
output skipped), then the run's packing (``EmbedSource``: the provider's caps and
``--inputs-per-request``, one line's inputs together, a repeated text riding
along with the request that carries it or taking a recent vector). Each pack is
then taken as written, with a stand-in for its vectors of their real size (no
memory: a broadcast zero), so repeats stop being free where a run's 8 MiB of
recent vectors would have let them go. Nothing is sent; no lock, output, history
or response cache is touched (a run answers texts the cache holds for nothing:
the figures here do not count on it).

Tokens are the packer's bound (a third of each text's UTF-8 bytes: the worst
case) and the rate limiter's estimate (about 4 characters a token: expected);
cost is the model's embedding price (input tokens only), and what the same texts
cost by batch where embeddings go by batch (the batch layer says: OpenAI's half
price for OpenAI and Azure models).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

import orjson

from llmbatch._config.settings import RunConfig
from llmbatch._core.embed import EmbedJob, EmbedPack, token_bound
from llmbatch._core.models import ModelRef
from llmbatch._core.pricing import Price, PriceBook
from llmbatch._core.usage import Usage
from llmbatch._engine.embed import EmbedSource, parse_records
from llmbatch._engine.estimate import MAX_PROBLEMS_SHOWN, OtherPrices
from llmbatch._engine.plan import Plan
from llmbatch._run.embed import EmbedPlan, EmbedRun

if TYPE_CHECKING:
    from rich.console import Console

BatchPrice = Callable[[PriceBook, ModelRef], "Price | None"]
DEFAULT_DIMENSIONS = 1536  # the recent-vectors window's size when no dimensions are asked


def _checked(config: RunConfig) -> tuple[EmbedRun, EmbedPlan]:
    run = EmbedRun(config, handle_signals=False)
    return run, run.check_pass()


def preview_packs(run: EmbedRun, plan: EmbedPlan) -> Iterator[EmbedPack]:
    """The packs a run would send now, in order (those with nothing left to send too)."""
    done = run.existing.done if run.existing else None

    def skip(job: EmbedJob) -> bool:
        return done is not None and done.fingerprint(job.id) is not None

    def records() -> Iterator[tuple[int, EmbedJob | None]]:
        display = run.config.display_name
        return parse_records(
            run.records(), run.parse_line, skip, plan.invalid_lines, run.notes, display
        )

    import numpy as np

    zero = np.zeros(1, dtype=np.float32)
    state = run.state
    for pj in EmbedSource(records, run.resolve, run.caps, state):
        pack = pj.request.embed
        assert isinstance(pack, EmbedPack)
        yield pack
        dim = pack.dimensions or DEFAULT_DIMENSIONS
        state.written(pack, np.broadcast_to(zero, (len(pack.texts), dim)))


@dataclass(slots=True)
class _Totals:
    inputs: int = 0
    texts_sent: int = 0
    requests: int = 0
    input_tokens: int = 0  # the packer's bound
    expected_tokens: int = 0  # about 4 characters a token

    def add(self, pack: EmbedPack) -> None:
        sent = pack.send_slots
        self.inputs += pack.rows
        self.texts_sent += len(sent)
        self.requests += 1 if sent else 0
        for i in sent:
            text = pack.texts[i]
            self.input_tokens += token_bound(text)
            self.expected_tokens += len(text) // 4 + 1


def _cost(price: Price | None, tokens: int) -> float | None:
    return None if price is None else round(price.cost(Usage(tokens, 0)), 6)


def _model_row(t: _Totals, price: Price | None, batch: Price | None) -> dict[str, Any]:
    return {
        "inputs": t.inputs,
        "texts_sent": t.texts_sent,
        "repeats": t.inputs - t.texts_sent,
        "requests": t.requests,
        "input_tokens": t.input_tokens,
        "expected_input_tokens": t.expected_tokens,
        "worst_case_usd": _cost(price, t.input_tokens),
        "expected_usd": _cost(price, t.expected_tokens),
        "expected_batch_usd": _cost(batch, t.expected_tokens),
        "priced": price is not None,
    }


def estimate_embeddings(config: RunConfig, batch_price: BatchPrice | None = None) -> dict[str, Any]:
    """``llmbatch estimate`` over an embedding file: lines, packed requests, tokens, cost.

    ``batch_price(book, ref)``: what a batch of embeddings pays (None: no batch for that
    model); the CLI passes the batch layer's (``_batch.embed_submit``), which sits above
    this package; without it, genai-prices' batch prices where a provider has batches."""
    run, plan = _checked(config)
    per_model: dict[str, tuple[ModelRef, _Totals]] = {}
    for pack in preview_packs(run, plan):
        per_model.setdefault(str(pack.model), (pack.model, _Totals()))[1].add(pack)
    prices = run.services.prices
    if batch_price is None:
        other = OtherPrices(config)
        batch_price = lambda book, ref: other.batch(ref)  # noqa: E731
    by_model = {
        key: _model_row(t, prices.price(ref), batch_price(prices, ref))
        for key, (ref, t) in per_model.items()
    }
    rows = list(by_model.values())

    def total(field: str) -> Any:
        return sum(r[field] for r in rows)

    def usd(field: str) -> float | None:
        priced = [r[field] for r in rows if r[field] is not None]
        return round(sum(priced), 6) if priced else None

    left = plan.todo
    existing = run.existing
    return {
        "kind": "embeddings",
        "jobs": {
            "total": left + plan.skipped_done,
            "done": plan.skipped_done,
            "left": left,
            "invalid_lines": len(plan.invalid_lines),
        },
        "problems": [str(p) for p in plan.problems[:MAX_PROBLEMS_SHOWN]],
        "by_model": by_model,
        "inputs": total("inputs"),
        "texts_sent": total("texts_sent"),
        "repeats": total("repeats"),
        "requests": total("requests"),
        "input_tokens": total("input_tokens"),
        "expected_input_tokens": total("expected_input_tokens"),
        "worst_case_usd": usd("worst_case_usd"),
        "expected_usd": usd("expected_usd"),
        "expected_batch_usd": usd("expected_batch_usd"),
        "unpriced_models": sorted(k for k, r in by_model.items() if not r["priced"]),
        "spent_usd_so_far": round(existing.cost_usd, 6) if existing else 0.0,
        "assumptions": {
            "requests": "packed as the run packs them: the provider's caps or "
            "--inputs-per-request, a line's inputs together",
            "repeats": "a text seen earlier in the run is sent once (while its vector is "
            "among the last 8 MiB of them); the response cache is not counted",
            "input_tokens": "a third of each text's UTF-8 bytes (the packer's bound)",
            "expected_input_tokens": "about 4 characters a token",
        },
    }


def render_embed_estimate(est: dict[str, Any], console: Console) -> None:
    from rich.table import Table

    jobs = est["jobs"]
    console.print(
        f"[bold]{jobs['total']}[/] lines · {jobs['done']} already done · "
        f"[bold]{jobs['left']}[/] left · {jobs['invalid_lines']} invalid lines"
    )
    table = Table(title="embeddings estimate for the lines left (nothing sent)")
    cols = ("model", "inputs", "texts sent", "requests", "tokens ≤", "expected tok")
    for col in (*cols, "expected", "batch", "worst case"):
        table.add_column(col, justify="left" if col == "model" else "right")

    def usd(value: float | None, unpriced: str = "unpriced") -> str:
        return unpriced if value is None else f"${value:,.4f}"

    for key, m in est["by_model"].items():
        table.add_row(
            key,
            f"{m['inputs']:,}",
            f"{m['texts_sent']:,}",
            f"{m['requests']:,}",
            f"{m['input_tokens']:,}",
            f"{m['expected_input_tokens']:,}",
            usd(m["expected_usd"]),
            usd(m["expected_batch_usd"], "-"),
            usd(m["worst_case_usd"]),
        )
    console.print(table)
    partly = " + unpriced" if est["unpriced_models"] else ""
    console.print(
        f"expected {usd(est['expected_usd'])}{partly} · worst case "
        f"{usd(est['worst_case_usd'])}{partly} · spent so far on this output "
        f"${est['spent_usd_so_far']:,.4f}"
    )
    console.print(
        f"[dim]{est['repeats']:,} repeated input(s) not sent again · tokens ≤: a third of "
        "the UTF-8 bytes (the packer's bound); expected: about 4 characters a token[/]"
    )


def print_embed_dry_run(cfg: RunConfig, out: IO[bytes], err: IO[str]) -> int:
    """``--dry-run`` over an embedding file: one JSON line per request a run would send
    now (URL, headers with every credential redacted, the exact body), a summary to
    ``err``. The run's checks come first: invalid lines refuse (unless --skip-invalid)."""
    from llmbatch._engine.dryrun import redacted_headers

    run, plan = _checked(cfg)
    models = {ref for ref, _ in plan.groups}
    run.planner.check(Plan(problems=plan.problems, models=models), require_keys=False)
    for ref in models:
        run.refuse_unembeddable(ref)
    totals = _Totals()
    for pack in preview_packs(run, plan):
        totals.add(pack)
        sent = pack.send_slots
        if not sent:
            continue
        line = _request_line(cfg, pack, [pack.texts[i] for i in sent], redacted_headers)
        out.write(orjson.dumps(line, option=orjson.OPT_APPEND_NEWLINE))
    out.flush()
    for note in run.notes:
        err.write(f"llmbatch: note: {note}\n")
    err.write(
        f"llmbatch: dry run: {totals.requests:,} request(s) would be sent, carrying "
        f"{totals.texts_sent:,} text(s) for {totals.inputs:,} input(s) of {plan.todo:,} "
        f"line(s) ({plan.skipped_done:,} done already). Nothing was sent.\n"
    )
    return 0


def _request_line(
    cfg: RunConfig, pack: EmbedPack, texts: list[str], redacted_headers: Any
) -> dict[str, Any]:
    from llmbatch.providers.embeddings import preview

    ref = pack.model
    settings = cfg.providers[ref.provider]
    url, body = preview(settings, cfg, ref.model, texts, pack.dimensions)
    line: dict[str, Any] = {
        "request": pack.seq,
        "model": str(ref),
        "inputs": pack.rows,
        "url": url,
    }
    if url is not None:
        key_header = "x-goog-api-key" if settings.kind == "gemini" else "authorization"
        line["headers"] = redacted_headers(settings, key_header)
    line["body"] = body
    return line
