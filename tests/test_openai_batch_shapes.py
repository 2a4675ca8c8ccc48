"""Batch APIs through the OpenAI batch client: Azure Global Batch (v1 and deployment paths),
the Responses API (``url: /v1/responses``) and a compatible service configured with
``batch = true`` and its differences (file purpose, inline requests). Each submits,
survives kill -9 in create and in fetch with nothing paid twice, and fetches."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import (
    CANARY_OPENAI,
    read_jsonl,
    run_cli,
    start_cli,
    wait_until,
    write_jsonl,
)
from tests.fakeapi import FakeAPI
from tests.fakebatch import FakeBatch


@dataclass(frozen=True)
class BatchShape:
    name: str
    model: str  # the jobs' model spec
    toml: str  # llmbatch.toml ({url}: the fake)
    prefix: str  # where the fake saw the files and batches calls
    endpoint: str  # the batch's endpoint / the lines' url
    purpose: str = "batch"
    inline: bool = False

    def env(self, fb: FakeBatch) -> dict[str, str]:
        return {
            "OPENAI_BASE_URL": fb.api.url + "/v1",
            "OPENAI_API_KEY": CANARY_OPENAI,
            "AZURE_OPENAI_ENDPOINT": fb.api.url,
            "AZURE_OPENAI_API_KEY": CANARY_OPENAI,
            "COMPAT_KEY": CANARY_OPENAI,
        }


COMPAT = """[providers.together]
type = "openai"
base_url = "{url}/compat/v1"
api_key_env = "COMPAT_KEY"
batch = true
{more}
[prices."together:llama-3-8b"]
input = 0.2
output = 0.4
"""

SHAPES = [
    BatchShape("azure-v1", "azure:gpt-4o-mini", "", "/openai/v1", "/chat/completions"),
    BatchShape(
        "azure-deployment",
        "azure:batch-deploy",
        '[providers.azure]\nazure_path = "deployment"\nprice_as = "gpt-4o-mini"\n',
        "/openai",
        "/chat/completions",
    ),
    BatchShape("responses", "openai:gpt-4o-mini", 'api = "responses"\n', "/v1", "/v1/responses"),
    BatchShape(
        "compat-purpose",
        "together:llama-3-8b",
        COMPAT.replace("{more}", 'batch_purpose = "batch-api"'),
        "/compat/v1",
        "/v1/chat/completions",
        purpose="batch-api",
    ),
    BatchShape(
        "compat-inline",
        "together:llama-3-8b",
        COMPAT.replace("{more}", "batch_inline = true"),
        "/compat/v1",
        "/v1/chat/completions",
        inline=True,
    ),
]
IDS = [s.name for s in SHAPES]


@pytest.fixture
def fb() -> Iterator[FakeBatch]:
    api = FakeAPI(retry_after=0.01)
    batch = FakeBatch(api)
    api.start()
    try:
        yield batch
    finally:
        api.stop()


def setup(shape: BatchShape, fb: FakeBatch, tmp_path: Path, n: int) -> tuple[Path, str]:
    fb.file_purpose = shape.purpose
    (tmp_path / "llmbatch.toml").write_text(shape.toml.replace("{url}", fb.api.url))
    rows = [{"id": f"job-{i}", "prompt": f"Question {i}?", "model": shape.model} for i in range(n)]
    return write_jsonl(tmp_path / "jobs.jsonl", rows), str(tmp_path / "out.jsonl")


def check_sent(shape: BatchShape, fb: FakeBatch) -> None:
    assert set(fb.paths) == {shape.prefix}
    for b in fb.batches.values():
        assert b.endpoint == shape.endpoint
        assert (b.input_file_id == "") == shape.inline
    if shape.inline:
        assert not fb.files  # nothing uploaded: the requests went in the create body
    else:
        assert {f.purpose for f in fb.files.values() if f.purpose != "batch_output"} == {
            shape.purpose
        }


@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_submit_fetch_and_the_answers(shape: BatchShape, fb: FakeBatch, tmp_path: Path) -> None:
    path, out = setup(shape, fb, tmp_path, 12)
    env = shape.env(fb)
    sub = run_cli("batch", "submit", str(path), "-o", out, "--batch-size", "5", env=env)
    assert sub.code == 0, sub.output
    assert len(fb.created) == 3 and sorted(n for _, _, n in fb.created) == [2, 5, 5]
    check_sent(shape, fb)
    model = shape.model.partition(":")[2]
    for b in fb.batches.values():
        for it in b.items:
            assert it.body["model"] == model
            if shape.name == "responses":
                assert "input" in it.body and "messages" not in it.body
                assert it.body["store"] is False and "stream" not in it.body
    assert run_cli("batch", "fetch", out, env=env).code == 4  # still running
    fb.advance(3600)
    fetched = run_cli("batch", "fetch", out, env=env)
    assert fetched.code == 0, fetched.output
    lines = {x["id"]: x for x in read_jsonl(Path(out))}
    assert sorted(lines) == sorted(f"job-{i}" for i in range(12))
    for i in range(12):
        x = lines[f"job-{i}"]
        assert x["status"] == "ok" and x["output"].startswith(f"Answer to: Question {i}?")
        assert x["usage"]["output_tokens"] > 0 and x["cost_usd"] > 0
    assert CANARY_OPENAI not in sub.output + fetched.output


@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_kill_9_in_create_and_in_fetch_pays_nothing_twice(
    shape: BatchShape, fb: FakeBatch, tmp_path: Path
) -> None:
    path, out = setup(shape, fb, tmp_path, 10)
    env = shape.env(fb)
    fb.create_delay_s = 60  # the batch exists; its id never reaches the client
    proc = start_cli(
        "batch", "submit", str(path), "-o", out, "--batch-size", "5", env=env, capture=False
    )
    try:
        wait_until(lambda: len(fb.created) == 1)
    finally:
        proc.kill()
        proc.wait()
    fb.create_delay_s = 0
    res = run_cli("batch", "submit", str(path), "-o", out, "--batch-size", "5", env=env)
    assert res.code == 0, res.output
    assert "found batch" in res.stderr  # the killed create's batch, adopted
    assert len(fb.created) == 2
    assert Counter(fb.sent_ids().values()) == Counter({1: 10})
    fb.advance(3600)
    fb.download_delay_s = 60  # the fetch is killed while it downloads
    proc = start_cli("batch", "fetch", out, env=env, capture=False)
    try:
        wait_until(lambda: fb.calls["file_content"] >= 1 or fb.calls["batch_get"] >= 2)
        wait_until(lambda: fb.calls["file_content"] >= 1)
    finally:
        proc.kill()
        proc.wait()
    fb.download_delay_s = 0
    fetched = run_cli("batch", "fetch", out, env=env)
    assert fetched.code == 0, fetched.output
    assert len(fb.created) == 2 and Counter(fb.sent_ids().values()) == Counter({1: 10})
    lines = read_jsonl(Path(out))
    assert Counter(x["id"] for x in lines) == Counter(f"job-{i}" for i in range(10))
    assert not fb.api.records  # nothing went online either


def test_a_compatible_server_without_batch_true_is_refused_before_any_call(
    fb: FakeBatch, tmp_path: Path
) -> None:
    shape = SHAPES[3]
    path, out = setup(shape, fb, tmp_path, 2)
    (tmp_path / "llmbatch.toml").write_text(
        COMPAT.replace("batch = true\n", "").replace("{url}", fb.api.url).replace("{more}", "")
    )
    res = run_cli("batch", "submit", str(path), "-o", out, env=shape.env(fb))
    assert res.code == 2, res.output
    assert "has no Batch API" in res.stderr and "batch = true" in res.stderr
    assert not fb.created and not fb.files


def test_batch_true_is_for_openai_compatible_providers_only(tmp_path: Path) -> None:
    (tmp_path / "llmbatch.toml").write_text('[providers.x]\ntype = "anthropic"\nbatch = true\n')
    write_jsonl(tmp_path / "jobs.jsonl", [{"id": "a", "prompt": "p"}])
    res = run_cli("run", "jobs.jsonl", "-m", "x:m", "--dry-run")
    assert res.code == 2 and "batch = true is for" in res.stderr


@pytest.mark.parametrize(("limit", "value"), [("max_bytes", 2000), ("max_requests", 4)])
def test_azure_chunks_stay_under_its_limits(
    fb: FakeBatch, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, limit: str, value: int
) -> None:
    from llmbatch.providers.azure import AzureBatchClient

    assert AzureBatchClient.max_requests == 50_000
    assert AzureBatchClient.max_bytes == 200 * 1024 * 1024
    monkeypatch.setattr(AzureBatchClient, limit, value)
    path, out = setup(SHAPES[0], fb, tmp_path, 20)
    res = run_cli("batch", "submit", str(path), "-o", out, env=SHAPES[0].env(fb))
    assert res.code == 0, res.output
    sizes = [len(f.data) for f in fb.files.values() if f.purpose == "batch"]
    counts = [n for _, _, n in fb.created]
    assert len(sizes) > 1 and sum(counts) == 20
    assert max(sizes) <= 2000 if limit == "max_bytes" else max(counts) <= 4


def test_batch_submit_takes_api_as_a_flag(fb: FakeBatch, tmp_path: Path) -> None:
    shape = SHAPES[2]
    path, out = setup(shape, fb, tmp_path, 3)
    (tmp_path / "llmbatch.toml").unlink()
    sub = run_cli("batch", "submit", str(path), "-o", out, "--api", "responses", env=shape.env(fb))
    assert sub.code == 0, sub.output
    (b,) = fb.batches.values()
    assert b.endpoint == "/v1/responses" and all("input" in it.body for it in b.items)
