"""The load generator on the core (``mtcp_core.LoadGenerator``, ``mtcp-appliance load``).

- pair backend (no privileges): two stacks in this process, mtcp_core.testing.echo_app's HTTP
  responder on one, the generator on the other: counts, latency order, error kinds (refused,
  404, no Content-Length, garbage, timeouts), the histogram's quantiles and merging;
- namespaces (root): the CLI on afpacket in a client namespace against kernel servers in a
  server namespace over a veth: counts equal the server's, no errors, one and two cores; a
  closed port (RST) and a 404 are counted as errors.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import mtcp_core
from appliance import cli
from mtcp_core.testing import echo_app, netns

REQUEST = b"GET / HTTP/1.1\r\nHost: 198.18.0.2\r\nConnection: close\r\n\r\n"
SERVER_IP, CLIENT_IP = "198.18.0.2", "198.18.0.1"
# the installed console script (python -m from the repository root would import the
# source folders, which have no _native)
APP = str(Path(sys.executable).parent / "mtcp-appliance")


# ---------------------------------------------------------------- pair backend


class Pair:
    def __init__(self) -> None:
        self.link = mtcp_core.PairLink()
        # the server closes first (Connection: close): a short TIME_WAIT keeps its pool free
        self.server = mtcp_core.Stack(
            "pair", SERVER_IP + "/24", pair=self.link, pair_side=0, time_wait_ms=50
        )
        self.client = mtcp_core.Stack("pair", CLIENT_IP + "/24", pair=self.link, pair_side=1)
        self.sctx = self.server.context(0)
        self.cctx = self.client.context(0)

    def close(self) -> None:
        self.client.close()
        self.server.close()
        self.link.close()


@pytest.fixture
def pair() -> Iterator[Pair]:
    p = Pair()
    try:
        yield p
    finally:
        p.close()


def serve(p: Pair) -> tuple[threading.Thread, threading.Event, list[Any]]:
    return echo_app.serve_in_thread(lambda: echo_app.MtcpNet(p.sctx), {80: "http"})


def check_latency(s: mtcp_core.LatencySummary) -> None:
    assert 0 < s.min <= s.p50 <= s.p90 <= s.p99 <= s.p999 <= s.max < 5.0, s
    assert s.min <= s.mean <= s.max, s


def test_pair_counts_match_the_server(pair: Pair) -> None:
    th, stop, res = serve(pair)
    gen = mtcp_core.LoadGenerator(
        pair.cctx, (SERVER_IP, 80), REQUEST, connections=8, duration=30.0, max_requests=400
    )
    r = gen.run()
    report = echo_app.stop_server(th, stop, res)
    assert r.errors == dict.fromkeys(mtcp_core.LoadResult.ERROR_KINDS, 0)
    assert r.started == r.completed == r.ok == 400
    assert report.replies == report.accepted == 400
    assert r.status_classes["2xx"] == 400
    assert r.bytes_written == 400 * len(REQUEST)
    assert r.bytes_read == 400 * len(echo_app.HTTP_RESPONSE)
    assert r.elapsed < 30.0 and r.requests_per_second > 0
    check_latency(r.latency)
    check_latency(r.connect)
    assert r.connect.count == 400
    assert r.latency_quantile(0.5) == r.latency.p50


def test_pair_duration_bounds_the_run(pair: Pair) -> None:
    th, stop, res = serve(pair)
    r = mtcp_core.LoadGenerator(
        pair.cctx, (SERVER_IP, 80), REQUEST, connections=4, duration=0.5
    ).run()
    report = echo_app.stop_server(th, stop, res)
    assert 0.5 <= r.elapsed < 1.0
    assert r.completed > 0 and r.socket_errors == 0
    # in-flight connections at the end are aborted, not counted
    assert r.completed <= report.replies <= r.completed + 4
    assert r.started <= r.completed + 4


def test_pair_refused_counts_connect_errors(pair: Pair) -> None:
    # nothing listens on port 81: every SYN is answered with RST
    r = mtcp_core.LoadGenerator(
        pair.cctx, (SERVER_IP, 81), REQUEST, connections=4, duration=5.0, max_requests=50
    ).run()
    assert r.completed == 0
    assert r.errors["connect"] == r.started == 50
    assert r.latency.count == 0 and r.latency.p99 == 0.0


@pytest.mark.parametrize(
    ("response", "field", "status_class"),
    [
        (b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\nConnection: close\r\n\r\nnot found",
         "status", "4xx"),
        (b"HTTP/1.0 200 OK\r\nConnection: close\r\n\r\nbody ends at the close", None, "2xx"),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nConnection: close\r\n\r\nabc", None, "2xx"),
        (b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n", None, "2xx"),
        (b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n", "status", "5xx"),
        (b"SSH-2.0-OpenSSH\r\n\r\n", "response", None),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort", "response", None),
        (b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", "response", None),
    ],
)  # fmt: skip
def test_pair_responses(
    pair: Pair,
    monkeypatch: pytest.MonkeyPatch,
    response: bytes,
    field: str | None,
    status_class: str | None,
) -> None:
    monkeypatch.setattr(echo_app, "HTTP_RESPONSE", response)
    th, stop, res = serve(pair)
    r = mtcp_core.LoadGenerator(
        pair.cctx, (SERVER_IP, 80), REQUEST, connections=4, duration=30.0, max_requests=40
    ).run()
    report = echo_app.stop_server(th, stop, res)
    assert report.replies == 40
    want = dict.fromkeys(mtcp_core.LoadResult.ERROR_KINDS, 0)
    if field:
        want[field] = 40
    assert r.errors == want
    if status_class:
        assert r.completed == r.status_classes[status_class] == 40
    else:
        assert r.completed == 0


def test_pair_timeouts(pair: Pair) -> None:
    # a listener that never accepts: the handshake completes, no response ever comes
    lsock = pair.sctx.socket()
    lsock.bind(("0.0.0.0", 82))
    lsock.listen(64)
    r = mtcp_core.LoadGenerator(
        pair.cctx, (SERVER_IP, 82), REQUEST, connections=4, duration=0.7, timeout=0.2
    ).run()
    assert r.completed == 0
    assert r.errors["timeout"] >= 4
    assert r.errors["connect"] == r.errors["reset"] == r.errors["response"] == 0


def test_merge_and_quantiles(pair: Pair) -> None:
    th, stop, res = serve(pair)
    runs = [
        mtcp_core.LoadGenerator(
            pair.cctx, (SERVER_IP, 80), REQUEST, connections=2, duration=30.0, max_requests=n
        ).run()
        for n in (30, 50)
    ]
    echo_app.stop_server(th, stop, res)
    total = mtcp_core.LoadResult.merge(runs)
    assert total.completed == total.ok == 80
    assert total.latency.count == 80
    assert total.latency.max == max(r.latency.max for r in runs)
    assert total.latency.min == min(r.latency.min for r in runs)
    assert total.elapsed == max(r.elapsed for r in runs)
    check_latency(total.latency)
    empty = mtcp_core.LoadResult.merge([])
    assert empty.completed == 0 and empty.latency.max == 0.0


def test_quantile_on_a_known_histogram() -> None:
    ffi, lib = mtcp_core.ffi, mtcp_core.lib
    hist = ffi.new("uint64_t[]", lib.MTCP_LOAD_HIST_BUCKETS)
    # values below 64 ns have a bucket each
    hist[10], hist[20], hist[30] = 50, 49, 1
    assert lib.mtcp_load_quantile(hist, 30, 0.5) == 10
    assert lib.mtcp_load_quantile(hist, 30, 0.51) == 20
    assert lib.mtcp_load_quantile(hist, 30, 0.99) == 20
    assert lib.mtcp_load_quantile(hist, 30, 1.0) == 30
    assert lib.mtcp_load_quantile(hist, 25, 1.0) == 25  # never above the recorded max
    assert lib.mtcp_load_quantile(hist, 30, 0.0) == 10
    assert lib.mtcp_load_quantile(ffi.new("uint64_t[]", lib.MTCP_LOAD_HIST_BUCKETS), 0, 0.5) == 0


def test_bad_settings_raise(pair: Pair) -> None:
    ctx = pair.cctx
    for kw in ({"connections": 0}, {"duration": 0}, {"timeout": 0}, {"max_requests": -1}):
        with pytest.raises(ValueError):
            mtcp_core.LoadGenerator(ctx, (SERVER_IP, 80), REQUEST, **kw)
    with pytest.raises(ValueError):
        mtcp_core.LoadGenerator(ctx, (SERVER_IP, 80), b"")
    with pytest.raises(ValueError):
        mtcp_core.LoadGenerator(ctx, ("0.0.0.0", 80), REQUEST)
    with pytest.raises(ValueError, match="connections"):
        mtcp_core.LoadGenerator(ctx, (SERVER_IP, 80), REQUEST, connections=1 << 20)


def test_stop_from_another_thread(pair: Pair) -> None:
    th, stop, res = serve(pair)
    gen = mtcp_core.LoadGenerator(pair.cctx, (SERVER_IP, 80), REQUEST, connections=4, duration=60)
    timer = threading.Timer(0.3, gen.stop)
    timer.start()
    r = gen.run()
    timer.join()
    echo_app.stop_server(th, stop, res)
    assert r.elapsed < 5.0 and r.completed > 0


@pytest.mark.parametrize(
    ("argv", "names"),
    [
        (["ftp://198.18.0.2/"], "URL"),
        (["http://example.com/"], "URL"),
        (["http://198.18.0.2:0/"], "URL"),
        (["http://198.18.0.1/", "--ip", "198.18.0.1/24"], "URL"),
        (["http://198.18.0.2/", "--backend", "afpacket"], "--iface"),
        (["http://198.18.0.2/", "--ip", "198.18.0.1/40"], "--ip"),
        (["http://198.18.0.2/", "--gateway", "10.0.0.1", "--ip", "198.18.0.1/24"], "--gateway"),
        (["http://198.18.0.2/", "--connections", "0"], "--connections"),
        (["http://198.18.0.2/", "--duration", "0"], "--duration"),
        (["http://198.18.0.2/", "--requests", "-1"], "--requests"),
        (["http://198.18.0.2/", "--cores", "0"], "--cores"),
        (["http://198.18.0.2/", "--header", "no colon"], "--header"),
    ],
)
def test_cli_bad_options(argv: list[str], names: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["load", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mtcp-appliance load: ") and names in err, err


# ---------------------------------------------------------------- namespaces, kernel servers


def _load_cli(client: netns.Namespace, link: netns.Veth, url: str, *extra: str) -> dict[str, Any]:
    """``mtcp-appliance load --json`` on afpacket in the client namespace (end a)."""
    argv = [
        APP, "load", url, "--json",
        "--backend", "afpacket", "--iface", link.if_a, "--ip", str(link.addr_a), *extra,
    ]  # fmt: skip
    proc = client.run(argv, check=False, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


@pytest.fixture
def rig(netlab: netns.Lab) -> tuple[netns.Namespace, netns.Namespace, netns.Veth]:
    client, server = netlab.namespace("lgcl"), netlab.namespace("lgsv")
    # end a: the generator's stack owns it (no kernel address); end b: the kernel server
    link = netlab.veth(client, server, address_a=False)
    return client, server, link


def _kernel_http(server: netns.Namespace, ip: str, port: int) -> tuple[threading.Thread, Any]:
    """echo_app's HTTP responder on kernel sockets, in the server namespace."""
    stop = threading.Event()
    ready = threading.Event()
    box: list[Any] = []

    def run() -> None:
        try:
            with server.entered():
                box.append(
                    echo_app.serve(
                        echo_app.KernelNet(ip), {port: "http"}, stop=stop, ready=ready.set,
                        duration=120,
                    )
                )  # fmt: skip
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            box.append(exc)
            ready.set()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    assert ready.wait(10)
    return t, (stop, box)


def _stop_kernel_http(t: threading.Thread, handle: Any) -> echo_app.ServerReport:
    stop, box = handle
    stop.set()
    t.join(10)
    assert box and not isinstance(box[0], BaseException), box
    return box[0]  # type: ignore[no-any-return]


@pytest.mark.requires_root
@pytest.mark.parametrize("cores", [1, 2])
def test_cli_against_kernel_server(
    rig: tuple[netns.Namespace, netns.Namespace, netns.Veth], cores: int
) -> None:
    client, server, link = rig
    ip = str(link.addr_b.ip)
    t, h = _kernel_http(server, ip, 80)
    try:
        doc = _load_cli(
            client, link, f"http://{ip}/", "--connections", "16", "--duration", "30",
            "--requests", "2000", "--cores", str(cores),
        )  # fmt: skip
    finally:
        report = _stop_kernel_http(t, h)
    assert doc["errors"] == dict.fromkeys(mtcp_core.LoadResult.ERROR_KINDS, 0)
    assert doc["completed"] == doc["ok"] == doc["started"] == 2000
    assert len(doc["per_core"]) == cores
    assert all(c["completed"] == 2000 // cores for c in doc["per_core"])
    # the server answered every counted request, plus one warm-up per core
    assert report.replies == doc["completed"] + doc["warmup_requests"]
    lat = doc["latency_s"]
    assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"] < 2.0
    assert doc["requests_per_s"] > 0


@pytest.mark.requires_root
def test_cli_duration_and_text_output(
    rig: tuple[netns.Namespace, netns.Namespace, netns.Veth],
) -> None:
    client, server, link = rig
    ip = str(link.addr_b.ip)
    t, h = _kernel_http(server, ip, 80)
    try:
        argv = [
            APP, "load", f"http://{ip}/", "-c", "8", "-d", "1",
            "--backend", "afpacket", "--iface", link.if_a, "--ip", str(link.addr_a),
        ]  # fmt: skip
        proc = client.run(argv, check=False, timeout=60)
    finally:
        _stop_kernel_http(t, h)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "requests in" in out and "Requests/sec:" in out and "50%" in out, out
    assert "Socket errors" not in out and "Non-2xx" not in out, out


@pytest.mark.requires_root
def test_cli_counts_refused_and_404(
    rig: tuple[netns.Namespace, netns.Namespace, netns.Veth], tmp_path: Path
) -> None:
    client, server, link = rig
    ip = str(link.addr_b.ip)
    # nothing listens on 81: the kernel answers every SYN with RST
    doc = _load_cli(client, link, f"http://{ip}:81/", "-c", "4", "-d", "10", "--requests", "100")
    assert doc["completed"] == 0
    assert doc["errors"]["connect"] == doc["started"] == 100
    # python's http.server: a missing file is a 404
    (tmp_path / "index.html").write_text("hello\n")
    srv = server.popen(
        [sys.executable, "-m", "http.server", "--bind", ip, "--directory", str(tmp_path), "8080"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):  # until it listens (bounded: 10 s)
            if _listening(server, 8080):
                break
            threading.Event().wait(0.1)
        doc = _load_cli(
            client, link, f"http://{ip}:8080/missing", "-c", "4", "-d", "20", "--requests", "50"
        )
        assert doc["completed"] == doc["status"]["4xx"] == doc["errors"]["status"] == 50
        assert doc["ok"] == 0
        doc = _load_cli(client, link, f"http://{ip}:8080/", "-c", "4", "-d", "20",
                        "--requests", "50")  # fmt: skip
        assert doc["completed"] == doc["ok"] == 50
        assert sum(doc["errors"].values()) == 0
    finally:
        srv.terminate()
        srv.wait(10)


def _listening(ns: netns.Namespace, port: int) -> bool:
    out = ns.run(["ss", "-Htln", f"sport = :{port}"], check=False).stdout
    return bool(out.strip())


@pytest.mark.parametrize("pipeline", [1, 4])
def test_pair_keepalive_and_pipelining(pair: Pair, tmp_path: Path, pipeline: int) -> None:
    """Keep-alive mode against the appliance's HTTP server (static responder on): N requests
    per connection, ``pipeline`` in flight, every response counted once."""
    from appliance.http.config import SiteConfig
    from appliance.http.server import serve_mtcp

    (tmp_path / "a.txt").write_bytes(b"x" * 64)
    stop, ready = threading.Event(), threading.Event()
    records: list[Any] = []
    th = threading.Thread(
        target=serve_mtcp,
        args=(pair.sctx, SiteConfig(root=tmp_path, max_keepalive_requests=1000), 80, stop,
              records.append),
        kwargs={"ready": ready}, daemon=True,
    )  # fmt: skip
    th.start()
    try:
        assert ready.wait(10)
        req = b"GET /a.txt HTTP/1.1\r\nHost: 198.18.0.2\r\n\r\n"
        r = mtcp_core.LoadGenerator(
            pair.cctx, (SERVER_IP, 80), req, connections=4, duration=30.0, max_requests=12,
            keepalive=25, pipeline=pipeline,
        ).run()  # fmt: skip
    finally:
        stop.set()
        th.join(5)
    assert r.errors == dict.fromkeys(mtcp_core.LoadResult.ERROR_KINDS, 0)
    assert r.started == 12 and r.completed == r.ok == 12 * 25
    assert r.bytes_written == 12 * 25 * len(req)
    check_latency(r.latency)
    st = pair.sctx.stats()
    assert st["conn_passive_opens"] == 12
    assert st["rsp_hits"] + len([x for x in records if x.status == 200]) >= 12 * 25
    # the first 4 connections met a miss (nothing installed yet) and stay on Python; the
    # other 8 connections are answered inside the stack
    assert st["rsp_hits"] >= (12 - 4) * 25


def test_pair_keepalive_bad_settings(pair: Pair) -> None:
    with pytest.raises(ValueError, match="pipeline"):
        mtcp_core.LoadGenerator(pair.cctx, (SERVER_IP, 80), REQUEST, keepalive=5, pipeline=0)
    with pytest.raises(ValueError, match="pipeline"):
        mtcp_core.LoadGenerator(pair.cctx, (SERVER_IP, 80), REQUEST, keepalive=5, pipeline=65)
