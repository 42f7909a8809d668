"""The status page (/server-status on the management address) in a real browser.

The appliance runs in a test namespace with two workers and some traffic; headless
Chromium, in the same namespace, loads the page through the DevTools protocol (a small
WebSocket client below, standard library only), which reports console messages, uncaught
exceptions and failed loads; the test takes a screenshot and reads the rendered tables.
Skipped when chromium is not installed (Debian package ``chromium``, which scripts/lib.sh
installs).
"""

from __future__ import annotations

import base64
import json
import struct
import time
from pathlib import Path
from typing import Any

import pytest

from appliance.testing import Appliance
from appliance.testing.browser import CHROMIUM, NO_CHROMIUM, DevTools, chromium, page_ws_url
from mtcp_core.testing import netns

pytestmark = pytest.mark.requires_root


@pytest.mark.skipif(CHROMIUM is None, reason=NO_CHROMIUM)
def test_status_page_renders_in_headless_chromium(netlab: netns.Lab, tmp_path: Path) -> None:
    ns = netlab.namespace("status")
    with Appliance(ns, tmp_path / "appliance.log", ["--cores", "2"]) as app:
        for _ in range(20):
            assert app.get("/")[0] == 200
        time.sleep(1.1)  # a rate sample with the traffic in it
        for _ in range(10):
            assert app.get("/")[0] == 200
        with chromium(ns, tmp_path / "chromium-profile", "--window-size=1400,900") as port:
            shot = tmp_path / "server-status.png"

            def session() -> dict[str, Any]:
                dt = DevTools(page_ws_url(ns, port))
                try:
                    for domain in ("Page", "Runtime", "Log", "Network"):
                        dt.call(f"{domain}.enable")
                    # the detector must see a failed load: a missing page is one
                    dt.load(f"{app.metrics_url.rsplit('/', 1)[0]}/no-such-page")
                    control = dt.problems()
                    dt.load(f"{app.metrics_url.rsplit('/', 1)[0]}/server-status")
                    problems = dt.problems()
                    png = dt.call("Page.captureScreenshot", format="png")["data"]
                    shot.write_bytes(base64.b64decode(png))
                    return {
                        "control": control,
                        "problems": problems,
                        "title": dt.evaluate("document.title"),
                        "rows": dt.evaluate("document.querySelectorAll('#rates tr.core').length"),
                        "state_rows": dt.evaluate(
                            "document.querySelectorAll('#states tr.core').length"
                        ),
                        "text": dt.evaluate("document.body.innerText"),
                        # without scripts the page reloads itself (a meta refresh in
                        # <noscript>); with them it swaps its content in place
                        "refresh": dt.evaluate("document.querySelector('noscript')?.textContent"),
                    }
                finally:
                    dt.close()

            got = ns.call(session)
        print(f"screenshot: {shot}")
        assert got["control"], "the console-error detector saw nothing on a 404 page"
        assert got["problems"] == [], got["problems"]
        assert got["title"] == "mtcp-appliance status"
        assert got["rows"] == 2 and got["state_rows"] == 2, got["text"]
        assert got["refresh"] == '<meta http-equiv="refresh" content="2">'
        assert "established" in got["text"] and "time wait" in got["text"]
        png = shot.read_bytes()
        assert png.startswith(b"\x89PNG") and len(png) > 10_000
        (w, h) = struct.unpack("!II", png[16:24])
        assert w == 1400 and h > 500, (w, h)

        status, body = app.mgmt("/server-status?json")
        data = json.loads(body)
        assert status == 200 and [c["core"] for c in data["cores"]] == [0, 1]
        assert sum(c["totals"]["requests"] for c in data["cores"]) == 30
        assert all(c["up"] and c["pid"] for c in data["cores"])
        assert set(data["cores"][0]["connections"]) >= {"established", "time_wait", "syn_received"}
        assert data["interval_s"] > 0
        assert app.stop() == 0
