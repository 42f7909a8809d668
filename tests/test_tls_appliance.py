"""``mtcp-appliance serve --tls-port`` as people run it, in test namespaces, on both stacks
with two workers: curl (``--cacert`` with a test CA), Python's ssl client, ``openssl
s_client`` and headless Chromium fetch over HTTPS; old versions and weak ciphers are
refused; ALPN and SNI select as configured; a session ticket from one core resumes on the
other; garbage ClientHellos close only their connection and are counted; certificates
reload under an open connection (files changed) and a bad one is kept out (SIGHUP);
plain HTTP is redirected with 308 and HTTPS carries HSTS; the metrics say all of it."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from appliance.testing import Appliance, value
from appliance.testing.browser import CHROMIUM, NO_CHROMIUM, DevTools, chromium, page_ws_url
from appliance.testing.tlsca import CA, Leaf
from mtcp_core.testing import netns

pytestmark = pytest.mark.requires_root

TLS_PORT = 8443
NAME = "site.test"
OTHER = "other.test"


def _site(tmp_path: Path) -> Path:
    root = tmp_path / "site"
    root.mkdir()
    (root / "index.html").write_text(
        "<!doctype html><html><head><title>tls test</title><link rel=icon href='data:,'>"
        "</head><body><h1>over https</h1></body></html>\n"
    )
    (root / "small.txt").write_text("small\n")
    (root / "big.bin").write_bytes(os.urandom(3 * 1024 * 1024))
    return root


def _args(stack: str, root: Path, leaf: Leaf, other: Leaf, ip: str) -> list[str]:
    args = ["--root", str(root), "--cores", "2", "--tls-port", str(TLS_PORT)]
    args += ["--cert", str(leaf.cert), "--key", str(leaf.key)]
    args += ["--sni", f"{OTHER}={other.cert}:{other.key}", "--redirect-http", "--hsts", "600"]
    if stack == "linux":
        args += ["--stack", "linux", "--port", "8080"]
    return args


class Client:
    """Clients in the namespace, for a server at ``ip``."""

    def __init__(self, ns: netns.Namespace, ip: str, ca: CA) -> None:
        self.ns, self.ip, self.ca = ns, ip, ca

    def ctx(self, **kw: Any) -> ssl.SSLContext:
        c = ssl.create_default_context(cafile=str(self.ca.cert))
        c.set_alpn_protocols(["http/1.1"])
        for k, v in kw.items():
            setattr(c, k, v)
        return c

    def connect(self, name: str = NAME, ctx: ssl.SSLContext | None = None, **kw: Any) -> Any:
        with self.ns.entered():
            raw = socket.create_connection((self.ip, TLS_PORT), timeout=10)
        return (ctx or self.ctx()).wrap_socket(raw, server_hostname=name, **kw)

    def get(self, s: ssl.SSLSocket, path: str = "/small.txt", close: bool = False) -> bytes:
        extra = "Connection: close\r\n" if close else ""
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {NAME}\r\n{extra}\r\n".encode())
        buf = b""
        while b"\r\n\r\n" not in buf:
            data = s.recv(65536)
            assert data, buf
            buf += data
        head, _, rest = buf.partition(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        while len(rest) < length:
            data = s.recv(65536)
            assert data
            rest += data
        return head + b"\r\n\r\n" + rest

    def curl(self, *args: str) -> subprocess.CompletedProcess[str]:
        argv = ["curl", "-sS", "--max-time", "10", "--cacert", str(self.ca.cert)]
        argv += ["--resolve", f"{NAME}:{TLS_PORT}:{self.ip}"]
        argv += ["--resolve", f"{OTHER}:{TLS_PORT}:{self.ip}"]
        return subprocess.run(
            ["ip", "netns", "exec", self.ns.name, *argv, *args],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip

    def plain_head(self, port: int, target: str, host: str) -> str:
        """The response head (curl -D) of a plain-HTTP GET of ``target`` on ``port`` with
        ``Host: host``; redirects are not followed."""
        r = subprocess.run(
            ["ip", "netns", "exec", self.ns.name, "curl", "-sS", "-D", "-", "-o", "/dev/null",
             "-H", f"Host: {host}", f"http://{self.ip}:{port}{target}"],
            capture_output=True, text=True, timeout=20, check=False,
        )  # fmt: skip
        return r.stdout

    def s_client(self, *args: str, name: str = NAME) -> str:
        argv = ["openssl", "s_client", "-connect", f"{self.ip}:{TLS_PORT}", "-servername", name]
        argv += ["-CAfile", str(self.ca.cert), *args]
        proc = subprocess.run(
            ["ip", "netns", "exec", self.ns.name, *argv],
            input="", capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        return proc.stdout + proc.stderr


def _start(
    netlab: netns.Lab, tmp_path: Path, stack: str, extra: list[str] | None = None
) -> tuple[Appliance, Client, CA, Leaf, Leaf]:
    ca = CA(tmp_path / "ca")
    ns = netlab.namespace(f"tls{stack[0]}")
    ip = "127.0.0.1" if stack == "linux" else "198.18.0.2"
    leaf = ca.issue(NAME, [NAME, "www.site.test"], [ip])
    other = ca.issue(OTHER, [OTHER])
    root = _site(tmp_path)
    app = Appliance(
        ns, tmp_path / "appliance.log", [*_args(stack, root, leaf, other, ip), *(extra or [])]
    )
    return app, Client(ns, ip, ca), ca, leaf, other


@pytest.mark.parametrize("stack", ["mtcp", "linux"])
def test_https_on_both_stacks(netlab: netns.Lab, tmp_path: Path, stack: str) -> None:
    app, cl, ca, leaf, other = _start(netlab, tmp_path, stack)
    with app:
        app.wait_log(f"HTTPS at https://{cl.ip}:{TLS_PORT}/")
        # curl with the test CA: page, headers, a large file byte exact
        r = cl.curl("-D", "-", f"https://{NAME}:{TLS_PORT}/small.txt")
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith("HTTP/1.1 200 OK\n") and r.stdout.endswith("\n\nsmall\n")
        assert "\nStrict-Transport-Security: max-age=600\n" in r.stdout
        big = tmp_path / "big.out"
        r = cl.curl("-o", str(big), f"https://{NAME}:{TLS_PORT}/big.bin")
        assert r.returncode == 0, r.stderr
        assert big.read_bytes() == (tmp_path / "site" / "big.bin").read_bytes()
        # plain HTTP: 308 to the same path on HTTPS, no HSTS there
        plain_port = 8080 if stack == "linux" else 80
        head = cl.plain_head(plain_port, "/a/b?c=d", f"{NAME}:{plain_port}")
        assert head.startswith("HTTP/1.1 308 Permanent Redirect\n"), head
        assert f"\nLocation: https://{NAME}:{TLS_PORT}/a/b?c=d\n" in head
        assert "Strict-Transport-Security" not in head
        # a file already served over HTTPS (so in the site's cache) is redirected too: the
        # static responder (mtcp), which answers cached files on the plain port inside the
        # stack, must not answer it with a 200
        for _ in range(3):
            head = cl.plain_head(plain_port, "/small.txt", NAME)
            assert head.startswith("HTTP/1.1 308 Permanent Redirect\n"), head
        # Python's ssl client: TLS 1.3 and 1.2, ALPN http/1.1, keep-alive
        for version in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2):
            with cl.connect(ctx=cl.ctx(maximum_version=version)) as s:
                assert s.version() == version.name.replace("_", ".")
                assert s.selected_alpn_protocol() == "http/1.1"
                for _ in range(3):
                    assert cl.get(s).endswith(b"\r\n\r\nsmall\n")
        # SNI: the other name gets its own certificate, an unknown one the default
        with cl.connect(OTHER) as s:
            assert dict(x[0] for x in s.getpeercert()["subject"])["commonName"] == OTHER
        with cl.connect(ctx=cl.ctx(check_hostname=False), name="unknown.test") as s:
            assert dict(x[0] for x in s.getpeercert()["subject"])["commonName"] == NAME
        out = cl.s_client("-alpn", "h2,http/1.1")
        assert "ALPN protocol: http/1.1" in out, out
        # refused: TLS 1.0/1.1, CBC and static-RSA ciphers
        before = value(app.scrape(), "mtcp_tls_handshakes_total", result="error")
        for args in (
            ["-tls1_1", "-cipher", "ALL:@SECLEVEL=0"],
            ["-tls1", "-cipher", "ALL:@SECLEVEL=0"],
            ["-tls1_2", "-cipher", "AES128-SHA:AES256-SHA:ECDHE-RSA-AES128-SHA"],
        ):
            out = cl.s_client(*args)
            assert "no peer certificate available" in out and "Cipher is (NONE)" in out, out
        # a garbage ClientHello and a truncated one closed; a good connection meanwhile lives
        with cl.connect() as keep:
            assert cl.get(keep).endswith(b"small\n")
            with cl.ns.entered():
                junk = socket.create_connection((cl.ip, TLS_PORT), timeout=10)
                cut = socket.create_connection((cl.ip, TLS_PORT), timeout=10)
            with junk, cut:
                junk.sendall(b"\x16\x03\x01\x00\x30" + b"\xee" * 48)
                cut.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
                cut.shutdown(socket.SHUT_WR)
                for s in (junk, cut):
                    s.settimeout(10)
                    while True:
                        try:
                            if not s.recv(4096):
                                break
                        except ConnectionResetError:
                            break
            assert cl.get(keep).endswith(b"small\n")
        deadline = time.monotonic() + 5
        while True:
            m = app.scrape()
            errors = value(m, "mtcp_tls_handshakes_total", result="error")
            eofs = value(m, "mtcp_tls_handshakes_total", result="eof")
            if errors >= before + 4 and eofs >= 1 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert errors >= before + 4 and eofs >= 1, (errors, before, eofs)
        # resumption across the two workers: one ticket, many connections
        ctx = cl.ctx()
        with cl.connect(ctx=ctx) as s:
            cl.get(s)
            session = s.session
        first = app.scrape()
        reused = []
        for _ in range(24):
            with cl.connect(ctx=ctx, session=session) as s:
                reused.append(s.session_reused)
                assert cl.get(s, close=True).endswith(b"small\n")
        assert all(reused), reused
        m = app.scrape()
        per_core = [
            value(m, "mtcp_tls_resumptions_total", core=str(c))
            - value(first, "mtcp_tls_resumptions_total", core=str(c))
            for c in (0, 1)
        ]
        assert sum(per_core) == 24 and min(per_core) > 0, per_core  # both cores took it
        # metrics: versions, expiry per name
        assert value(m, "mtcp_tls_handshakes_total", version="TLSv1.3", result="ok") >= 27
        assert value(m, "mtcp_tls_handshakes_total", version="TLSv1.2", result="ok") >= 1
        exp = {
            dict(lab)["name"]: v
            for (n, lab), v in m.items()
            if n == "mtcp_tls_certificate_expiry_timestamp_seconds"
        }
        assert set(exp) == {NAME, "www.site.test", OTHER}
        assert time.time() + 19 * 86400 < exp[NAME] < time.time() + 21 * 86400
        assert app.stop() == 0


def test_reload_under_an_open_connection_and_a_bad_certificate_kept_out(
    netlab: netns.Lab, tmp_path: Path
) -> None:
    ca = CA(tmp_path / "ca")
    first = ca.issue(NAME, [NAME], ["127.0.0.1"], tag="-1")
    second = ca.issue(NAME, [NAME], ["127.0.0.1"], tag="-2")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    shutil.copy(first.cert, cert)
    shutil.copy(first.key, key)
    root = _site(tmp_path)
    ns = netlab.namespace("tlsreload")
    args = ["--stack", "linux", "--port", "8080", "--cores", "2", "--root", str(root)]
    args += ["--tls-port", str(TLS_PORT), "--cert", str(cert), "--key", str(key)]
    cl = Client(ns, "127.0.0.1", ca)

    def serial(s: ssl.SSLSocket) -> str:
        return str(s.getpeercert()["serialNumber"])  # type: ignore[index]

    with Appliance(ns, tmp_path / "appliance.log", args) as app:
        old = [cl.connect() for _ in range(4)]  # on both workers, most likely
        try:
            for s in old:
                assert cl.get(s).endswith(b"small\n")
            s_old = serial(old[0])
            shutil.copy(second.key, key)
            shutil.copy(second.cert, cert)
            app.wait_log("TLS certificates reloaded (the files changed)", count=2)
            with cl.connect() as s:
                assert serial(s) != s_old
            for s in old:  # the open connections go on with their sessions
                assert serial(s) == s_old
                assert cl.get(s).endswith(b"small\n")
                assert cl.get(s, "/big.bin").endswith(
                    (tmp_path / "site" / "big.bin").read_bytes()[-100:]
                )
        finally:
            for s in old:
                s.close()
        # a key that does not match, then SIGHUP: logged, the last good one stays
        good = serial(cl.connect())
        shutil.copy(first.key, key)
        app.send_signal(signal.SIGHUP)
        log = app.wait_log("keeping the old certificates", count=2)
        assert f"{key}: key: does not match the certificate {cert}" in log, log
        with cl.connect() as s:
            assert serial(s) == good
            assert cl.get(s).endswith(b"small\n")
        m = app.scrape()
        assert value(m, "mtcp_tls_reloads_total", result="failed") >= 2
        assert value(m, "mtcp_tls_reloads_total", result="ok") >= 2
        assert app.stop() == 0


def test_a_bad_certificate_at_start_exits_2_naming_the_file(
    netlab: netns.Lab, tmp_path: Path
) -> None:
    ca = CA(tmp_path / "ca")
    leaf, other = ca.issue(NAME), ca.issue(OTHER)
    root = _site(tmp_path)
    from appliance.testing import APPLIANCE

    proc = subprocess.run(
        [APPLIANCE, "serve", "--stack", "linux", "--root", str(root), "--tls-port", "8443",
         "--cert", str(leaf.cert), "--key", str(other.key)],
        capture_output=True, text=True, timeout=30, check=False, cwd="/",
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        f"mtcp-appliance: config error: key (from --key): {other.key}: "
        f"key: does not match the certificate {leaf.cert}"
    )


@pytest.mark.skipif(CHROMIUM is None, reason=NO_CHROMIUM)
@pytest.mark.parametrize("stack", ["mtcp", "linux"])
def test_chromium_loads_the_site_over_https(netlab: netns.Lab, tmp_path: Path, stack: str) -> None:
    """The page loads in headless Chromium with no certificate error: the browser trusts
    the test's key (--ignore-certificate-errors-spki-list, Chromium's way to trust a key
    without a system store; the CA's and the leaf's are given) and nothing else."""
    app, cl, ca, leaf, _ = _start(netlab, tmp_path, stack)
    with app:
        spki = ",".join((leaf.spki_sha256(), Leaf(ca.cert, ca.key).spki_sha256()))
        flag = f"--ignore-certificate-errors-spki-list={spki}"
        with chromium(cl.ns, tmp_path / "chromium-profile", flag) as port:

            def session() -> dict[str, Any]:
                dt = DevTools(page_ws_url(cl.ns, port))
                try:
                    for domain in ("Page", "Runtime", "Log", "Network"):
                        dt.call(f"{domain}.enable")
                    dt.load(f"https://{cl.ip}:{TLS_PORT}/")
                    return {
                        "problems": dt.problems(),
                        "protocol": dt.evaluate("location.protocol"),
                        "title": dt.evaluate("document.title"),
                        "text": dt.evaluate("document.body.innerText"),
                        "responses": [
                            ev["params"]["response"]
                            for ev in dt.events
                            if ev.get("method") == "Network.responseReceived"
                        ],
                    }
                finally:
                    dt.close()

            got = cl.ns.call(session)
        assert got["problems"] == [], got["problems"]
        assert got["protocol"] == "https:" and got["title"] == "tls test"
        assert "over https" in got["text"]
        m = app.scrape()
        assert value(m, "mtcp_tls_handshakes_total", result="ok") >= 1
        assert app.stop() == 0
