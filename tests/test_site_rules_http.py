"""Site rules and virtual hosts over HTTP, on both stacks (a client namespace and a server
namespace joined by a veth, as in test_http_server.py), and through the appliance itself:
a rule file with an error stops it with status 2, the access log goes to stdout as JSON,
the metrics carry the site."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.http.config import SiteConfig
from appliance.http.vhosts import VhostConfig, VirtualSite
from appliance.testing import APPLIANCE, Appliance, value
from appliance.testing.httpserver import Server, running_server
from mtcp_core.testing import netns

pytestmark = pytest.mark.requires_root


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("vh")
    main, blog = base / "main", base / "blog"
    for d in (main, blog):
        d.mkdir()
    (main / "index.html").write_text("<h1>main</h1>\n")
    (main / "app.js").write_text("js\n")
    (main / "old.html").write_text("old\n")
    (main / "_redirects").write_text(
        "/home          /                 301\n"
        "/docs/:page    /manual/:page.html 308\n"
        "/old.html      /new.html         302!\n"
        "/pretty/*      /old.html         200\n"
    )
    (main / "_headers").write_text(
        "/*\n  X-Frame-Options: DENY\n/app.js\n  Cache-Control: no-store\n"
    )
    (blog / "index.html").write_text("<h1>blog</h1>\n")
    return {"main": main, "blog": blog}


@pytest.fixture(scope="module", params=["mtcp", "linux"])
def srv(request: pytest.FixtureRequest, sites: dict[str, Path]) -> Iterator[Server]:
    reason = netns.missing_privileges()
    if reason:
        pytest.skip(reason)
    vh = VhostConfig(
        (
            VirtualSite(
                "main", ("main.test",), SiteConfig(root=sites["main"]), spa_fallback="/index.html"
            ),
            VirtualSite("blog", ("*.blog.test",), SiteConfig(root=sites["blog"])),
        ),
        "main",
    ).compile()
    with running_server(str(request.param), vh) as server:  # type: ignore[arg-type]
        yield server


def test_redirects_rewrites_spa_and_headers_over_http(srv: Server) -> None:
    status, h, body = srv.request("GET", "/home?a=1")
    assert (status, h["location"], h["cache-control"]) == (301, "/?a=1", "public, max-age=60")
    assert h["x-frame-options"] == "DENY"
    status, h, _ = srv.request("GET", "/docs/intro")
    assert (status, h["location"]) == (308, "/manual/intro.html")
    status, h, _ = srv.request("GET", "/old.html")  # forced: the file is shadowed
    assert (status, h["location"]) == (302, "/new.html")
    status, h, body = srv.request("GET", "/pretty/a/b")  # rewrite: same URL, other file
    assert (status, body) == (200, b"old\n") and h["etag"]
    status, _, _ = srv.request("GET", "/pretty/x", {"If-None-Match": h["etag"]})
    assert status == 304
    status, h, body = srv.request("GET", "/some/app/route")  # SPA fallback
    assert (status, body, h["x-frame-options"]) == (200, b"<h1>main</h1>\n", "DENY")
    status, _, _ = srv.request("GET", "/missing.css")  # an asset: still 404
    assert status == 404
    status, h, body = srv.request("GET", "/app.js")
    assert (status, body, h["cache-control"]) == (200, b"js\n", "no-store")
    # curl follows the redirect chain to the real page
    out = srv.curl("/home", "-L", "-H", "Host: main.test")
    assert out == b"<h1>main</h1>\n"


def test_virtual_hosts_over_http(srv: Server) -> None:
    assert srv.request("GET", "/", {"Host": "www.blog.test"})[2] == b"<h1>blog</h1>\n"
    assert srv.request("GET", "/", {"Host": "main.test"})[2] == b"<h1>main</h1>\n"
    assert srv.request("GET", "/", {"Host": "unknown.test"})[2] == b"<h1>main</h1>\n"
    status, h, _ = srv.request("GET", "/home", {"Host": "www.blog.test"})
    assert status == 404 and "x-frame-options" not in h  # blog has no rules
    sites = [r.site for r in srv.records[-4:]]
    assert sites == ["blog", "main", "main", "blog"]


# ---------------------------------------------------------------- the appliance


def _site(tmp_path: Path) -> Path:
    root = tmp_path / "site"
    root.mkdir()
    (root / "index.html").write_text("<h1>home</h1>\n")
    return root


def test_a_rule_file_with_an_error_stops_the_start_with_status_2(tmp_path: Path) -> None:
    root = _site(tmp_path)
    (root / "_redirects").write_text("/a /b 301\n/c /d 3000\n")
    proc = subprocess.run(
        [
            APPLIANCE,
            "serve",
            "--stack",
            "linux",
            "--port",
            "18089",
            "--root",
            str(root),
            "--metrics",
            "127.0.0.1:0",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        cwd="/",
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert f"{root}/_redirects:2" in proc.stderr and "status '3000'" in proc.stderr


def test_appliance_json_access_log_on_stdout_sites_in_metrics_and_reload(
    netlab: netns.Lab, tmp_path: Path
) -> None:
    root = _site(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    (other / "index.html").write_text("other\n")
    (root / "_redirects").write_text("/a /b 301\n")
    conf = tmp_path / "c.toml"
    conf.write_text(
        f'[[sites]]\nname = "main"\nroot = "{root}"\ndefault = true\n'
        '[[sites.redirects]]\nfrom = "/t"\nto = "/t1"\n'
        f'[[sites]]\nname = "other"\nserver_names = ["other.test"]\nroot = "{other}"\n'
    )
    ns = netlab.namespace("vh")
    args = [
        "--stack",
        "linux",
        "--port",
        "8080",
        "--cores",
        "1",
        "--config",
        str(conf),
        "--access-log",
        "-",
        "--log-format",
        "json",
        "--event-log-format",
        "json",
    ]
    with Appliance(ns, tmp_path / "appliance.log", args) as app:

        def get(path: str, host: str) -> tuple[int, dict[str, str], bytes]:
            def go() -> Any:
                import http.client

                c = http.client.HTTPConnection("127.0.0.1", 8080, timeout=10)
                c.request("GET", path, headers={"Host": host})
                r = c.getresponse()
                return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()

            return ns.call(go)

        assert get("/", "other.test")[2] == b"other\n"
        status, h, _ = get("/a", "x.test")
        assert (status, h["location"]) == (301, "/b")
        # the access log: JSON lines on stdout (after the two start lines, read already)
        assert app.proc.stdout is not None
        lines = app._read_lines(2, 10)
        recs = [json.loads(x) for x in lines]
        assert [(r["site"], r["status"], r["uri"]) for r in recs] == [
            ("other", 200, "/"),
            ("main", 301, "/a"),
        ]
        s = app.scrape()
        assert value(s, "mtcp_http_site_requests_total", site="other", status_class="2xx") == 1
        assert value(s, "mtcp_http_site_requests_total", site="main", status_class="3xx") == 1
        # a rule file changed into an error: the old rules stay, the log says why
        time.sleep(0.05)
        (root / "_redirects").write_text("/a /c 301 Language=fr\n")
        get("/", "x.test")
        time.sleep(1.2)
        get("/", "x.test")
        log = app.wait_log("keeping the old rules")
        assert get("/a", "x.test")[1]["location"] == "/b"
        event = json.loads([x for x in log.splitlines() if "keeping the old rules" in x][0])
        assert event["level"] == "ERROR" and "_redirects:1" in event["message"]
        assert get("/t", "x.test")[1]["location"] == "/t1"
        # fixed, the config file's rule changed too, and SIGHUP: both compiled again
        (root / "_redirects").write_text("/a /d 302\n")
        conf.write_text(conf.read_text().replace('to = "/t1"', 'to = "/t2"'))
        app.send_signal(signal.SIGHUP)
        app.wait_log("reloaded: new server")
        deadline = time.monotonic() + 5
        while get("/a", "x.test")[1].get("location") != "/d":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert get("/t", "x.test")[1]["location"] == "/t2"
        # a mistake in the config file on the next SIGHUP: the rules stay, the log says why
        conf.write_text(conf.read_text().replace('to = "/t2"', 'to = "/t3/:nope"'))
        app.send_signal(signal.SIGHUP)
        app.wait_log("reloaded: new server", count=2)
        log = app.wait_log("uses :nope")
        assert get("/t", "x.test")[1]["location"] == "/t2"
        assert "keeping the old rules" in log
        assert app.stop() == 0


def test_a_host_rule_added_at_run_time_is_not_hidden_by_the_responder_cache(
    netlab: netns.Lab, tmp_path: Path
) -> None:
    """One site that starts without rules; the static responder caches its file; then
    _redirects gains a rule for one Host only: that Host gets the redirect (the responder's
    key must include the Host even while the site had no rules), the others the file."""
    from appliance.testing.responder import fetch, finish, start, wait_for

    root = _site(tmp_path)
    (root / "small.txt").write_text("small\n")
    one = VhostConfig((VirtualSite("main", (), SiteConfig(root=root)).compile(),), "main")
    srv, mstack = start(netlab, one, "vh-rsp", True)  # type: ignore[arg-type]
    try:
        req = b"GET /small.txt HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n"
        for _ in range(3):
            data, _ = fetch(srv, req)
            assert data.startswith(b"HTTP/1.1 200 OK") and data.endswith(b"small\n")
        wait_for(lambda: srv.stats()["rsp_hits"] >= 1)
        (root / "_redirects").write_text("http://b.example/small.txt /moved.txt 302!\n")
        time.sleep(1.1)  # the rule files are looked at once a second
        fetch(srv, b"GET /x HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n")
        other = b"GET /small.txt HTTP/1.1\r\nHost: b.example\r\nConnection: close\r\n\r\n"
        data, _ = fetch(srv, other)
        assert data.startswith(b"HTTP/1.1 302 Found"), data[:200]
        assert b"\r\nLocation: /moved.txt\r\n" in data
        data, _ = fetch(srv, req)
        assert data.startswith(b"HTTP/1.1 200 OK") and data.endswith(b"small\n")
    finally:
        finish(srv, mstack)
