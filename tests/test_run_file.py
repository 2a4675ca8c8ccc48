"""``llmbatch.run_file``: the ``run`` command as a call — same lines, report, exit codes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest

import llmbatch
from tests.conftest import prompts, read_jsonl, run_cli, write_jsonl

SIM = "sim:claude-haiku-4-5"
_TIMING = ("latency_ms", "ttft_ms")


def _lines(path: Path) -> dict[str, dict[str, Any]]:
    """Result lines by id, timings dropped (the only fields that differ run to run)."""
    return {x["id"]: {k: v for k, v in x.items() if k not in _TIMING} for x in read_jsonl(path)}


def _counts(report: dict[str, Any]) -> dict[str, Any]:
    return {"jobs": report["jobs"], "cost": report["cost_usd"], "tokens": report["tokens"]}


def test_run_file_writes_what_the_run_command_writes(tmp_path: Path) -> None:
    jobs = write_jsonl(tmp_path / "jobs.jsonl", [*prompts(12), {"prompt": "no id"}])
    cli = run_cli(
        "run", "jobs.jsonl", "-m", SIM, "-o", "cli.jsonl", "--fresh", "--no-cache",
        "--report", "cli.json", "--quiet",
    )  # fmt: skip
    assert cli.code == 0, cli.output
    result = llmbatch.run_file(
        jobs, "api.jsonl", model=SIM, fresh=True, cache=False, report="api.json"
    )
    assert isinstance(result, llmbatch.FileRunResult)
    assert result.exit_code == 0 and result.ok and result.notes == ()
    assert _lines(tmp_path / "api.jsonl") == _lines(tmp_path / "cli.jsonl")
    assert len(_lines(tmp_path / "api.jsonl")) == 13
    cli_report = orjson.loads((tmp_path / "cli.json").read_bytes())
    api_report = orjson.loads((tmp_path / "api.json").read_bytes())
    assert _counts(api_report) == _counts(cli_report)
    assert result.report.ok == 13 == cli_report["jobs"]["ok"]
    assert result.report.output == "api.jsonl"  # paths as the command takes them
    # The run's history line, as the command writes one; a --fresh run of each.
    for name in ("cli", "api"):
        [run] = read_jsonl(tmp_path / f"{name}.jsonl.runs.jsonl")
        assert run["exit_code"] == 0 and run["ok"] == 13


def test_run_file_resumes_and_defaults_as_the_command(tmp_path: Path) -> None:
    """Default output beside the jobs, resumed by a second call (nothing sent twice)."""
    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(5))
    first = llmbatch.run_file(jobs, model=SIM, limit=2)
    assert first.exit_code == 0 and first.report.ok == 2
    assert first.notes == ("--limit 2: 3 job(s) left for a later run",)
    second = llmbatch.run_file(str(jobs), model=SIM)
    assert second.report.skipped_done == 2 and second.report.ok == 3
    ids = [x["id"] for x in read_jsonl(tmp_path / "jobs.results.jsonl")]
    assert sorted(ids) == sorted(f"job-{i}" for i in range(5))


def test_failed_jobs_exit_1_as_the_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(3))
    monkeypatch.setenv("LLMBATCH_SIM_FAIL_RATE", "1")
    cli = run_cli("run", "jobs.jsonl", "-m", SIM, "-o", "cli.jsonl", "--max-attempts", "1",
                  "--quiet")  # fmt: skip
    result = llmbatch.run_file(jobs, "api.jsonl", model=SIM, max_attempts=1)
    assert cli.code == 1 == result.exit_code and not result.ok
    assert result.report.failed == 3
    assert all(x["status"] == "failed" for x in read_jsonl(tmp_path / "api.jsonl"))


def test_a_max_cost_stop_exits_3_as_the_command(tmp_path: Path) -> None:
    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(40))
    cli = run_cli("run", "jobs.jsonl", "-m", SIM, "-o", "cli.jsonl", "--max-cost", "0.02",
                  "-c", "2", "--no-cache", "--quiet")  # fmt: skip
    assert cli.code == 3, cli.output
    result = llmbatch.run_file(
        jobs, "api.jsonl", model=SIM, max_cost=0.02, concurrency=2, cache=False
    )
    assert result.exit_code == 3
    assert result.report.stopped_by == "budget" and result.report.not_run > 0
    assert any("stopped by the budget cap" in note for note in result.notes)
    assert len(read_jsonl(tmp_path / "api.jsonl")) == result.report.ok


def test_arun_file_inside_a_running_loop(tmp_path: Path) -> None:
    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(4))

    async def main() -> llmbatch.FileRunResult:
        return await llmbatch.arun_file(jobs, "out.jsonl", model=SIM, html="r.html")

    result = anyio.run(main)
    assert result.exit_code == 0 and result.report.ok == 4
    assert result.html == Path("r.html") and b"<html" in (tmp_path / "r.html").read_bytes()
    assert len(read_jsonl(tmp_path / "out.jsonl")) == 4


def test_sync_run_file_refuses_inside_a_loop(tmp_path: Path) -> None:
    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(1))

    async def main() -> None:
        with pytest.raises(RuntimeError) as run_err:
            llmbatch.run(["hi"], model=SIM)
        with pytest.raises(RuntimeError) as file_err:
            llmbatch.run_file(jobs, model=SIM)
        said = str(file_err.value)
        assert "cannot be called inside a running event loop" in said
        assert "await llmbatch.arun_file(" in said
        assert said.split("(")[1] == str(run_err.value).split("(")[1]  # the same reason

    anyio.run(main)
    assert not (tmp_path / "jobs.results.jsonl").exists()


def test_refusals_are_the_commands(tmp_path: Path) -> None:
    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(1))
    with pytest.raises(llmbatch.UsageError, match="--batch-deadline goes with --mode auto"):
        llmbatch.run_file(jobs, model=SIM, batch_deadline="2h")
    with pytest.raises(llmbatch.UsageError, match="--ray-workers goes with --ray"):
        llmbatch.run_file(jobs, model=SIM, ray_workers=2)
    with pytest.raises(llmbatch.UsageError, match="dry_run= is not an option"):
        llmbatch.run_file(jobs, model=SIM, dry_run=True)
    assert not (tmp_path / "jobs.results.jsonl").exists()


def test_custom_provider_object_and_dict_schema(tmp_path: Path) -> None:
    from llmbatch.testing import MockProvider

    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(2))
    mock = MockProvider(['{"n": 1}', '{"n": 2}'])
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    result = llmbatch.run_file(jobs, provider=mock, schema=schema, cache=False)
    assert result.exit_code == 0, result.report.notes
    lines = read_jsonl(tmp_path / "jobs.results.jsonl")
    assert sorted(x["parsed"]["n"] for x in lines) == [1, 2]
    assert len(mock.sent) == 2
