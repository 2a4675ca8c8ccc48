"""The Gemini provider on the fake: answers, usage and cost, retries, errors, structured output,
``--dry-run``, ``models`` and ``estimate``; keys only ever in the ``x-goog-api-key`` header."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from llmbatch._config.settings import ProviderSettings, RunConfig
from llmbatch._core.exceptions import (
    AuthError,
    BadRequest,
    ConnectionFailed,
    ContentFiltered,
    NotFound,
    RateLimited,
    ServerError,
)
from llmbatch._core.jobs import Request
from llmbatch._core.usage import Usage
from llmbatch.providers.gemini import GeminiProvider, http_error, usage_of
from llmbatch.providers.gemini_wire import build_gemini_body
from tests.conftest import prompts, read_jsonl, run_cli, write_jsonl
from tests.fakeapi import NO_FINISH, REFUSE, RESET, TRUNCATE, FakeAPI
from tests.fakegemini import ERROR_EVENT, MALFORMED, FakeGemini

CANARY_GEMINI = "AIzaSy-canary-DO-NOT-LEAK-0123456789abcdef"
MODEL = "gemini:gemini-2.5-flash"
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"answer": {"type": "integer"}, "why": {"type": "string"}},
    "required": ["answer", "why"],
}


@pytest.fixture
def gem() -> Iterator[FakeGemini]:
    api = FakeAPI(retry_after=0.01)
    g = FakeGemini(api)
    api.start()
    try:
        yield g
    finally:
        api.stop()


def env(g: FakeGemini, var: str = "GEMINI_API_KEY") -> dict[str, str]:
    return {"GEMINI_BASE_URL": g.api.url, var: CANARY_GEMINI}


def run(g: FakeGemini, tmp_path: Path, n: int, *args: str, var: str = "GEMINI_API_KEY") -> Any:
    write_jsonl(tmp_path / "jobs.jsonl", prompts(n))
    r = run_cli(
        "run", "jobs.jsonl", "-m", MODEL, "-o", "out.jsonl", "--report", "report.json",
        "--quiet", *args, env=env(g, var),
    )  # fmt: skip
    assert CANARY_GEMINI not in r.output
    return r


def by_id(tmp_path: Path) -> dict[str, dict[str, Any]]:
    return {x["id"]: x for x in read_jsonl(tmp_path / "out.jsonl")}


# -- the judged behaviours ------------------------------------------------------------------


@pytest.mark.parametrize("var", ["GEMINI_API_KEY", "GOOGLE_API_KEY"])
def test_sixty_streamed_jobs_map_to_their_answers_with_usage_and_cost(
    gem: FakeGemini, tmp_path: Path, var: str
) -> None:
    gem.api.cache_read_tokens = 5
    gem.thoughts_tokens = 3
    r = run(gem, tmp_path, 60, "-c", "8", var=var)
    assert r.code == 0, r.output
    lines = by_id(tmp_path)
    assert len(lines) == 60 and len(gem.api.records) == 60
    sent = {rec.body["contents"][0]["parts"][0]["text"]: rec for rec in gem.api.records}
    price_in, price_out, price_cached = 0.30, 2.50, 0.03  # genai-prices google:gemini-2.5-flash
    total = 0.0
    for i in range(60):
        x = lines[f"job-{i}"]
        question = f"Question {i}: what is {i} + {i}?"
        assert x["status"] == "ok" and x["provider"] == "gemini"
        assert x["output"] == f"Answer to: {question} (model gemini-2.5-flash)"
        assert x["stop_reason"] == "stop" and x["ttft_ms"] is not None
        rec = sent[question]
        u = x["usage"]
        # Prompt tokens include the cached ones; thinking tokens are billed as output.
        assert u["input_tokens"] == rec.input_tokens and u["output_tokens"] == rec.output_tokens
        assert u["cache_read_tokens"] == 5 and u["output_tokens"] == len(x["output"].split()) + 3
        expected = ((u["input_tokens"] - 5) * price_in + 5 * price_cached) / 1e6 + (
            u["output_tokens"] * price_out / 1e6
        )
        assert x["cost_usd"] == pytest.approx(expected, rel=1e-6)
        total += x["cost_usd"]
        assert rec.headers["x-goog-api-key"] == CANARY_GEMINI
    assert not gem.key_in_query  # the key never goes in a URL
    report = orjson.loads((tmp_path / "report.json").read_bytes())
    row = report["by_model"][MODEL]
    assert row["jobs"] == 60 and row["ok"] == 60 and row["cost_usd"] == pytest.approx(total, 1e-3)
    assert report["unpriced_models"] == []
    assert CANARY_GEMINI not in (tmp_path / "out.jsonl").read_text()
    assert CANARY_GEMINI not in (tmp_path / "report.json").read_text()


@pytest.mark.parametrize("header", [True, False])
def test_a_429_waits_for_its_retry_delay_and_succeeds(
    gem: FakeGemini, tmp_path: Path, header: bool
) -> None:
    gem.api.retry_after = 1.0
    gem.retry_header = header  # without the header, RetryInfo.retryDelay says when
    gem.api.add_rule("Question 0:", "429")
    r = run(gem, tmp_path, 1)
    assert r.code == 0, r.output
    first, second = gem.api.records
    assert (first.outcome, second.outcome) == ("429", "ok")
    assert second.at - first.at >= 0.95
    x = by_id(tmp_path)["job-0"]
    assert x["status"] == "ok" and x["attempts"] == 2
    assert x["attempt_errors"] == {"rate_limited": 1}


@pytest.mark.parametrize(("fault", "kind"), [("400", "bad_request"), ("404", "not_found")])
def test_permanent_errors_are_sent_once(
    gem: FakeGemini, tmp_path: Path, fault: str, kind: str
) -> None:
    gem.api.add_rule("Question 1:", fault, fault, fault)
    r = run(gem, tmp_path, 3)
    assert r.code == 1
    x = by_id(tmp_path)["job-1"]
    assert x["status"] == "failed" and x["error"]["type"] == kind and x["attempts"] == 1
    assert sum(1 for rec in gem.api.records if "Question 1:" in str(rec.body)) == 1


@pytest.mark.parametrize(
    "fault", [TRUNCATE, NO_FINISH, MALFORMED, RESET, ERROR_EVENT, "500", "503"]
)
def test_a_broken_answer_is_retried_never_written_ok(
    gem: FakeGemini, tmp_path: Path, fault: str
) -> None:
    gem.api.add_rule("Question 0:", fault, fault)
    r = run(gem, tmp_path, 2)
    assert r.code == 0, r.output
    x = by_id(tmp_path)["job-0"]
    assert x["status"] == "ok" and x["attempts"] == 3
    assert x["output"] == "Answer to: Question 0: what is 0 + 0? (model gemini-2.5-flash)"


def test_a_stream_cut_every_time_fails_and_is_never_ok(gem: FakeGemini, tmp_path: Path) -> None:
    gem.api.add_rule("Question 0:", *[TRUNCATE] * 10)
    r = run(gem, tmp_path, 1, "--max-attempts", "3")
    assert r.code == 1
    x = by_id(tmp_path)["job-0"]
    assert x["status"] == "failed" and x["error"]["type"] == "connection"
    assert x["output"] is None and x["attempts"] == 3
    assert "finishReason" in x["error"]["message"]


def test_safety_is_a_content_filter(gem: FakeGemini, tmp_path: Path) -> None:
    gem.api.add_rule("Question 0:", REFUSE)
    r = run(gem, tmp_path, 1)
    assert r.code == 1
    x = by_id(tmp_path)["job-0"]
    assert x["status"] == "failed" and x["error"]["type"] == "content_filter"
    assert "SAFETY" in x["error"]["message"] and len(gem.api.records) == 1


def test_max_tokens_is_visible(gem: FakeGemini, tmp_path: Path) -> None:
    r = run(gem, tmp_path, 1, "--max-tokens", "3")
    x = by_id(tmp_path)["job-0"]
    assert r.code == 0, r.output
    assert gem.api.records[0].body["generationConfig"]["maxOutputTokens"] == 3
    assert x["stop_reason"] == "max_tokens" and x["output"] == "Answer to: Question "


def test_schema_gives_parsed_output_natively(gem: FakeGemini, tmp_path: Path) -> None:
    (tmp_path / "schema.json").write_bytes(orjson.dumps(SCHEMA))
    r = run(gem, tmp_path, 3, "--schema", "schema.json", "--system", "Be exact.")
    assert r.code == 0, r.output
    for x in by_id(tmp_path).values():
        assert x["status"] == "ok" and x["parsed"] == {"answer": 1, "why": "x"}
    body = gem.api.records[0].body
    config = body["generationConfig"]
    assert config["responseMimeType"] == "application/json"
    assert config["responseJsonSchema"] == SCHEMA
    assert body["systemInstruction"] == {"parts": [{"text": "Be exact."}]}
    assert len(gem.api.records) == 3  # no repair turn: the answers were valid


def test_a_server_that_rejects_response_json_schema_gets_response_schema_once(
    gem: FakeGemini, tmp_path: Path
) -> None:
    gem.rejects_json_schema = True
    (tmp_path / "schema.json").write_bytes(orjson.dumps(SCHEMA))
    r = run(gem, tmp_path, 4, "--schema", "schema.json", "-c", "1")
    assert r.code == 0, r.output
    assert all(x["parsed"] == {"answer": 1, "why": "x"} for x in by_id(tmp_path).values())
    outcomes = Counter(rec.outcome for rec in gem.api.records)
    assert outcomes == {"structured_rejected": 1, "ok": 4}
    schema = gem.api.records[-1].body["generationConfig"]["responseSchema"]
    assert schema["type"] == "OBJECT" and schema["properties"]["answer"] == {"type": "INTEGER"}
    notes = orjson.loads((tmp_path / "report.json").read_bytes())["notes"]
    assert [n for n in notes if "responseSchema" in n] == notes and len(notes) == 1


def test_a_wrong_key_is_an_auth_error_that_never_leaks(gem: FakeGemini, tmp_path: Path) -> None:
    gem.api.expected_key = "AIzaSy-the-right-one-0000000000000"
    r = run(gem, tmp_path, 3)
    assert r.code != 0
    lines = read_jsonl(tmp_path / "out.jsonl") if (tmp_path / "out.jsonl").exists() else []
    assert all(x["error"]["type"] == "auth" for x in lines)
    assert CANARY_GEMINI not in r.output


def test_dry_run_shows_the_request_with_the_key_redacted(gem: FakeGemini, tmp_path: Path) -> None:
    write_jsonl(tmp_path / "jobs.jsonl", prompts(2))
    r = run_cli(
        "run", "jobs.jsonl", "-m", MODEL, "--dry-run", "--max-tokens", "55", "--temperature",
        "0.2", env=env(gem),
    )  # fmt: skip
    assert r.code == 0, r.output
    first = orjson.loads(r.stdout.splitlines()[0])
    assert first["url"] == (
        f"{gem.api.url}/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    )
    assert first["headers"]["x-goog-api-key"] == "[redacted: $GEMINI_API_KEY]"
    assert first["body"]["generationConfig"] == {"maxOutputTokens": 55, "temperature": 0.2}
    assert first["body"]["contents"] == [
        {"role": "user", "parts": [{"text": "Question 0: what is 0 + 0?"}]}
    ]
    assert CANARY_GEMINI not in r.output and not gem.api.records


def test_models_and_estimate_know_gemini(tmp_path: Path) -> None:
    r = run_cli("models", "--provider", "gemini", "--json")
    assert r.code == 0, r.output
    rows = {x["model"]: x for x in orjson.loads(r.stdout)}
    assert rows["gemini-2.5-flash"]["input"] == pytest.approx(0.30)
    write_jsonl(tmp_path / "jobs.jsonl", prompts(10))
    est = run_cli("estimate", "jobs.jsonl", "-m", "gemini-2.5-flash", "--json")
    assert est.code == 0, est.output
    data = orjson.loads(est.stdout)
    assert data["by_model"][MODEL]["jobs"] == 10
    assert data["worst_case_usd"] > data["expected_usd"] > 0


def test_an_unknown_model_has_no_cost_said_once(gem: FakeGemini, tmp_path: Path) -> None:
    write_jsonl(tmp_path / "jobs.jsonl", prompts(3))
    r = run_cli(
        "run", "jobs.jsonl", "-m", "gemini:gemini-nobody-knows", "-o", "out.jsonl",
        "--report", "report.json", env=env(gem),
    )  # fmt: skip
    assert r.code == 0, r.output
    assert all(x["cost_usd"] is None for x in read_jsonl(tmp_path / "out.jsonl"))
    report = orjson.loads((tmp_path / "report.json").read_bytes())
    assert report["unpriced_models"] == ["gemini:gemini-nobody-knows"]


# -- the adapter's pieces ----------------------------------------------------------------------


def test_usage_metadata_in_our_convention() -> None:
    u = usage_of(
        {
            "promptTokenCount": 100,
            "cachedContentTokenCount": 40,
            "candidatesTokenCount": 7,
            "thoughtsTokenCount": 20,
            "toolUsePromptTokenCount": 3,
        }
    )
    assert u == Usage(103, 27, 40, 0)


@pytest.mark.parametrize(
    ("status", "body", "cls", "retry"),
    [
        (429, {"status": "RESOURCE_EXHAUSTED", "details": [
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "37s"}]},
         RateLimited, 37.0),
        (503, {"status": "UNAVAILABLE"}, ServerError, None),
        (500, {"status": "INTERNAL"}, ServerError, None),
        (400, {"status": "INVALID_ARGUMENT"}, BadRequest, None),
        (400, {"status": "INVALID_ARGUMENT", "details": [{"reason": "API_KEY_INVALID"}]},
         AuthError, None),
        (403, {"status": "PERMISSION_DENIED"}, AuthError, None),
        (404, {"status": "NOT_FOUND"}, NotFound, None),
    ],
)  # fmt: skip
def test_error_bodies_map_at_the_seam(
    status: int, body: dict[str, Any], cls: type, retry: float | None
) -> None:
    raw = orjson.dumps({"error": {"code": status, "message": f"bad {CANARY_GEMINI}", **body}})
    err = http_error(status, raw, {}, CANARY_GEMINI)
    assert type(err) is cls and err.status == status and err.retry_after == retry
    assert err.retryable == (status >= 429 and cls is not AuthError)
    assert CANARY_GEMINI not in err.message


def test_a_blocked_prompt_and_an_incomplete_whole_answer() -> None:
    from llmbatch.providers.gemini import GeminiStream

    s = GeminiStream(0.0)
    s.whole(orjson.dumps({"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"}}))
    with pytest.raises(ContentFiltered):
        s.answer(None)
    s = GeminiStream(0.0)
    s.whole(orjson.dumps([{"candidates": [{"content": {"parts": [{"text": "hal"}]}}]}]))
    with pytest.raises(ConnectionFailed):
        s.answer(None)


def test_the_body_maps_roles_images_and_thoughts_out(tmp_path: Path) -> None:
    req = Request(
        messages=[
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": [
                {"type": "text", "text": "this?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
            ]},
        ],
        system="sys",
        max_tokens=9,
    )  # fmt: skip
    body = build_gemini_body("gemini-2.5-flash", req)
    assert [c["role"] for c in body["contents"]] == ["user", "model", "user"]
    assert body["contents"][2]["parts"][1] == {
        "inlineData": {"mimeType": "image/png", "data": "AAAA"}
    }
    assert body["systemInstruction"] == {"parts": [{"text": "sys"}]}
    cfg = RunConfig(jobs=tmp_path / "jobs.jsonl")
    provider = GeminiProvider(ProviderSettings("gemini", "gemini", api_key_env=""), cfg)
    assert "x-goog-api-key" not in provider.headers  # a keyless server gets no key header


def test_a_provider_of_your_own_of_type_gemini(gem: FakeGemini, tmp_path: Path) -> None:
    (tmp_path / "llmbatch.toml").write_text(
        f'[providers.gw]\ntype = "gemini"\nbase_url = "{gem.api.url}"\napi_key_env = "GW_KEY"\n'
    )
    write_jsonl(tmp_path / "jobs.jsonl", prompts(2))
    r = run_cli(
        "run", "jobs.jsonl", "-m", "gw:gemini-2.5-flash", "-o", "out.jsonl", "--quiet",
        env={"GW_KEY": CANARY_GEMINI, "GEMINI_API_KEY": "AIza-not-this-one-000000000"},
    )  # fmt: skip
    assert r.code == 0, r.output
    assert all(x["status"] == "ok" for x in read_jsonl(tmp_path / "out.jsonl"))
    assert {rec.headers["x-goog-api-key"] for rec in gem.api.records} == {CANARY_GEMINI}
