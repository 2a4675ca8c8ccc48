"""``run --ray`` and ``llmbatch.ray`` on a real local Ray (2 CPUs, one per module), against
the loopback fake and a real Redis: every job once, the shared pace and budget held, a
killed driver resumed. In CI (``CI`` set) a missing Ray fails; it never skips there."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import (
    fake_env,
    prompts,
    read_jsonl,
    run_cli,
    start_cli,
    wait_until,
    write_jsonl,
)
from tests.fakeapi import FakeAPI
from tests.redis_server import RedisServer
from tests.test_shared_runs import MODEL, bill, peak_pace

pytestmark = [
    pytest.mark.slow,
    # Ray's own deprecations (its defaults warn about themselves), not llmbatch's.
    pytest.mark.filterwarnings(r"ignore::DeprecationWarning:ray\..*"),
    pytest.mark.filterwarnings(r"ignore::FutureWarning:ray\..*"),
]


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[str]:
    """A local Ray of 2 CPUs for the module; yields its address (for other drivers)."""
    try:
        import ray
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("ray is not installed: `pip install -e '.[dev]'` (CI runs these tests)")
        pytest.skip("ray is not installed (pip install 'llmbatch[ray]')")
    # address="local": a Ray of its own, even where `ray start` left one named current.
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield str(ray.get_runtime_context().gcs_address)
    finally:
        ray.shutdown()


def ids_of(path: Path) -> list[str]:
    return [line["id"] for line in read_jsonl(path)]


def test_ray_run_shares_the_pace_and_the_budget_in_redis(
    tmp_path: Path, ray_cluster: str, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 600 a minute, as a 5 s sliding window of 50: the two workers pace together in Redis.
    api = FakeAPI(window_limit=50, window_s=5.0).start()
    try:
        for name, value in fake_env(api).items():
            monkeypatch.setenv(name, value)
        jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(60))
        out = tmp_path / "out.jsonl"
        args = ["run", str(jobs), "-m", MODEL, "-o", str(out), "--quiet", "--rpm", "600"]
        done = run_cli(
            *args, "-c", "8", "--ray", "--ray-workers", "2", "--shared", redis_server.url
        )
        assert done.code == 0, done.output
        assert sorted(ids_of(out)) == sorted(f"job-{i}" for i in range(60))  # each once
        assert api.outcomes().get("429", 0) <= 0.03 * api.count()
        assert peak_pace(api, window_s=3.0) >= 0.8 * 10.0  # ≥ 80 % of 600/min
    finally:
        api.stop()

    # --max-cost for the cluster as a whole: the fake's own bill stays under it.
    api = FakeAPI().start()
    try:
        for name, value in fake_env(api).items():
            monkeypatch.setenv(name, value)
        rows = prompts(400)
        for row in rows:
            row["prompt"] += " Some context." * 30
        jobs = write_jsonl(tmp_path / "jobs2.jsonl", rows)
        out = tmp_path / "out2.jsonl"
        cap = 0.02
        args = ["run", str(jobs), "-m", MODEL, "-o", str(out), "--quiet", "--max-tokens", "20"]
        done = run_cli(
            *args,
            "--max-cost",
            str(cap),
            "-c",
            "8",
            "--ray",
            "--ray-workers",
            "2",
            "--shared",
            redis_server.url,
        )
        assert done.code == 3, done.output  # stopped by the cap
        assert bill(api) <= cap + 1e-9
        assert bill(api) >= 0.8 * cap
        lines = read_jsonl(out)
        assert len(lines) == len({line["id"] for line in lines}) < 400
    finally:
        api.stop()


def test_killed_driver_resumes_nothing_lost_nothing_twice(
    tmp_path: Path, ray_cluster: str, fake: FakeAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.latency_s = 0.02
    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(600))
    out = tmp_path / "out.jsonl"
    args = ["run", str(jobs), "-m", MODEL, "-o", str(out), "--quiet", "-c", "8"]
    # A driver of its own joins the module's cluster, and is killed mid-run.
    proc = start_cli(
        *args, "--ray", ray_cluster, "--ray-workers", "2", env=fake_env(fake), capture=False
    )
    wait_until(lambda: out.exists() and len(out.read_bytes().splitlines()) >= 100, timeout=60)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    first = len(ids_of(out))
    assert 100 <= first < 600
    for name, value in fake_env(fake).items():
        monkeypatch.setenv(name, value)
    report = tmp_path / "report.json"
    done = run_cli(*args, "--ray", "--ray-workers", "2", "--report", str(report))
    assert done.code == 0, done.output
    said = json.loads(report.read_text())
    assert any("split evenly across 2 workers" in note for note in said["notes"])  # no --shared
    # The rate limits in force are the two actors' (the driver holds none): both ran
    # jobs, though the rest fits in one block each, and every request was counted.
    limits = said["limits"][MODEL]
    assert limits["workers"] == 2 and limits["sent"] == 600 - first
    ids = ids_of(out)
    assert len(ids) == len(set(ids)) == 600  # nothing lost, nothing written twice
    assert all(line["status"] == "ok" for line in read_jsonl(out))


def test_ray_data_process_adds_result_columns(ray_cluster: str) -> None:
    import ray

    import llmbatch.ray

    rows = [{"id": f"r{i}", "prompt": f"question {i}"} for i in range(30)]
    rows.append({"id": "bad", "prompt": ""})  # a failed row, not an exception
    ds = ray.data.from_items(rows)
    out = llmbatch.ray.process(ds, model="sim:claude-haiku-4-5", concurrency=4, workers=2)
    got = {row["id"]: row for row in out.take_all()}
    assert len(got) == 31
    assert all(got[f"r{i}"]["status"] == "ok" and got[f"r{i}"]["output"] for i in range(30))
    assert got["r3"]["prompt"] == "question 3"  # the input columns stay
    assert got["bad"]["status"] == "failed" and "prompt" in got["bad"]["error"]


def _children(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of the processes whose parent is ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:  # gone meanwhile
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append((int(entry.name), cmdline))
    return found


def engine_worker_pids() -> list[int]:
    """The run's actors: EngineWorker processes of this module's Ray (whose raylet this
    process started), not another Ray's on the machine."""
    raylets = [pid for pid, cmd in _children(os.getpid()) if "raylet" in cmd.split(" ")[0]]
    return [
        pid
        for raylet in raylets
        for pid, cmd in _children(raylet)
        if cmd.startswith("ray::EngineWorker")
    ]


def test_a_lost_worker_loses_no_written_answer_and_the_others_finish(
    tmp_path: Path, ray_cluster: str, fake: FakeAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.latency_s = 0.03
    for name, value in fake_env(fake).items():
        monkeypatch.setenv(name, value)
    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(600))
    out, report = tmp_path / "out.jsonl", tmp_path / "report.json"
    args = ["run", str(jobs), "-m", MODEL, "-o", str(out), "--quiet", "-c", "8"]
    killed: list[int] = []

    def kill_a_worker() -> None:  # one actor's process, SIGKILLed mid-run
        wait_until(lambda: out.exists() and len(out.read_bytes().splitlines()) >= 100)
        pids = engine_worker_pids()
        killed.extend(pids[:1])
        os.kill(pids[0], signal.SIGKILL)

    killer = threading.Thread(target=kill_a_worker)
    killer.start()
    done = run_cli(*args, "--ray", "--ray-workers", "2", "--report", str(report))
    killer.join()
    assert killed and done.code == 0, done.output  # the other worker took its blocks
    notes = json.loads(report.read_text())["notes"]
    assert any("a Ray worker was lost" in note for note in notes), notes
    ids = ids_of(out)
    assert len(ids) == len(set(ids)) == 600  # what reached the driver kept, none twice
    assert all(line["status"] == "ok" for line in read_jsonl(out))
    again = run_cli(*args, "--ray", "--ray-workers", "2", "--report", str(report))
    assert again.code == 0, again.output
    assert json.loads(report.read_text())["jobs"]["skipped_done"] == 600
    assert len(ids_of(out)) == 600


def test_ray_reads_parquet_with_columns_and_resumes(tmp_path: Path, ray_cluster: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"doc": f"d{i}", "text": f"Summarise item {i}", "topic": f"t{i}"} for i in range(40)]
    data = tmp_path / "data.parquet"
    pq.write_table(pa.Table.from_pylist(rows), data, row_group_size=16)
    cols = ("--id-column", "doc", "--prompt-column", "text", "--include-columns", "topic")
    flags = ("-m", "sim:gpt-4o-mini", "--quiet", "--no-cache", *cols)
    local, on_ray = tmp_path / "local.jsonl", tmp_path / "ray.jsonl"
    assert run_cli("run", str(data), "-o", str(local), *flags).code == 0
    done = run_cli("run", str(data), "-o", str(on_ray), *flags, "--ray", "--ray-workers", "2")
    assert done.code == 0, done.output

    def by_id(path: Path) -> dict[str, tuple[str, str, object]]:
        return {d["id"]: (d["status"], d["output"], d["metadata"]) for d in read_jsonl(path)}

    assert by_id(on_ray) == by_id(local)
    assert by_id(on_ray)["d7"][2] == {"topic": "t7"}
    # Resumed: the ids of what the output holds, read from the rows, are not run again.
    kept = on_ray.read_bytes().splitlines(keepends=True)[:15]
    on_ray.write_bytes(b"".join(kept))
    report = tmp_path / "report.json"
    again = run_cli("run", str(data), "-o", str(on_ray), *flags, "--ray", "--report", str(report))
    assert again.code == 0, again.output
    assert json.loads(report.read_text())["jobs"]["skipped_done"] == 15
    assert sorted(ids_of(on_ray)) == sorted(f"d{i}" for i in range(40))


def test_an_output_that_cannot_be_written_stops_the_run_resumably(
    tmp_path: Path, ray_cluster: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from llmbatch._core.exceptions import OutputError
    from llmbatch._engine.sinks import OutputSink

    write = OutputSink.write_lines
    calls: list[int] = []

    def full_after_one(self: OutputSink, lines: list[bytes]) -> None:
        calls.append(len(lines))
        if len(calls) > 1:  # the disk is full from the second part on
            raise OutputError("no space left on the output; stopped")
        write(self, lines)

    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(3000))
    out = tmp_path / "out.jsonl"
    args = ["run", str(jobs), "-m", "sim:claude-haiku-4-5", "-o", str(out), "--quiet"]
    monkeypatch.setenv("LLMBATCH_SIM_LATENCY_MS", "0")
    report = tmp_path / "report.json"
    with monkeypatch.context() as patch:
        patch.setattr(OutputSink, "write_lines", full_after_one)
        done = run_cli(*args, "--no-cache", "--ray", "--ray-workers", "2", "--report", str(report))
    assert done.code == 1, done.output  # stopped by the output, as a local run is
    assert json.loads(report.read_text())["stopped_by"] == "output_error"
    assert "no space left" in done.output and "worker was lost" not in done.output
    first = ids_of(out)
    assert 0 < len(first) < 3000
    again = run_cli(*args, "--no-cache", "--ray", "--ray-workers", "2")
    assert again.code == 0, again.output
    ids = ids_of(out)
    assert len(ids) == len(set(ids)) == 3000


def test_log_json_has_the_workers_attempts(tmp_path: Path, ray_cluster: str) -> None:
    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(120))
    out, log = tmp_path / "out.jsonl", tmp_path / "events.jsonl"
    args = ["run", str(jobs), "-m", "sim:claude-haiku-4-5", "-o", str(out), "--quiet"]
    done = run_cli(*args, "--no-cache", "--log-json", str(log), "--ray", "--ray-workers", "2")
    assert done.code == 0, done.output
    events = read_jsonl(log)
    attempts = [e for e in events if e["event"] == "attempt"]
    # One attempt line a job (the sim answers at once), as a local run logs them.
    assert sorted(e["job"] for e in attempts) == sorted(f"job-{i}" for i in range(120))
    assert all(e["outcome"] == "ok" and e["model"] for e in attempts)
    kinds = [e["event"] for e in events]
    assert kinds.count("run_start") == kinds.count("run_end") == 1  # the driver's run alone
    assert kinds.index("run_start") < kinds.index("attempt") and kinds[-1] == "run_end"


def test_an_actors_own_error_is_said_as_a_local_run_says_it(
    tmp_path: Path, ray_cluster: str, fake: FakeAPI
) -> None:
    # The actors open the --shared store; one that cannot be reached stops the run with
    # llmbatch's own message and exit code, not Ray's traceback of the actor.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]  # nothing listens there once this is closed
    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(20))
    out = tmp_path / "out.jsonl"
    shared = f"redis://127.0.0.1:{closed}/0"
    done = run_cli(
        "run", str(jobs), "-m", MODEL, "-o", str(out), "--quiet",
        "--ray", "--ray-workers", "2", "--shared", shared, env=fake_env(fake),
    )  # fmt: skip
    assert done.code == 5, done.output  # the shared store: budgets fail closed
    assert done.stderr.startswith(f"llmbatch: --shared {shared}: "), done.stderr
    assert "ray::" not in done.stderr and "Traceback" not in done.stderr
    assert fake.count() == 0  # nothing was sent
