"""Line charts as inline SVG, for the status page: no script, no file, nothing fetched.

``chart(title, unit, times, lines)`` draws one chart: a line per core and a thicker one for
the total, over the last minutes (``times`` are seconds before now, oldest first), with the
largest value on the y axis, the window's start and "now" on the x axis and a legend.
Values are thinned to at most ``MAX_POINTS`` a line (the mean of each bucket), so a
15-minute window at one sample a second stays small.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

WIDTH, HEIGHT = 640, 170
LEFT, RIGHT, TOP, BOTTOM = 80, 10, 24, 22
MAX_POINTS = 300
TOTAL_COLOR = "#1d2330"
CORE_COLORS = (
    "#1a73e8",
    "#e8710a",
    "#188038",
    "#d01884",
    "#9334e6",
    "#12b5cb",
    "#b06000",
    "#5f6368",
)


def core_color(i: int) -> str:
    return CORE_COLORS[i % len(CORE_COLORS)]


def fmt_value(v: float, unit: str) -> str:
    if unit == "B/s":
        for name, scale in (("GiB/s", 1 << 30), ("MiB/s", 1 << 20), ("KiB/s", 1 << 10)):
            if v >= scale:
                return f"{v / scale:.1f} {name}"
        return f"{v:.0f} B/s"
    for name, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if v >= scale:
            return f"{v / scale:.1f}{name}{unit}"
    return f"{v:.0f}{unit}" if v >= 10 or float(v).is_integer() else f"{v:.1f}{unit}"


def thin(times: Sequence[float], values: Sequence[float]) -> tuple[list[float], list[float]]:
    n = len(values)
    if n <= MAX_POINTS:
        return list(times), list(values)
    step = n / MAX_POINTS
    ts, vs = [], []
    for i in range(MAX_POINTS):
        a, b = int(i * step), max(int((i + 1) * step), int(i * step) + 1)
        ts.append(times[b - 1])
        vs.append(sum(values[a:b]) / (b - a))
    return ts, vs


def nice_max(v: float, binary: bool = False) -> float:
    """1, 2 or 5 times a power of ten (binary: times 10^n 1024^k, for byte rates), at least
    v (and at least 1)."""
    if v <= 1:
        return 1.0
    if binary:
        k = int(math.log(v, 1024)) if v >= 1024 else 0
        return nice_max(v / 1024**k) * 1024**k
    p = 10 ** math.floor(math.log10(v))
    for m in (1, 2, 5, 10):
        if m * p >= v:
            return float(m * p)
    return float(10 * p)


def chart(
    title: str,
    unit: str,
    window_s: float,
    times: Sequence[float],
    lines: Sequence[tuple[str, str, Sequence[float], bool]],
    note: str = "",
) -> str:
    """One SVG chart. ``lines``: (label, colour, values, is_total); ``times`` in seconds
    before now (negative or zero), the same for every line."""
    pw, ph = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    peak = max((max(v) for _, _, v, _ in lines if len(v)), default=0.0)
    top = nice_max(peak, binary=unit == "B/s")
    out = [
        f'<svg class="chart" role="img" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" '
        f'height="{HEIGHT}" xmlns="http://www.w3.org/2000/svg" aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
        f'<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="#fff" stroke="#d5d9e0"/>',
        f'<text x="{LEFT}" y="15" class="ct">{escape(title)}</text>',
    ]
    for frac in (0.5, 1.0):  # grid lines and their values
        y = TOP + ph - frac * ph
        out.append(
            f'<line x1="{LEFT}" x2="{LEFT + pw}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eceff3"/>'
        )
        out.append(
            f'<text x="{LEFT - 4}" y="{y + 4:.1f}" text-anchor="end" class="ca">'
            f"{escape(fmt_value(top * frac, unit))}</text>"
        )
    out.append(f'<text x="{LEFT - 4}" y="{TOP + ph + 4}" text-anchor="end" class="ca">0</text>')
    minutes = round(window_s / 60)
    out.append(f'<text x="{LEFT}" y="{HEIGHT - 6}" class="ca">-{minutes} min</text>')
    out.append(f'<text x="{LEFT + pw}" y="{HEIGHT - 6}" text-anchor="end" class="ca">now</text>')
    if note:
        out.append(
            f'<text x="{LEFT + pw / 2:.0f}" y="{TOP + ph / 2:.0f}" text-anchor="middle" '
            f'class="ca">{escape(note)}</text>'
        )
    for label, color, values, total in lines:
        ts, vs = thin(times, values)
        if not vs:
            continue
        pts = " ".join(
            f"{LEFT + pw * (1 + t / window_s):.1f},{TOP + ph - ph * min(v / top, 1.0):.1f}"
            for t, v in zip(ts, vs, strict=True)
            if -window_s <= t <= 0
        )
        width = 2.5 if total else 1.5
        out.append(
            f'<polyline class="line" data-series="{escape(label)}" fill="none" '
            f'stroke="{color}" stroke-width="{width}" stroke-linejoin="round" '
            f'points="{pts}"/>'
        )
    x = LEFT + pw
    for label, color, values, total in reversed(lines):  # legend, right-aligned at the top
        text = f"{label} {fmt_value(values[-1], unit)}" if len(values) else label
        x -= 8 + 7 * len(text) + 14
        bold = ' font-weight="600"' if total else ""
        out.append(f'<rect x="{x}" y="7" width="10" height="10" fill="{color}"/>')
        out.append(f'<text x="{x + 14}" y="16" class="cl"{bold}>{escape(text)}</text>')
    out.append("</svg>")
    return "".join(out)
