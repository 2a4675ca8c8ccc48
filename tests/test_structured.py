"""Structured output: native fields on the wire, extraction, validation, repair."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.conftest import fake_env, read_jsonl, run_cli, write_jsonl
from tests.fakeapi import FakeAPI

SPECS = {"anthropic": "anthropic:claude-haiku-4-5", "openai": "openai:gpt-4o-mini"}
PROVIDERS = list(SPECS)

CONTACT: dict[str, Any] = {
    "title": "Contact",
    "type": "object",
    "required": ["name", "company"],
    "additionalProperties": False,
    "properties": {"name": {"type": "string"}, "company": {"type": "string"}},
}
VALID = '{"name": "Ann Lee", "company": "Acme"}'


@pytest.fixture
def schema_file(tmp_path: Path) -> Path:
    path = tmp_path / "contact.json"
    path.write_bytes(orjson.dumps(CONTACT))
    return path


def one_job(tmp_path: Path, **extra: Any) -> None:
    write_jsonl(tmp_path / "jobs.jsonl", [{"id": "c1", "prompt": "Ann Lee, Acme", **extra}])


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize(
    "reply",
    [
        VALID,
        f"Sure! Here it is:\n```json\n{VALID}\n```\nAnything else?",
        f"The contact is {VALID}.",
    ],
)
def test_valid_json_is_parsed_from_the_answer(
    provider: str, reply: str, fake: FakeAPI, tmp_path: Path, schema_file: Path
) -> None:
    fake.reply = reply
    one_job(tmp_path)
    r = run_cli(
        "run",
        "jobs.jsonl",
        "-m",
        SPECS[provider],
        "--schema",
        str(schema_file),
        "--quiet",
        env=fake_env(fake),
    )
    assert r.code == 0, r.output
    (x,) = read_jsonl(tmp_path / "jobs.results.jsonl")
    assert x["parsed"] == {"name": "Ann Lee", "company": "Acme"}
    assert x["output"] == reply and x["attempts"] == 1


@pytest.mark.parametrize("provider", PROVIDERS)
def test_native_structured_output_fields_on_the_wire(
    provider: str, fake: FakeAPI, tmp_path: Path, schema_file: Path
) -> None:
    fake.reply = VALID
    one_job(tmp_path)
    r = run_cli(
        "run",
        "jobs.jsonl",
        "-m",
        SPECS[provider],
        "--schema",
        str(schema_file),
        "--quiet",
        env=fake_env(fake),
    )
    assert r.code == 0, r.output
    body = fake.records[0].body
    if provider == "anthropic":
        assert body["output_config"] == {"format": {"type": "json_schema", "schema": CONTACT}}
    else:
        assert body["response_format"] == {
            "type": "json_schema",
            "json_schema": {"name": "Contact", "schema": CONTACT, "strict": True},
        }


def test_openai_non_strict_schema_is_sent_non_strict_and_said_once(
    fake: FakeAPI, tmp_path: Path
) -> None:
    loose = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20}}}
    fake.reply = '{"name": "Ann"}'
    write_jsonl(
        tmp_path / "jobs.jsonl", [{"id": f"c{i}", "prompt": "x", "schema": loose} for i in range(3)]
    )
    r = run_cli(
        "run", "jobs.jsonl", "-m", SPECS["openai"], "--report", "rep.json", env=fake_env(fake)
    )
    assert r.code == 0, r.output
    assert all(
        rec.body["response_format"]["json_schema"]["strict"] is False for rec in fake.records
    )
    notes = orjson.loads((tmp_path / "rep.json").read_bytes())["notes"]
    assert sum("strict mode" in n for n in notes) == 1


def test_prompt_only_structured_output_for_servers_without_it(
    fake: FakeAPI, tmp_path: Path, schema_file: Path
) -> None:
    (tmp_path / "llmbatch.toml").write_text('[providers.openai]\nstructured_output = "prompt"\n')
    fake.reply = VALID
    one_job(tmp_path)
    r = run_cli(
        "run",
        "jobs.jsonl",
        "-m",
        SPECS["openai"],
        "--schema",
        str(schema_file),
        "--quiet",
        env=fake_env(fake),
    )
    assert r.code == 0, r.output
    body = fake.records[0].body
    assert "response_format" not in body
    assert body["messages"][0]["role"] == "system"
    assert '"company"' in body["messages"][0]["content"]


@pytest.mark.parametrize("provider", PROVIDERS)
def test_invalid_first_answer_is_repaired_with_the_error_fed_back(
    provider: str, fake: FakeAPI, tmp_path: Path, schema_file: Path
) -> None:
    fake.replies = ['{"name": "Ann Lee"}', VALID]
    one_job(tmp_path)
    r = run_cli(
        "run",
        "jobs.jsonl",
        "-m",
        SPECS[provider],
        "--schema",
        str(schema_file),
        "--report",
        "rep.json",
        env=fake_env(fake),
    )
    assert r.code == 0, r.output
    (x,) = read_jsonl(tmp_path / "jobs.results.jsonl")
    assert x["status"] == "ok" and x["parsed"]["company"] == "Acme"
    assert x["attempts"] == 2 and x["repairs"] == 1
    assert x["usage"]["output_tokens"] == sum(rec.output_tokens for rec in fake.records)
    follow_up = fake.records[1].body["messages"]
    assert follow_up[-2] == {"role": "assistant", "content": '{"name": "Ann Lee"}'}
    assert follow_up[-1]["role"] == "user"
    assert "'company' is a required property" in follow_up[-1]["content"]
    report = orjson.loads((tmp_path / "rep.json").read_bytes())
    assert report["repairs"] == {"jobs_repaired": 1, "repairs_sent": 1, "never_valid": 0}
    assert "validation" in r.stderr and "1 jobs repaired" in r.stderr


@pytest.mark.parametrize("provider", PROVIDERS)
def test_never_valid_fails_schema_invalid(
    provider: str, fake: FakeAPI, tmp_path: Path, schema_file: Path
) -> None:
    fake.reply = "I cannot produce JSON today."
    one_job(tmp_path)
    r = run_cli(
        "run",
        "jobs.jsonl",
        "-m",
        SPECS[provider],
        "--schema",
        str(schema_file),
        "--repair-attempts",
        "2",
        "--quiet",
        env=fake_env(fake),
    )
    assert r.code == 1
    (x,) = read_jsonl(tmp_path / "jobs.results.jsonl")
    assert x["status"] == "failed" and x["attempts"] == 3 == fake.count()
    assert x["error"]["type"] == "schema_invalid"
    assert "no JSON value" in x["error"]["message"]
    assert x["output"] == "I cannot produce JSON today." and x["parsed"] is None


def test_per_job_schema_beats_the_flag(fake: FakeAPI, tmp_path: Path, schema_file: Path) -> None:
    own = {"type": "object", "required": ["n"], "properties": {"n": {"type": "integer"}}}
    fake.reply = '{"n": 3}'
    one_job(tmp_path, schema=own)
    r = run_cli(
        "run",
        "jobs.jsonl",
        "-m",
        SPECS["anthropic"],
        "--schema",
        str(schema_file),
        "--quiet",
        env=fake_env(fake),
    )
    assert r.code == 0, r.output
    (x,) = read_jsonl(tmp_path / "jobs.results.jsonl")
    assert x["parsed"] == {"n": 3}
    assert fake.records[0].body["output_config"]["format"]["schema"] == own


def test_an_invalid_schema_is_exit_2_with_nothing_sent(fake: FakeAPI, tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text('{"type": "objekt"}')
    one_job(tmp_path)
    r = run_cli(
        "run", "jobs.jsonl", "-m", SPECS["openai"], "--schema", "bad.json", env=fake_env(fake)
    )
    assert r.code == 2
    assert "bad.json: not a valid JSON Schema" in r.stderr
    one_job(tmp_path, schema={"type": 12})
    r = run_cli("run", "jobs.jsonl", "-m", SPECS["openai"], env=fake_env(fake))
    assert r.code == 2
    assert "jobs.jsonl:1:" in r.stderr and "not a valid JSON Schema" in r.stderr
    assert fake.count() == 0


def test_sim_repairs_in_the_demo_setting(tmp_path: Path, schema_file: Path) -> None:
    write_jsonl(
        tmp_path / "jobs.jsonl", [{"id": f"c{i}", "prompt": f"contact {i}"} for i in range(40)]
    )
    r = run_cli(
        "run",
        "jobs.jsonl",
        "-m",
        "sim:claude-haiku-4-5",
        "--schema",
        str(schema_file),
        "--report",
        "rep.json",
        "--quiet",
        env={"LLMBATCH_SIM_INVALID_RATE": "0.5"},
    )
    assert r.code == 0, r.output
    results = read_jsonl(tmp_path / "jobs.results.jsonl")
    assert all(x["status"] == "ok" and set(x["parsed"]) >= {"name", "company"} for x in results)
    report = orjson.loads((tmp_path / "rep.json").read_bytes())
    assert report["repairs"]["jobs_repaired"] > 0
    assert report["repairs"]["repairs_sent"] == sum(x.get("repairs", 0) for x in results)
