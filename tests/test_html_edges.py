"""The HTML report's edges (issue 21): a run answered from the cache, very long ids and names."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from llmbatch._report.html_charts import model_figures
from tests.conftest import run_cli, write_jsonl
from tests.test_html import _browse, _decode_png

LONG_MODEL = "sim:claude-haiku-4-5-with-a-very-long-fine-tuned-deployment-name-2026"


def _tile(page: str, key: str) -> tuple[str, str]:
    m = re.search(
        rf'<span class="k">{re.escape(key)}</span><b>([^<]*)</b><span>([^<]*)</span>', page
    )
    assert m is not None, key
    return m.group(1), m.group(2)


def test_a_run_answered_from_the_cache_says_so(tmp_path: Path) -> None:
    jobs = write_jsonl(
        tmp_path / "j.jsonl",
        [{"id": f"j{i}", "prompt": f"q{i}", "temperature": 0} for i in range(20)],
    )
    cache = ["--cache", str(tmp_path / "c.sqlite"), "-m", "sim:claude-haiku-4-5", "--quiet"]
    assert run_cli("run", str(jobs), *cache, "-o", "a.jsonl").code == 0
    res = run_cli("run", str(jobs), *cache, "-o", "b.jsonl", "--html", "b.html")
    assert res.code == 0, res.output
    page = (tmp_path / "b.html").read_text()
    assert _tile(page, "jobs") == ("20 ok", "0 failed · 20 total · 20 from the cache")
    assert _tile(page, "latency p50")[0] == "—" and _tile(page, "first token p50")[0] == "—"
    assert "0 ms" not in page
    assert "no successful jobs" not in page
    assert "answered from the cache" in page
    assert re.fullmatch(r"this run · \$0\.0\d+ saved by the cache", _tile(page, "cost")[1])
    # and from the results file alone, the same
    res = run_cli("report", "b.jsonl", "--html", "r.html")
    assert res.code == 0, res.output
    page = (tmp_path / "r.html").read_text()
    assert _tile(page, "latency p50")[0] == "—" and "20 from the cache" in _tile(page, "jobs")[1]
    assert "saved by the cache" in _tile(page, "cost")[1]


def test_long_ids_and_model_names_are_cut_with_the_full_text_in_a_title(tmp_path: Path) -> None:
    long_id = "id-" + "x" * 20_000
    jobs = write_jsonl(
        tmp_path / "j.jsonl", [{"id": long_id, "prompt": "q"}, {"id": "short", "prompt": "r"}]
    )
    res = run_cli("run", str(jobs), "-m", LONG_MODEL, "--quiet", "--html", "p.html")
    assert res.code == 0, res.output
    page = (tmp_path / "p.html").read_text()
    cells = re.findall(r'<td class="id"( title="[^"]*")?>([^<]*)</td>', page)
    shown = {text: title for title, text in cells}
    cut = [t for t in shown if t.startswith("id-x")]
    assert cut and all(len(t) <= 100 and "…" in t for t in cut)
    assert all(shown[t] == f' title="{long_id}"' for t in cut)
    assert shown["short"] == ""
    figure = model_figures({"by_model": {LONG_MODEL: _model_row()}})[0]
    label = re.search(r'<text x="[\d.]+" y="[\d.]+" text-anchor="end"[^>]*>(.*?)</text>', figure)
    assert label is not None and "…" in label.group(1)
    assert f"<title>{LONG_MODEL}</title>" in label.group(1)


def _model_row() -> dict[str, object]:
    return {"cost_usd": 0.5, "input_tokens": 10, "output_tokens": 20}


@pytest.mark.slow
def test_a_long_model_name_is_not_clipped_at_the_chart_edge(tmp_path: Path) -> None:
    """The label column of a bar chart holds the (cut) name: no ink touches the left edge."""
    names = [LONG_MODEL, "openai:gpt-4o-mini-2024-07-18-WWWWMMMM", "anthropic:claude-sonnet-4-5"]
    figure = model_figures({"by_model": {n: _model_row() for n in names}})[0]
    svg = figure[figure.index("<svg") : figure.rindex("</svg>") + 6]
    page = tmp_path / "chart.html"
    page.write_text(
        "<!DOCTYPE html><html><head><style>body{margin:0;background:#fff;"
        "font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,'Helvetica Neue',Arial,"
        "sans-serif}"
        "svg{display:block;width:560px;height:auto}</style></head>"
        f"<body>{svg}</body></html>"
    )
    shot = tmp_path / "chart.png"
    r = _browse(page, tmp_path, "--window-size=560,300", f"--screenshot={shot}")
    assert r.returncode == 0 and shot.exists(), r.stderr[-2000:]
    width, _, bpp, rows = _decode_png(shot.read_bytes())

    def ink(row: bytes, x: int) -> bool:
        return max(abs(255 - c) for c in row[x * bpp : x * bpp + 3]) > 60

    text_rows = [row for row in rows[:160] if any(ink(row, x) for x in range(0, 190))]
    assert text_rows, "the labels were drawn"
    assert not any(ink(row, x) for row in rows for x in range(0, 3)), "a label is cut off"
    edge = range(width - 3, width)
    assert not any(ink(row, x) for row in rows for x in edge), "a value is cut off"


@pytest.mark.slow
def test_a_20000_character_id_keeps_the_page_short(tmp_path: Path) -> None:
    jobs = write_jsonl(
        tmp_path / "j.jsonl",
        [{"id": "id-" + "y" * 20_000, "prompt": "q"}, {"id": "b", "prompt": "r"}],
    )
    res = run_cli("run", str(jobs), "-m", "sim:claude-haiku-4-5", "--quiet", "--html", "p.html")
    assert res.code == 0, res.output
    shot = tmp_path / "p.png"
    r = _browse(tmp_path / "p.html", tmp_path, "--window-size=1280,4000", f"--screenshot={shot}")
    assert r.returncode == 0 and shot.exists(), r.stderr[-2000:]
    _, height, bpp, rows = _decode_png(shot.read_bytes())
    grey = bytes((243, 244, 246))
    bottom = rows[3000:]
    assert all(
        row[x * bpp : x * bpp + 3] == grey for row in bottom[::10] for x in range(0, 1280, 8)
    ), "the page runs past 3,000 px"
