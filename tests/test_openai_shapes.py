"""Azure OpenAI (v1 and deployment paths) and the Responses API, end to end through the CLI
against the fake: answers, usage and cost, retries, permanent errors, cut streams, schemas."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest

from llmbatch._core.models import ModelRef
from llmbatch._core.pricing import PriceBook
from llmbatch._core.usage import Usage
from tests.conftest import CANARY_OPENAI, prompts, read_jsonl, run_cli, write_jsonl
from tests.fakeapi import FakeAPI

SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "integer"}},
    "required": ["answer"],
    "additionalProperties": False,
}


@dataclass(frozen=True)
class Shape:
    """One way of reaching an OpenAI-shaped endpoint of the fake."""

    name: str
    model: str  # the spec given to -m
    toml: str  # llmbatch.toml
    args: tuple[str, ...]  # extra run flags
    kind: str  # the fake's Record.kind
    priced_as: ModelRef  # what its answers cost

    def env(self, fake: FakeAPI) -> dict[str, str]:
        return {
            "OPENAI_BASE_URL": fake.url + "/v1",
            "OPENAI_API_KEY": CANARY_OPENAI,
            "AZURE_OPENAI_ENDPOINT": fake.url,
            "AZURE_OPENAI_API_KEY": CANARY_OPENAI,
        }

    def run(self, fake: FakeAPI, tmp_path: Path, *more: str) -> tuple[int, str]:
        (tmp_path / "llmbatch.toml").write_text(self.toml)
        r = run_cli("run", "jobs.jsonl", "-m", self.model, *self.args, *more, env=self.env(fake))
        return r.code, r.output


SHAPES = [
    Shape("azure-v1", "azure:gpt-4o-mini", "", (), "azure", ModelRef("azure", "gpt-4o-mini")),
    Shape(
        "azure-deployment",
        "azure:prod-chat",
        '[providers.azure]\nazure_path = "deployment"\nprice_as = "gpt-4o-mini"\n',
        (),
        "azure",
        ModelRef("azure", "gpt-4o-mini"),
    ),
    Shape(
        "responses",
        "openai:gpt-4o-mini",
        "",
        ("--api", "responses"),
        "responses",
        ModelRef("openai", "gpt-4o-mini"),
    ),
    Shape(
        "azure-responses",
        "myaz:gpt-4o-mini",
        '[providers.myaz]\nkind = "azure"\napi = "responses"\n',
        (),
        "responses",
        ModelRef("azure", "gpt-4o-mini"),
    ),
]
IDS = [s.name for s in SHAPES]


@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_sixty_streamed_jobs_map_to_their_answers_with_usage_and_cost(
    shape: Shape, fake: FakeAPI, tmp_path: Path
) -> None:
    fake.cache_read_tokens = 4
    write_jsonl(tmp_path / "jobs.jsonl", prompts(60))
    code, out = shape.run(fake, tmp_path, "--report", "rep.json", "-c", "8")
    assert code == 0, out
    results = {x["id"]: x for x in read_jsonl(tmp_path / "jobs.results.jsonl")}
    assert len(results) == 60 and fake.count() == 60
    assert {r.kind for r in fake.records} == {shape.kind}
    assert all(r.body["stream"] is True for r in fake.records)
    book = PriceBook()
    for i in range(60):
        x = results[f"job-{i}"]
        assert x["status"] == "ok"
        assert x["output"].startswith(f"Answer to: Question {i}: what is {i} + {i}?")
        assert x["usage"]["cache_read_tokens"] == 4
        assert x["usage"]["output_tokens"] == len(x["output"].split(" "))
        expected = book.cost(shape.priced_as, Usage.from_dict(x["usage"]))
        assert expected is not None and x["cost_usd"] == pytest.approx(expected, rel=1e-6)
    billed_in, billed_out = fake.billed()
    report = orjson.loads((tmp_path / "rep.json").read_bytes())
    assert report["tokens"]["input"] == billed_in and report["tokens"]["output"] == billed_out
    assert report["cost_usd"] == pytest.approx(sum(x["cost_usd"] for x in results.values()))
    sent = fake.records[0]
    if shape.kind == "azure" or shape.name == "azure-responses":
        assert sent.headers["api-key"] == CANARY_OPENAI and "authorization" not in sent.headers
    if shape.name == "azure-deployment":
        assert sent.path.startswith("/openai/deployments/prod-chat/chat/completions?api-version=")
    if shape.name == "azure-v1":
        assert sent.path == "/openai/v1/chat/completions" and sent.body["model"] == "gpt-4o-mini"
    if shape.kind == "responses":
        assert sent.body["store"] is False and "max_output_tokens" in sent.body
        assert sent.body["input"][0]["role"] == "user" and "messages" not in sent.body
    assert CANARY_OPENAI not in out


@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_a_429_with_retry_after_waits_and_succeeds(
    shape: Shape, fake: FakeAPI, tmp_path: Path
) -> None:
    fake.retry_after = 0.2
    fake.add_rule("Question 0:", "429")
    write_jsonl(tmp_path / "jobs.jsonl", prompts(1))
    code, out = shape.run(fake, tmp_path, "--quiet", "--log-json", "events.jsonl")
    assert code == 0, out
    (x,) = read_jsonl(tmp_path / "jobs.results.jsonl")
    assert x["status"] == "ok" and x["attempts"] == 2
    assert x["attempt_errors"] == {"rate_limited": 1}
    assert fake.outcomes() == {"429": 1, "ok": 1}
    limited = [
        e
        for e in read_jsonl(tmp_path / "events.jsonl")
        if e["event"] == "attempt" and e["outcome"] == "rate_limited"
    ]
    assert len(limited) == 1 and limited[0]["http_status"] == 429
    assert limited[0]["retry_after_s"] == 0.2 and limited[0]["backoff_s"] >= 0.2  # it waited


@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_a_400_is_sent_once(shape: Shape, fake: FakeAPI, tmp_path: Path) -> None:
    fake.add_rule("Question 0:", "400", "400", "400")
    write_jsonl(tmp_path / "jobs.jsonl", prompts(2))
    code, out = shape.run(fake, tmp_path, "--quiet", "--max-attempts", "3")
    assert code == 1, out
    results = {x["id"]: x for x in read_jsonl(tmp_path / "jobs.results.jsonl")}
    bad = results["job-0"]
    assert bad["status"] == "failed" and bad["attempts"] == 1
    assert bad["error"]["type"] == "bad_request" and bad["error"]["status"] == 400
    assert results["job-1"]["status"] == "ok"
    assert fake.count() == 2


@pytest.mark.parametrize("fault", ["truncate", "no_finish", "reset"])
@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_a_stream_cut_before_its_finish_is_retried_never_written_ok(
    shape: Shape, fault: str, fake: FakeAPI, tmp_path: Path
) -> None:
    fake.reply = "alpha beta gamma delta epsilon zeta"
    fake.add_rule("Question 0:", fault, fault)
    write_jsonl(tmp_path / "jobs.jsonl", prompts(1))
    code, out = shape.run(fake, tmp_path, "--quiet")
    assert code == 0, out
    (x,) = read_jsonl(tmp_path / "jobs.results.jsonl")
    assert x["status"] == "ok" and x["output"] == "alpha beta gamma delta epsilon zeta"
    assert x["attempts"] == 3 == fake.count()
    assert x["attempt_errors"] == {"connection": 2}


@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_a_cut_stream_that_never_completes_fails_not_ok(
    shape: Shape, fake: FakeAPI, tmp_path: Path
) -> None:
    fake.reply = "alpha beta gamma delta"
    fake.add_rule("Question 0:", "no_finish", "no_finish")
    write_jsonl(tmp_path / "jobs.jsonl", prompts(1))
    code, _ = shape.run(fake, tmp_path, "--quiet", "--max-attempts", "2")
    assert code == 1
    (x,) = read_jsonl(tmp_path / "jobs.results.jsonl")
    assert x["status"] == "failed" and x["error"]["type"] == "connection"
    assert x.get("output") in (None, "")


@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_schema_gives_parsed_output_natively(shape: Shape, fake: FakeAPI, tmp_path: Path) -> None:
    fake.reply = '{"answer": 42}'
    (tmp_path / "schema.json").write_bytes(orjson.dumps(SCHEMA))
    write_jsonl(tmp_path / "jobs.jsonl", prompts(3))
    code, out = shape.run(fake, tmp_path, "--quiet", "--schema", "schema.json")
    assert code == 0, out
    assert [x["parsed"] for x in read_jsonl(tmp_path / "jobs.results.jsonl")] == [
        {"answer": 42}
    ] * 3
    body = fake.records[0].body
    if shape.kind == "responses":
        fmt = body["text"]["format"]
        assert fmt["type"] == "json_schema" and fmt["schema"] == SCHEMA and fmt["strict"]
        assert "response_format" not in body
    else:
        assert body["response_format"]["type"] == "json_schema"
        assert body["response_format"]["json_schema"]["schema"] == SCHEMA


def test_azure_entra_token_goes_as_a_bearer(fake: FakeAPI, tmp_path: Path) -> None:
    write_jsonl(tmp_path / "jobs.jsonl", prompts(1))
    env = {"AZURE_OPENAI_ENDPOINT": fake.url, "AZURE_OPENAI_AD_TOKEN": "entra-token-123"}
    r = run_cli("run", "jobs.jsonl", "-m", "azure:gpt-4o-mini", "--quiet", env=env)
    assert r.code == 0, r.output
    sent = fake.records[0].headers
    assert sent["authorization"] == "Bearer entra-token-123" and "api-key" not in sent


def test_azure_without_endpoint_or_key_says_which_and_sends_nothing(
    fake: FakeAPI, tmp_path: Path
) -> None:
    write_jsonl(tmp_path / "jobs.jsonl", prompts(1))
    r = run_cli("run", "jobs.jsonl", "-m", "azure:x", env={"AZURE_OPENAI_API_KEY": "k"})
    assert r.code == 2 and "AZURE_OPENAI_ENDPOINT is not set" in r.output
    r = run_cli("run", "jobs.jsonl", "-m", "azure:x", env={"AZURE_OPENAI_ENDPOINT": fake.url})
    assert r.code == 2 and "AZURE_OPENAI_API_KEY is not set" in r.output
    assert fake.count() == 0


def test_azure_content_filter_on_the_prompt_is_a_content_filter(
    fake: FakeAPI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from llmbatch._config.settings import RunConfig
    from llmbatch._core.exceptions import ContentFiltered
    from llmbatch.providers.azure import AzureProvider

    monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", fake.url)
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", CANARY_OPENAI)
    cfg = RunConfig(jobs=tmp_path / "jobs.jsonl")
    provider = AzureProvider(cfg.providers["azure"], cfg)
    body = orjson.dumps({"error": {"code": "content_filter", "message": "filtered"}})
    err = provider._http_error(400, body, {}, None, "req")
    assert isinstance(err, ContentFiltered) and not err.retryable


def test_dry_run_shows_the_azure_url_and_the_responses_body(fake: FakeAPI, tmp_path: Path) -> None:
    write_jsonl(tmp_path / "jobs.jsonl", prompts(1))
    (tmp_path / "llmbatch.toml").write_text('[providers.azure]\nazure_path = "deployment"\n')
    env = {"AZURE_OPENAI_ENDPOINT": "https://res.openai.azure.com", "AZURE_OPENAI_API_KEY": "k1"}
    r = run_cli("run", "jobs.jsonl", "-m", "azure:dep", "--dry-run", "--api", "responses", env=env)
    assert r.code == 0, r.output
    line = orjson.loads(r.stdout.splitlines()[0])
    assert line["url"] == "https://res.openai.azure.com/openai/responses?api-version=2024-10-21"
    assert line["headers"]["api-key"].startswith("[redacted")
    assert line["body"]["input"][0]["content"].startswith("Question 0")
    assert "k1" not in r.output and fake.count() == 0


@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_a_wrong_key_is_never_echoed(shape: Shape, fake: FakeAPI, tmp_path: Path) -> None:
    fake.expected_key = "the-right-key"  # the fake's 401 quotes the key it was given
    write_jsonl(tmp_path / "jobs.jsonl", prompts(4))
    code, out = shape.run(fake, tmp_path, "--report", "rep.json", "--log-json", "ev.jsonl")
    assert code == 1, out
    results = read_jsonl(tmp_path / "jobs.results.jsonl")
    assert all(x["status"] == "failed" and x["error"]["type"] == "auth" for x in results)
    for text in (
        out,
        (tmp_path / "jobs.results.jsonl").read_text(),
        (tmp_path / "rep.json").read_text(),
        (tmp_path / "ev.jsonl").read_text(),
    ):
        assert CANARY_OPENAI not in text
