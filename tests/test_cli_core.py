"""The core pipeline through the CLI, on the offline sim provider."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

import llmbatch
from tests.conftest import prompts, read_jsonl, run_cli, run_cli_process, write_jsonl

SIM = "sim:claude-haiku-4-5"


def test_native_lines_run_and_write_one_result_each(tmp_path: Path) -> None:
    write_jsonl(
        tmp_path / "jobs.jsonl",
        [
            {"id": "a1", "prompt": "Summarize: the cat sat on the mat."},
            {
                "id": "a2",
                "messages": [{"role": "user", "content": "hello"}],
                "system": "be brief",
                "max_tokens": 50,
                "metadata": {"batch": 7},
            },
            {"prompt": "no id here"},
        ],
    )
    r = run_cli("run", "jobs.jsonl", "-m", SIM, "--quiet")
    assert r.code == 0, r.output
    results = {x["id"]: x for x in read_jsonl(tmp_path / "jobs.results.jsonl")}
    assert set(results) == {"a1", "a2", "line-3"}
    a2 = results["a2"]
    assert a2["status"] == "ok"
    assert a2["provider"] == "sim" and a2["model"] == "claude-haiku-4-5"
    assert a2["metadata"] == {"batch": 7}
    assert a2["usage"]["output_tokens"] <= 50
    assert a2["cost_usd"] > 0
    assert a2["attempts"] == 1 and a2["error"] is None
    for key in ("output", "parsed", "latency_ms", "ttft_ms", "usage", "cost_usd"):
        assert key in a2
    assert r.stdout == ""  # results never mix with progress or the report


def test_sim_is_deterministic(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "jobs.jsonl", prompts(5))
    assert run_cli("run", "jobs.jsonl", "-m", SIM, "-o", "a.jsonl", "--quiet").code == 0
    assert run_cli("run", "jobs.jsonl", "-m", SIM, "-o", "b.jsonl", "--quiet").code == 0
    a = {x["id"]: x["output"] for x in read_jsonl(tmp_path / "a.jsonl")}
    b = {x["id"]: x["output"] for x in read_jsonl(tmp_path / "b.jsonl")}
    assert a == b


def test_openai_and_anthropic_batch_shapes(tmp_path: Path) -> None:
    write_jsonl(
        tmp_path / "jobs.jsonl",
        [
            {
                "custom_id": "r1",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {
                    "model": "gpt-4o-mini",
                    "messages": [
                        {"role": "system", "content": "sys"},
                        {"role": "user", "content": "hi"},
                    ],
                    "max_tokens": 100,
                },
            },
            {
                "custom_id": "r2",
                "params": {
                    "model": "claude-haiku-4-5",
                    "max_tokens": 100,
                    "messages": [{"role": "user", "content": "yo"}],
                },
            },
        ],
    )
    r = run_cli("run", "jobs.jsonl", "--provider", "sim", "--quiet")
    assert r.code == 0, r.output
    results = {x["id"]: x for x in read_jsonl(tmp_path / "jobs.results.jsonl")}
    assert results["r1"]["model"] == "gpt-4o-mini" and results["r1"]["provider"] == "sim"
    assert results["r2"]["model"] == "claude-haiku-4-5"
    assert all(x["status"] == "ok" for x in results.values())


def test_records_with_template(tmp_path: Path) -> None:
    write_jsonl(
        tmp_path / "records.jsonl",
        [
            {"id": "p1", "product": "kettle", "specs": {"color": "red"}},
            {"product": "lamp", "specs": {"color": "blue"}},
        ],
    )
    r = run_cli(
        "run",
        "records.jsonl",
        "-m",
        SIM,
        "--template",
        "Describe a {specs.color} {product}.",
        "--quiet",
    )
    assert r.code == 0, r.output
    results = {x["id"]: x for x in read_jsonl(tmp_path / "records.results.jsonl")}
    assert set(results) == {"p1", "line-2"}
    assert results["p1"]["metadata"] == {"id": "p1", "product": "kettle", "specs": {"color": "red"}}


def test_template_file_and_missing_field(tmp_path: Path) -> None:
    (tmp_path / "t.txt").write_text("Describe {product} for {audience}.\n")
    write_jsonl(
        tmp_path / "records.jsonl",
        [{"product": "kettle", "audience": "cooks"}, {"product": "lamp"}],
    )
    r = run_cli("run", "records.jsonl", "-m", SIM, "--template-file", "t.txt")
    assert r.code == 2
    assert "records.jsonl:2: template field {audience} is missing" in r.stderr
    assert not (tmp_path / "records.results.jsonl").exists()


def test_invalid_lines_exit_2_naming_each_and_nothing_sent(tmp_path: Path) -> None:
    (tmp_path / "jobs.jsonl").write_text(
        '{"id": "ok1", "prompt": "fine"}\n'
        "{not json\n"
        "[1, 2]\n"
        '{"id": "x", "nothing": true}\n'
        '{"id": "y", "prompt": "hi", "model": "llama3"}\n'
        "\n"
        '{"id": "z", "prompt": "hi", "max_tokens": -3}\n'
    )
    r = run_cli("run", "jobs.jsonl", "-m", SIM)
    assert r.code == 2
    assert "jobs.jsonl:2: not valid JSON" in r.stderr
    assert "jobs.jsonl:3: expected a JSON object, got an array" in r.stderr
    assert 'jobs.jsonl:4: no "prompt" or "messages"' in r.stderr
    assert "jobs.jsonl:5: cannot tell the provider of model 'llama3'" in r.stderr
    assert "jobs.jsonl:7:" in r.stderr and "max_tokens" in r.stderr
    assert not (tmp_path / "jobs.results.jsonl").exists()


def test_skip_invalid_runs_the_rest_and_lists_skipped(tmp_path: Path) -> None:
    (tmp_path / "jobs.jsonl").write_text(
        '{"id": "a", "prompt": "one"}\n{broken\n{"id": "b", "prompt": "two"}\n'
    )
    r = run_cli("run", "jobs.jsonl", "-m", SIM, "--skip-invalid", "--report", "rep.json")
    assert r.code == 0, r.output
    assert {x["id"] for x in read_jsonl(tmp_path / "jobs.results.jsonl")} == {"a", "b"}
    report = orjson.loads((tmp_path / "rep.json").read_bytes())
    assert report["invalid_lines"] == [2]


def test_duplicate_ids_are_an_input_error(tmp_path: Path) -> None:
    write_jsonl(
        tmp_path / "jobs.jsonl",
        [{"id": "a", "prompt": "1"}, {"id": "b", "prompt": "2"}, {"id": "a", "prompt": "3"}],
    )
    r = run_cli("run", "jobs.jsonl", "-m", SIM)
    assert r.code == 2
    assert "jobs.jsonl:3: duplicate id 'a' (first on line 1)" in r.stderr
    v = run_cli("validate", "jobs.jsonl", "-m", SIM)
    assert v.code == 2 and "jobs.jsonl:3: duplicate id 'a'" in v.stdout


def test_validate_all_good(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "jobs.jsonl", prompts(3))
    r = run_cli("validate", "jobs.jsonl", "-m", SIM)
    assert r.code == 0
    assert "3 jobs, all valid" in r.stderr


def test_no_model_anywhere_is_a_usage_error(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "jobs.jsonl", prompts(2))
    r = run_cli("run", "jobs.jsonl")
    assert r.code == 2
    assert "no model" in r.stderr
    assert not (tmp_path / "jobs.results.jsonl").exists()


def test_stdin_input_needs_output_and_works(tmp_path: Path) -> None:
    data = b"".join(orjson.dumps(p) + b"\n" for p in prompts(4))
    r = run_cli("run", "-", "-m", SIM, input=data)
    assert r.code == 2 and "--output is required" in r.stderr
    r = run_cli("run", "-", "-m", SIM, "-o", "out.jsonl", "--quiet", input=data)
    assert r.code == 0, r.output
    assert len(read_jsonl(tmp_path / "out.jsonl")) == 4


def test_output_to_stdout(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "jobs.jsonl", prompts(3))
    r = run_cli_process("run", "jobs.jsonl", "-m", SIM, "-o", "-")
    assert r.code == 0
    lines = [orjson.loads(x) for x in r.stdout.splitlines()]
    assert sorted(x["id"] for x in lines) == ["job-0", "job-1", "job-2"]
    assert "llmbatch report" in r.stderr  # the report goes to stderr, never stdout


def test_resume_skips_done_and_cuts_a_torn_line(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "jobs.jsonl", prompts(20))
    # No cache: the jobs run again must cost something this run too.
    assert run_cli("run", "jobs.jsonl", "-m", SIM, "--quiet", "--no-cache").code == 0
    out = tmp_path / "jobs.results.jsonl"
    lines = out.read_bytes().splitlines(keepends=True)
    # As if killed mid-write: keep 12 whole lines and half of the 13th.
    out.write_bytes(b"".join(lines[:12]) + lines[12][: len(lines[12]) // 2])
    kept = {orjson.loads(x)["id"] for x in lines[:12]}
    r = run_cli("run", "jobs.jsonl", "-m", SIM, "--report", "rep.json")
    assert r.code == 0, r.output
    assert "torn last line" in r.stderr
    results = read_jsonl(out)
    ids = [x["id"] for x in results]
    assert len(ids) == len(set(ids)) == 20
    report = orjson.loads((tmp_path / "rep.json").read_bytes())
    assert report["jobs"]["skipped_done"] == 12
    assert report["jobs"]["ok"] == 8
    assert report["cost_usd_cumulative"] > report["cost_usd"] > 0
    assert kept <= set(ids)


def test_appended_jobs_are_simply_run(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "jobs.jsonl", prompts(5))
    assert run_cli("run", "jobs.jsonl", "-m", SIM, "--quiet").code == 0
    write_jsonl(tmp_path / "jobs.jsonl", prompts(5) + prompts(3, prefix="new"))
    r = run_cli("run", "jobs.jsonl", "-m", SIM, "--report", "rep.json", "--quiet")
    assert r.code == 0
    assert len(read_jsonl(tmp_path / "jobs.results.jsonl")) == 8
    assert orjson.loads((tmp_path / "rep.json").read_bytes())["jobs"]["ok"] == 3


def test_fresh_moves_the_old_output_aside(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "jobs.jsonl", prompts(3))
    assert run_cli("run", "jobs.jsonl", "-m", SIM, "--quiet").code == 0
    r = run_cli("run", "jobs.jsonl", "-m", SIM, "--fresh")
    assert r.code == 0
    backups = list(tmp_path.glob("jobs.results.jsonl.*.bak"))
    assert len(backups) == 1
    assert len(read_jsonl(backups[0])) == 3
    assert len(read_jsonl(tmp_path / "jobs.results.jsonl")) == 3
    assert "moved to" in r.stderr


def test_failed_jobs_stay_failed_until_retry_failed(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "jobs.jsonl", prompts(4))
    failing = {"LLMBATCH_SIM_FAIL_RATE": "1"}
    r = run_cli("run", "jobs.jsonl", "-m", SIM, "--max-attempts", "2", "--quiet", env=failing)
    assert r.code == 1
    results = read_jsonl(tmp_path / "jobs.results.jsonl")
    assert all(x["status"] == "failed" and x["attempts"] == 2 for x in results)
    assert all(
        x["error"]["type"] in {"rate_limited", "server_error", "overloaded"} for x in results
    )
    # A plain resume sends nothing new: failed jobs are done until asked.
    r = run_cli("run", "jobs.jsonl", "-m", SIM, "--report", "rep.json", "--quiet")
    assert r.code == 1
    assert orjson.loads((tmp_path / "rep.json").read_bytes())["jobs"]["skipped_done"] == 4
    assert len(read_jsonl(tmp_path / "jobs.results.jsonl")) == 4
    r = run_cli("run", "jobs.jsonl", "-m", SIM, "--retry-failed", "--quiet")
    assert r.code == 0
    rep = run_cli("report", "jobs.results.jsonl", "--json")
    report = orjson.loads(rep.stdout)
    assert report["jobs"]["ok"] == 4 and report["jobs"]["failed"] == 0


def test_report_json_has_every_spec_field(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "jobs.jsonl", prompts(10))
    r = run_cli("run", "jobs.jsonl", "-m", SIM, "--report", "rep.json", "--quiet")
    assert r.code == 0
    report = orjson.loads((tmp_path / "rep.json").read_bytes())
    assert report["jobs"] == {
        "total": 10,
        "ok": 10,
        "failed": 0,
        "skipped_done": 0,
        "not_run": 0,
        "failed_earlier": 0,
    }
    assert set(report["tokens"]) == {"input", "output", "cache_read", "cache_write"}
    assert set(report["latency_ms"]) == {"p50", "p90", "p95", "p99", "max", "mean"}
    assert set(report["ttft_ms"]) == {"p50", "p95"}
    assert report["attempts"] == {"total": 10, "retries": 0}
    assert report["errors"] == {}
    assert report["by_model"][SIM]["jobs"] == 10
    assert report["stopped_by"] is None
    assert report["wall_s"] > 0 and report["jobs_per_s"] > 0
    assert report["cost_usd"] == pytest.approx(report["cost_usd_cumulative"])
    results = read_jsonl(tmp_path / "jobs.results.jsonl")
    assert report["cost_usd"] == pytest.approx(sum(x["cost_usd"] for x in results), rel=1e-6)
    # `report` rebuilds the same numbers from the results file alone.
    again = orjson.loads(run_cli("report", "jobs.results.jsonl", "--json").stdout)
    assert again["jobs"]["ok"] == 10
    assert again["tokens"] == report["tokens"]
    assert again["cost_usd"] == pytest.approx(report["cost_usd"])
    table = run_cli("report", "jobs.results.jsonl")
    assert (
        table.code == 0
        and "llmbatch report" in table.stdout
        and "runs on this output" in (table.stdout)
    )


def test_config_file_gives_defaults_and_flags_win(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "jobs.jsonl", prompts(3))
    (tmp_path / "llmbatch.toml").write_text(
        'model = "sim:gpt-4o-mini"\nconcurrency = 2\nmax_tokens = 7\nquiet = true\n'
    )
    r = run_cli("run", "jobs.jsonl")
    assert r.code == 0, r.output
    assert r.stderr == ""  # quiet from the config
    results = read_jsonl(tmp_path / "jobs.results.jsonl")
    assert {x["model"] for x in results} == {"gpt-4o-mini"}
    assert all(x["usage"]["output_tokens"] <= 7 for x in results)
    r = run_cli("run", "jobs.jsonl", "-m", SIM, "-o", "flag.jsonl", "--max-tokens", "20")
    assert r.code == 0
    results = read_jsonl(tmp_path / "flag.jsonl")
    assert {x["model"] for x in results} == {"claude-haiku-4-5"}
    assert any(x["usage"]["output_tokens"] > 7 for x in results)


def test_unknown_config_key_names_the_key(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "jobs.jsonl", prompts(1))
    (tmp_path / "llmbatch.toml").write_text('model = "sim:x"\nconcurency = 4\n')
    r = run_cli("run", "jobs.jsonl")
    assert r.code == 2
    assert "unknown key 'concurency'" in r.stderr
    (tmp_path / "other.toml").write_text('[limits."sim:x"]\nrpn = 5\n')
    r = run_cli("run", "jobs.jsonl", "--config", "other.toml", "-m", "sim:x")
    assert r.code == 2 and "unknown key 'rpn'" in r.stderr


def test_budget_cap_stops_with_exit_3_and_resumes(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "jobs.jsonl", prompts(40))
    r = run_cli(
        "run", "jobs.jsonl", "-m", SIM, "--max-cost", "0.02", "-c", "2", "--report", "rep.json"
    )
    assert r.code == 3, r.output
    report = orjson.loads((tmp_path / "rep.json").read_bytes())
    assert report["stopped_by"] == "budget"
    assert report["jobs"]["not_run"] > 0
    assert report["cost_usd_cumulative"] <= 0.02
    done = len(read_jsonl(tmp_path / "jobs.results.jsonl"))
    assert done == report["jobs"]["ok"]
    r = run_cli("run", "jobs.jsonl", "-m", SIM, "--quiet")
    assert r.code == 0
    ids = [x["id"] for x in read_jsonl(tmp_path / "jobs.results.jsonl")]
    assert len(ids) == len(set(ids)) == 40


def test_budget_with_unknown_price_refused_before_sending(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "jobs.jsonl", prompts(2))
    r = run_cli("run", "jobs.jsonl", "-m", "sim:my-local-model", "--max-cost", "1")
    assert r.code == 2
    assert '[prices."sim:my-local-model"]' in r.stderr
    assert not (tmp_path / "jobs.results.jsonl").exists()


def test_unknown_model_prices_as_null(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "jobs.jsonl", prompts(2))
    r = run_cli("run", "jobs.jsonl", "-m", "sim:my-local-model", "--report", "rep.json")
    assert r.code == 0
    assert all(x["cost_usd"] is None for x in read_jsonl(tmp_path / "jobs.results.jsonl"))
    report = orjson.loads((tmp_path / "rep.json").read_bytes())
    assert report["unpriced_models"] == ["sim:my-local-model"]
    assert report["by_model"]["sim:my-local-model"]["cost_usd"] is None
    assert "unpriced" in r.stderr


def test_config_prices_add_a_model(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "jobs.jsonl", prompts(2))
    (tmp_path / "llmbatch.toml").write_text(
        '[prices."sim:my-local-model"]\ninput = 1.0\noutput = 2.0\n'
    )
    r = run_cli("run", "jobs.jsonl", "-m", "sim:my-local-model", "--max-cost", "1", "--quiet")
    assert r.code == 0, r.output
    for x in read_jsonl(tmp_path / "jobs.results.jsonl"):
        u = x["usage"]
        assert x["cost_usd"] == pytest.approx(
            (u["input_tokens"] * 1.0 + u["output_tokens"] * 2.0) / 1e6, rel=1e-6
        )


def test_models_lists_prices() -> None:
    r = run_cli("models", "--json")
    assert r.code == 0
    rows = orjson.loads(r.stdout)
    haiku = [x for x in rows if x["model"] == "claude-haiku-4-5"]
    assert haiku and haiku[0]["input"] > 0 and haiku[0]["output"] > haiku[0]["input"]


def test_estimate_counts_and_prices(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "jobs.jsonl", prompts(10))
    r = run_cli("estimate", "jobs.jsonl", "-m", "claude-haiku-4-5", "--json")
    assert r.code == 0, r.output
    est = orjson.loads(r.stdout)
    assert est["jobs"]["total"] == 10 and est["jobs"]["left"] == 10
    assert est["worst_case_usd"] > est["expected_usd"] > 0
    assert not (tmp_path / "jobs.results.jsonl").exists()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_5k_lines_stream_through_with_bounded_memory(tmp_path: Path) -> None:
    # 5k lines keep the suite quick; `make bench` holds memory flat from 50k to 200k.
    path = tmp_path / "big.jsonl"
    with path.open("wb") as f:
        for i in range(5_000):
            f.write(b'{"id": "j%d", "prompt": "Say something about number %d."}\n' % (i, i))
    # No cache: 100k answers would make a 120 MB cache file, beside the point here.
    # Its own peak RSS, read by a small launcher that forks it (as bench/common.py does):
    # a child spawned by this worker inherits the worker's peak into its ru_maxrss (vfork,
    # then exec keeps the high-water mark), and the worker may hold pyarrow, datasets…
    usage_file = tmp_path / "usage"
    launcher = (
        "import os, sys\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    os.execv(sys.argv[2], sys.argv[2:])\n"
        "_, status, u = os.wait4(pid, 0)\n"
        "open(sys.argv[1], 'w').write(str(u.ru_maxrss))\n"
        "sys.exit(os.waitstatus_to_exitcode(status))\n"
    )
    args = [sys.executable, "-m", "llmbatch", "run", "big.jsonl", "-m", SIM, "-c", "64"]
    proc = subprocess.Popen(
        [sys.executable, "-S", "-c", launcher, str(usage_file), *args, "--quiet", "--no-cache"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err.decode()
    n = 0
    seen = set()
    with (tmp_path / "big.results.jsonl").open("rb") as f:
        for line in f:
            seen.add(orjson.loads(line)["id"])
            n += 1
    assert n == len(seen) == 5_000
    # Peak RSS of the child (KiB on Linux): the whole input would be far more than this
    # if it were held as job objects; the done-set and streams stay small.
    peak_mib = int(usage_file.read_text()) / 1024
    assert peak_mib < 250, f"peak RSS {peak_mib:.0f} MiB"


def test_help_and_version() -> None:
    r = run_cli("--help")
    assert r.code == 0
    for command in ("run", "validate", "estimate", "report", "models"):
        assert command in r.stdout
    v = run_cli("--version")
    assert v.code == 0 and v.stdout.strip() == f"llmbatch {llmbatch.__version__}"


def test_a_closed_output_pipe_stops_quietly(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "jobs.jsonl", prompts(2000))
    env = dict(os.environ, LLMBATCH_SIM_LATENCY_MS="20")
    producer = subprocess.Popen(
        [sys.executable, "-m", "llmbatch", "run", "jobs.jsonl", "-m", SIM, "-o", "-", "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert producer.stdout is not None
    first = producer.stdout.readline()
    assert orjson.loads(first)["status"] == "ok"
    producer.stdout.close()  # like `| head -1`
    _, stderr = producer.communicate(timeout=60)
    assert producer.returncode == 141, stderr.decode()
    assert b"output pipe was closed" in stderr
    assert b"internal error" not in stderr


def test_output_cannot_be_the_jobs_file(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "jobs.jsonl", prompts(2))
    r = run_cli("run", "jobs.jsonl", "-m", SIM, "-o", "./jobs.jsonl")
    assert r.code == 2 and "is the jobs file itself" in r.stderr
    assert len(read_jsonl(tmp_path / "jobs.jsonl")) == 2
