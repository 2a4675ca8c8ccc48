"""Real provider adapters, end to end through the CLI against the fake API."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from llmbatch._core.models import ModelRef
from llmbatch._core.pricing import PriceBook
from llmbatch._core.usage import Usage
from tests.conftest import (
    CANARY_ANTHROPIC,
    CANARY_OPENAI,
    fake_env,
    prompts,
    read_jsonl,
    run_cli,
    write_jsonl,
)
from tests.fakeapi import FakeAPI

MODELS = {
    "anthropic": "claude-haiku-4-5",
    "openai": "gpt-4o-mini",
}
PROVIDERS = list(MODELS)


def spec(provider: str) -> str:
    return f"{provider}:{MODELS[provider]}"


@pytest.mark.parametrize("provider", PROVIDERS)
def test_text_usage_and_cost_match_what_the_fake_billed(
    provider: str, fake: FakeAPI, tmp_path: Path
) -> None:
    fake.reply = "The quick brown fox jumps over the lazy dog."
    write_jsonl(tmp_path / "jobs.jsonl", prompts(6))
    r = run_cli(
        "run", "jobs.jsonl", "-m", spec(provider), "--report", "rep.json", env=fake_env(fake)
    )
    assert r.code == 0, r.output
    results = read_jsonl(tmp_path / "jobs.results.jsonl")
    assert len(results) == 6
    book = PriceBook()
    ref = ModelRef(provider, MODELS[provider])
    billed_in, billed_out = fake.billed()
    assert sum(x["usage"]["input_tokens"] for x in results) == billed_in
    assert sum(x["usage"]["output_tokens"] for x in results) == billed_out
    for x in results:
        assert x["output"] == "The quick brown fox jumps over the lazy dog."
        assert x["provider"] == provider and x["model"] == MODELS[provider]
        expected = book.cost(ref, Usage.from_dict(x["usage"]))
        assert expected is not None
        assert x["cost_usd"] == pytest.approx(expected, rel=1e-6)
        assert x["stop_reason"] in ("end_turn", "stop")
    report = orjson.loads((tmp_path / "rep.json").read_bytes())
    assert report["tokens"]["input"] == billed_in
    assert fake.count() == 6
    body = fake.records[0].body
    assert body["stream"] is True
    if provider == "openai":
        assert body["stream_options"] == {"include_usage": True}
        assert "max_tokens" in body  # a custom base URL gets the widely read field
    else:
        assert "temperature" not in body


@pytest.mark.parametrize("provider", PROVIDERS)
def test_cache_tokens_are_read_and_priced(provider: str, fake: FakeAPI, tmp_path: Path) -> None:
    fake.reply = "ok"
    fake.cache_read_tokens = 10
    write_jsonl(tmp_path / "jobs.jsonl", prompts(2))
    r = run_cli("run", "jobs.jsonl", "-m", spec(provider), "--quiet", env=fake_env(fake))
    assert r.code == 0, r.output
    for x in read_jsonl(tmp_path / "jobs.results.jsonl"):
        assert x["usage"]["cache_read_tokens"] == 10
        assert x["usage"]["input_tokens"] == fake.input_tokens_of(fake.records[0].body)
        cost = PriceBook().cost(ModelRef(provider, MODELS[provider]), Usage.from_dict(x["usage"]))
        assert x["cost_usd"] == pytest.approx(cost, rel=1e-6)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_ttft_and_latency_are_measured(provider: str, fake: FakeAPI, tmp_path: Path) -> None:
    fake.reply = "one two three four five six seven eight nine ten"
    fake.ttft_s = 0.3
    fake.latency_s = 0.6
    write_jsonl(tmp_path / "jobs.jsonl", prompts(2))
    r = run_cli("run", "jobs.jsonl", "-m", spec(provider), "--quiet", env=fake_env(fake))
    assert r.code == 0, r.output
    for x in read_jsonl(tmp_path / "jobs.results.jsonl"):
        assert 280 <= x["ttft_ms"] < x["latency_ms"]
        assert 580 <= x["latency_ms"] < 5000


@pytest.mark.parametrize("provider", PROVIDERS)
def test_max_tokens_truncation_is_visible(provider: str, fake: FakeAPI, tmp_path: Path) -> None:
    fake.reply = "one two three four five six seven eight nine ten"
    write_jsonl(tmp_path / "jobs.jsonl", prompts(1))
    r = run_cli(
        "run",
        "jobs.jsonl",
        "-m",
        spec(provider),
        "--max-tokens",
        "3",
        "--quiet",
        env=fake_env(fake),
    )
    assert r.code == 0, r.output
    (x,) = read_jsonl(tmp_path / "jobs.results.jsonl")
    assert x["stop_reason"] == ("max_tokens" if provider == "anthropic" else "length")
    assert x["output"] == "one two three "


# (fault, expected error.type, attempts the fake should see with --max-attempts 3)
NOT_RETRIED = [
    ("400", "bad_request", 1),
    ("404", "not_found", 1),
    ("refuse", "content_filter", 1),
]
RETRIED = [
    ("429", "rate_limited"),
    ("500", "server_error"),
    ("529", "overloaded"),
    ("reset", "connection"),
    ("truncate", "connection"),
    ("no_finish", "connection"),  # [DONE] / message_stop without a finish reason
    ("error_event", "overloaded"),  # OpenAI's mid-stream error says server_error
]


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize(("fault", "error_type", "sent"), NOT_RETRIED)
def test_permanent_errors_are_sent_once(
    provider: str, fault: str, error_type: str, sent: int, fake: FakeAPI, tmp_path: Path
) -> None:
    fake.add_rule("Question 0:", fault, fault, fault)
    write_jsonl(tmp_path / "jobs.jsonl", prompts(2))
    r = run_cli(
        "run",
        "jobs.jsonl",
        "-m",
        spec(provider),
        "--max-attempts",
        "3",
        "--quiet",
        env=fake_env(fake),
    )
    assert r.code == 1, r.output
    results = {x["id"]: x for x in read_jsonl(tmp_path / "jobs.results.jsonl")}
    bad = results["job-0"]
    assert bad["status"] == "failed"
    assert bad["error"]["type"] == error_type
    assert bad["attempts"] == sent
    assert results["job-1"]["status"] == "ok"
    assert fake.count() == sent + 1
    if fault.isdigit():
        assert bad["error"]["status"] == int(fault)
        assert "simulated" in bad["error"]["message"]


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize(("fault", "error_type"), RETRIED)
def test_transient_errors_are_classified_and_retried(
    provider: str, fault: str, error_type: str, fake: FakeAPI, tmp_path: Path
) -> None:
    if fault == "error_event" and provider == "openai":
        error_type = "server_error"
    fake.reply = "alpha beta gamma delta epsilon zeta"
    fake.add_rule("Question 0:", fault, fault)
    write_jsonl(tmp_path / "jobs.jsonl", prompts(1))
    r = run_cli(
        "run",
        "jobs.jsonl",
        "-m",
        spec(provider),
        "--report",
        "rep.json",
        "--quiet",
        env=fake_env(fake),
    )
    assert r.code == 0, r.output
    (x,) = read_jsonl(tmp_path / "jobs.results.jsonl")
    assert x["status"] == "ok"
    assert x["output"] == "alpha beta gamma delta epsilon zeta"
    assert x["attempts"] == 3 == fake.count()
    assert x["attempt_errors"] == {error_type: 2}
    report = orjson.loads((tmp_path / "rep.json").read_bytes())
    assert report["errors"] == {error_type: 2}
    assert report["attempts"] == {"total": 3, "retries": 2}


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_hang_past_the_timeout_is_a_timeout(provider: str, fake: FakeAPI, tmp_path: Path) -> None:
    fake.add_rule("Question 0:", "hang")
    write_jsonl(tmp_path / "jobs.jsonl", prompts(1))
    r = run_cli(
        "run",
        "jobs.jsonl",
        "-m",
        spec(provider),
        "--timeout",
        "1",
        "--quiet",
        env=fake_env(fake),
    )
    assert r.code == 0, r.output
    (x,) = read_jsonl(tmp_path / "jobs.results.jsonl")
    assert x["attempts"] == 2 and x["attempt_errors"] == {"timeout": 1}


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_silent_stream_is_cut_by_the_idle_timeout(
    provider: str, fake: FakeAPI, tmp_path: Path
) -> None:
    fake.add_rule("Question 0:", "stall")
    write_jsonl(tmp_path / "jobs.jsonl", prompts(1))
    (tmp_path / "llmbatch.toml").write_text("idle_timeout = 0.5\n")
    r = run_cli("run", "jobs.jsonl", "-m", spec(provider), "--quiet", env=fake_env(fake))
    assert r.code == 0, r.output
    (x,) = read_jsonl(tmp_path / "jobs.results.jsonl")
    assert x["attempts"] == 2 and x["attempt_errors"] == {"timeout": 1}


@pytest.mark.parametrize("provider", PROVIDERS)
def test_missing_key_is_exit_2_naming_the_variable(
    provider: str, fake: FakeAPI, tmp_path: Path
) -> None:
    env = fake_env(fake)
    var = "ANTHROPIC_API_KEY" if provider == "anthropic" else "OPENAI_API_KEY"
    env[var] = ""
    write_jsonl(tmp_path / "jobs.jsonl", prompts(2))
    r = run_cli("run", "jobs.jsonl", "-m", spec(provider), env=env)
    assert r.code == 2
    assert var in r.stderr
    assert fake.count() == 0


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_wrong_key_stops_early_with_one_message_and_never_leaks(
    provider: str, fake: FakeAPI, tmp_path: Path
) -> None:
    fake.expected_key = "the-right-key"
    write_jsonl(tmp_path / "jobs.jsonl", prompts(200))
    r = run_cli(
        "run",
        "jobs.jsonl",
        "-m",
        spec(provider),
        "-c",
        "4",
        "--report",
        "rep.json",
        env=fake_env(fake),
    )
    assert r.code == 1
    assert fake.count() < 20  # not 200: it stopped sending
    assert r.stderr.count("authentication failures") == 1
    report_text = (tmp_path / "rep.json").read_text()
    assert orjson.loads(report_text)["stopped_by"] == "auth"
    everything = r.stdout + r.stderr + report_text + (tmp_path / "jobs.results.jsonl").read_text()
    for canary in (CANARY_ANTHROPIC, CANARY_OPENAI):
        assert canary not in everything
        assert canary[12:] not in everything  # not even the tail of it


def test_openai_compatible_server_with_unknown_model(fake: FakeAPI, tmp_path: Path) -> None:
    (tmp_path / "llmbatch.toml").write_text(
        f'[providers.local]\ntype = "openai"\nbase_url = "{fake.url}/v1"\n'
        'api_key_env = "LOCAL_KEY"\n'
    )
    write_jsonl(tmp_path / "jobs.jsonl", prompts(3))
    env = {"LOCAL_KEY": "local-secret"}
    r = run_cli(
        "run", "jobs.jsonl", "-m", "local:llama-3.1-8b-instruct", "--report", "r.json", env=env
    )
    assert r.code == 0, r.output
    results = read_jsonl(tmp_path / "jobs.results.jsonl")
    assert all(x["status"] == "ok" and x["cost_usd"] is None for x in results)
    assert all(x["provider"] == "local" for x in results)
    assert fake.records[0].headers["authorization"] == "Bearer local-secret"
    assert fake.records[0].body["model"] == "llama-3.1-8b-instruct"
    report = orjson.loads((tmp_path / "r.json").read_bytes())
    assert report["unpriced_models"] == ["local:llama-3.1-8b-instruct"]


def test_openai_server_without_stream_usage_still_counts_tokens(
    fake: FakeAPI, tmp_path: Path
) -> None:
    fake.stream_usage = False
    write_jsonl(tmp_path / "jobs.jsonl", prompts(1))
    r = run_cli("run", "jobs.jsonl", "-m", spec("openai"), "--quiet", env=fake_env(fake))
    assert r.code == 0, r.output
    (x,) = read_jsonl(tmp_path / "jobs.results.jsonl")
    assert x["usage"]["input_tokens"] > 0 and x["usage"]["output_tokens"] > 0


def test_batch_lines_pass_through_to_their_own_provider(fake: FakeAPI, tmp_path: Path) -> None:
    write_jsonl(
        tmp_path / "jobs.jsonl",
        [
            {
                "custom_id": "o1",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {
                    "model": "gpt-4o-mini",
                    "messages": [
                        {"role": "system", "content": "terse"},
                        {"role": "user", "content": "hi"},
                    ],
                    "max_tokens": 77,
                    "top_p": 0.5,
                },
            },
            {
                "custom_id": "a1",
                "params": {
                    "model": "claude-haiku-4-5",
                    "max_tokens": 66,
                    "system": "terse",
                    "metadata": {"user_id": "u1"},
                    "messages": [{"role": "user", "content": "yo"}],
                },
            },
        ],
    )
    r = run_cli("run", "jobs.jsonl", "--quiet", env=fake_env(fake))
    assert r.code == 0, r.output
    bodies = {rec.kind: rec.body for rec in fake.records}
    assert bodies["openai"]["top_p"] == 0.5 and bodies["openai"]["max_tokens"] == 77
    assert bodies["openai"]["messages"][0] == {"role": "system", "content": "terse"}
    assert bodies["anthropic"]["metadata"] == {"user_id": "u1"}
    assert bodies["anthropic"]["max_tokens"] == 66 and bodies["anthropic"]["stream"] is True


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_server_that_ignores_stream_true_still_works(
    provider: str, fake: FakeAPI, tmp_path: Path
) -> None:
    fake.ignore_stream = True
    fake.reply = "whole answer in one piece"
    fake.cache_read_tokens = 2
    write_jsonl(tmp_path / "jobs.jsonl", prompts(2))
    r = run_cli("run", "jobs.jsonl", "-m", spec(provider), "--quiet", env=fake_env(fake))
    assert r.code == 0, r.output
    billed_in, billed_out = fake.billed()
    results = read_jsonl(tmp_path / "jobs.results.jsonl")
    assert all(x["output"] == "whole answer in one piece" for x in results)
    assert sum(x["usage"]["input_tokens"] for x in results) == billed_in
    assert sum(x["usage"]["output_tokens"] for x in results) == billed_out
    assert all(x["usage"]["cache_read_tokens"] == 2 for x in results)
    assert all(x["attempts"] == 1 for x in results)


def test_system_and_temperature_on_the_wire(fake: FakeAPI, tmp_path: Path) -> None:
    write_jsonl(
        tmp_path / "jobs.jsonl",
        [
            {"id": "a", "prompt": "hi"},
            {"id": "b", "prompt": "yo", "system": "own", "temperature": 1},
        ],
    )
    args = ["--system", "Be terse.", "--temperature", "0.2", "--report", "rep.json", "--quiet"]
    r = run_cli("run", "jobs.jsonl", "-m", spec("openai"), *args, env=fake_env(fake))
    assert r.code == 0, r.output
    bodies = {rec.body["messages"][-1]["content"]: rec.body for rec in fake.records}
    assert bodies["hi"]["messages"][0] == {"role": "system", "content": "Be terse."}
    assert bodies["hi"]["temperature"] == 0.2
    assert bodies["yo"]["messages"][0] == {"role": "system", "content": "own"}
    assert bodies["yo"]["temperature"] == 1
    r = run_cli(
        "run", "jobs.jsonl", "-m", spec("anthropic"), "-o", "a.jsonl", *args, env=fake_env(fake)
    )
    assert r.code == 0, r.output
    sent = [rec.body for rec in fake.records if rec.kind == "anthropic"]
    assert {b["system"] for b in sent} == {"Be terse.", "own"}
    assert all("temperature" not in b for b in sent)
    notes = orjson.loads((tmp_path / "rep.json").read_bytes())["notes"]
    assert any("temperature is not sent to Anthropic" in n for n in notes)


def test_tpm_spreads_requests_out(fake: FakeAPI, tmp_path: Path) -> None:
    write_jsonl(tmp_path / "jobs.jsonl", prompts(10))
    r = run_cli(
        "run",
        "jobs.jsonl",
        "-m",
        spec("openai"),
        "--tpm",
        "6000",
        "--max-tokens",
        "20",
        "-c",
        "10",
        "--report",
        "rep.json",
        "--quiet",
        env=fake_env(fake),
    )
    assert r.code == 0, r.output
    arrivals = sorted(rec.at for rec in fake.records)
    # ~100 tokens a second against ~60 reserved a request: not all at once.
    assert arrivals[-1] - arrivals[0] >= 1.0
    limits = orjson.loads((tmp_path / "rep.json").read_bytes())["limits"][spec("openai")]
    assert limits["tpm"] == 6000


def test_the_server_never_sees_more_than_concurrency_at_once(fake: FakeAPI, tmp_path: Path) -> None:
    fake.latency_s = 0.3
    fake.ttft_s = 0.1
    write_jsonl(tmp_path / "jobs.jsonl", prompts(40))
    r = run_cli(
        "run", "jobs.jsonl", "-m", spec("anthropic"), "-c", "8", "--quiet", env=fake_env(fake)
    )
    assert r.code == 0, r.output
    assert fake.peak_in_flight == 8
    assert fake.count() == 40
