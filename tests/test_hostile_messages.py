"""Issue 11: what used to be internal errors, messages that misled, and small things."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import orjson
import pytest
from rich.console import Console

from llmbatch import ModelRef, RunConfig, run_jobs
from llmbatch._config.settings import FileConfig, build_run_config
from llmbatch._core.exceptions import UsageError
from llmbatch._core.jobs import JobParser, LineError
from llmbatch._core.results import JobResult, ResultError
from llmbatch._core.template import Template
from llmbatch._core.usage import Usage
from llmbatch._engine.estimate import estimate_jobs, render_estimate, render_problems
from llmbatch._io.history import append_history, history_path, read_history
from llmbatch._io.jobfile import validate_file
from llmbatch._io.resume import backup_output
from llmbatch._observe.stats import RunStats
from llmbatch._report.render import render_report
from llmbatch._report.report import build_report, report_from_results
from tests.conftest import prompts, run_cli, run_cli_process, write_jsonl

SIM = "sim:claude-haiku-4-5"


def result(job_id: str, **kw: Any) -> JobResult:
    fields: dict[str, Any] = {
        "id": job_id,
        "status": "ok",
        "output": "x",
        "parsed": None,
        "provider": "sim",
        "model": "m",
        "usage": Usage(10, 5),
        "cost_usd": 0.001,
        "latency_ms": 5.0,
        "ttft_ms": 1.0,
        "attempts": 1,
        "error": None,
        "metadata": None,
    }
    fields.update(kw)
    return JobResult(**fields)


# -- internal errors that are now exit 2 with a message --------------------------------


def test_hand_edited_result_lines_are_read_not_crashed_on(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "jobs.jsonl", prompts(4))
    out = tmp_path / "out.jsonl"
    write_jsonl(
        out,
        [
            {"id": "job-0", "status": "ok", "cost_usd": "0.5", "fingerprint": 12345},
            {"id": "job-1", "status": "ok", "usage": {"input_tokens": "many"}, "attempts": "2"},
            {"id": "job-2", "status": "failed", "error": "boom", "latency_ms": "slow"},
            {"id": "job-3", "status": "failed", "error": None, "attempt_errors": [1, 2]},
        ],
    )
    rep = report_from_results(out)
    assert rep.ok == 2 and rep.failed == 2 and rep.cost_usd == 0
    assert rep.failures == {"other": 1}
    cfg = RunConfig(
        jobs=tmp_path / "jobs.jsonl", output=out, model=ModelRef("sim", "m"), quiet=True
    )
    again = run_jobs(cfg)  # resume over a numeric fingerprint: no conflict, nothing rerun
    assert again.skipped_done == 4 and again.exit_code == 1 and again.failed_earlier == 2


def test_report_on_a_directory_or_a_device_exits_2(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    for path, message in [("d", "is a directory"), ("/dev/zero", "not a regular file")]:
        with pytest.raises(UsageError, match=message):
            report_from_results(Path(path))
    r = run_cli("report", "d")
    assert r.code == 2 and "is a directory" in r.stderr, r.output


def test_ascii_only_terminals_get_messages_not_crashes(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "jobs.jsonl", [*prompts(2), {"id": "x", "prompt": "p", "max_tokens": 0}])
    env = {"PYTHONIOENCODING": "ascii"}  # read at interpreter start: a real process
    r = run_cli_process("validate", "jobs.jsonl", "-m", SIM, env=env)
    assert r.code == 2 and '"max_tokens" must be a positive integer' in r.stdout, r.output
    r = run_cli_process("estimate", "jobs.jsonl", "-m", "claude-haiku-4-5", env=env)
    assert r.code == 0 and "worst case" in r.stdout and "internal error" not in r.stderr, r.output
    r = run_cli_process("models", "--provider", "anthropic", env=env)
    assert r.code == 0 and "claude" in r.stdout, r.output


# -- messages -------------------------------------------------------------------------


def test_quiet_resume_failing_on_earlier_failures_says_so(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "jobs.jsonl", prompts(2))
    write_jsonl(
        tmp_path / "jobs.results.jsonl",
        [{"id": "job-0", "status": "failed", "error": {"type": "server_error"}}],
    )
    r = run_cli("run", "jobs.jsonl", "-m", SIM, "--quiet")
    assert r.code == 1, r.output
    assert "1 job(s) failed in an earlier run" in r.stderr and "--retry-failed" in r.stderr


def test_models_with_an_unknown_provider_exits_2() -> None:
    r = run_cli("models", "--provider", "bogus")
    assert r.code == 2 and "no such provider" in r.stderr and "anthropic" in r.stderr, r.output


def test_estimate_says_why_lines_are_invalid_and_never_prices_unpriced_at_zero(
    tmp_path: Path,
) -> None:
    rows: list[Any] = [*prompts(2), {"id": "bad"}, b"{not json"]
    write_jsonl(tmp_path / "jobs.jsonl", rows)
    cfg = build_run_config(tmp_path / "jobs.jsonl", {"model": "sim:no-such-model"}, FileConfig())
    est = estimate_jobs(cfg)
    assert est["jobs"]["invalid_lines"] == 2 and est["expected_usd"] is None
    err = io.StringIO()
    render_problems(est, err)
    assert 'jobs.jsonl:3: no "prompt" or "messages"' in err.getvalue()
    assert "jobs.jsonl:4: not valid JSON" in err.getvalue()
    console = Console(file=io.StringIO(), width=100, force_terminal=True, color_system=None)
    render_estimate(est, console)
    text = console.file.getvalue()  # type: ignore[attr-defined]
    assert "expected $0" not in text and "worst case $0" not in text
    assert "expected unpriced" in text and '[prices."PROVIDER:MODEL"]' in text


def test_fresh_takes_the_run_history_along_with_the_old_output(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    write_jsonl(out, [{"id": "a", "status": "ok"}])
    append_history(out, {"wall_s": 99.0})
    backup = backup_output(out)
    assert backup is not None and read_history(backup) == [{"wall_s": 99.0}]
    assert not out.exists() and not history_path(out).exists()


def test_jobs_repaired_counts_only_jobs_a_repair_made_valid() -> None:
    stats = RunStats()
    stats.add(result("a", repairs=1))
    stats.add(result("b", status="failed", repairs=2, error=ResultError("schema_invalid", "x")))
    rep = build_report(stats)
    assert rep.repairs == {"jobs_repaired": 1, "repairs_sent": 3, "never_valid": 1}


# -- small things ---------------------------------------------------------------------


def test_report_table_keeps_long_model_names_at_80_columns() -> None:
    stats = RunStats()
    name = "accounts/fireworks/models/llama-v3p1-405b-instruct-long-variant"
    stats.add(result("a", provider="fireworks", model=name))
    console = Console(file=io.StringIO(), width=80, force_terminal=True, color_system=None)
    render_report(build_report(stats), console)
    text = console.file.getvalue()  # type: ignore[attr-defined]
    joined = "".join(line.split("│")[1].strip() for line in text.splitlines() if "│" in line)
    assert f"fireworks:{name}" in joined and "…" not in text


def test_a_utf8_bom_before_the_first_line_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "jobs.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"id": "a", "prompt": "hi"}\n{"id": "b", "prompt": "x"}\n')
    summary = validate_file(path, JobParser())
    assert summary.valid == 2 and not summary.problems
    (tmp_path / "s.json").write_bytes(b'\xef\xbb\xbf{"type": "object"}')
    (tmp_path / "llmbatch.toml").write_bytes(b'\xef\xbb\xbfmodel = "sim:m"\n')
    from llmbatch._config.settings import load_config

    cfg = build_run_config(path, {"schema": "s.json"}, load_config(None))
    assert cfg.schema == {"type": "object"} and cfg.model == ModelRef("sim", "m")


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", []),
        (b"\xef\xbb\xbf", []),
        (b"\n \t\r\n\x0b\x0c\n", []),
        (b"\xef\xbb\xbf\n{}\n", [(2, b"{}\n")]),
        (b"\xef\xbb\xbf{}", [(1, b"{}")]),
        (b'{"a": 1}\r\n\r\n  \n{"b": 2}', [(1, b'{"a": 1}\r\n'), (4, b'{"b": 2}')]),
    ],
)
def test_lines_keep_their_numbers_past_blank_ones_and_a_bom(
    data: bytes, expected: list[tuple[int, bytes]]
) -> None:
    import io

    from llmbatch._io.jobfile import iter_lines

    assert list(iter_lines(io.BytesIO(data))) == expected


def test_a_null_template_field_is_called_null_not_missing() -> None:
    parser = JobParser(template=Template("Q: {q} ({meta.lang})"))
    with pytest.raises(LineError, match=r"template field \{q\} is null in this record"):
        parser.parse(orjson.dumps({"q": None, "meta": {"lang": "en"}}), 1)
    with pytest.raises(LineError, match=r"\{meta.lang\} is missing from this record"):
        parser.parse(orjson.dumps({"q": "x", "meta": {}}), 1)
    assert parser.parse(orjson.dumps({"q": 0, "meta": {"lang": "en"}}), 1).request.messages == [
        {"role": "user", "content": "Q: 0 (en)"}
    ]
