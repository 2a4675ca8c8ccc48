"""The HTML report: self-contained, escaped, small; and it renders in a real headless Chromium."""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest

from llmbatch._config.settings import build_run_config, load_config
from llmbatch._observe.stats import RunStats
from llmbatch._observe.timeline import (
    FAILED_N,
    MAX_BUCKETS,
    TOP_N,
    TimelineRecorder,
    timeline_from_results,
)
from llmbatch._report.html import _JS, render_html, write_html_report
from llmbatch._report.report import build_report
from tests.conftest import prompts, run_cli, write_jsonl
from tests.synthetic import HOSTILE_FAILED_ID, HOSTILE_MESSAGE, HOSTILE_SLOW_ID, record

SIM = "sim:claude-haiku-4-5"
CHARTS_WITH_SERIES = 8  # 2 histograms, 3 over time, cost and tokens by model, errors
CHARTS_WITHOUT_SERIES = 5


def _charts(page: str) -> list[str]:
    return re.findall(r'<figure class="chart" data-chart="([a-z_]+)"', page)


def test_page_has_every_chart_with_marks() -> None:
    run = record(1000)
    page = render_html(run.report, run.timeline)
    assert _charts(page) == [
        "latency", "ttft", "throughput", "requests", "cumulative",
        "cost_by_model", "tokens_by_model", "errors",
    ]  # fmt: skip
    for name in _charts(page):
        figure = page.split(f'data-chart="{name}"', 1)[1].split("</figure>", 1)[0]
        assert figure.count('class="mark"') >= 2, name
    assert 'data-table="slowest"' in page and 'data-table="failed"' in page
    assert "Requests and 429s" in page and "rate-limited (429)" in page


def test_every_untrusted_string_is_escaped() -> None:
    run = record(300)
    page = render_html(run.report, run.timeline)
    assert page.count("<script") == 1  # the page's own, nothing injected
    for hostile in (HOSTILE_FAILED_ID, HOSTILE_SLOW_ID, HOSTILE_MESSAGE):
        assert hostile not in page
    assert "&lt;script&gt;alert(&quot;id&quot;)&lt;/script&gt;" in page  # in the failed table
    assert "&quot;&gt;&lt;img src=x onerror=alert(1)&gt;" in page  # first among the slowest
    assert "&lt;/td&gt;&lt;/table&gt;" in page
    assert "<img" not in page


def test_page_is_self_contained() -> None:
    run = record(300)
    page = render_html(run.report, run.timeline)
    urls = set(re.findall(r"https?://[^\s\"'<>]+", page))
    assert urls == {"http://www.w3.org/2000/svg"}  # a namespace, never fetched
    assert not re.search(r"<[a-z][^>]*\s(src|href|action|srcset)\s*=", page)  # in a tag
    assert "@import" not in page and "url(" not in page
    # Only the page's own script may run, and nothing may load.
    digest = base64.b64encode(hashlib.sha256(_JS.encode()).digest()).decode()
    assert f"script-src 'sha256-{digest}'" in page and "default-src 'none'" in page


def test_a_results_file_alone_renders_without_time_series(tmp_path: Path) -> None:
    run = record(500)
    path = tmp_path / "out.jsonl"
    path.write_bytes(b"".join(r.to_json() for r in run.results))
    page = render_html(run.report, timeline_from_results(path))
    assert len(_charts(page)) == CHARTS_WITHOUT_SERIES
    assert "throughput" not in _charts(page) and 'class="nochart"' in page
    assert "rebuilt from the results file" in page


@pytest.mark.slow
def test_a_100k_job_run_stays_small_and_bounded(tmp_path: Path) -> None:
    run = record(100_000, rate=200.0, keep=False)
    t = run.timeline
    assert t.series is not None and len(t.series) <= MAX_BUCKETS
    assert len(t.slowest) == TOP_N and len(t.failed) == FAILED_N < t.failed_total
    out = tmp_path / "report.html"
    write_html_report(out, run.report, t)
    size = out.stat().st_size
    assert size < 1_000_000, size
    assert len(_charts(out.read_text())) == CHARTS_WITH_SERIES


def test_cli_report_and_run_write_html(tmp_path: Path) -> None:
    # No more jobs than the slowest-jobs table keeps: the hostile id is always in it.
    jobs = prompts(TOP_N)
    jobs[3]["id"] = "<script>alert(3)</script>"
    write_jsonl(tmp_path / "jobs.jsonl", jobs)
    r = run_cli("run", "jobs.jsonl", "-m", SIM, "--html", "run.html", "--quiet")
    assert r.code == 0, r.output
    page = (tmp_path / "run.html").read_text()
    assert "&lt;script&gt;alert(3)&lt;/script&gt;" in page and "<script>alert" not in page
    assert len(_charts(page)) == CHARTS_WITH_SERIES
    # Later, from the results file: the run history kept the time series.
    r = run_cli("report", "jobs.results.jsonl", "--html", "sub/report.html", "--json")
    assert r.code == 0, r.output
    assert r.stdout.startswith("{") and "HTML report written to sub/report.html" in r.stderr
    page = (tmp_path / "sub" / "report.html").read_text()
    assert len(_charts(page)) == CHARTS_WITH_SERIES and f"{TOP_N} ok" in page
    # Without the history, the charts over time are left out, the rest is there.
    (tmp_path / "jobs.results.jsonl.runs.jsonl").unlink()
    r = run_cli("report", "jobs.results.jsonl", "--html", "bare.html")
    assert r.code == 0, r.output
    assert len(_charts((tmp_path / "bare.html").read_text())) == CHARTS_WITHOUT_SERIES


def test_html_may_not_overwrite_an_input(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "jobs.jsonl", prompts(2))
    r = run_cli("run", "jobs.jsonl", "-m", SIM, "-o", "out.jsonl", "--html", "out.jsonl")
    assert r.code == 2 and "--html out.jsonl is --output itself" in r.stderr
    assert not (tmp_path / "out.jsonl").exists()
    r = run_cli("report", "jobs.jsonl", "--html", "jobs.jsonl")
    assert r.code == 2 and "is the results file itself" in r.stderr


def test_an_empty_run_renders_every_chart_empty() -> None:
    page = render_html(build_report(RunStats()), TimelineRecorder().timeline())
    assert len(_charts(page)) == CHARTS_WITHOUT_SERIES
    assert page.count('class="empty"') == CHARTS_WITHOUT_SERIES
    assert 'class="mark"' not in page and "no successful jobs" in page


def test_html_is_a_config_key(tmp_path: Path) -> None:
    (tmp_path / "llmbatch.toml").write_text('html = "pages/run.html"\n')
    write_jsonl(tmp_path / "jobs.jsonl", prompts(1))
    cfg = build_run_config(tmp_path / "jobs.jsonl", {}, load_config(None))
    assert cfg.html == Path("pages/run.html")
    cfg = build_run_config(tmp_path / "jobs.jsonl", {"html": "b.html"}, load_config(None))
    assert cfg.html == Path("b.html")


# -- in a real browser ------------------------------------------------------------------


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing; .ci/run installs it (apt-get install chromium)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return found


def _browse(page: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    flags = [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--hide-scrollbars", "--enable-logging=stderr", "--v=0",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]  # fmt: skip
    return subprocess.run(
        [_chromium(), *flags, *args, page.as_uri()],
        capture_output=True,
        text=True,
        timeout=90,
        env={**os.environ, "HOME": str(tmp_path)},
    )


def _console_messages(stderr: str) -> list[str]:
    """What the page wrote to the console (errors, CSP violations): Chromium logs it as CONSOLE."""
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


def _decode_png(data: bytes) -> tuple[int, int, int, list[bytes]]:
    """Width, height, bytes per pixel and the unfiltered rows of an 8-bit RGB(A) PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width, height, bpp = 8, b"", 0, 0, 0
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + n]
        pos += 12 + n
        if kind == b"IHDR":
            width, height, depth, color = struct.unpack(">IIBB", body[:10])
            assert depth == 8 and color in (2, 6) and body[12] == 0  # not interlaced
            bpp = 3 if color == 2 else 4
        elif kind == b"IDAT":
            idat += body
    raw, stride, rows = zlib.decompress(idat), width * bpp, []
    prev = bytearray(stride)
    for y in range(height):
        at = y * (stride + 1)
        line = bytearray(raw[at + 1 : at + 1 + stride])
        _unfilter(raw[at], line, prev, bpp)
        rows.append(bytes(line))
        prev = line
    return width, height, bpp, rows


def _unfilter(kind: int, line: bytearray, prev: bytearray, bpp: int) -> None:
    if kind == 1:
        for x in range(bpp, len(line)):
            line[x] = (line[x] + line[x - bpp]) & 255
    elif kind == 2:
        line[:] = bytes((a + b) & 255 for a, b in zip(line, prev, strict=True))
    elif kind == 3:
        for x in range(len(line)):
            left = line[x - bpp] if x >= bpp else 0
            line[x] = (line[x] + (left + prev[x]) // 2) & 255
    elif kind == 4:
        for x in range(len(line)):
            a = line[x - bpp] if x >= bpp else 0
            b, c = prev[x], prev[x - bpp] if x >= bpp else 0
            p = a + b - c
            pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
            line[x] = (line[x] + pred) & 255


def _pixels(rows: list[bytes], bpp: int) -> tuple[int, int, int]:
    """Pixels in all, pixels not white or page-grey, and pixels of the charts' bar blue."""
    total = ink = blue = 0
    for row in rows:
        for r, g, b in zip(row[0::bpp], row[1::bpp], row[2::bpp], strict=True):
            total += 1
            if (r, g, b) != (255, 255, 255) and (r, g, b) != (243, 244, 246):
                ink += 1
                if abs(r - 0x25) < 12 and abs(g - 0x63) < 12 and abs(b - 0xEB) < 12:
                    blue += 1
    return total, ink, blue


@pytest.mark.slow
def test_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    run = record(2000)
    page = tmp_path / "report.html"
    write_html_report(page, run.report, run.timeline)
    dom = _browse(page, tmp_path, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert _console_messages(dom.stderr) == []
    # The page's script ran and counted the charts the browser laid out.
    assert f'data-charts-rendered="{CHARTS_WITH_SERIES}"' in dom.stdout
    assert len(_charts(dom.stdout)) == CHARTS_WITH_SERIES

    shot = tmp_path / "report.png"
    r = _browse(page, tmp_path, "--window-size=1280,1100", f"--screenshot={shot}")
    assert r.returncode == 0 and shot.exists(), r.stderr[-2000:]
    assert _console_messages(r.stderr) == []
    width, height, bpp, rows = _decode_png(shot.read_bytes())
    assert (width, height) == (1280, 1100)
    total, ink, blue = _pixels(rows[::2], bpp)
    assert ink > total * 0.05, (ink, total)  # not blank: text, axes, bars
    assert blue > total * 0.01, (blue, total)  # the histograms' bars were drawn


@pytest.mark.slow
def test_a_console_error_would_be_caught(tmp_path: Path) -> None:
    """The check above can fail: a page with a script error and a blocked load is seen."""
    page = tmp_path / "bad.html"
    page.write_text(
        '<!DOCTYPE html><html><head><meta http-equiv="Content-Security-Policy" '
        "content=\"default-src 'none'; script-src 'unsafe-inline'\"></head><body>"
        '<img src="http://127.0.0.1:9/x.png"><script>missing()</script></body></html>'
    )
    r = _browse(page, tmp_path, "--dump-dom")
    messages = _console_messages(r.stderr)
    assert any("missing is not defined" in m for m in messages), r.stderr[-2000:]
    assert any("Content Security Policy" in m for m in messages)
