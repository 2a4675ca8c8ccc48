"""``run --dry-run``, ``--limit N`` and ``--include-input``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from llmbatch import ModelRef, RunConfig, run_jobs
from tests.conftest import CANARY_OPENAI, fake_env, prompts, read_jsonl, run_cli, write_jsonl
from tests.fakeapi import FakeAPI


def sim_config(tmp_path: Path, rows: list[Any], **kw: Any) -> RunConfig:
    write_jsonl(tmp_path / "jobs.jsonl", rows)
    cfg = RunConfig(
        jobs=tmp_path / "jobs.jsonl", output=tmp_path / "out.jsonl", model=ModelRef("sim", "m")
    )
    cfg.quiet = True
    for key, value in kw.items():
        setattr(cfg, key, value)
    return cfg


def test_dry_run_prints_the_bodies_and_sends_nothing(fake: FakeAPI, tmp_path: Path) -> None:
    rows: list[Any] = prompts(4)
    rows[1]["model"] = "anthropic:claude-haiku-4-5"
    rows[2] = {"id": "bad"}  # invalid: refused as a run would
    write_jsonl(tmp_path / "jobs.jsonl", rows)
    write_jsonl(tmp_path / "jobs.results.jsonl", [])
    (tmp_path / "llmbatch.toml").write_text(
        '[providers.openai]\nheaders = {"x-api-key" = "hdr-secret", "x-team" = "blue"}\n'
    )
    args = ("run", "jobs.jsonl", "-m", "openai:gpt-4o-mini", "--dry-run", "--max-tokens", "77")
    r = run_cli(*args, env=fake_env(fake))
    assert r.code == 2 and "jobs.jsonl:3" in r.output
    r = run_cli(*args, "--skip-invalid", "--limit", "2", env=fake_env(fake))
    assert r.code == 0, r.output
    lines = [orjson.loads(x) for x in r.stdout.splitlines()]
    assert [x["id"] for x in lines] == ["job-0", "job-1"]
    openai, anthropic = lines
    assert openai["url"] == fake.url + "/v1/chat/completions"
    assert openai["body"]["messages"] == [{"role": "user", "content": "Question 0: what is 0 + 0?"}]
    assert openai["body"]["max_tokens"] == 77 and openai["body"]["model"] == "gpt-4o-mini"
    assert openai["headers"]["authorization"] == "Bearer [redacted: $OPENAI_API_KEY]"
    assert openai["headers"]["x-team"] == "blue" and "hdr-secret" not in r.stdout
    assert anthropic["url"] == fake.url + "/v1/messages" and anthropic["body"]["max_tokens"] == 77
    assert CANARY_OPENAI not in r.output and "Nothing was sent" in r.stderr
    assert "1 more left by --limit" in r.stderr
    assert fake.count() == 0 and read_jsonl(tmp_path / "jobs.results.jsonl") == []
    assert not (tmp_path / "jobs.results.jsonl.runs.jsonl").exists()
    # No key set: a dry run still shows what would go out.
    r = run_cli(*args, "--skip-invalid", env={"OPENAI_BASE_URL": fake.url + "/v1"})
    assert r.code == 0 and len(r.stdout.splitlines()) == 3, r.output


def test_limit_runs_the_first_n_jobs_not_yet_done(tmp_path: Path) -> None:
    rows: list[Any] = prompts(7)
    rows.insert(2, {"id": "bad"})
    cfg = sim_config(tmp_path, rows, limit=3, skip_invalid=True)
    first = run_jobs(cfg)
    assert first.ok == 3 and first.not_run == 0 and first.exit_code == 0
    second = run_jobs(cfg)
    assert second.ok == 3 and second.skipped_done == 3
    third = run_jobs(cfg)
    assert third.ok == 1 and third.skipped_done == 6
    ids = [x["id"] for x in read_jsonl(tmp_path / "out.jsonl")]
    assert ids == [f"job-{i}" for i in range(7)]


def test_include_input_puts_what_was_asked_on_each_result_line(tmp_path: Path) -> None:
    rows: list[Any] = [
        {"id": "p", "prompt": "hello", "system": "be brief"},
        {"id": "m", "messages": [{"role": "user", "content": "hi"}]},
        {"custom_id": "b", "body": {"messages": [{"role": "user", "content": "yo"}]}},
    ]
    run_jobs(sim_config(tmp_path, rows, include_input=True))
    by_id = {x["id"]: x for x in read_jsonl(tmp_path / "out.jsonl")}
    assert by_id["p"]["input"] == {"prompt": "hello", "system": "be brief"}
    assert by_id["m"]["input"] == {"messages": [{"role": "user", "content": "hi"}]}
    assert by_id["b"]["input"] == {"body": {"messages": [{"role": "user", "content": "yo"}]}}
    (tmp_path / "out.jsonl").unlink()
    run_jobs(sim_config(tmp_path, [{"id": "r", "q": "why"}], template="Q: {q}", include_input=True))
    (line,) = read_jsonl(tmp_path / "out.jsonl")
    assert line["input"] == {"record": {"id": "r", "q": "why"}}
    (tmp_path / "out.jsonl").unlink()
    run_jobs(sim_config(tmp_path, prompts(1)))
    assert "input" not in read_jsonl(tmp_path / "out.jsonl")[0]
