"""``--service-tier``: flex is sent, priced at its own rate in cost, report and budget, waits
longer by default, and its "resource unavailable" 429s are retried without teaching the
rate limiter a slower pace."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from llmbatch import ModelRef, RunConfig
from llmbatch._core.events import LimitChanged, ListSink
from llmbatch._core.exceptions import RateLimited
from llmbatch._core.jobs import Request
from llmbatch._core.pricing import PriceBook, tier_price
from llmbatch._core.usage import Usage
from llmbatch._limits.ratelimit import ModelGate
from llmbatch._run.online import FileRun
from llmbatch.providers._base import Answer, Provider
from llmbatch.testing import FakeClock
from tests._fakewire import error_payload
from tests.conftest import fake_env, prompts, read_jsonl, run_cli, write_jsonl
from tests.fakeapi import FakeAPI

FLEX_MODEL = "gpt-5-mini"  # genai-prices has a flex price for it
NO_FLEX_MODEL = "gpt-4o-mini"  # it has none: the batch price stands in


def flex_price_of(model: str) -> tuple[float, float]:
    price, _ = tier_price(model, "openai", None, "flex")
    assert price is not None
    return price.input.base, price.output.base


def test_flex_prices_are_genai_prices_own_or_the_batch_price() -> None:
    std = PriceBook().price(ModelRef("openai", FLEX_MODEL))
    flex, note = tier_price(FLEX_MODEL, "openai", None, "flex")
    assert std is not None and flex is not None and note is None
    assert flex.input.base < std.input.base and flex.output.base < std.output.base
    stand_in, note = tier_price(NO_FLEX_MODEL, "openai", None, "flex")
    batch, _ = tier_price(NO_FLEX_MODEL, "openai", None, "batch")  # no such tier: standard
    assert stand_in is not None and note is not None and "batch price" in note
    assert batch is not None and stand_in.input.base == pytest.approx(batch.input.base / 2)


def test_a_thousand_job_flex_run_is_priced_and_budgeted_at_flex(
    fake: FakeAPI, tmp_path: Path
) -> None:
    fake.reply = "flex is half price"
    write_jsonl(tmp_path / "jobs.jsonl", prompts(1000))
    book = PriceBook()
    ref = ModelRef("openai", FLEX_MODEL)
    per_in, per_out = flex_price_of(FLEX_MODEL)
    # What the run will cost at flex, and at the standard price: the cap lies between.
    in_tok = sum(fake.input_tokens_of({"messages": [{"role": "user", "content": p["prompt"]}]})
                 for p in prompts(1000))  # fmt: skip
    out_tok = 1000 * len(fake.chunks(fake.reply))
    flex_total = (in_tok * per_in + out_tok * per_out) / 1e6
    std_total = book.cost(ref, Usage(in_tok, out_tok))
    assert std_total is not None and flex_total < std_total * 0.6
    cap = (flex_total + std_total) / 2
    r = run_cli(
        "run", "jobs.jsonl", "-m", f"openai:{FLEX_MODEL}", "--service-tier", "flex",
        "--max-cost", f"{cap:.6f}", "--max-tokens", "8", "-c", "32", "--report", "rep.json",
        "--quiet", env=fake_env(fake),
    )  # fmt: skip
    assert r.code == 0, r.output
    results = read_jsonl(tmp_path / "jobs.results.jsonl")
    assert len(results) == 1000 and all(x["status"] == "ok" for x in results)
    assert all(r.body["service_tier"] == "flex" for r in fake.records)
    for x in results[:50]:
        u = x["usage"]
        want = (u["input_tokens"] * per_in + u["output_tokens"] * per_out) / 1e6
        assert x["cost_usd"] == pytest.approx(want, abs=1e-8)  # lines round to 8 places
    report = orjson.loads((tmp_path / "rep.json").read_bytes())
    assert report["cost_usd"] == pytest.approx(flex_total, rel=1e-3)
    assert report["cost_usd"] <= cap  # the budget held at the flex price, and was enough


def test_flex_without_a_flex_price_says_the_batch_price_once(fake: FakeAPI, tmp_path: Path) -> None:
    write_jsonl(tmp_path / "jobs.jsonl", prompts(5))
    (tmp_path / "llmbatch.toml").write_text('service_tier = "flex"\n')
    r = run_cli(
        "run", "jobs.jsonl", "-m", f"openai:{NO_FLEX_MODEL}", "--report", "rep.json",
        env=fake_env(fake),
    )  # fmt: skip
    assert r.code == 0, r.output
    notes = orjson.loads((tmp_path / "rep.json").read_bytes())["notes"]
    said = [n for n in notes if "no flex price" in n]
    assert len(said) == 1 and "batch price" in said[0]
    assert r.output.count("no flex price") == 1
    batch, _ = tier_price(NO_FLEX_MODEL, "openai", None, "flex")
    assert batch is not None
    for x in read_jsonl(tmp_path / "jobs.results.jsonl"):
        assert x["cost_usd"] == pytest.approx(batch.cost(Usage.from_dict(x["usage"])), abs=1e-8)


def test_flex_gets_a_longer_default_timeout_and_a_flag_still_wins(tmp_path: Path) -> None:
    from llmbatch._config.settings import FLEX_TIMEOUT_S, build_run_config
    from llmbatch._config.toml import FileConfig

    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(1))
    flex = build_run_config(jobs, {"service_tier": "flex"}, FileConfig())
    assert flex.timeout == FLEX_TIMEOUT_S > RunConfig(jobs=jobs).timeout
    given = build_run_config(jobs, {"service_tier": "flex", "timeout": 30}, FileConfig())
    assert given.timeout == 30
    with pytest.raises(Exception, match="--service-tier 'slow'"):
        build_run_config(jobs, {"service_tier": "slow"}, FileConfig())


def test_a_flex_resource_unavailable_429_is_retried_on_the_wire(
    fake: FakeAPI, tmp_path: Path
) -> None:
    fake.add_rule("Question 0:", "429", "429")
    write_jsonl(tmp_path / "jobs.jsonl", prompts(2))
    r = run_cli(
        "run", "jobs.jsonl", "-m", f"openai:{FLEX_MODEL}", "--service-tier", "flex", "--quiet",
        env=fake_env(fake),
    )  # fmt: skip
    assert r.code == 0, r.output
    x = {x["id"]: x for x in read_jsonl(tmp_path / "jobs.results.jsonl")}["job-0"]
    assert x["status"] == "ok" and x["attempt_errors"] == {"rate_limited": 2}


def flex_429(flex: bool) -> RateLimited:
    """The error our OpenAI adapter makes of the fake's 429 body (flex or plain)."""
    from llmbatch.providers.openai import OpenAIProvider

    cfg = RunConfig(jobs=Path("jobs.jsonl"), service_tier="flex" if flex else None)
    provider = OpenAIProvider(cfg.providers["openai"], cfg)
    message = (
        "Resource Unavailable: flex capacity is exhausted; try again later"
        if flex
        else "simulated 429"
    )
    body, _ = error_payload("openai", 429, message)
    err = provider._http_error(429, orjson.dumps(body), {"retry-after": "1"}, None, "req")
    assert isinstance(err, RateLimited)
    return err


class Flaky:
    """A provider whose first ``n`` sends fail with ``err`` (then it answers)."""

    name = "openai"

    def __init__(self, err: RateLimited, n: int) -> None:
        self.err, self.left, self.notes = err, n, set[str]()

    async def send(self, model: str, request: Request, time_limit: float) -> Answer:
        if self.left > 0:
            self.left -= 1
            raise self.err
        return Answer("ok", Usage(10, 2), "stop", 1.0, 0.5)

    async def aclose(self) -> None:
        return None


@pytest.mark.parametrize("flex", [True, False])
async def test_flex_429s_do_not_teach_the_learned_limit(
    flex: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-key-0000")
    err = flex_429(flex)
    assert err.retryable and err.teaches_limit is (not flex)
    write_jsonl(tmp_path / "jobs.jsonl", prompts(40))
    cfg = RunConfig(
        jobs=tmp_path / "jobs.jsonl",
        output=tmp_path / "out.jsonl",
        model=ModelRef("openai", FLEX_MODEL),
        quiet=True,
        concurrency=8,
        max_attempts=8,
    )
    provider = Flaky(err, 30)

    def make(name: str, c: RunConfig) -> Provider:
        return provider

    sink = ListSink()
    clock = FakeClock()
    session = FileRun(cfg, provider_factory=make, handle_signals=False, sinks=[sink], clock=clock)
    async with clock.autojump():
        report = await session.run()
    assert report.ok == 40 and report.errors == {"rate_limited": 30}
    gate = session.services.gates[ModelRef("openai", FLEX_MODEL)]
    assert isinstance(gate, ModelGate)
    learned = [e for e in sink.events if isinstance(e, LimitChanged)]
    if flex:
        assert gate.stats.rate_limited == 0  # the limiter never heard of them
        assert not learned and gate.requests.rate is None  # no pace was learned
    else:  # the control: the same 429s, not flex, do teach it
        assert gate.stats.rate_limited == 30
        assert learned and gate.requests.rate is not None
