"""The status page's charts: the history of rates, the inline SVG, and what headless Chromium
draws from it (a screenshot of the chart area whose pixels the test reads)."""

from __future__ import annotations

import base64
import json
import struct
import time
import zlib
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from appliance.metrics import charts
from appliance.metrics.status import HISTORY_S, SERIES, StatusPage
from appliance.testing import Appliance
from appliance.testing.browser import CHROMIUM, NO_CHROMIUM, DevTools, chromium, page_ws_url
from appliance.testing.metrics import ViewSource, make_view
from mtcp_core.testing import netns


def test_history_keeps_fifteen_minutes_of_rates_per_core() -> None:
    source = ViewSource(make_view())
    page = StatusPage(source, interval=1.0)
    page.sample()
    time.sleep(0.02)
    source.current = make_view(scale=3)  # every counter of the stack x3, requests 7 -> 21
    page.sample()
    s = page.series(minutes=15)
    assert len(s["t"]) == 1 and -1 < s["t"][0] <= 0
    dt = page._history[-1][0] - page._samples[0].at
    core0 = s["cores"]["0"]
    assert core0["requests"][0] == pytest.approx(14 / dt, rel=0.05)
    assert core0["connections"][0] == pytest.approx(40 / dt, rel=0.05)  # passive + active
    assert core0["retransmits"][0] == pytest.approx(20 / dt, rel=0.05)
    assert core0["throughput"][0] == pytest.approx(20 / dt, rel=0.05)  # tx_bytes
    assert s["total"]["requests"][0] == pytest.approx(2 * core0["requests"][0], rel=0.01)
    assert all(s["available"].values())
    # a restarted worker's counters start again from zero: no negative rate
    source.current = make_view(scale=1)
    page.sample()
    assert page.series()["cores"]["0"]["requests"][-1] == 0
    # the window: older points leave the 5-minute view, the deque holds 15 minutes
    assert page.series(minutes=5, now=time.monotonic() + 6 * 60)["t"] == []
    assert len(page.series(minutes=99, now=time.monotonic() + 14 * 60)["t"]) == 2
    assert page._history.maxlen is not None and page._history.maxlen >= HISTORY_S
    kernel = ViewSource(replace(make_view(), stack="linux"))
    assert StatusPage(kernel).series()["available"]["drops"] is False


def test_charts_are_inline_svg_one_per_series() -> None:
    source = ViewSource(make_view())
    page = StatusPage(source)
    for i in range(4):
        source.current = make_view(scale=i + 1)
        page.sample()
        time.sleep(0.01)
    html = page.html(refresh=2, minutes=5)
    assert html.count("<svg") == len(SERIES)
    for key, title, _, _ in SERIES:
        assert f'id="chart-{key}"' in html and title in html
    assert html.count('class="line"') == len(SERIES) * 3  # two cores and the total
    assert "Last 5 minutes" in html and "http://" not in html.split("<body>")[0].replace(
        'xmlns="http://www.w3.org/2000/svg"', ""
    )
    svg = charts.chart("T", "/s", 60, [-2.0, -1.0, 0.0], [("all", "#000", [1, 5, 3], True)])
    assert 'points="' in svg and "5/s" in svg  # the y axis goes to 5
    t, v = charts.thin([float(-i) for i in range(1000, 0, -1)], [1.0] * 1000)
    assert len(t) == charts.MAX_POINTS and set(v) == {1.0}


# ---------------------------------------------------------------- in a browser


def decode_png(data: bytes) -> tuple[int, int, list[bytes]]:
    """(width, height, rows of RGB bytes) of an 8-bit RGB or RGBA, non-interlaced PNG."""
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    pos, idat, width = 8, b"", 0
    height = depth = ctype = 0
    while pos < len(data):
        (n,) = struct.unpack("!I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + n]
        pos += 12 + n
        if kind == b"IHDR":
            width, height, depth, ctype, _, _, interlace = struct.unpack("!IIBBBBB", body)
            assert depth == 8 and ctype in (2, 6) and interlace == 0, (depth, ctype)
        elif kind == b"IDAT":
            idat += body
    bpp = 3 if ctype == 2 else 4
    raw = zlib.decompress(idat)
    stride = width * bpp
    rows: list[bytes] = []
    prev = bytearray(stride)
    for y in range(height):
        f = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if f == 1:
                line[i] = (line[i] + a) & 0xFF
            elif f == 2:
                line[i] = (line[i] + b) & 0xFF
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pr = a if pa <= pb and pa <= pc else b if pb <= pc else c
                line[i] = (line[i] + pr) & 0xFF
        prev = line
        rows.append(
            bytes(line)
            if bpp == 3
            else bytes(v for j in range(0, stride, 4) for v in line[j : j + 3])
        )
    return width, height, rows


def pixels_near(rows: list[bytes], color: str, tol: int = 60) -> int:
    want = bytes.fromhex(color.lstrip("#"))
    n = 0
    for row in rows:
        for j in range(0, len(row), 3):
            if sum(abs(row[j + k] - want[k]) for k in range(3)) <= tol:
                n += 1
    return n


@pytest.mark.requires_root
@pytest.mark.skipif(CHROMIUM is None, reason=NO_CHROMIUM)
def test_charts_render_in_headless_chromium(netlab: netns.Lab, tmp_path: Path) -> None:
    ns = netlab.namespace("chart")
    with Appliance(ns, tmp_path / "appliance.log", ["--cores", "2"]) as app:
        end = time.monotonic() + 4.5  # a few seconds of traffic: several points a series
        n = 0
        while time.monotonic() < end:
            assert app.get("/")[0] == 200
            n += 1
            time.sleep(0.02)
        shot = tmp_path / "charts.png"
        with chromium(ns, tmp_path / "chromium-profile", "--window-size=1400,1000") as port:

            def session() -> dict[str, Any]:
                dt = DevTools(page_ws_url(ns, port))
                try:
                    for domain in ("Page", "Runtime", "Log", "Network"):
                        dt.call(f"{domain}.enable")
                    base = app.metrics_url.rsplit("/", 1)[0]
                    dt.load(f"{base}/server-status?refresh=1&minutes=5")
                    box = dt.evaluate(
                        "JSON.stringify(document.getElementById('chart-requests')"
                        ".getBoundingClientRect())"
                    )
                    r = json.loads(box)
                    clip = {
                        "x": r["x"],
                        "y": r["y"],
                        "width": r["width"],
                        "height": r["height"],
                        "scale": 1,
                    }
                    png = dt.call("Page.captureScreenshot", format="png", clip=clip)["data"]
                    shot.write_bytes(base64.b64decode(png))
                    full = dt.call("Page.captureScreenshot", format="png")["data"]
                    (tmp_path / "server-status.png").write_bytes(base64.b64decode(full))
                    # live: the content is swapped in place, without a reload
                    dt.evaluate("window.__mark = 42; document.getElementById('live').__old = 1")
                    points = "document.querySelector('#chart-requests polyline').points"
                    before = dt.evaluate(points + ".numberOfItems")
                    time.sleep(3.5)
                    live = {
                        "mark": dt.evaluate("window.__mark"),
                        "swapped": dt.evaluate("document.getElementById('live').__old"),
                        "grew": dt.evaluate(points + ".numberOfItems") - before,
                        "navigations": dt.evaluate(
                            "performance.getEntriesByType('navigation').length"
                        ),
                    }
                    return {
                        "live": live,
                        "problems": dt.problems(),
                        "charts": dt.evaluate("document.querySelectorAll('svg.chart').length"),
                        "lines": dt.evaluate(
                            "[...document.querySelectorAll('#chart-requests polyline')]"
                            ".map(p => p.points.numberOfItems)"
                        ),
                        "resources": dt.evaluate(
                            "performance.getEntriesByType('resource')"
                            ".filter(e => !e.name.startsWith(location.origin + '/server-status'))"
                            ".map(e => e.name)"
                        ),
                    }
                finally:
                    dt.close()

            got = ns.call(session)
        print(f"screenshots: {shot}, {tmp_path / 'server-status.png'}")
        assert got["problems"] == [], got["problems"]
        assert got["charts"] == len(SERIES)
        live = got["live"]
        assert live["mark"] == 42 and live["navigations"] == 1, live  # never reloaded
        assert live["swapped"] is None and live["grew"] >= 2, live  # new content, new points
        assert got["resources"] == []  # nothing but the page itself: works with no internet
        assert len(got["lines"]) == 3 and min(got["lines"]) >= 3, got["lines"]
        width, height, rows = decode_png(shot.read_bytes())
        assert width >= 600 and height >= 150, (width, height)
        # the chart area is not blank: the total's line and each core's line are drawn
        assert pixels_near(rows, charts.TOTAL_COLOR) > 200
        assert pixels_near(rows, charts.core_color(0)) > 50
        assert pixels_near(rows, charts.core_color(1)) > 50
        status, body = app.mgmt("/server-status?series&minutes=5")
        s = json.loads(body)
        assert status == 200 and max(s["total"]["requests"]) > 0
        assert app.stop() == 0
