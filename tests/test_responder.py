"""The static responder (issue 13): cached files answered inside the stack.

- the C request parser on its own (``mtcp_core.rsp_parse``): what it takes, h11 takes the
  same way; every prefix of what it takes waits for more bytes; everything else is handed
  over at once;
- end to end on afpacket in namespaces: a hit never reaches Python, a miss does, a changed
  file is served fresh, hits reach the access log and the metrics records, the kill switch,
  a fallback keeps the connection's later requests correct, the drain says Connection: close,
  the keep-alive request limit, HTTP/1.0, pipelining;
- the differential test: the same request bytes (hypothesis-made near the grammar's borders,
  and the requests of tests/test_http_server.py) against the same site with the responder on
  and off: byte-identical responses (Date masked), identical closes, identical records.
"""

from __future__ import annotations

import os
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h11
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mtcp_core
from appliance.http import loop as http_loop
from appliance.http.config import RequestRecord, SiteConfig
from appliance.http.connection import Connection
from appliance.http.server import serve_mtcp
from appliance.testing.http1 import get, norm, write_files
from appliance.testing.responder import Srv, fetch, finish, read_all, start, wait_for
from mtcp_core.testing import netns

PORT = 80

# ---------------------------------------------------------------- the parser alone


def test_parser_takes_simple_requests_and_waits_for_the_rest() -> None:
    req = b"GET /a.txt HTTP/1.1\r\nHost: t\r\nAccept-Encoding: gzip\r\nUser-Agent: x y\r\n\r\n"
    assert mtcp_core.rsp_parse(req) == len(req)
    assert mtcp_core.rsp_parse(req + b"GET / HTTP/1.1\r\n") == len(req)  # pipelined
    for i in range(len(req)):
        assert mtcp_core.rsp_parse(req[:i]) == 0, req[:i]
    assert mtcp_core.rsp_parse(b"HEAD / HTTP/1.0\r\n\r\n") == 19
    both = b"GET / HTTP/1.1\r\nHost:\r\nConnection: Keep-Alive, close\r\n\r\n"
    assert mtcp_core.rsp_parse(both) == len(both)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"POST / HTTP/1.1\r\n", -1),
        (b"get / HTTP/1.1\r\n", -1),
        (b"GET / HTTP/1.2\r\n", -1),
        (b"GET / HTTP/2.0\r\n", -1),
        (b"GET  / HTTP/1.1\r\n", -2),
        (b"GET / HTTP/1.1\n", -2),  # bare LF: h11 takes it, the application answers it
        (b"GET / HTTP/1.1\r\nHost: t\nX", -2),
        (b"GET / HTTP/1.1\r\nHost : t\r\n", -2),
        (b"GET / HTTP/1.1\r\nHost: t\r\n folded\r\n", -2),
        (b"GET / HTTP/1.1\r\nHost: a\x01b\r\n", -2),
        (b"GET / HTTP/1.1\r\nHost: a\x00b\r\n", -2),
        (b"GET /\x7f HTTP/1.1\r\n", -2),
        (b"GET / HTTP/1.1\r\nRange: bytes=0-1\r\n", -3),
        (b"GET / HTTP/1.1\r\nIf-Modified-Since: x\r\n", -3),
        (b"GET / HTTP/1.1\r\nContent-Length: 0\r\n", -3),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n", -3),
        (b"GET / HTTP/1.1\r\nConnection: upgrade\r\n", -3),
        (b"GET / HTTP/1.1\r\n\r\n", -3),  # no Host in 1.1: a 400, the application's
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n", -4),
        (b"GET / HTTP/1.1\r\nUser-Agent: " + b"u" * 5000, -4),
    ],
)
def test_parser_hands_over_at_the_first_byte_that_rules_a_request_out(
    data: bytes, reason: int
) -> None:
    assert mtcp_core.rsp_parse(data) == reason


def test_parser_applies_the_sites_limits() -> None:
    req = b"GET /abcdef HTTP/1.1\r\nHost: t\r\nUser-Agent: 0123456789\r\n\r\n"
    assert mtcp_core.rsp_parse(req, 21, 100) == len(req)  # "GET /abcdef HTTP/1.1" is 20
    assert mtcp_core.rsp_parse(req, 19, 100) == -4
    assert mtcp_core.rsp_parse(req, 100, 4 + 1 + 4 + 10 + 10 + 4) == len(req)
    assert mtcp_core.rsp_parse(req, 100, 4 + 1 + 4 + 10 + 10 + 3) == -4


_TOK = st.sampled_from(
    [b"Host", b"host", b"HOST", b"Accept", b"Accept-Encoding", b"User-Agent", b"Referer",
     b"Connection", b"If-None-Match", b"Range", b"X-Any", b"Cache-Control", b"Dnt", b"Pragma"]
)  # fmt: skip
_VAL = st.one_of(
    st.sampled_from([b"", b"t", b"gzip, br", b"close", b"keep-alive", b'"x"', b"a b", b"\xff"]),
    st.binary(max_size=12),
)
_WS = st.sampled_from([b"", b" ", b"  ", b"\t", b" \t"])
_EOL = st.sampled_from([b"\r\n", b"\r\n", b"\r\n", b"\n", b"\r"])


@st.composite
def near_requests(draw: st.DrawFn) -> bytes:
    """Request heads near the grammar's borders: half of them well-formed (hits, with odd
    but valid pieces: case, whitespace, empty values, Connection tokens, HTTP/1.0), the
    others with one piece from just outside the grammar."""
    clean = draw(st.booleans())
    if clean:
        method = draw(st.sampled_from([b"GET", b"HEAD"]))
        target = draw(st.sampled_from([b"/small.txt", b"/app.js", b"/", b"/k4.bin", b"/nope"]))
        version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0"]))
        sp, eol = b" ", st.just(b"\r\n")
        names = st.sampled_from([b"Host", b"host", b"Accept-Encoding", b"User-Agent",
                                 b"Connection", b"Accept", b"Referer", b"DNT"])  # fmt: skip
        values = st.sampled_from([b"", b"t", b"gzip", b"gzip, br", b"close", b"keep-alive",
                                  b"Keep-Alive", b"x\xff y", b"a\tb"])  # fmt: skip
    else:
        method = draw(st.sampled_from([b"GET", b"HEAD", b"GET", b"get", b"POST", b"GETX"]))
        target = draw(
            st.one_of(
                st.sampled_from([b"/", b"/small.txt", b"/app.js", b"/nope", b"/s?x=1", b"//a"]),
                st.binary(min_size=1, max_size=8),
            )
        )
        version = draw(
            st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/1.1", b"HTTP/1.2", b"http/1.1"])
        )
        sp = draw(st.sampled_from([b" ", b" ", b" ", b"  ", b"\t"]))
        eol, names, values = _EOL, _TOK, _VAL
    out = method + sp + target + b" " + version + draw(eol)
    if clean and version == b"HTTP/1.1":
        out += b"Host: t\r\n"
    for _ in range(draw(st.integers(0, 4))):
        name = draw(names)
        out += name + b":" + draw(_WS) + draw(values) + draw(_WS) + draw(eol)
    return out + draw(eol)


def _h11_view(data: bytes) -> tuple[Any, int] | None:
    """What h11 makes of a head: (method, target, version, headers), consumed bytes."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(data)
    try:
        ev = conn.next_event()
    except h11.RemoteProtocolError:
        return None
    if not isinstance(ev, h11.Request):
        return None
    nxt = conn.next_event()
    if not isinstance(nxt, h11.EndOfMessage):
        return None
    rest = len(conn.trailing_data[0])
    return (ev.method, ev.target, ev.http_version, list(ev.headers)), len(data) - rest


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(near_requests(), st.binary(max_size=6))
def test_what_the_parser_takes_h11_takes_the_same_way(head: bytes, tail: bytes) -> None:
    data = head + tail
    r = mtcp_core.rsp_parse(data)
    if r > 0:
        view = _h11_view(data[:r])
        assert view is not None, data
        (method, _target, version, headers), used = view
        assert used == r
        assert method in (b"GET", b"HEAD") and version in (b"1.0", b"1.1")
        names = [n for n, _ in headers]
        assert b"content-length" not in names and b"transfer-encoding" not in names
        for i in range(r):  # never handed over early: every prefix waits
            assert mtcp_core.rsp_parse(data[:i]) == 0
    elif r == 0:
        assert b"\r\n\r\n" not in data[: 4096]


# ---------------------------------------------------------------- end to end


# Requests that reached the Python path, per server thread (Connection.receive with data).
PY_RECEIVES: Counter[str] = Counter()


class CountingConnection(Connection):
    def receive(self, data: bytes, now: float | None = None) -> bytes:
        if data:
            PY_RECEIVES[threading.current_thread().name] += 1
        return super().receive(data, now)


@pytest.fixture(autouse=True)
def _counting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http_loop, "Connection", CountingConnection)


@pytest.fixture
def site(tmp_path: Path) -> Path:
    return write_files(
        tmp_path / "site",
        {
            "index.html": b"<h1>hello</h1>\n",
            "small.txt": bytes(range(48, 48 + 64)),
            "k4.bin": os.urandom(4096),
            "app.js": b"console.log('x');\n" * 40,
            "app.js.gz": b"gz" * 10,
            "big.bin": os.urandom(300 * 1024),  # above small_file_limit
            "dir": None,
        },
    )


@pytest.fixture
def on(netlab: netns.Lab, site: Path) -> Iterator[Srv]:
    config = SiteConfig(root=site, access_log=site.parent / "access.log", max_keepalive_requests=5)
    srv, mstack = start(netlab, config, "rsp-on", True)
    try:
        yield srv
    finally:
        finish(srv, mstack)


def test_a_hit_never_reaches_python_and_a_miss_does(on: Srv) -> None:
    first, closed = fetch(on, get("/small.txt", "Connection: close"))
    assert first.startswith(b"HTTP/1.1 200 OK\r\n") and closed
    py = PY_RECEIVES[on.name]
    assert py == 1  # the miss went to Python, which installed the file
    for _ in range(20):
        again, closed = fetch(on, get("/small.txt", "Connection: close"))
        assert norm(again) == norm(first) and closed
    assert PY_RECEIVES[on.name] == py, "a cached file reached the Python path"
    # the counters are published at the end of a round: the client may read first
    wait_for(lambda: on.stats()["rsp_hits"] >= 20)
    st_ = on.stats()
    assert st_["rsp_hits"] >= 20 and st_["rsp_entries"] >= 1 and st_["rsp_bytes"] > 64
    # a path nothing installed: Python answers it
    missing, _ = fetch(on, get("/nope", "Connection: close"))
    assert missing.startswith(b"HTTP/1.1 404 ")
    assert PY_RECEIVES[on.name] == py + 1
    wait_for(lambda: on.stats()["rsp_misses"] >= 2)


def test_hits_keep_alive_pipelined_and_limited_like_python(on: Srv) -> None:
    fetch(on, get("/small.txt", "Connection: close"))  # install
    py = PY_RECEIVES[on.name]
    with on.connect() as s:
        s.sendall(get("/small.txt") * 3)  # pipelined, on a keep-alive connection
        data, closed = read_all(s)
        assert data.count(b"HTTP/1.1 200 OK\r\n") == 3 and not closed
        assert b"Connection:" not in data
        s.sendall(get("/small.txt") + get("/small.txt"))  # the 5th reaches the limit
        data, closed = read_all(s)
        assert data.count(b"HTTP/1.1 200 OK\r\n") == 2 and closed
        assert data.count(b"Connection: close\r\n") == 1
    with on.connect() as s:  # HTTP/1.0: closes unless keep-alive is asked for
        s.sendall(get("/small.txt", "Connection: keep-alive", version="1.0"))
        data, closed = read_all(s)
        assert b"\r\nConnection: keep-alive\r\n" in data and not closed
        s.sendall(get("/small.txt", version="1.0"))
        data, closed = read_all(s)
        assert b"\r\nConnection: close\r\n" in data and closed
    assert PY_RECEIVES[on.name] == py


def test_a_fallback_keeps_the_connections_later_requests_correct(on: Srv) -> None:
    fetch(on, get("/small.txt", "Connection: close"))
    body = (on.root / "small.txt").read_bytes()
    py = PY_RECEIVES[on.name]
    with on.connect() as s:
        s.sendall(get("/small.txt"))  # a hit
        data, _ = read_all(s)
        assert data.endswith(body)
        s.sendall(get("/small.txt", "Range: bytes=0-3"))  # Python's (and stays Python's)
        data, _ = read_all(s)
        assert data.startswith(b"HTTP/1.1 206 ") and data.endswith(body[:4])
        s.sendall(get("/small.txt") + get("/small.txt", method="HEAD"))
        data, closed = read_all(s)
        assert data.count(b"HTTP/1.1 200 OK") == 2 and data.count(body) == 1
        assert not closed
    assert PY_RECEIVES[on.name] == py + 2
    wait_for(lambda: on.stats()["rsp_fb_header"] >= 1)
    # a fallback in the middle of a pipeline: the hits before it, Python after, in order
    with on.connect() as s:
        s.sendall(get("/small.txt") + get("/nope") + get("/small.txt", "Connection: close"))
        data, closed = read_all(s)
        statuses = re.findall(rb"HTTP/1.1 (\d+) ", data)
        assert statuses == [b"200", b"404", b"200"] and closed


def test_a_changed_file_is_served_fresh(on: Srv) -> None:
    p = on.root / "small.txt"
    fetch(on, get("/small.txt", "Connection: close"))
    hits = on.stats()["rsp_hits"]
    fetch(on, get("/small.txt", "Connection: close"))
    wait_for(lambda: on.stats()["rsp_hits"] > hits)
    p.write_bytes(b"changed\n")
    deadline = time.monotonic() + 5
    while True:
        data, _ = fetch(on, get("/small.txt", "Connection: close"))
        if data.endswith(b"\r\n\r\nchanged\n"):
            break
        assert time.monotonic() < deadline, "still the old content after 5 s"
        time.sleep(0.2)
    wait_for(lambda: on.stats()["rsp_hits"] > hits + 1)  # and the new bytes are hits again
    n = on.stats()["rsp_hits"]
    data, _ = fetch(on, get("/small.txt", "Connection: close"))
    assert data.endswith(b"\r\n\r\nchanged\n")
    wait_for(lambda: on.stats()["rsp_hits"] > n)
    p.unlink()
    deadline = time.monotonic() + 5
    while not fetch(on, get("/small.txt", "Connection: close"))[0].startswith(b"HTTP/1.1 404"):
        assert time.monotonic() < deadline, "a removed file is still served"
        time.sleep(0.2)


def test_hits_reach_the_access_log_and_the_metrics_records(on: Srv) -> None:
    fetch(on, get("/small.txt", "Connection: close"))
    hits = on.stats()["rsp_hits"]
    data, _ = fetch(on, get("/small.txt", "Referer: http://r.example/", "User-Agent: t/\"1\"",
                            "Connection: close"))  # fmt: skip
    wait_for(lambda: on.stats()["rsp_hits"] >= hits + 1)
    assert on.stats()["rsp_hits"] == hits + 1
    log = on.root.parent / "access.log"
    wait_for(lambda: len(on.records) >= 2 and log.read_text().count("\n") >= 2)
    line = log.read_text().splitlines()[-1]
    assert re.fullmatch(
        r'198\.1[89]\.\d+\.\d+ - - \[\d\d/\w\w\w/\d{4}:\d\d:\d\d:\d\d \+0000\] '
        r'"GET /small.txt HTTP/1.1" 200 64 "http://r.example/" "t/\\x221\\x22"',
        line,
    ), line
    rec = on.records[-1]
    assert (rec.method, rec.status, rec.bytes_sent, rec.core) == ("GET", 200, len(data), 0)
    assert 0 <= rec.duration_s < 5


def test_the_kill_switch_sends_everything_to_python(netlab: netns.Lab, site: Path) -> None:
    srv, mstack = start(netlab, SiteConfig(root=site), "rsp-off", False)
    try:
        for _ in range(5):
            data, _ = fetch(srv, get("/small.txt", "Connection: close"))
            assert data.startswith(b"HTTP/1.1 200 OK")
        assert PY_RECEIVES["rsp-off"] == 5
        assert srv.stats()["rsp_hits"] == 0 and srv.stats()["rsp_entries"] == 0
    finally:
        finish(srv, mstack)


def test_the_kill_switch_by_environment(
    netlab: netns.Lab, site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MTCP_APPLIANCE_NO_RESPONDER", "1")
    client, server_ns = netlab.namespace("rcl"), netlab.namespace("rsv")
    link = netlab.veth(client, server_ns, address_b=False)
    mstack = server_ns.call(mtcp_core.Stack, "afpacket", str(link.addr_b), iface=link.if_b)
    ctx = mstack.context(0)
    stop, ready = threading.Event(), threading.Event()
    t = threading.Thread(
        target=serve_mtcp, args=(ctx, SiteConfig(root=site), PORT, stop), name="rsp-env",
        kwargs={"ready": ready}, daemon=True,
    )  # fmt: skip
    t.start()
    try:
        assert ready.wait(10)
        ip = str(link.addr_b.ip)
        for _ in range(3):
            with client.entered():
                s = socket.create_connection((ip, PORT), timeout=5)
            with s:
                s.sendall(get("/small.txt", "Connection: close"))
                assert read_all(s)[0].startswith(b"HTTP/1.1 200 OK")
        assert PY_RECEIVES["rsp-env"] == 3 and ctx.stats()["rsp_hits"] == 0
    finally:
        stop.set()
        t.join(5)
        mstack.close()


def test_drain_answers_with_connection_close(on: Srv) -> None:
    fetch(on, get("/small.txt", "Connection: close"))
    py = PY_RECEIVES[on.name]
    idle = on.connect()
    busy = on.connect()
    with idle, busy:
        idle.sendall(get("/small.txt"))
        assert read_all(idle)[0].startswith(b"HTTP/1.1 200 OK")
        busy.sendall(b"GET /small.txt HTTP/1.1\r\n")  # a request in flight
        time.sleep(0.2)
        on.draining.set()
        assert read_all(idle, quiet=3)[1], "the idle connection was not closed"
        busy.sendall(b"Host: t\r\n\r\n")
        data, closed = read_all(busy, quiet=3)
        assert data.startswith(b"HTTP/1.1 200 OK") and b"\r\nConnection: close\r\n" in data
        assert closed
        with pytest.raises(OSError):  # the listener takes nothing new
            on.connect(timeout=1).sendall(get("/small.txt"))
            raise OSError("connected")
    on.thread.join(5)
    assert not on.thread.is_alive(), "serve did not return after the drain"
    assert PY_RECEIVES[on.name] == py


def test_large_files_are_never_installed(on: Srv) -> None:
    py = PY_RECEIVES[on.name]
    big, _ = fetch(on, get("/big.bin", "Connection: close"), quiet=2)
    assert len(big) > 300 * 1024
    fetch(on, get("/big.bin", "Connection: close"), quiet=2)
    assert on.stats()["rsp_entries"] == 0
    assert PY_RECEIVES[on.name] == py + 2


def test_the_table_is_bounded_per_core() -> None:
    link = mtcp_core.PairLink()
    stack = mtcp_core.Stack("pair", "198.18.5.1/24", pair=link, pair_side=0)
    try:
        ctx = stack.context(0)
        ctx.responder_enable(
            80, max_entries=2, max_bytes=1 << 20, max_entry=4096, max_request_line=8192,
            max_header_bytes=16384, header_timeout_ms=1000, keepalive_timeout_ms=1000,
            max_keepalive_requests=10, log=False,
        )  # fmt: skip

        def parts(key: bytes, body: bytes) -> list[bytes]:
            return [key, b"HTTP/1.1 200 OK\r\nDate: ", b"\r\n", body, b"", b"", b""]

        for i in range(3):
            ctx.responder_install(parts(b"GET /%d\n0\n" % i, b"x" * 100))
        with pytest.raises(OSError) as e:  # above the entry bound: never installed
            ctx.responder_install(parts(b"GET /big\n0\n", b"x" * 5000))
        assert e.value.errno == 7  # E2BIG
        wait_for(lambda: ctx.stats()["rsp_install_refused"] == 1)
        st_ = ctx.stats()
        assert st_["rsp_entries"] == 2 and 200 < st_["rsp_bytes"] < 1024
        ctx.responder_remove(b"GET /0\n0\n")
        wait_for(lambda: ctx.stats()["rsp_entries"] == 1)
        ctx.responder_clear()
        wait_for(lambda: ctx.stats()["rsp_entries"] == 0 and ctx.stats()["rsp_bytes"] == 0)
        assert ctx.responder_take_metrics() == [0] * 21
    finally:
        stack.close()


def test_virtual_hosts_one_site_hits_several_sites_stay_on_python(
    netlab: netns.Lab, site: Path, tmp_path: Path
) -> None:
    """One site with a header rule (responses may depend on the Host: the key has it): hits,
    and a Host the key has not seen is a miss; several sites: the responder stays off."""
    from appliance.http.vhosts import VhostConfig, VirtualSite

    (site / "_headers").write_text("/small.txt\n  X-Rule: yes\n")
    one = VhostConfig((VirtualSite("main", ("a.example",), SiteConfig(root=site)).compile(),),
                      "main")  # fmt: skip
    srv, mstack = start(netlab, one, "rsp-vh1", True)  # type: ignore[arg-type]
    try:
        for _ in range(3):
            data, _ = fetch(srv, get("/small.txt", "Connection: close"))
            assert b"\r\nX-Rule: yes\r\n" in data
        wait_for(lambda: srv.stats()["rsp_hits"] >= 2)
        assert srv.stats()["rsp_hits"] == 2 and PY_RECEIVES["rsp-vh1"] == 1
        other = b"GET /small.txt HTTP/1.1\r\nHost: b.example\r\nConnection: close\r\n\r\n"
        data, _ = fetch(srv, other)
        assert b"\r\nX-Rule: yes\r\n" in data and PY_RECEIVES["rsp-vh1"] == 2
        wait_for(lambda: srv.stats()["rsp_entries"] == 2)  # one key per Host value
    finally:
        finish(srv, mstack)
    other_root = tmp_path / "other"
    other_root.mkdir()
    two = VhostConfig(
        (VirtualSite("main", ("a.example",), SiteConfig(root=site)).compile(),
         VirtualSite("b", ("b.example",), SiteConfig(root=other_root)).compile()),
        "main",
    )  # fmt: skip
    srv, mstack = start(netlab, two, "rsp-vh2", True)  # type: ignore[arg-type]
    try:
        for _ in range(3):
            data, _ = fetch(srv, get("/small.txt", "Connection: close"))
            assert data.startswith(b"HTTP/1.1 200 OK")
        assert srv.stats()["rsp_hits"] == 0 and PY_RECEIVES["rsp-vh2"] == 3
    finally:
        finish(srv, mstack)


# ---------------------------------------------------------------- differential


# The requests of tests/test_http_server.py (its raw exchanges and the headers it sends).
EXISTING: list[bytes] = [
    get("/small.txt") + get("/small.txt", method="HEAD"),
    get("/small.txt", 'If-None-Match: "nope"'),
    get("/small.txt", "Range: bytes=2-5"),
    get("/small.txt", "Range: bytes=0-1,-3"),
    get("/small.txt", "Range: bytes=64-"),
    get("/app.js", "Accept-Encoding: gzip"),
    get("/app.js", "Accept-Encoding: br;q=0, gzip;q=0.5, identity"),
    get("/app.js", "Accept-Encoding: *"),
    get("/app.js"),
    get("/../small.txt"),
    get("/%2e%2e/small.txt"),
    get("/dir"),
    get("/dir/"),
    get("/" + "a" * 9000),
    get("/", *[f"X-{i}: {'v' * 200}" for i in range(100)]),
    get("/", "Content-Length: 10") + b"0123456789",
    get("/small.txt") + get("/missing") + get("/", method="HEAD") + get("/"),
    get("/small.txt", "Connection: close") + get("/small.txt"),
    b"GET /small.txt HTTP/1.0\r\n\r\n",
    b"GET /small.txt HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    b"GET /index.html HTTP/1.0\r\n\r\n",
    get("/small.txt") + get("/small.txt") + get("/small.txt"),
    b"GET / HTTP/1.1\r\n",
    get("/small.txt?q=1", "Referer: http://r.example/", "User-Agent: t/1"),
    get("/small.txt", method="POST"),
    get("/small.txt", method="OPTIONS"),
    get("/k4.bin"),
    get("/k4.bin", method="HEAD"),
    get("/index.html", "If-Modified-Since: Sun, 06 Nov 2094 08:49:37 GMT"),
]


@pytest.fixture
def twins(netlab: netns.Lab, site: Path) -> Iterator[tuple[Srv, Srv]]:
    config = SiteConfig(root=site, header_timeout_s=1.0)
    a, sa = start(netlab, config, "diff-on", True)
    b, sb = start(netlab, config, "diff-off", False)
    try:
        yield a, b
    finally:
        finish(a, sa)
        finish(b, sb)


def _both(a: Srv, b: Srv, data: bytes, shut: bool) -> tuple[Any, Any]:
    out: dict[str, Any] = {}

    def one(s: Srv) -> None:
        with s.connect() as c:
            c.sendall(data)
            if shut:
                c.shutdown(socket.SHUT_WR)
            out[s.name] = read_all(c, quiet=0.5 if not shut else 3.0)

    ts = [threading.Thread(target=one, args=(s,)) for s in (a, b)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(15)
    return out[a.name], out[b.name]


def masked(data: bytes) -> bytes:
    """Date, and the random multipart boundary of a multi-range response, masked."""
    for boundary in set(re.findall(rb"boundary=([0-9a-f]{24})", data)):
        data = data.replace(boundary, b"B" * 24)
    return norm(data)


def _same(a: Srv, b: Srv, data: bytes, shut: bool) -> None:
    (ra, ca), (rb, cb) = _both(a, b, data, shut)
    assert masked(ra) == masked(rb), (data, ra[:300], rb[:300])
    assert ca == cb, (data, ca, cb)


def _records(s: Srv) -> Counter[tuple[str, int, int]]:
    return Counter((r.method, r.status, r.bytes_sent) for r in s.records)


def test_differential_on_and_off_are_byte_identical(twins: tuple[Srv, Srv]) -> None:
    a, b = twins
    for data in EXISTING:  # twice: the second time the responder has the files installed
        for _ in range(2):
            _same(a, b, data, shut=False)
    for path in ("/small.txt", "/app.js", "/k4.bin", "/", "/index.html"):
        for extra in ([], ["Accept-Encoding: gzip"], ["Connection: close"]):
            _same(a, b, get(path, *extra), shut=False)

    @settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(near_requests(), min_size=1, max_size=3), st.booleans())
    def check(reqs: list[bytes], shut: bool) -> None:
        _same(a, b, b"".join(reqs), shut)

    check()
    wait_for(lambda: a.stats()["rsp_hits"] > 40)
    wait_for(lambda: len(a.records) == len(b.records), timeout=3)
    assert _records(a) == _records(b)


# ---------------------------------------------------------------- the appliance


@pytest.mark.parametrize("flag", [[], ["--no-responder"]])
def test_appliance_counts_hits_in_metrics_and_status(
    netlab: netns.Lab, tmp_path: Path, flag: list[str]
) -> None:
    import json

    from appliance.testing import Appliance, value

    root = tmp_path / "site"
    root.mkdir()
    (root / "small.txt").write_text("small\n")
    client, server = netlab.namespace("rapc"), netlab.namespace("raps")
    link = netlab.veth(client, server, address_b=False, tx_offload=False)
    ip = str(link.addr_b.ip)
    args = ["--backend", "afpacket", "--iface", link.if_b, "--ip", str(link.addr_b),
            "--cores", "1", "--root", str(root), *flag]  # fmt: skip
    with Appliance(server, tmp_path / "appliance.log", args) as app:
        n = 12
        for _ in range(n):
            out = client.run(["curl", "-sS", "--max-time", "10", f"http://{ip}/small.txt"])
            assert out.stdout == "small\n"
        time.sleep(0.6)  # the worker takes the hits' counters at least every 0.25 s
        s = app.scrape()
        hits = value(s, "mtcp_rsp_hits_total", core="0")
        assert value(s, "mtcp_http_requests_total", method="GET", status_class="2xx") == n
        assert value(s, "mtcp_http_response_bytes_total") > n * 100
        assert value(s, "mtcp_http_request_duration_seconds_count") == n
        status, body = app.mgmt("/server-status?json")
        rsp = json.loads(body)["cores"][0]["responder"]
        if flag:
            assert hits == 0 and rsp["hit_ratio"] is None
        else:
            assert hits == n - 1 and rsp["hits"] == n - 1 and rsp["misses"] == 1
            assert rsp["hit_ratio"] == round((n - 1) / n, 4) and rsp["entries"] == 1
            _, html = app.mgmt("/server-status")
            assert f"{100 * (n - 1) / n:.1f}%".encode() in html
        assert app.stop() == 0


def test_http_block_counts_the_responders_hits_as_record_would() -> None:
    import ctypes
    import tempfile

    from appliance.metrics.http_block import DURATION_BUCKETS, HttpBlock

    with tempfile.TemporaryDirectory() as d:
        a = HttpBlock.create(Path(d) / "a", 0)
        b = HttpBlock.create(Path(d) / "b", 0)
        recs = [("GET", 200, 100, 0.0001), ("GET", 304, 50, 0.003), ("HEAD", 200, 40, 20.0)]
        for m, stt, n, dur in recs:
            a.record(RequestRecord(m, stt, n, dur, 0))
        buckets = [0] * (len(DURATION_BUCKETS) + 1)
        buckets[0] += 1
        buckets[3] += 1
        buckets[-1] += 1
        hits = [1, 1, 1, 0, 190, int(0.0001e9) + int(0.003e9) + int(20e9), *buckets]
        slots = (ctypes.c_uint64 * len(hits)).from_address(b.hits_address())
        for i, v in enumerate(hits):  # as the mTCP thread adds them
            slots[i] += v
        sa, sb = a.read(), b.read()
        assert sa is not None and sb is not None
        assert (sa.requests, sa.response_bytes, sa.duration_buckets) == (
            sb.requests, sb.response_bytes, sb.duration_buckets
        )
        assert abs(sa.duration_sum_s - sb.duration_sum_s) < 1e-6
        del slots
        a.close()
        b.close()


def test_the_parser_fuzz_harness_runs_clean(repo_root: Path, tmp_path: Path) -> None:
    """tests/c/fuzz_rsp_parse.sh under ASan+UBSan (libFuzzer with clang, else gcc and the
    harness's own driver), briefly: the long run is in the closing note."""
    import shutil
    import subprocess

    if shutil.which("gcc") is None and shutil.which("clang") is None:
        pytest.skip("no C compiler")
    proc = subprocess.run(
        ["sh", str(repo_root / "tests/c/fuzz_rsp_parse.sh"), "100000", str(tmp_path)],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
