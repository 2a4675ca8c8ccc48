"""Unit tests where a small piece has rules of its own."""

from __future__ import annotations

import io
import random
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest
from rich.console import Console

import llmbatch
from llmbatch._config.settings import load_config
from llmbatch._core.exceptions import ConfigError, error_for_status
from llmbatch._core.headers import (
    hint_from_headers,
    parse_go_duration,
    parse_reset,
    parse_retry_after,
)
from llmbatch._core.models import ModelRef, ModelSpecError, parse_model_spec
from llmbatch._core.pricing import Price, Rate
from llmbatch._core.results import JobResult
from llmbatch._core.schema import extract_json, sample_instance, validate_answer
from llmbatch._core.states import Status
from llmbatch._core.template import MissingField, Template, TemplateError
from llmbatch._core.usage import Usage
from llmbatch._io.resume import DoneSet, fp_int, read_existing
from llmbatch._observe.stats import Histogram, RunStats
from llmbatch._report.render import render_report
from llmbatch._report.report import build_report
from llmbatch.providers._http import redact


def test_all_matches_the_real_exports() -> None:
    import importlib

    from llmbatch import _WHERE
    from llmbatch._core import exceptions as _exceptions

    # Every class of the exception tree is public: a new one must be exported.
    tree = {
        name
        for name, obj in vars(_exceptions).items()
        if isinstance(obj, type) and issubclass(obj, llmbatch.LLMBatchError)
    }
    missing = tree - set(llmbatch.__all__)
    assert not missing, f"exception classes not exported: {sorted(missing)}"
    # Each exported name is the very object defined where the lazy table says.
    for name in llmbatch.__all__:
        if name == "__version__":
            continue
        module = importlib.import_module(_WHERE[name])
        obj = getattr(llmbatch, name)
        assert obj is getattr(module, name)
        assert obj.__module__ == module.__name__, name
    assert len(llmbatch.__all__) == len(set(llmbatch.__all__))
    with pytest.raises(AttributeError):
        _ = llmbatch.not_a_name


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("claude-haiku-4-5", ModelRef("anthropic", "claude-haiku-4-5")),
        ("gpt-4o-mini", ModelRef("openai", "gpt-4o-mini")),
        ("o3-mini", ModelRef("openai", "o3-mini")),
        ("openai:llama3:8b", ModelRef("openai", "llama3:8b")),
        ("sim:claude-haiku-4-5", ModelRef("sim", "claude-haiku-4-5")),
    ],
)
def test_model_specs(spec: str, expected: ModelRef) -> None:
    assert parse_model_spec(spec) == expected


@pytest.mark.parametrize("spec", ["llama3", "", "sim:", "mistral-large"])
def test_bad_model_specs(spec: str) -> None:
    with pytest.raises(ModelSpecError):
        parse_model_spec(spec)


def test_templates() -> None:
    t = Template("Hi {name}, {a.b} and {{literal}} {items.1}")
    assert t.render({"name": "Ann", "a": {"b": 2}, "items": ["x", "y"]}) == (
        "Hi Ann, 2 and {literal} y"
    )
    with pytest.raises(MissingField) as info:
        t.render({"name": "Ann"})
    assert info.value.field == "a.b"
    with pytest.raises(TemplateError):
        Template("no fields at all")
    with pytest.raises(TemplateError):
        Template("unbalanced {name")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("6m0s", 360.0), ("12ms", 0.012), ("1h2m3.5s", 3723.5), ("20", 20.0), ("1.5s", 1.5)],
)
def test_go_durations(text: str, seconds: float) -> None:
    assert parse_go_duration(text) == pytest.approx(seconds)


def test_reset_times() -> None:
    now = time.time()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now + 30))
    assert parse_reset(stamp, now=now) == pytest.approx(30, abs=1.5)
    assert parse_reset("6m0s") == 360
    assert parse_reset(None) is None


def test_retry_after_headers() -> None:
    assert parse_retry_after({"retry-after": "2"}) == 2
    assert parse_retry_after({"retry-after": "2", "retry-after-ms": "150"}) == 0.15
    assert parse_retry_after({}) is None
    assert parse_retry_after({"retry-after": "soon"}) is None


def test_rate_limit_hints() -> None:
    hint = hint_from_headers(
        {
            "x-ratelimit-limit-requests": "600",
            "x-ratelimit-remaining-requests": "0",
            "x-ratelimit-reset-requests": "2s",
        }
    )
    assert hint is not None and hint.requests_limit == 600 and hint.requests_reset_s == 2
    assert hint_from_headers({"content-type": "x"}) is None


def test_error_classes_by_status() -> None:
    cases = {
        400: "bad_request",
        401: "auth",
        403: "auth",
        404: "not_found",
        408: "timeout",
        409: "server_error",
        422: "bad_request",
        429: "rate_limited",
        500: "server_error",
        503: "server_error",
        504: "timeout",
        529: "overloaded",
    }
    for status, kind in cases.items():
        assert error_for_status(status, "x").error_type == kind
    assert error_for_status(500, "x", body_type="overloaded_error").error_type == "overloaded"


def test_redaction() -> None:
    key = "sk-ant-api03-SECRETSECRETSECRET"
    assert key not in redact(f"bad key {key}", key)
    assert "sk-proj-abcdefghijkl" not in redact("Incorrect key sk-proj-abcdefghijklmnop", None)


def test_histogram_percentiles_within_one_percent() -> None:
    h = Histogram()
    rng = random.Random(2)
    values = [rng.uniform(1, 5000) for _ in range(10_000)]
    for v in values:
        h.add(v)
    values.sort()
    for p in (50, 90, 99):
        exact = values[int(len(values) * p / 100) - 1]
        assert h.percentile(p) == pytest.approx(exact, rel=0.02)
    assert h.max == max(values)


def test_done_set_lookups() -> None:
    done = DoneSet()
    for i in range(1000):
        done.add(f"id-{i}", f"{i:016x}")
    done.freeze()
    assert "id-5" in done and "id-1000" not in done
    assert done.fingerprint("id-255") == fp_int(f"{255:016x}") != 0
    assert done.fingerprint("nope") is None
    assert len(done) == 1000


SCHEMAS: list[dict[str, Any]] = [
    {"type": "object", "required": ["a"], "properties": {"a": {"type": "string"}}},
    {
        "type": "object",
        "required": ["score", "tags", "ok", "kind"],
        "additionalProperties": False,
        "properties": {
            "score": {"type": "integer", "minimum": 1, "maximum": 5},
            "ratio": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
            "tags": {"type": "array", "items": {"type": "string"}, "minItems": 2, "maxItems": 4},
            "ok": {"type": "boolean"},
            "kind": {"enum": ["x", "y"]},
            "nested": {
                "type": "object",
                "required": ["deep"],
                "properties": {"deep": {"type": ["string", "null"], "maxLength": 5}},
            },
        },
    },
    {"type": "array", "items": {"$ref": "#/$defs/p"}, "$defs": {"p": {"type": "integer"}}},
    {"type": "string", "format": "email"},
    {"allOf": [{"type": "object", "required": ["x"], "properties": {"x": {"const": 3}}}]},
    {"anyOf": [{"type": "integer"}, {"type": "string"}]},
]


@pytest.mark.parametrize("schema", SCHEMAS)
def test_sim_answers_validate(schema: dict[str, Any]) -> None:
    validator = jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )
    for seed in range(20):
        validator.validate(sample_instance(schema, random.Random(seed)))


def test_json_extraction() -> None:
    assert extract_json('{"a": 1}') == {"a": 1}
    assert extract_json('Here you go:\n```json\n{"a": 2}\n```\nBye') == {"a": 2}
    assert extract_json('The answer is {"a": {"b": "}"}} as asked') == {"a": {"b": "}"}}
    with pytest.raises(ValueError):
        extract_json("no json here")
    schema = {"type": "object", "required": ["a"], "properties": {"a": {"type": "integer"}}}
    assert validate_answer('{"a": 1}', schema) == ({"a": 1}, None)
    value, problem = validate_answer('{"a": "x"}', schema)
    assert problem is not None and "at a:" in problem


def test_report_table_renders() -> None:
    stats = RunStats()
    stats.add(
        JobResult(
            id="a",
            status=Status.OK,
            output="x",
            parsed=None,
            provider="sim",
            model="m",
            usage=Usage(10, 5),
            cost_usd=0.001,
            latency_ms=120.0,
            ttft_ms=30.0,
            attempts=2,
            error=None,
            metadata=None,
            attempt_errors={"rate_limited": 1},
        )
    )
    report = build_report(stats, wall_s=1.5)
    buf = io.StringIO()
    render_report(report, Console(file=buf, width=100, force_terminal=True, color_system=None))
    text = buf.getvalue()
    assert "1 total" in text and "rate_limited 1" in text and "sim:m" in text
    assert report.to_dict()["attempts"] == {"total": 2, "retries": 1}


def test_resume_state_reruns_budget_cut_jobs(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    lines = [
        {"id": "a", "status": "failed", "error": {"type": "budget"}, "cost_usd": 0.5},
        {"id": "b", "status": "failed", "error": {"type": "bad_request"}, "cost_usd": 0.0},
        {"id": "c", "status": "ok", "cost_usd": 0.25, "usage": {"input_tokens": 3}},
        {"id": "d", "status": "failed", "error": {"type": "server_error"}},
        {"id": "d", "status": "ok"},
    ]
    out.write_bytes(b"".join(orjson.dumps(x) + b"\n" for x in lines) + b'{"id": "e", "sta')
    state = read_existing(out, retry_failed=False)
    assert "a" not in state.done  # cut by a budget: runs again
    assert "b" in state.done and "c" in state.done and "d" in state.done
    assert state.failed == 1 and state.ok == 2
    assert state.cost_usd == pytest.approx(0.75) and state.tokens == 3
    assert state.torn_at is not None and state.torn_bytes == len(b'{"id": "e", "sta')
    retry = read_existing(out, retry_failed=True)
    assert "b" not in retry.done and retry.retry_ids == 2


def test_every_lazy_name_is_exported() -> None:
    from llmbatch import _WHERE

    assert sorted([*_WHERE, "__version__"]) == sorted(llmbatch.__all__)


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('[providers.local]\nbase_url = "http://x"\n', 'needs type = "openai"'),
        ('[providers.local]\ntype = "openai"\nbase = "http://x"\n', "unknown key 'base'"),
        ('[prices."sim:x"]\ninput = 1\n', "takes input, output (required)"),
        ('[prices."sim:x"]\ninput = 1\noutput = 2\ncached = 1\n', "unknown key 'cached'"),
        ('[limits."sim:x"]\nrpm = -5\n', "rpm must be a number > 0"),
        ('concurrency = "lots"\n', "concurrency must be an integer"),
        ("model = [\n", "not valid TOML"),
    ],
)
def test_config_errors_name_the_problem(tmp_path: Path, toml: str, message: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert message in str(info.value) and str(path) in str(info.value)


def test_config_tables_load(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        '[providers.local]\ntype = "openai"\nbase_url = "http://h/v1"\napi_key_env = ""\n'
        '[prices."local:m"]\ninput = 1\noutput = 2\n'
        '[limits."local:m"]\nrpm = 60\ninput_tpm = 1000\n'
    )
    cfg = load_config(path)
    assert cfg.providers["local"].key_env() is None
    assert cfg.prices["local:m"].cost(Usage(1_000_000, 0)) == pytest.approx(1.0)
    assert cfg.limits["local:m"].input_tpm == 1000
    assert "local" in cfg.provider_names


def test_anthropic_hint_takes_the_scarcest_token_count() -> None:
    soon = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 20))
    hint = hint_from_headers(
        {
            "anthropic-ratelimit-requests-limit": "4000",
            "anthropic-ratelimit-requests-remaining": "3999",
            "anthropic-ratelimit-tokens-remaining": "90000",
            "anthropic-ratelimit-input-tokens-remaining": "50000",
            "anthropic-ratelimit-output-tokens-remaining": "0",
            "anthropic-ratelimit-output-tokens-reset": soon,
        }
    )
    assert hint is not None and hint.requests_limit == 4000
    assert hint.tokens_remaining == 0
    assert hint.tokens_reset_s is not None and 15 < hint.tokens_reset_s <= 21


@pytest.mark.parametrize(
    "text", ["", "a", "Question 7: what is 7 + 7?", "x" * 1001, "héllo wörld", "日本語" * 50]
)
def test_a_one_prompt_request_is_estimated_as_the_general_count_says(text: str) -> None:
    """The one-prompt shortcut of ``estimate_input_tokens`` gives the general loop's
    figures: four characters a token (or UTF-8 bytes, conservatively) plus 12."""
    import math

    from llmbatch._core.jobs import Request, estimate_input_tokens

    one = Request(messages=[{"role": "user", "content": text}])
    # The same request as the general loop sees it: a content list of one text block.
    blocks = Request(messages=[{"role": "user", "content": [{"type": "text", "text": text}]}])
    assert estimate_input_tokens(one) == estimate_input_tokens(blocks)
    assert estimate_input_tokens(one) == max(1, math.ceil(len(text) / 4) + 12)
    assert estimate_input_tokens(one, conservative=True) == len(text.encode()) + 12


@pytest.mark.parametrize("cap", [None, 1.0])
def test_an_attempt_s_spend_is_counted_with_or_without_a_cap(cap: float | None) -> None:
    """With no cap anywhere an attempt holds nothing, but what it spent is still the
    run's: resume, ``--ray``'s split and the report read it."""
    from llmbatch._budget.context import Budgets, Stopper
    from llmbatch._budget.ledger import RunBudget
    from llmbatch._core.clock import SYSTEM_CLOCK

    run = RunBudget(max_cost=cap)
    budgets = Budgets([run], SYSTEM_CLOCK, Stopper())
    for cost in (0.25, 0.125):
        held = budgets.reserve_now(0.5, 100)
        assert held is not None and budgets.in_flight == 1
        assert run.reserved_cost == (0.5 if cap else 0.0)  # a cap holds the worst case
        held.spend(cost, 10)
        assert budgets.settle_now(held)
    assert (run.spent_cost, run.spent_tokens, budgets.in_flight) == (0.375, 20, 0)
    assert run.reserved_cost == 0.0 and run.holds == 0


def test_a_histogram_counts_negative_and_nan_values_as_zero() -> None:
    from llmbatch._observe.stats import Histogram

    h = Histogram()
    for value in (float("nan"), -1.0, 0.0, 2.5):
        h.add(value)
    assert (h.count, h.total, h.max) == (4, 2.5, 2.5)
    assert h.buckets[0] == 3 and h.percentile(50) < 0.01  # the first bucket's middle


def test_a_price_with_tiers_and_one_without_cost_what_their_rates_say() -> None:
    flat = Price.flat(1.0, 5.0)
    assert flat.plain_cost(1_000, 200) == pytest.approx((1_000 * 1.0 + 200 * 5.0) / 1e6)
    assert flat.cost(Usage(1_000, 200)) == flat.plain_cost(1_000, 200)
    # Above 200k input tokens the whole request is billed at the higher rate.
    tiered = Price(Rate(3.0, ((200_000, 6.0),)), Rate(15.0, ((200_000, 22.5),)),
                   Rate(0.3), Rate(3.75))  # fmt: skip
    assert tiered.plain_cost(1_000, 100) == pytest.approx((1_000 * 3.0 + 100 * 15.0) / 1e6)
    assert tiered.cost(Usage(300_000, 100)) == pytest.approx((300_000 * 6.0 + 100 * 22.5) / 1e6)
    assert tiered.plain_cost(300_000, 100) == tiered.cost(Usage(300_000, 100))
    assert replace(flat, output=Rate(1.0, ((10, 2.0),))).plain_cost(20, 20) == pytest.approx(
        (20 * 1.0 + 20 * 2.0) / 1e6
    )
