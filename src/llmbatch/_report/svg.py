"""Inline SVG charts for the HTML report: bars over a numeric axis, horizontal bars, an area.

Pure functions from numbers and labels to SVG text. Every label goes through
``esc``; every drawn datum is a ``class="mark"`` element with a ``data-tip``
(the page's few lines of script show it as a tooltip), so a test can count them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape

from llmbatch._observe.stats import nice_step

W, H = 560, 250
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 14, 46
PLOT_W, PLOT_H = W - LEFT - RIGHT, H - TOP - BOTTOM
INK, GRID, MUTED = "#1f2937", "#e5e7eb", "#6b7280"


def esc(text: object) -> str:
    """Text for HTML or SVG, content or attribute: every markup character escaped."""
    return escape(str(text), quote=True)


# Advance widths in em of a wide sans-serif (DejaVu Sans, what Linux falls back to): an
# estimate on the safe side for the fonts a page may get, since SVG text does not wrap.
_NARROW, _SEMI, _WIDE = frozenset("ijl.,:;|!'` "), frozenset("frt-()[]/"), frozenset("mwMW@%")


def text_px(text: str, size: float = 12.0) -> float:
    """About how wide ``text`` is drawn at ``size`` px (on the wide side)."""
    em = 0.0
    for ch in text:
        if ch in _NARROW:
            em += 0.32
        elif ch in _SEMI:
            em += 0.42
        elif ch in _WIDE:
            em += 1.0
        elif ch.isupper():
            em += 0.78
        else:
            em += 0.65
    return em * size


def fit(text: str, px: float, size: float = 12.0) -> str:
    """``text`` cut in the middle (``head…tail``) to fit ``px``; unchanged when it fits."""
    if text_px(text, size) <= px:
        return text
    head, tail = text[: len(text) * 3 // 5], text[len(text) * 3 // 5 :]
    budget = px - text_px("…", size)
    while head and tail and text_px(head, size) + text_px(tail, size) > budget:
        # Drop from the longer side, so both ends stay readable.
        if text_px(head, size) >= text_px(tail, size) * 1.5:
            head = head[:-1]
        else:
            tail = tail[1:]
    return head + "…" + tail


def ticks(hi: float, lo: float = 0.0, n: int = 5) -> list[float]:
    """Round tick values covering [lo, hi]."""
    if hi <= lo:
        hi = lo + 1
    step = nice_step((hi - lo) / n)
    first = math.floor(lo / step) * step
    out = [first]
    while out[-1] < hi - step * 1e-9:
        out.append(round(first + len(out) * step, 10))
    return out


def num(value: float) -> str:
    """A short axis label: 1.5k, 2M, 0.25."""
    a = abs(value)
    if a >= 1e6:
        return f"{value / 1e6:.3g}M"
    if a >= 1e4:
        return f"{value / 1e3:.3g}k"
    if a >= 100 or value == int(value):
        return f"{value:,.0f}"
    return f"{value:.3g}"


@dataclass(frozen=True, slots=True)
class Slot:
    """One bar over [x0, x1) on a numeric axis, made of stacked segments."""

    x0: float
    x1: float
    segments: tuple[float, ...]
    tip: str
    faint: bool = False  # an open-ended bin: drawn lighter


@dataclass(frozen=True, slots=True)
class Marker:
    """A labelled vertical line (a percentile)."""

    x: float
    label: str


def _svg(name: str, body: list[str], label: str) -> str:
    return (
        f'<svg viewBox="0 0 {W} {H}" role="img" aria-label="{esc(label)}" '
        f'data-svg="{esc(name)}" xmlns="http://www.w3.org/2000/svg">' + "".join(body) + "</svg>"
    )


def _empty(name: str, message: str) -> str:
    return _svg(
        name,
        [
            f'<text class="empty" x="{W / 2}" y="{H / 2}" text-anchor="middle" '
            f'fill="{MUTED}" font-size="14">{esc(message)}</text>'
        ],
        message,
    )


def _y_axis(y_max: float, y_title: str) -> tuple[float, list[str]]:
    """Grid lines and labels; returns the axis top (a round number) and the SVG."""
    ys = ticks(y_max)
    top = ys[-1]
    out = []
    for v in ys:
        y = TOP + PLOT_H - v / top * PLOT_H
        out.append(
            f'<line x1="{LEFT}" x2="{W - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" stroke="{GRID}"/>'
            f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11" '
            f'fill="{MUTED}">{esc(num(v))}</text>'
        )
    cy = TOP + PLOT_H / 2
    out.append(
        f'<text x="14" y="{cy}" transform="rotate(-90 14 {cy})" text-anchor="middle" '
        f'font-size="12" fill="{INK}">{esc(y_title)}</text>'
    )
    return top, out


def _x_axis(
    lo: float, hi: float, x_title: str, fmt: Callable[[float], str], x_ticks: list[float]
) -> list[str]:
    out = [
        f'<line x1="{LEFT}" x2="{W - RIGHT}" y1="{TOP + PLOT_H}" y2="{TOP + PLOT_H}" '
        f'stroke="{MUTED}"/>'
    ]
    for v in x_ticks:
        if v < lo - 1e-9 or v > hi + 1e-9:
            continue
        x = LEFT + (v - lo) / (hi - lo) * PLOT_W
        out.append(
            f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{TOP + PLOT_H}" y2="{TOP + PLOT_H + 4}" '
            f'stroke="{MUTED}"/><text x="{x:.1f}" y="{TOP + PLOT_H + 17}" text-anchor="middle" '
            f'font-size="11" fill="{MUTED}">{esc(fmt(v))}</text>'
        )
    out.append(
        f'<text x="{LEFT + PLOT_W / 2}" y="{H - 6}" text-anchor="middle" font-size="12" '
        f'fill="{INK}">{esc(x_title)}</text>'
    )
    return out


def bar_chart(
    name: str,
    slots: Sequence[Slot],
    colors: Sequence[str],
    *,
    x_title: str,
    y_title: str,
    x_fmt: Callable[[float], str] = num,
    markers: Sequence[Marker] = (),
    empty: str = "no data",
) -> str:
    """Stacked bars over a numeric x axis (histograms, time series)."""
    if not slots or not any(sum(s.segments) for s in slots):
        return _empty(name, empty)
    lo, hi = slots[0].x0, slots[-1].x1
    top, body = _y_axis(max(sum(s.segments) for s in slots), y_title)
    x_ticks = ticks(hi, lo, 6)
    body += _x_axis(lo, hi, x_title, x_fmt, x_ticks)
    scale_x = PLOT_W / (hi - lo)
    for s in slots:
        x = LEFT + (s.x0 - lo) * scale_x
        w = max(0.8, (s.x1 - s.x0) * scale_x - (1 if len(slots) < 80 else 0.3))
        base: float = TOP + PLOT_H
        for value, color in zip(s.segments, colors, strict=False):
            if value <= 0:
                continue
            h = max(0.8, value / top * PLOT_H)
            base -= h
            opacity = ' fill-opacity="0.45"' if s.faint else ""
            body.append(
                f'<rect class="mark" x="{x:.1f}" y="{base:.1f}" width="{w:.1f}" '
                f'height="{h:.1f}" fill="{color}"{opacity} data-tip="{esc(s.tip)}"/>'
            )
    for m in markers:
        if not lo <= m.x <= hi:
            continue
        x = LEFT + (m.x - lo) * scale_x
        body.append(
            f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{TOP}" y2="{TOP + PLOT_H}" stroke="{INK}" '
            f'stroke-dasharray="4 3"/><text x="{x + 4:.1f}" y="{TOP + 11}" font-size="11" '
            f'fill="{INK}" stroke="#fff" stroke-width="3" paint-order="stroke">'
            f"{esc(m.label)}</text>"
        )
    return _svg(name, body, y_title + " by " + x_title)


def area_chart(
    name: str,
    points: Sequence[tuple[float, float, str]],
    color: str,
    *,
    x_title: str,
    y_title: str,
    x_fmt: Callable[[float], str] = num,
    empty: str = "no data",
) -> str:
    """A filled line through (x, y, tip) points: a cumulative total over time."""
    if len(points) < 2 or not any(p[1] for p in points):
        return _empty(name, empty)
    lo, hi = points[0][0], points[-1][0]
    hi = hi if hi > lo else lo + 1
    top, body = _y_axis(max(p[1] for p in points), y_title)
    body += _x_axis(lo, hi, x_title, x_fmt, ticks(hi, lo, 6))

    def xy(p: tuple[float, float, str]) -> tuple[float, float]:
        return LEFT + (p[0] - lo) / (hi - lo) * PLOT_W, TOP + PLOT_H - p[1] / top * PLOT_H

    coords = [xy(p) for p in points]
    line = " ".join(f"{x:.1f},{y:.1f}" for x, y in coords)
    body.append(
        f'<polygon points="{LEFT},{TOP + PLOT_H} {line} {coords[-1][0]:.1f},{TOP + PLOT_H}" '
        f'fill="{color}" fill-opacity="0.18"/>'
        f'<polyline points="{line}" fill="none" stroke="{color}" stroke-width="2"/>'
    )
    step = max(1, len(points) // 60)  # hover targets, not one per pixel
    for p, (x, y) in list(zip(points, coords, strict=True))[::step]:
        body.append(
            f'<circle class="mark" cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{color}" '
            f'data-tip="{esc(p[2])}"/>'
        )
    return _svg(name, body, y_title + " by " + x_title)


@dataclass(frozen=True, slots=True)
class HRow:
    """One horizontal bar: a label, stacked segments, the text at its end."""

    label: str
    segments: tuple[float, ...]
    value: str
    tip: str


def hbar_chart(
    name: str, rows: Sequence[HRow], colors: Sequence[str], *, empty: str = "none"
) -> str:
    """Horizontal bars, one per label (models, error types); the chart grows with rows."""
    if not rows or not any(sum(r.segments) for r in rows):
        return _empty(name, empty)
    # Room at the left for the labels (cut to fit: SVG text does not wrap, and what
    # runs past the edge is lost) and at the right for the longest value text.
    row_h = 26
    label_w = round(min(260, max(190, max(text_px(r.label) for r in rows) + 16)))
    value_w = round(max(60, max(text_px(r.value) for r in rows) + 14))
    height = TOP + row_h * len(rows) + 8
    top = max(sum(r.segments) for r in rows)
    width = W - label_w - value_w
    body = []
    for i, r in enumerate(rows):
        y = TOP + i * row_h
        label = fit(r.label, label_w - 12)
        title = f"<title>{esc(r.label)}</title>" if label != r.label else ""
        body.append(
            f'<text x="{label_w - 8}" y="{y + 16}" text-anchor="end" font-size="12" '
            f'fill="{INK}">{title}{esc(label)}</text>'
        )
        x = float(label_w)
        for value, color in zip(r.segments, colors, strict=False):
            if value <= 0:
                continue
            w = max(1.0, value / top * width)
            body.append(
                f'<rect class="mark" x="{x:.1f}" y="{y + 4}" width="{w:.1f}" height="{row_h - 8}" '
                f'fill="{color}" data-tip="{esc(r.tip)}"/>'
            )
            x += w
        body.append(
            f'<text x="{x + 6:.1f}" y="{y + 16}" font-size="12" fill="{INK}">{esc(r.value)}</text>'
        )
    return (
        f'<svg viewBox="0 0 {W} {height}" role="img" aria-label="{esc(name)}" '
        f'data-svg="{esc(name)}" xmlns="http://www.w3.org/2000/svg">' + "".join(body) + "</svg>"
    )
