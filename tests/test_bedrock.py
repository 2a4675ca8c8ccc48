"""AWS Bedrock Converse, end to end through the CLI against the fake ConverseStream endpoint."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from llmbatch._core.models import ModelRef
from llmbatch._core.pricing import PriceBook
from llmbatch._core.usage import Usage
from tests.conftest import prompts, read_jsonl, run_cli, write_jsonl
from tests.fakeapi import FakeAPI
from tests.fakebedrock import FakeBedrock

MODEL = "anthropic.claude-haiku-4-5-20251001-v1:0"
SPEC = f"bedrock:{MODEL}"
TOKEN = "ABSKQmVkcm9ja0FQSUtleS1DQU5BUlktRE8tTk9ULUxFQUs0NTY3ODkw"  # a Bedrock API key's shape
ACCESS, SECRET = "AKIAFAKECANARY000001", "fake/Secret+Canary0123456789DoNotLeakAbcdE"
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"answer": {"type": "integer"}},
    "required": ["answer"],
    "additionalProperties": False,
}


@pytest.fixture
def bedrock() -> Iterator[FakeBedrock]:
    api = FakeAPI()
    fake = FakeBedrock(api)
    api.start()
    try:
        yield fake
    finally:
        api.stop()


def env(fake: FakeBedrock, **more: str) -> dict[str, str]:
    return {"BEDROCK_BASE_URL": fake.api.url, "AWS_BEARER_TOKEN_BEDROCK": TOKEN, **more}


def sigv4_env(fake: FakeBedrock) -> dict[str, str]:
    return {
        "BEDROCK_BASE_URL": fake.api.url,
        "AWS_ACCESS_KEY_ID": ACCESS,
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_SESSION_TOKEN": "session-token-canary",
        "AWS_REGION": "us-west-2",
    }


def results(tmp_path: Path) -> dict[str, dict[str, Any]]:
    return {x["id"]: x for x in read_jsonl(tmp_path / "jobs.results.jsonl")}


def run(fake: FakeBedrock, *args: str, n: int = 1, **kw: Any) -> Any:
    write_jsonl(Path("jobs.jsonl"), prompts(n))
    return run_cli("run", "jobs.jsonl", "-m", SPEC, *args, env=kw.pop("environ", env(fake)))


# -- answers, usage, cost ------------------------------------------------------------------------


def test_sixty_streamed_jobs_map_to_their_answers_with_usage_and_cost(
    bedrock: FakeBedrock, tmp_path: Path
) -> None:
    bedrock.api.cache_read_tokens = 3
    bedrock.cache_write_tokens = 2
    bedrock.chunk_size = 7  # frames arrive split across writes
    r = run(bedrock, "-c", "8", "--report", "rep.json", "--quiet", n=60)
    assert r.code == 0, r.output
    out = results(tmp_path)
    assert len(out) == 60 and bedrock.api.count() == 60
    book = PriceBook()
    ref = ModelRef("bedrock", MODEL)
    for i in range(60):
        x = out[f"job-{i}"]
        assert x["status"] == "ok" and x["attempts"] == 1
        assert x["output"] == f"Answer to: Question {i}: what is {i} + {i}? (model {MODEL})"
        assert x["provider"] == "bedrock" and x["model"] == MODEL
        assert x["stop_reason"] == "end_turn"
        assert x["usage"]["cache_read_tokens"] == 3 and x["usage"]["cache_write_tokens"] == 2
        cost = book.cost(ref, Usage.from_dict(x["usage"]))
        assert cost is not None and x["cost_usd"] == pytest.approx(cost, rel=1e-9)
    billed_in, billed_out = bedrock.api.billed()
    assert sum(x["usage"]["input_tokens"] for x in out.values()) == billed_in
    assert sum(x["usage"]["output_tokens"] for x in out.values()) == billed_out
    report = orjson.loads((tmp_path / "rep.json").read_bytes())
    assert report["tokens"]["input"] == billed_in
    assert report["unpriced_models"] == []
    assert report["cost_usd"] == pytest.approx(sum(x["cost_usd"] for x in out.values()), abs=1e-6)
    assert report["by_model"][SPEC]["ok"] == 60
    rec = bedrock.api.records[0]
    assert rec.headers["authorization"] == f"Bearer {TOKEN}"
    assert rec.headers["accept"] == "application/vnd.amazon.eventstream"
    assert rec.body["model"] == MODEL  # the model id came back out of the encoded path
    assert rec.body["inferenceConfig"] == {"maxTokens": 1024}
    assert rec.body["messages"] == [
        {"role": "user", "content": [{"text": rec.body["messages"][0]["content"][0]["text"]}]}
    ]
    assert "system" not in rec.body and "outputConfig" not in rec.body


def test_the_model_id_is_percent_encoded_in_the_path(bedrock: FakeBedrock, tmp_path: Path) -> None:
    arn = "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.amazon.nova-lite-v1:0"
    write_jsonl(tmp_path / "jobs.jsonl", [{"id": "a", "prompt": "hi", "model": f"bedrock:{arn}"}])
    r = run_cli("run", "jobs.jsonl", "--quiet", env=env(bedrock))
    assert r.code == 0, r.output
    assert bedrock.paths == [
        "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Ainference-profile%2F"
        "us.amazon.nova-lite-v1%3A0/converse-stream"
    ]
    assert bedrock.api.records[0].body["model"] == arn


def test_system_temperature_and_max_tokens_on_the_wire(
    bedrock: FakeBedrock, tmp_path: Path
) -> None:
    write_jsonl(
        tmp_path / "jobs.jsonl",
        [
            {"id": "a", "prompt": "hi"},
            {
                "id": "b",
                "messages": [
                    {"role": "system", "content": "own"},
                    {"role": "user", "content": [{"type": "text", "text": "yo"}]},
                ],
                "temperature": 1,
            },
        ],
    )
    args = ["--system", "Be terse.", "--temperature", "0.2", "--max-tokens", "77", "--quiet"]
    r = run_cli("run", "jobs.jsonl", "-m", SPEC, *args, env=env(bedrock))
    assert r.code == 0, r.output
    bodies = {r.body["messages"][-1]["content"][0]["text"]: r.body for r in bedrock.api.records}
    assert bodies["hi"]["system"] == [{"text": "Be terse."}]
    assert bodies["hi"]["inferenceConfig"] == {"maxTokens": 77, "temperature": 0.2}
    assert bodies["yo"]["system"] == [{"text": "Be terse."}, {"text": "own"}]
    assert bodies["yo"]["inferenceConfig"]["temperature"] == 1
    assert [m["role"] for m in bodies["yo"]["messages"]] == ["user"]


def test_max_tokens_truncation_is_visible(bedrock: FakeBedrock, tmp_path: Path) -> None:
    bedrock.api.reply = "one two three four five six"
    r = run(bedrock, "--max-tokens", "3", "--quiet")
    assert r.code == 0, r.output
    (x,) = results(tmp_path).values()
    assert x["stop_reason"] == "max_tokens" and x["output"] == "one two three "


# -- retries: only what is transient ----------------------------------------------------------


def test_a_429_with_retry_after_waits_and_then_succeeds(
    bedrock: FakeBedrock, tmp_path: Path
) -> None:
    bedrock.api.retry_after = 1.0
    bedrock.api.add_rule("Question 0:", "429")
    r = run(bedrock, "--report", "rep.json", "--quiet")
    assert r.code == 0, r.output
    (x,) = results(tmp_path).values()
    assert x["status"] == "ok" and x["attempts"] == 2
    assert x["attempt_errors"] == {"rate_limited": 1}
    first, second = bedrock.api.records
    assert first.outcome == "429" and second.outcome == "ok"
    assert second.at - first.at >= 0.95  # it waited what Retry-After said
    report = orjson.loads((tmp_path / "rep.json").read_bytes())
    assert report["errors"] == {"rate_limited": 1}


# (fault, error.type, HTTP status in the result)
NOT_RETRIED = [
    ("400", "bad_request", 400),
    ("404", "not_found", 404),
    ("refuse", "content_filter", None),
    ("guardrail", "content_filter", None),
]


@pytest.mark.parametrize(("fault", "error_type", "status"), NOT_RETRIED)
def test_permanent_errors_are_sent_once(
    fault: str, error_type: str, status: int | None, bedrock: FakeBedrock, tmp_path: Path
) -> None:
    bedrock.api.add_rule("Question 0:", fault, fault, fault)
    r = run(bedrock, "--max-attempts", "3", "--quiet", n=2)
    assert r.code == 1, r.output
    out = results(tmp_path)
    bad = out["job-0"]
    assert bad["status"] == "failed" and bad["attempts"] == 1
    assert bad["error"]["type"] == error_type and bad["error"]["status"] == status
    assert out["job-1"]["status"] == "ok"
    assert bedrock.api.count() == 2  # job-0 once, job-1 once
    if fault == "400":
        assert "ValidationException" in bad["error"]["message"]


# (fault, error.type)
RETRIED = [
    ("429", "rate_limited"),
    ("model_not_ready", "server_error"),
    ("503", "server_error"),
    ("500", "server_error"),
    ("408", "timeout"),
    ("reset", "connection"),
    ("truncate", "connection"),  # a clean end before messageStop
    ("no_finish", "connection"),  # contentBlockStop, metadata, no messageStop
    ("cut_frame", "connection"),  # the body ends inside a frame
    ("bad_crc", "connection"),  # a frame whose CRC does not match
    ("error_event", "server_error"),  # a modelStreamErrorException frame
    ("stream_throttle", "rate_limited"),  # a throttlingException frame
]


@pytest.mark.parametrize(("fault", "error_type"), RETRIED)
def test_transient_errors_are_classified_and_retried_never_written_ok(
    fault: str, error_type: str, bedrock: FakeBedrock, tmp_path: Path
) -> None:
    bedrock.api.reply = "alpha beta gamma delta epsilon zeta"
    bedrock.api.add_rule("Question 0:", fault, fault)
    r = run(bedrock, "--report", "rep.json", "--quiet")
    assert r.code == 0, r.output
    lines = read_jsonl(tmp_path / "jobs.results.jsonl")
    assert len(lines) == 1  # one line: the complete answer, never a partial one first
    (x,) = lines
    assert x["status"] == "ok" and x["output"] == "alpha beta gamma delta epsilon zeta"
    assert x["attempts"] == 3 == bedrock.api.count()
    assert x["attempt_errors"] == {error_type: 2}
    assert x["stop_reason"] == "end_turn"


def test_a_stream_without_metadata_is_ok_with_estimated_usage_said_once(
    bedrock: FakeBedrock, tmp_path: Path
) -> None:
    bedrock.api.add_rule("Question", "no_metadata", "no_metadata")
    r = run(bedrock, "--report", "rep.json", "--quiet", n=2)
    assert r.code == 0, r.output
    assert all(x["status"] == "ok" and x["attempts"] == 1 for x in results(tmp_path).values())
    assert all(x["usage"]["output_tokens"] > 0 for x in results(tmp_path).values())
    notes = orjson.loads((tmp_path / "rep.json").read_bytes())["notes"]
    assert sum("without its metadata event" in n for n in notes) == 1


# -- structured output ---------------------------------------------------------------------------


def test_schema_goes_out_as_output_config_and_comes_back_parsed(
    bedrock: FakeBedrock, tmp_path: Path
) -> None:
    bedrock.api.reply = '{"answer": 4}'
    (tmp_path / "schema.json").write_bytes(orjson.dumps(SCHEMA))
    r = run(bedrock, "--schema", "schema.json", "--quiet", n=3)
    assert r.code == 0, r.output
    assert all(x["parsed"] == {"answer": 4} for x in results(tmp_path).values())
    fmt = bedrock.api.records[0].body["outputConfig"]["textFormat"]
    assert fmt["type"] == "json_schema"
    assert orjson.loads(fmt["structure"]["jsonSchema"]["schema"]) == SCHEMA  # a JSON string
    assert "system" not in bedrock.api.records[0].body


def test_a_model_without_output_config_gets_the_schema_in_the_system_prompt(
    bedrock: FakeBedrock, tmp_path: Path
) -> None:
    bedrock.api.reply = '{"answer": 4}'
    bedrock.rejects_output_config = True
    (tmp_path / "schema.json").write_bytes(orjson.dumps(SCHEMA))
    r = run(bedrock, "--schema", "schema.json", "-c", "1", "--report", "rep.json", "--quiet", n=3)
    assert r.code == 0, r.output
    assert all(x["parsed"] == {"answer": 4} for x in results(tmp_path).values())
    assert bedrock.api.count("structured_rejected") == 1
    later = bedrock.api.records[1:]
    assert len(later) == 3 and all("outputConfig" not in rec.body for rec in later)
    assert all('"answer"' in rec.body["system"][-1]["text"] for rec in later)
    notes = orjson.loads((tmp_path / "rep.json").read_bytes())["notes"]
    assert any("as outputConfig (HTTP 400" in n for n in notes)


# -- keys, credentials, regions ------------------------------------------------------------------


def test_sigv4_credentials_sign_every_request(bedrock: FakeBedrock, tmp_path: Path) -> None:
    bedrock.credentials = (ACCESS, SECRET)  # the fake recomputes each signature (botocore)
    r = run(bedrock, "-c", "4", "--quiet", n=8, environ=sigv4_env(bedrock))
    assert r.code == 0, r.output
    assert all(x["status"] == "ok" for x in results(tmp_path).values())
    assert bedrock.bad_signatures == 0 and bedrock.api.count() == 8
    rec = bedrock.api.records[0]
    assert rec.headers["authorization"].startswith(f"AWS4-HMAC-SHA256 Credential={ACCESS}/")
    assert "/us-west-2/bedrock/aws4_request" in rec.headers["authorization"]
    assert rec.headers["x-amz-security-token"] == "session-token-canary"


def test_a_wrong_secret_is_an_auth_stop_that_never_leaks(
    bedrock: FakeBedrock, tmp_path: Path
) -> None:
    bedrock.credentials = (ACCESS, "the-right-secret")
    r = run(bedrock, "-c", "2", "--report", "rep.json", n=50, environ=sigv4_env(bedrock))
    assert r.code == 1
    assert bedrock.bad_signatures == bedrock.api.count() < 10
    report_text = (tmp_path / "rep.json").read_text()
    assert orjson.loads(report_text)["stopped_by"] == "auth"
    everything = r.output + report_text + (tmp_path / "jobs.results.jsonl").read_text()
    assert "InvalidSignatureException" in everything and "(token [redacted])" in everything
    assert SECRET not in everything and "session-token-canary" not in everything


def test_a_wrong_api_key_stops_early_and_is_never_echoed(
    bedrock: FakeBedrock, tmp_path: Path
) -> None:
    bedrock.api.expected_key = "the-right-key"  # the fake echoes the key it got
    r = run(bedrock, "-c", "2", "--report", "rep.json", n=50)
    assert r.code == 1
    assert bedrock.api.count() < 10
    everything = (
        r.output
        + (tmp_path / "rep.json").read_text()
        + (tmp_path / "jobs.results.jsonl").read_text()
    )
    assert "AccessDeniedException" in everything
    assert TOKEN not in everything and TOKEN[12:] not in everything


def test_no_key_and_no_credentials_is_exit_2_naming_both_ways(
    bedrock: FakeBedrock, tmp_path: Path
) -> None:
    r = run(bedrock, n=2, environ={"BEDROCK_BASE_URL": bedrock.api.url})
    assert r.code == 2
    assert "AWS_BEARER_TOKEN_BEDROCK" in r.stderr and "credentials" in r.stderr
    assert bedrock.api.count() == 0


def test_no_region_is_exit_2(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "jobs.jsonl", prompts(1))
    r = run_cli("run", "jobs.jsonl", "-m", SPEC, env={"AWS_BEARER_TOKEN_BEDROCK": TOKEN})
    assert r.code == 2
    assert "AWS_REGION" in r.stderr


def test_region_and_a_custom_provider_from_the_config_file(
    bedrock: FakeBedrock, tmp_path: Path
) -> None:
    (tmp_path / "llmbatch.toml").write_text(
        f'[providers.bedrock-eu]\ntype = "bedrock"\nregion = "eu-west-1"\n'
        f'base_url = "{bedrock.api.url}"\n'
    )
    write_jsonl(tmp_path / "jobs.jsonl", prompts(2))
    r = run_cli(
        "run",
        "jobs.jsonl",
        "-m",
        "bedrock-eu:amazon.nova-lite-v1:0",
        "--quiet",
        env={"AWS_BEARER_TOKEN_BEDROCK": TOKEN},
    )
    assert r.code == 0, r.output
    out = results(tmp_path).values()
    assert all(x["provider"] == "bedrock-eu" for x in out)
    assert all(x["cost_usd"] is not None and x["cost_usd"] > 0 for x in out)  # AWS's price
    (tmp_path / "llmbatch.toml").write_text('[providers.x]\ntype = "bedrock"\nregion = "mars"\n')
    r = run_cli("run", "jobs.jsonl", "-m", "x:amazon.nova-lite-v1:0", env={})
    assert r.code == 2 and "region must be an AWS region name" in r.stderr


# -- dry run, estimate, models ------------------------------------------------------------------


def test_dry_run_shows_the_converse_request_with_the_key_redacted(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "jobs.jsonl", prompts(1))
    r = run_cli(
        "run",
        "jobs.jsonl",
        "-m",
        SPEC,
        "--dry-run",
        env={"AWS_BEARER_TOKEN_BEDROCK": TOKEN, "AWS_REGION": "eu-central-1"},
    )
    assert r.code == 0, r.output
    (line,) = [orjson.loads(s) for s in r.stdout.splitlines() if s.strip()]
    assert line["url"] == (
        "https://bedrock-runtime.eu-central-1.amazonaws.com/model/"
        "anthropic.claude-haiku-4-5-20251001-v1%3A0/converse-stream"
    )
    assert line["headers"]["authorization"] == "Bearer [redacted: $AWS_BEARER_TOKEN_BEDROCK]"
    assert line["body"]["messages"] == [
        {"role": "user", "content": [{"text": "Question 0: what is 0 + 0?"}]}
    ]
    assert TOKEN not in r.output
    r = run_cli("run", "jobs.jsonl", "-m", SPEC, "--dry-run", env={"AWS_REGION": "us-east-1"})
    assert r.code == 0, r.output
    assert "SigV4" in orjson.loads(r.stdout.splitlines()[0])["headers"]["authorization"]


def test_estimate_prices_bedrock_models_and_says_which_it_cannot(tmp_path: Path) -> None:
    write_jsonl(
        tmp_path / "jobs.jsonl",
        [
            {"id": "a", "prompt": "hi", "model": SPEC},
            {"id": "b", "prompt": "hi", "model": "bedrock:us.amazon.nova-pro-v1:0"},
            {"id": "c", "prompt": "hi", "model": "bedrock:acme.unknown-model-v1:0"},
        ],
    )
    r = run_cli("estimate", "jobs.jsonl", "--json", env={"AWS_REGION": "us-east-1"})
    assert r.code == 0, r.output
    est = orjson.loads(r.stdout)
    assert est["unpriced_models"] == ["bedrock:acme.unknown-model-v1:0"]
    assert est["expected_usd"] > 0


def test_models_lists_bedrock_prices(tmp_path: Path) -> None:
    r = run_cli("models", "--provider", "bedrock", "--json")
    assert r.code == 0, r.output
    rows = orjson.loads(r.stdout)
    ids = {row["model"] for row in rows}
    assert "amazon.nova-lite-v1:0" in ids
    assert all(row["provider"] == "bedrock" for row in rows)


def test_an_unknown_model_runs_unpriced_and_the_report_says_so(
    bedrock: FakeBedrock, tmp_path: Path
) -> None:
    write_jsonl(tmp_path / "jobs.jsonl", prompts(2))
    r = run_cli(
        "run",
        "jobs.jsonl",
        "-m",
        "bedrock:acme.unknown-model-v1:0",
        "--report",
        "rep.json",
        "--quiet",
        env=env(bedrock),
    )
    assert r.code == 0, r.output
    assert all(x["cost_usd"] is None for x in results(tmp_path).values())
    report = orjson.loads((tmp_path / "rep.json").read_bytes())
    assert report["unpriced_models"] == ["bedrock:acme.unknown-model-v1:0"]


def test_sigv4_without_a_region_is_exit_2(bedrock: FakeBedrock, tmp_path: Path) -> None:
    environ = sigv4_env(bedrock)
    del environ["AWS_REGION"]  # BEDROCK_BASE_URL gives the endpoint, but nothing to sign for
    r = run(bedrock, environ=environ)
    assert r.code == 2 and "needs a region" in r.stderr
    assert bedrock.api.count() == 0


def test_without_the_aws_extra_the_message_names_it(
    bedrock: FakeBedrock, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    from llmbatch._config.settings import ProviderSettings
    from llmbatch._core.exceptions import UsageError
    from llmbatch.providers.factory import check_credentials

    for name, value in sigv4_env(bedrock).items():
        monkeypatch.setenv(name, value)
    settings = ProviderSettings("bedrock", "bedrock")
    check_credentials(settings)  # credentials, a region, botocore: fine
    monkeypatch.setitem(sys.modules, "botocore.session", None)  # as if botocore were absent
    with pytest.raises(UsageError) as info:
        check_credentials(settings)
    assert "AWS_BEARER_TOKEN_BEDROCK" in str(info.value) and "llmbatch[aws]" in str(info.value)
    monkeypatch.setenv("AWS_BEARER_TOKEN_BEDROCK", TOKEN)
    check_credentials(settings)  # a Bedrock API key needs no botocore


def test_a_hang_past_the_timeout_is_a_timeout(bedrock: FakeBedrock, tmp_path: Path) -> None:
    """The attempt's deadline holds for Bedrock too (aiohttp's total timeout per attempt)."""
    bedrock.api.add_rule("Question 0:", "hang")
    r = run(bedrock, "--timeout", "1", "--quiet")
    assert r.code == 0, r.output
    (x,) = results(tmp_path).values()
    assert x["attempts"] == 2 and x["attempt_errors"] == {"timeout": 1}
