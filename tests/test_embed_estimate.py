"""``llmbatch estimate`` and ``--dry-run`` over embedding files: the lines, the packed
requests (as the run packs them: caps, --inputs-per-request, repeats sent once), the
packer's tokens and the cost at the embedding price — counted by hand on a small file —
and the exact request bodies, keys redacted, nothing sent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.conftest import CANARY_OPENAI, run_cli

MODEL = "openai:text-embedding-3-small"
# Bytes → the packer's bound, a third of the UTF-8 bytes rounded up (6 → 2, 9 → 3, 3 → 1,
# 12 → 4, "ééé" 6 → 2), and the rate limiter's about 4 characters a token (len // 4 + 1:
# 2, 3, 1, 4, 1).
LINES: list[dict[str, Any]] = [
    {"id": "a", "input": "aaaaaa"},
    {"id": "b", "input": ["bbbbbbbbb", "aaaaaa"]},  # "aaaaaa" again: sent once
    {"id": "c", "input": "ccc", "dimensions": 8},  # another group: a request of its own
    {"id": "d", "input": "dddddddddddd"},
    {"id": "e"},  # invalid: no input
    {"id": "f", "input": "ééé"},
]
# With --inputs-per-request 2: [a] | [b b'(known)] | [d f] and [c]: 4 requests, 5 texts sent.
BODIES = [(["aaaaaa"], None), (["bbbbbbbbb"], None), (["dddddddddddd", "ééé"], None), (["ccc"], 8)]


@pytest.fixture
def jobs(tmp_path: Path) -> Path:
    path = tmp_path / "emb.jsonl"
    path.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in LINES))
    (tmp_path / "llmbatch.toml").write_text(
        f'[prices."{MODEL}"]\ninput = 1000000.0\noutput = 0.0\n'  # $1 a token: easy sums
    )
    return path


def estimate(*args: str) -> dict[str, Any]:
    result = run_cli("estimate", *args, "-m", MODEL, "--inputs-per-request", "2", "--json")
    assert result.code == 0, result.output
    est: dict[str, Any] = orjson.loads(result.stdout)
    return est


def test_estimate_counts_lines_requests_tokens_and_cost(jobs: Path) -> None:
    est = estimate(str(jobs))
    assert est["kind"] == "embeddings"
    assert est["jobs"] == {"total": 5, "done": 0, "left": 5, "invalid_lines": 1}
    assert est["problems"] == [f"{jobs}:5: " + '"input" must be a non-empty string or a '
                               "non-empty list of strings"]  # fmt: skip
    m = est["by_model"][MODEL]
    assert (m["inputs"], m["texts_sent"], m["repeats"], m["requests"]) == (6, 5, 1, 4)
    assert (m["input_tokens"], m["expected_input_tokens"]) == (2 + 3 + 1 + 4 + 2, 2 + 3 + 1 + 4 + 1)
    assert (est["worst_case_usd"], est["expected_usd"]) == (12.0, 11.0)
    assert est["expected_batch_usd"] == 11.0  # a [prices] override holds in both modes
    assert est["unpriced_models"] == [] and est["spent_usd_so_far"] == 0.0
    # without --inputs-per-request: OpenAI's caps, one request a group
    default = run_cli("estimate", str(jobs), "-m", MODEL, "--json")
    assert orjson.loads(default.stdout)["requests"] == 2


def test_estimate_skips_ids_done_in_the_output(jobs: Path, tmp_path: Path) -> None:
    done = tmp_path / "done.jsonl"
    only_d = tmp_path / "d.jsonl"
    only_d.write_bytes(orjson.dumps(LINES[3]) + b"\n")
    assert run_cli("embed", str(only_d), "-m", "sim:e", "-o", str(done), "--quiet").code == 0
    est = estimate(str(jobs), "-o", str(done))
    assert est["jobs"] == {"total": 5, "done": 1, "left": 4, "invalid_lines": 1}
    # [a] | [b b'] | [f] and [c]: the 4 tokens of "dddddddddddd" are not counted
    assert (est["requests"], est["texts_sent"], est["input_tokens"]) == (4, 4, 8)
    assert est["worst_case_usd"] == 8.0


def test_estimate_table_and_an_unpriced_model(jobs: Path) -> None:
    result = run_cli("estimate", str(jobs), "-m", "sim:my-embedder")
    assert result.code == 0, result.output
    assert "5 lines" in result.stdout and "texts sent" in result.stdout
    assert "unpriced" in result.stdout
    assert ":5:" in result.stderr  # the invalid line, as for chat files


def dry_run(
    *args: str, env: dict[str, str] | None = None, per_request: str = "2"
) -> tuple[list[dict[str, Any]], str]:
    more = ("--inputs-per-request", per_request) if per_request else ()
    result = run_cli(*args, *more, "--dry-run", "--skip-invalid", env=env)
    assert result.code == 0, result.output
    assert CANARY_OPENAI not in result.output
    return [orjson.loads(line) for line in result.stdout.splitlines()], result.stderr


def test_dry_run_prints_each_packed_request_keys_redacted(jobs: Path, tmp_path: Path) -> None:
    env = {"OPENAI_API_KEY": CANARY_OPENAI, "OPENAI_BASE_URL": "http://127.0.0.1:9/v1"}
    lines, err = dry_run("embed", str(jobs), "-m", MODEL, env=env)
    assert [(x["body"]["input"], x["body"].get("dimensions")) for x in lines] == BODIES
    for x in lines:
        assert x["url"] == "http://127.0.0.1:9/v1/embeddings" and x["model"] == MODEL
        assert x["headers"] == {"authorization": "Bearer [redacted: $OPENAI_API_KEY]"}
        assert x["body"]["model"] == "text-embedding-3-small"
        assert x["body"]["encoding_format"] == "base64"
    assert [x["inputs"] for x in lines] == [1, 2, 2, 1]
    assert "4 request(s) would be sent, carrying 5 text(s) for 6 input(s)" in err
    assert not list(tmp_path.glob("emb.vectors*"))  # no output, no lock, no history
    # `run` over embedding lines does the same (OpenAI's caps: a request a group)
    by_embed, _ = dry_run("embed", str(jobs), "-m", MODEL, env=env, per_request="")
    by_run, _ = dry_run("run", str(jobs), "-m", MODEL, env=env, per_request="")
    assert by_run == by_embed and len(by_run) == 2


def test_dry_run_gemini_and_sim_bodies(jobs: Path) -> None:
    lines, _ = dry_run("embed", str(jobs), "-m", "gemini:text-embedding-004")
    assert [len(x["body"]["requests"]) for x in lines] == [1, 1, 2, 1]
    assert lines[0]["url"].endswith("/models/text-embedding-004:batchEmbedContents")
    assert lines[0]["headers"] == {"x-goog-api-key": "[redacted: $GEMINI_API_KEY]"}
    assert lines[3]["body"]["requests"][0] == {
        "model": "models/text-embedding-004",
        "outputDimensionality": 8,
        "content": {"parts": [{"text": "ccc"}]},
    }
    sim, _ = dry_run("embed", str(jobs), "-m", "sim:e")
    assert [x["url"] for x in sim] == [None] * 4 and "headers" not in sim[0]


def test_dry_run_refuses_invalid_lines_as_a_run_would(jobs: Path) -> None:
    result = run_cli("embed", str(jobs), "-m", MODEL, "--dry-run")
    assert result.code == 2 and ":5:" in result.output and not result.stdout


def test_estimate_by_batch_at_half_the_online_price(tmp_path: Path) -> None:
    """OpenAI's embeddings by batch cost half (as --mode batch prices them); sim has none."""
    path = tmp_path / "long.jsonl"
    path.write_bytes(b"".join(orjson.dumps({"id": i, "input": f"{i:04d}" + "x" * 3996}) + b"\n"
                              for i in range(100)))  # fmt: skip
    est = estimate(str(path))  # genai-prices: $0.02 a million tokens
    assert est["requests"] == 50 and est["expected_input_tokens"] == 100 * 1001
    assert est["expected_usd"] == pytest.approx(100 * 1001 * 0.02 / 1e6)
    assert est["expected_batch_usd"] == pytest.approx(est["expected_usd"] / 2)
    assert est["worst_case_usd"] == pytest.approx(100 * 1334 * 0.02 / 1e6)
    sim = run_cli("estimate", str(path), "-m", "sim:e", "--json")
    assert orjson.loads(sim.stdout)["expected_batch_usd"] is None
