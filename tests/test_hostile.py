"""Issue 11: hostile input and surroundings. Nothing lost, nothing paid twice, no key leaked,
never an internal error. In-process where the CLI is not the point."""

from __future__ import annotations

import errno
import math
import os
from pathlib import Path
from typing import Any

import orjson
import pytest

from llmbatch import ModelRef, RunConfig, run_jobs
from llmbatch._config.settings import FileConfig, build_run_config, load_config
from llmbatch._core.exceptions import ConfigError, OutputLocked, UsageError
from llmbatch._core.schema import check_schema
from llmbatch._engine.plan import Planner
from llmbatch._io.history import history_path, read_history
from llmbatch._io.lock import OutputLock
from tests.conftest import (
    CANARY_OPENAI,
    fake_env,
    prompts,
    read_jsonl,
    run_cli,
    run_cli_process,
    write_jsonl,
)
from tests.fakeapi import FakeAPI

SIM = "sim:claude-haiku-4-5"


def build(tmp_path: Path, **flags: Any) -> RunConfig:
    jobs = tmp_path / "jobs.jsonl"
    if not jobs.exists():
        write_jsonl(jobs, prompts(3))
    return build_run_config(jobs, {"model": SIM, **flags}, FileConfig())


def sim_config(tmp_path: Path, n: int, **kw: Any) -> RunConfig:
    jobs = tmp_path / "jobs.jsonl"
    if not jobs.exists():
        write_jsonl(jobs, prompts(n))
    cfg = RunConfig(
        jobs=jobs, output=tmp_path / "out.jsonl", model=ModelRef("sim", "m1"), quiet=True
    )
    for key, value in kw.items():
        setattr(cfg, key, value)
    return cfg


# -- data loss: every written path against every read path, by real path -------------


def test_written_paths_never_overwrite_read_ones(tmp_path: Path) -> None:
    (tmp_path / "schema.json").write_bytes(b'{"type": "object"}')
    (tmp_path / "t.txt").write_text("Q: {q}")
    os.symlink(tmp_path / "jobs.jsonl", tmp_path / "alias.jsonl")
    build(tmp_path)  # writes the jobs file
    os.link(tmp_path / "jobs.jsonl", tmp_path / "hard.jsonl")
    cases: list[tuple[dict[str, Any], str]] = [
        ({"report": "jobs.jsonl"}, "--report jobs.jsonl is the jobs file itself"),
        ({"report": str(tmp_path / "alias.jsonl")}, "is the jobs file itself"),
        ({"report": str(tmp_path / "hard.jsonl")}, "is the jobs file itself"),
        ({"report": str(tmp_path / "./sub/../jobs.jsonl")}, "is the jobs file itself"),
        ({"report": "jobs.results.jsonl"}, "is --output itself"),
        ({"output": "r.jsonl", "report": "r.jsonl.runs.jsonl"}, "is the run history itself"),
        ({"output": "r.jsonl", "report": "r.jsonl.lock"}, "is the output lock itself"),
        ({"output": "schema.json", "schema": "schema.json"}, "is --schema itself"),
        ({"report": "t.txt", "template_file": "t.txt"}, "is --template-file itself"),
        ({"output": "hard.jsonl"}, "is the jobs file itself"),
    ]
    (tmp_path / "sub").mkdir()
    for flags, message in cases:
        with pytest.raises(UsageError, match="Nothing was sent") as info:
            build(tmp_path, **flags)
        assert message in str(info.value), (flags, str(info.value))
    # The config file is read too.
    (tmp_path / "llmbatch.toml").write_text('report = "llmbatch.toml"\n')
    with pytest.raises(UsageError, match="is the config file itself"):
        build_run_config(
            tmp_path / "jobs.jsonl", {"model": SIM}, load_config(tmp_path / "llmbatch.toml")
        )


def test_report_over_the_jobs_file_via_the_cli_exits_2_and_keeps_it(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "jobs.jsonl", prompts(2))
    before = (tmp_path / "jobs.jsonl").read_bytes()
    r = run_cli("run", "jobs.jsonl", "-m", SIM, "--report", "./jobs.jsonl")
    assert r.code == 2 and "is the jobs file itself" in r.stderr, r.output
    assert (tmp_path / "jobs.jsonl").read_bytes() == before
    assert not (tmp_path / "jobs.results.jsonl").exists()


def test_an_alias_of_the_output_meets_its_lock_history_and_resume(tmp_path: Path) -> None:
    real = tmp_path / "out.jsonl"
    alias = tmp_path / "alias.jsonl"
    os.symlink(real, alias)  # dangling until the first run writes the file
    cfg = build(tmp_path, output=str(alias))
    assert cfg.output == real
    first = OutputLock(real)
    first.acquire()
    try:
        with pytest.raises(OutputLocked):
            OutputLock(alias).acquire()
    finally:
        first.release()
    assert history_path(alias) == history_path(real)
    run_jobs(cfg)
    again = run_jobs(build(tmp_path, output=str(alias)))
    assert again.skipped_done == 3 and again.ok == 0
    assert len(read_jsonl(real)) == 3
    assert not (tmp_path / "alias.jsonl.lock").exists()
    assert len(read_history(real)) == 2


# -- numbers: NaN and infinities, absurd sizes -------------------------------------


def test_nan_and_infinity_are_refused_for_every_numeric_option(tmp_path: Path) -> None:
    for key in ("max_cost", "timeout", "rpm", "tpm", "idle_timeout", "backoff_cap", "temperature"):
        for value in (math.nan, math.inf, -math.inf):
            with pytest.raises(UsageError, match="finite"):
                build(tmp_path, **{key: value})
    with pytest.raises(UsageError, match="at most 10,000"):
        build(tmp_path, concurrency=1_000_000)
    with pytest.raises(UsageError, match="out of range"):
        build(tmp_path, max_tokens=10**30)
    for toml, message in [
        ("max_cost = nan\n", "finite"),
        ("timeout = inf\n", "finite"),
        ('[prices."sim:x"]\ninput = nan\noutput = 1\n', "must be a number ≥ 0"),
        ('[prices."sim:x"]\ninput = 1\noutput = inf\n', "must be a number ≥ 0"),
        ('[limits."sim:x"]\nrpm = nan\n', "must be a number > 0"),
    ]:
        (tmp_path / "c.toml").write_text(toml)
        with pytest.raises(ConfigError, match=message):
            load_config(tmp_path / "c.toml")


def test_nan_flags_exit_2_from_the_cli(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "jobs.jsonl", prompts(1))
    r = run_cli("run", "jobs.jsonl", "-m", SIM, "--timeout", "nan", "--max-cost", "1")
    assert r.code == 2 and "--timeout must be a finite number" in r.stderr, r.output
    assert "internal error" not in r.stderr
    assert not (tmp_path / "jobs.results.jsonl").exists()


# -- schemas whose $ref cannot be resolved ------------------------------------------


def test_unresolvable_refs_are_refused_in_the_check_pass() -> None:
    good = {"$defs": {"a": {"type": "string"}}, "properties": {"x": {"$ref": "#/$defs/a"}}}
    check_schema(good, "s.json")
    recursive = {
        "$defs": {"node": {"type": "object", "properties": {"next": {"$ref": "#/$defs/node"}}}},
        "$ref": "#/$defs/node",
    }
    check_schema(recursive, "s.json")
    check_schema({"enum": [{"$ref": "#/not/a/ref/but/data"}]}, "s.json")
    for schema, message in [
        ({"properties": {"x": {"$ref": "#/$defs/nope"}}}, "'#/$defs/nope' at properties/x"),
        ({"$ref": "https://example.com/s.json"}, "not fetched"),
        ({"items": {"$ref": "other.json#/a"}}, "'other.json#/a' at items"),
        ({"$ref": "#"}, "loop of references"),
    ]:
        with pytest.raises(UsageError, match="s.json") as info:
            check_schema(schema, "s.json")
        assert message in str(info.value)


def test_a_bad_ref_sends_nothing(fake: FakeAPI, tmp_path: Path) -> None:
    (tmp_path / "s.json").write_bytes(b'{"properties": {"a": {"$ref": "#/$defs/missing"}}}')
    rows: list[Any] = prompts(2)
    rows[1]["schema"] = {"$ref": "http://127.0.0.1:9/remote.json"}
    write_jsonl(tmp_path / "jobs.jsonl", rows)
    r = run_cli(
        "run", "jobs.jsonl", "-m", "openai:gpt-4o-mini", "--schema", "s.json", env=fake_env(fake)
    )
    assert r.code == 2 and "s.json: $ref '#/$defs/missing' at properties/a" in r.stderr, r.output
    r = run_cli("run", "jobs.jsonl", "-m", "openai:gpt-4o-mini", env=fake_env(fake))
    assert (
        r.code == 2
        and "jobs.jsonl:2: schema: $ref 'http://127.0.0.1:9/remote.json'" in r.stdout + r.stderr
    )
    assert fake.count() == 0


# -- special outputs -------------------------------------------------------------


def test_special_outputs_are_refused_or_streamed(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    os.mkfifo(tmp_path / "fifo")
    for output, message in [
        ("/dev/null", "not a regular file"),
        ("/dev/full", "not a regular file"),
        (str(tmp_path / "fifo"), "not a regular file"),
        (str(tmp_path / "dir"), "is a directory"),
        (str(tmp_path / "jobs.jsonl" / "x"), "is not a directory"),
    ]:
        with pytest.raises(UsageError, match=message):
            build(tmp_path, output=output)
    with pytest.raises(UsageError, match="is a directory"):
        build(tmp_path, report=str(tmp_path / "dir"))
    assert not list(Path("/dev").glob("*.lock"))


def test_output_to_dev_stdout_streams_like_dash(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "jobs.jsonl", prompts(3))
    r = run_cli_process("run", "jobs.jsonl", "-m", SIM, "-o", "/dev/stdout", "--quiet")
    assert r.code == 0, r.output
    assert sorted(orjson.loads(x)["id"] for x in r.stdout.splitlines()) == [
        "job-0",
        "job-1",
        "job-2",
    ]
    assert not list(Path("/dev").glob("*.lock")) and not list(Path("/proc/self/fd").glob("*.lock"))
    r = run_cli("run", "jobs.jsonl", "-m", SIM, "-o", "/dev/null")
    assert r.code == 2 and "Use -o - to stream" in r.stderr, r.output


# -- disk full ---------------------------------------------------------------------


class _FullDisk:
    """``os`` as the result writer sees it, with a disk that fills after ``room`` bytes."""

    def __init__(self, room: int) -> None:
        self.room = room

    def write(self, fd: int, data: Any) -> int:
        if self.room <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        n = os.write(fd, bytes(data[: self.room]))
        self.room -= n
        return n

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)


def test_disk_full_stops_cleanly_records_the_run_and_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import llmbatch._core.results as results

    cfg = sim_config(tmp_path, 40, concurrency=1)
    monkeypatch.setattr(results, "os", _FullDisk(room=1000))
    report = run_jobs(cfg)
    monkeypatch.undo()
    assert report.stopped_by == "output_error" and report.exit_code == 1
    assert any(f"no space left on {cfg.output}" in note for note in report.notes)
    (history,) = read_history(cfg.output)  # type: ignore[arg-type]
    assert history["stopped_by"] == "output_error"
    assert cfg.output is not None and 0 < cfg.output.stat().st_size <= 1000
    # Space again: the torn line is cut, the rest runs, no job twice.
    again = run_jobs(sim_config(tmp_path, 40))
    ids = [x["id"] for x in read_jsonl(cfg.output)]
    assert sorted(ids) == sorted(f"job-{i}" for i in range(40)) and again.exit_code == 0


# -- keys and base URLs ----------------------------------------------------------------


def test_a_custom_provider_gets_no_key_unless_it_names_one(fake: FakeAPI, tmp_path: Path) -> None:
    write_jsonl(tmp_path / "jobs.jsonl", prompts(1))
    (tmp_path / "llmbatch.toml").write_text(
        f'[providers.third]\ntype = "openai"\nbase_url = "{fake.url}/v1"\n'
    )
    r = run_cli("run", "jobs.jsonl", "-m", "third:m", "--quiet", env=fake_env(fake))
    assert r.code == 0, r.output
    (record,) = fake.records
    assert "authorization" not in record.headers
    assert CANARY_OPENAI not in str(record.headers)


def test_unsendable_keys_and_base_urls_exit_2_without_quoting_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_jsonl(tmp_path / "jobs.jsonl", prompts(1))
    cfg = build_run_config(tmp_path / "jobs.jsonl", {"model": "openai:gpt-4o"}, FileConfig())
    planner = Planner(cfg)
    plan = planner.plan()
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    for key, message in [
        ("sk-secret-abcdef\r", "contains a line break"),
        ("sk-secret\x1babc", "contains a control character"),
        ("“sk-secret-abc”", "non-ASCII"),
    ]:
        monkeypatch.setenv("OPENAI_API_KEY", key)
        with pytest.raises(UsageError, match=message) as info:
            planner.check(plan)
        assert "secret" not in str(info.value)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-fine")
    monkeypatch.setenv("OPENAI_BASE_URL", "https://user:hunter2@example.com/v1")
    with pytest.raises(UsageError, match="user:pass@") as info:
        planner.check(plan)
    assert "hunter2" not in str(info.value)
    (tmp_path / "c.toml").write_text(
        '[providers.x]\ntype = "openai"\nbase_url = "http://u:pw-secret@h/v1"\n'
    )
    with pytest.raises(UsageError, match="user:pass@") as info:
        load_config(tmp_path / "c.toml")
    assert "pw-secret" not in str(info.value)
    (tmp_path / "c.toml").write_text('[providers.x]\ntype = "openai"\nheaders = {a = "k\\r\\n"}\n')
    with pytest.raises(UsageError, match="header 'a' contains a line break"):
        load_config(tmp_path / "c.toml")
    (tmp_path / "c.toml").write_text('[providers.x]\ntype = "openai"\nbase_url = "h/v1"\n')
    with pytest.raises(UsageError, match="http:// or https://"):
        load_config(tmp_path / "c.toml")


def test_a_crlf_key_file_exits_2_from_the_cli(fake: FakeAPI, tmp_path: Path) -> None:
    write_jsonl(tmp_path / "jobs.jsonl", prompts(1))
    env = {**fake_env(fake), "OPENAI_API_KEY": CANARY_OPENAI + "\r"}
    r = run_cli("run", "jobs.jsonl", "-m", "openai:gpt-4o-mini", env=env)
    assert r.code == 2 and "OPENAI_API_KEY contains a line break" in r.stderr, r.output
    assert CANARY_OPENAI not in r.output and fake.count() == 0


def test_jobs_from_a_pipe_are_read_twice_safely(tmp_path: Path) -> None:
    from llmbatch._io.jobfile import spooled_jobs_source

    data = b"".join(orjson.dumps(row) + b"\n" for row in prompts(3))
    r = run_cli("run", "/dev/stdin", "-m", SIM, "-o", "out.jsonl", "--quiet", input=data)
    assert r.code == 0, r.output
    assert len(read_jsonl(tmp_path / "out.jsonl")) == 3  # before: 0 lines, exit 0
    with pytest.raises(UsageError, match="is a device"):
        spooled_jobs_source("/dev/zero")
    assert spooled_jobs_source(str(tmp_path / "out.jsonl")) is None


def test_a_config_built_by_hand_gets_the_path_check_too(tmp_path: Path) -> None:
    cfg = sim_config(tmp_path, 2, report=tmp_path / "jobs.jsonl")
    with pytest.raises(UsageError, match="--report .* is the jobs file itself"):
        run_jobs(cfg)
    assert len(read_jsonl(tmp_path / "jobs.jsonl")) == 2 and not (tmp_path / "out.jsonl").exists()


def test_a_file_size_limit_stops_the_cli_cleanly_and_resumes(tmp_path: Path) -> None:
    """A real kernel refusal, no root needed: RLIMIT_FSIZE (Python ignores SIGXFSZ)."""
    import resource
    import subprocess
    import sys

    write_jsonl(tmp_path / "jobs.jsonl", prompts(300))
    args = [sys.executable, "-m", "llmbatch", "run", "jobs.jsonl", "-m", SIM, "-o", "out.jsonl"]

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))

    proc = subprocess.run(
        [*args, "--quiet"], capture_output=True, preexec_fn=small_files, timeout=120
    )
    stderr = proc.stderr.decode()
    assert proc.returncode == 1, stderr
    assert "out.jsonl has reached the largest file size allowed" in stderr
    assert "internal error" not in stderr
    (history,) = read_history(tmp_path / "out.jsonl")
    assert history["stopped_by"] == "output_error" and history["exit_code"] == 1
    assert (tmp_path / "out.jsonl").stat().st_size <= 20_000
    proc = subprocess.run([*args, "--quiet"], capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    ids = [x["id"] for x in read_jsonl(tmp_path / "out.jsonl")]
    assert sorted(ids) == sorted(f"job-{i}" for i in range(300))


def test_a_keyless_anthropic_type_provider_sends_no_credential(
    fake: FakeAPI, tmp_path: Path
) -> None:
    (tmp_path / "llmbatch.toml").write_text(
        f'[providers.local]\ntype = "anthropic"\nbase_url = "{fake.url}"\napi_key_env = ""\n'
    )
    write_jsonl(tmp_path / "jobs.jsonl", prompts(1))
    r = run_cli("run", "jobs.jsonl", "-m", "local:claude-haiku-4-5", "--quiet", env=fake_env(fake))
    assert r.code == 0, r.output
    sent = fake.records[0].headers
    assert "authorization" not in sent and "x-api-key" not in sent
