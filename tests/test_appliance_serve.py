"""``mtcp-appliance serve`` as people run it, in test namespaces: the README's run command,
per-core counting, worker restarts, draining on SIGTERM, reload on SIGHUP and the kernel
stack's SO_REUSEPORT workers."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from appliance.config import DEFAULT_ROOT, available_cpus
from appliance.testing import Appliance, http_get, value
from mtcp_core.testing import netns

pytestmark = pytest.mark.requires_root

NCPU = len(available_cpus())


def _site(tmp_path: Path, big: int = 0) -> tuple[Path, str]:
    """A site with index.html, small.txt, medium.bin (256 KiB) and, when ``big``, big.bin;
    returns the folder and big.bin's sha256."""
    root = tmp_path / "site"
    root.mkdir()
    (root / "index.html").write_text("<h1>test site</h1>\n")
    (root / "small.txt").write_text("small\n")
    (root / "medium.bin").write_bytes(os.urandom(256 * 1024))
    digest = ""
    if big:
        data = os.urandom(big)
        (root / "big.bin").write_bytes(data)
        digest = hashlib.sha256(data).hexdigest()
    return root, digest


def _curl(ns: netns.Namespace, url: str) -> str:
    return ns.run(["curl", "-sS", "--max-time", "10", "-D", "-", url]).stdout


def test_readme_run_command_serves_the_default_site_and_counts_per_core(
    netlab: netns.Lab, tmp_path: Path
) -> None:
    """``./scripts/run`` is ``mtcp-appliance serve`` without arguments: the bundled site on a
    TAP device, one worker per CPU, metrics at 127.0.0.1:9100. Every request is counted by
    the core whose stack accepted its connection."""
    ns = netlab.namespace("readme")
    app = Appliance(ns, tmp_path / "appliance.log")
    try:
        assert app.lines[0].startswith(f"serving {DEFAULT_ROOT} at http://198.18.0.2:80/")
        assert app.lines[1] == (
            "metrics at http://127.0.0.1:9100/metrics, "
            "status at http://127.0.0.1:9100/server-status"
        )
        pids = app.worker_pids()
        assert sorted(pids) == list(range(NCPU)) and len(set(pids.values())) == NCPU
        before = app.scrape()
        index = (DEFAULT_ROOT / "index.html").read_text()
        n = 16
        for _ in range(n):
            out = _curl(ns, "http://198.18.0.2/")
            assert out.startswith("HTTP/1.1 200") and index in out, out
        after = app.scrape()
        total = 0
        for core in range(NCPU):
            c = str(core)
            reqs = value(after, "mtcp_http_requests_total", core=c, method="GET") - value(
                before, "mtcp_http_requests_total", core=c, method="GET"
            )
            opened = value(after, "mtcp_connections_opened_total", core=c, kind="passive") - value(
                before, "mtcp_connections_opened_total", core=c, kind="passive"
            )
            assert reqs == opened, f"core {core}: {reqs} requests on {opened} connections"
            total += reqs
        assert total == n
        assert value(after, "mtcp_http_requests_total", status_class="2xx") == n
        assert app.stop() == 0
        log = app.log()
        for core in range(NCPU):  # one line per event, with the level and the core
            assert f"INFO core={core} pid={pids[core]} draining (signal SIGTERM)" in log
        assert f"INFO core=- pid={app.proc.pid} SIGTERM: draining" in log
    finally:
        app.close()


def test_killed_worker_is_restarted_and_requests_keep_succeeding(
    netlab: netns.Lab, tmp_path: Path
) -> None:
    ns = netlab.namespace("kill")
    with Appliance(ns, tmp_path / "appliance.log", ["--cores", "2"]) as app:
        for _ in range(6):
            assert app.get("/")[0] == 200
        before = app.scrape()
        pids = app.worker_pids()
        victim = 1
        opened = value(before, "mtcp_connections_opened_total", core="1")
        os.kill(pids[victim], signal.SIGKILL)
        log = app.wait_log("worker ready", count=1)
        results = [app.get("/")[0] for _ in range(20)]
        assert results == [200] * 20
        assert (
            f"WARNING core=1 pid={app.proc.pid} worker {pids[victim]} exited (killed by "
            "SIGKILL)" in log
        ), log
        assert "restarting in 0.1s (restart 1)" in log
        after = app.scrape()
        new_pids = app.worker_pids()
        assert new_pids[0] == pids[0] and new_pids[victim] != pids[victim]
        assert value(after, "mtcp_worker_restarts_total", core="1") == 1
        assert value(after, "mtcp_worker_restarts_total", core="0") == 0
        assert value(after, "mtcp_worker_up") == 2
        # the dead worker's counters stay in the core's totals
        assert value(after, "mtcp_connections_opened_total", core="1") >= opened
        assert value(after, "mtcp_http_requests_total") >= 26
        assert app.stop() == 0


def test_sigterm_lets_a_long_download_finish_then_exits_0(
    netlab: netns.Lab, tmp_path: Path
) -> None:
    root, digest = _site(tmp_path, big=8 << 20)
    ns = netlab.namespace("drain")
    with Appliance(
        ns, tmp_path / "appliance.log", ["--root", str(root), "--drain-timeout", "20"]
    ) as app:
        out = tmp_path / "big.out"
        curl = ns.popen(
            [
                "curl",
                "-sS",
                "--max-time",
                "30",
                "--limit-rate",
                "3M",
                "-o",
                str(out),
                "http://198.18.0.2/big.bin",
            ],
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 10
        while not (out.exists() and out.stat().st_size > 256 * 1024):
            assert time.monotonic() < deadline and curl.poll() is None, "download did not start"
            time.sleep(0.02)
        app.send_signal(signal.SIGTERM)
        app.wait_log("draining (signal SIGTERM)", count=2)
        assert curl.poll() is None, "the download ended before the drain could matter"
        # draining: soon no new connection is taken, while the download goes on
        for _ in range(50):
            probe = ns.run(
                ["curl", "-sS", "--max-time", "2", "http://198.18.0.2/small.txt"], check=False
            )
            if probe.returncode == 7:  # connection refused
                break
            time.sleep(0.05)
        assert probe.returncode == 7, (probe.returncode, probe.stderr)
        assert curl.wait(30) == 0, curl.stderr.read() if curl.stderr else ""
        assert hashlib.sha256(out.read_bytes()).hexdigest() == digest
        assert app.proc.wait(30) == 0  # the SIGTERM above, nothing more
        assert "drain timeout" not in app.log()


class CutResponse(ConnectionError):
    """The connection ended after part of the response."""


def _read_response(s: socket.socket, buf: bytes) -> tuple[bytes, bytes, bytes]:
    """Reads one response with a Content-Length body: (head, body, what follows)."""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            if buf:
                raise CutResponse(f"closed in the head ({len(buf)} bytes)")
            raise ConnectionError("closed before the response")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, val = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(val)
    while len(rest) < length:
        chunk = s.recv(65536)
        if not chunk:
            raise CutResponse(f"closed in the body ({len(rest)} of {length} bytes)")
        rest += chunk
    return head, rest[:length], rest[length:]


def _load(
    ns: netns.Namespace,
    host: str,
    stopping: threading.Event,
    stop: threading.Event,
    sizes: dict[str, int],
    results: dict[str, list[str]],
    lock: threading.Lock,
) -> None:
    """One client, as browsers and HTTP libraries are: persistent connections, one request
    at a time, until ``stop`` (at most 5000 requests, 60 s). A request fails when its
    response is cut or wrong, or when its connection breaks before the stop began. When a
    connection is closed or reset before any byte of the response arrived (an idle
    persistent connection the draining server closes, or a new one the server never
    accepted: closing a listener resets the handshakes it did not hand over), the request is
    retried on a new connection (RFC 9112, 9.3.1); a connection that cannot be opened
    (refused once the server drains, no route once it is gone) never started a request."""
    paths = list(sizes)
    s: socket.socket | None = None
    buf = b""
    with ns.entered():
        deadline = time.monotonic() + 60
        for i in range(5000):
            if stop.is_set() or time.monotonic() > deadline:
                break
            path = paths[i % len(paths)]
            reused = s is not None
            if s is None:
                try:
                    s = socket.create_connection((host, 80), timeout=2)
                    s.settimeout(15)
                except OSError as exc:
                    with lock:
                        results["not_started"].append(type(exc).__name__)
                    s = None
                    time.sleep(0.05)
                    continue
                buf = b""
            got = 0
            try:
                s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                head, body, buf = _read_response(s, buf)
                got = len(head)
                ok = head.startswith(b"HTTP/1.1 200") and len(body) == sizes[path]
                with lock:
                    results["ok" if ok else "failed"].append(f"{path}: {head[:40]!r} {len(body)}")
                if b"connection: close" in head.lower():
                    s.close()
                    s = None
            except OSError as exc:
                cut = isinstance(exc, CutResponse)
                retry = (reused or stopping.is_set()) and got == 0 and not cut
                with lock:
                    results["retried" if retry else "failed"].append(f"{path}: {exc!r}")
                s.close()
                s = None
    if s is not None:
        s.close()


def test_graceful_stop_of_a_loaded_server_fails_no_request(
    netlab: netns.Lab, tmp_path: Path
) -> None:
    root, _ = _site(tmp_path)
    sizes = {"/small.txt": 6, "/medium.bin": 256 * 1024, "/index.html": 19}
    ns = netlab.namespace("load")
    with Appliance(ns, tmp_path / "appliance.log", ["--root", str(root), "--cores", "2"]) as app:
        stopping, stop = threading.Event(), threading.Event()
        lock = threading.Lock()
        results: dict[str, list[str]] = {"ok": [], "failed": [], "not_started": [], "retried": []}
        threads = [
            threading.Thread(
                target=_load, args=(ns, app.host, stopping, stop, sizes, results, lock)
            )
            for _ in range(4)
        ]
        for t in threads:
            t.start()
        try:
            deadline = time.monotonic() + 30
            while len(results["ok"]) < 150 and time.monotonic() < deadline:
                time.sleep(0.05)
            ok_before = len(results["ok"])
            assert ok_before >= 150, results["failed"][:5]
            stopping.set()
            app.send_signal(signal.SIGTERM)
            code = app.proc.wait(30)
        finally:
            stop.set()
            for t in threads:
                t.join(30)
        assert results["failed"] == [], (results["failed"][:10], app.log()[-3000:])
        assert code == 0, app.log()[-3000:]
        assert len(results["ok"]) >= ok_before


def test_sighup_reloads_workers_and_reopens_the_access_log(
    netlab: netns.Lab, tmp_path: Path
) -> None:
    root, _ = _site(tmp_path)
    access = tmp_path / "access.log"
    ns = netlab.namespace("hup")
    with Appliance(
        ns, tmp_path / "appliance.log", ["--root", str(root), "--access-log", str(access)]
    ) as app:
        assert app.get("/small.txt") == (200, b"small\n")
        deadline = time.monotonic() + 5
        while "small.txt" not in (access.read_text() if access.exists() else ""):
            assert time.monotonic() < deadline, "no access log line"
            time.sleep(0.02)
        rotated = access.rename(tmp_path / "access.log.1")
        app.send_signal(signal.SIGHUP)
        app.wait_log("reloaded: new server", count=NCPU)
        assert app.get("/index.html")[0] == 200
        deadline = time.monotonic() + 5
        while "index.html" not in (access.read_text() if access.exists() else ""):
            assert time.monotonic() < deadline, "the access log was not reopened"
            time.sleep(0.02)
        assert "index.html" not in rotated.read_text()
        assert "SIGHUP: reloading every worker" in app.log()
        assert app.stop() == 0


def test_linux_stack_runs_one_reuseport_worker_per_core(netlab: netns.Lab, tmp_path: Path) -> None:
    root, _ = _site(tmp_path)
    ns = netlab.namespace("linux")
    args = ["--stack", "linux", "--port", "8080", "--cores", "2", "--root", str(root)]
    with Appliance(ns, tmp_path / "appliance.log", args) as app:
        assert app.serve_url == "http://127.0.0.1:8080/"
        pids = app.worker_pids()
        listeners = ns.run(["ss", "-Hltnp", "sport = :8080"]).stdout.splitlines()
        assert len(listeners) == 2, listeners
        assert {int(p.split("pid=")[1].split(",")[0]) for p in listeners} == set(pids.values())
        n = 40
        for _ in range(n):
            assert http_get(ns, "127.0.0.1", 8080, "/small.txt") == (200, b"small\n")
        s = app.scrape()
        per_core = [value(s, "mtcp_http_requests_total", core=str(c)) for c in range(2)]
        assert sum(per_core) == n and min(per_core) > 0, per_core
        assert not any(name.startswith("mtcp_rx_packets") for name, _ in s)
        assert app.stop() == 0


def test_afpacket_requests_are_counted_on_the_core_that_owns_their_flow(
    netlab: netns.Lab, tmp_path: Path
) -> None:
    """On afpacket the fanout program sends each flow to the core ``flow_core`` names: the
    requests of a client's source port must show up in that core's HTTP counters."""
    import mtcp_core

    client, server = netlab.namespace("afpc"), netlab.namespace("afps")
    link = netlab.veth(client, server, address_b=False, tx_offload=False)
    ip = str(link.addr_b.ip)
    args = ["--backend", "afpacket", "--iface", link.if_b, "--ip", str(link.addr_b)]
    with Appliance(server, tmp_path / "appliance.log", [*args, "--cores", "2"]) as app:
        assert app.serve_url == f"http://{ip}:80/"
        want = {0: 0, 1: 0}
        for port in range(40000, 40024):
            out = client.run(
                ["curl", "-sS", "--max-time", "10", "--local-port", str(port), f"http://{ip}/"]
            ).stdout
            assert "mtcp-appliance" in out
            want[mtcp_core.flow_core(str(link.addr_a.ip), ip, port, 80, 2)] += 1
        assert min(want.values()) > 0, want
        # the management address is the server namespace's loopback
        s = app.scrape()
        got = {c: value(s, "mtcp_http_requests_total", core=str(c)) for c in (0, 1)}
        assert got == want
        assert app.stop() == 0


def test_pcap_capture_and_one_tx_list(netlab: netns.Lab, tmp_path: Path) -> None:
    ns = netlab.namespace("pcap")
    pcap = tmp_path / "core%u.pcap"
    args = ["--pcap", str(pcap), "--no-priority", "--cores", "2"]
    with Appliance(ns, tmp_path / "appliance.log", args) as app:
        for _ in range(6):
            assert app.get("/")[0] == 200
        assert app.stop() == 0
    sizes = [Path(str(pcap).replace("%u", str(c))).stat().st_size for c in range(2)]
    assert sum(sizes) > 6 * 400, sizes  # the frames of six exchanges, after the headers
    res = subprocess.run(
        ["tcpdump", "-nr", str(pcap).replace("%u", "0")], capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr
