"""HTTPS in process (no privileges): ``TlsServer``/``TlsConnection`` driven byte by byte
by Python's ssl client over memory BIOs, certificates made by a test CA (openssl CLI).

Covered: TLS 1.3 and 1.2 with ALPN http/1.1; TLS 1.0/1.1 and weak ciphers refused; SNI
choosing the certificate; session tickets accepted by another worker's server that shares
the key file, also after a rotation; OCSP stapling; reloads (files changed, SIGHUP) that
keep the connections already open and keep the old certificate when the new one is bad;
garbage and truncated ClientHellos closing only their connection and counted; config
errors naming the file and why; redirects and HSTS.
"""

from __future__ import annotations

import os
import re
import shutil
import ssl
import subprocess
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.config import ConfigError, load
from appliance.http import tls
from appliance.http.config import SiteConfig
from appliance.http.connection import Connection
from appliance.http.tls import CertError, CertPair, TlsServer, TlsSettings
from appliance.metrics.tls_block import TlsBlock
from appliance.testing.tlsca import CA, Leaf, openssl

NAME = "site.test"


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CA:
    return CA(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def leaf(ca: CA) -> Leaf:
    return ca.issue(NAME, [NAME, "www.site.test"])


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "site"
    r.mkdir()
    (r / "index.html").write_bytes(b"<h1>hello</h1>\n")
    (r / "big.bin").write_bytes(os.urandom(3 * 1024 * 1024 + 7))
    return r


class Stats:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, bool]] = []
        self.reloads: list[bool] = []

    def handshake(self, version: str, result: str, resumed: bool) -> None:
        self.events.append((version, result, resumed))

    def reload(self, ok: bool) -> None:
        self.reloads.append(ok)


def server(
    leaf: Leaf, *, by_name: tuple[tuple[str, CertPair], ...] = (), keys: Path | None = None
) -> tuple[TlsServer, Stats]:
    stats = Stats()
    settings = TlsSettings(443, CertPair(leaf.cert, leaf.key), by_name, keys, 2.0)
    return TlsServer(settings, stats), stats


def client_ctx(ca: CA, **kw: object) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca.cert))
    ctx.set_alpn_protocols(["http/1.1"])
    for k, v in kw.items():
        setattr(ctx, k, v)
    return ctx


class Pair:
    """A client SSLObject and a server TlsConnection joined by memory, pumped by hand."""

    def __init__(
        self,
        srv: TlsServer,
        cctx: ssl.SSLContext,
        root: Path,
        name: str = NAME,
        session: ssl.SSLSession | None = None,
        site: SiteConfig | None = None,
    ) -> None:
        self.cin, self.cout = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.c = cctx.wrap_bio(self.cin, self.cout, server_hostname=name, session=session)
        self.http = Connection(site or SiteConfig(root=root), 0.0, secure=True)
        self.s = srv.wrap(self.http, 0.0)

    def pump(self, rounds: int = 8) -> None:
        for _ in range(rounds):
            try:
                self.c.do_handshake()
            except ssl.SSLWantReadError:
                pass
            data = self.cout.read()
            if data:
                self.cin.write(self.s.receive(data, 1.0))
            while self.s.has_output:
                self.cin.write(self.s.pull(1.0))

    def get(self, path: str = "/", extra: str = "") -> bytes:
        self.c.write(f"GET {path} HTTP/1.1\r\nHost: {NAME}\r\n{extra}\r\n".encode())
        self.cin.write(self.s.receive(self.cout.read(), 1.0))
        while self.s.has_output:
            self.cin.write(self.s.pull(1.0))
        out = b""
        while True:
            try:
                out += self.c.read(1 << 20)
            except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
                return out

    def peer_cn(self) -> str:
        cert = self.c.getpeercert()
        assert cert is not None
        return dict(x[0] for x in cert["subject"])["commonName"]


# ------------------------------------------------------------------ handshakes, policy


def test_tls13_handshake_alpn_and_a_page(ca: CA, leaf: Leaf, root: Path) -> None:
    srv, stats = server(leaf)
    p = Pair(srv, client_ctx(ca), root)
    p.pump()
    assert p.c.version() == "TLSv1.3" and p.s.version == "TLSv1.3"
    assert p.c.selected_alpn_protocol() == "http/1.1" and p.s.selected_alpn == "http/1.1"
    resp = p.get()
    assert resp.startswith(b"HTTP/1.1 200 OK\r\n") and resp.endswith(b"<h1>hello</h1>\n")
    assert stats.events == [("TLSv1.3", "ok", False)]


def test_tls12_uses_an_intermediate_aead_cipher(ca: CA, leaf: Leaf, root: Path) -> None:
    srv, _ = server(leaf)
    p = Pair(srv, client_ctx(ca, maximum_version=ssl.TLSVersion.TLSv1_2), root)
    p.pump()
    assert p.c.version() == "TLSv1.2"
    name = p.c.cipher()[0]
    assert name in tls.TLS12_CIPHERS.split(":") and "GCM" in name or "CHACHA" in name
    assert p.get().startswith(b"HTTP/1.1 200 OK")


def test_a_large_file_is_encrypted_chunk_by_chunk(ca: CA, leaf: Leaf, root: Path) -> None:
    srv, _ = server(leaf)
    site = SiteConfig(root=root, stream_chunk=64 * 1024)
    p = Pair(srv, client_ctx(ca), root, site=site)
    p.pump()
    p.c.write(f"GET /big.bin HTTP/1.1\r\nHost: {NAME}\r\n\r\n".encode())
    first = p.s.receive(p.cout.read(), 1.0)
    sizes = [len(first)]
    p.cin.write(first)
    while p.s.has_output:
        piece = p.s.pull(1.0)
        sizes.append(len(piece))
        p.cin.write(piece)
    got = b""
    while True:
        try:
            got += p.c.read(1 << 20)
        except ssl.SSLWantReadError:
            break
    body = got.split(b"\r\n\r\n", 1)[1]
    assert body == (root / "big.bin").read_bytes()
    # one 64 KiB chunk (plus record overhead) per pull: nothing read ahead of the socket
    assert len(sizes) > 40 and max(sizes[1:]) < 64 * 1024 + 2048


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion:DeprecationWarning")
@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1])
def test_old_versions_are_refused_and_counted(
    ca: CA, leaf: Leaf, root: Path, version: ssl.TLSVersion
) -> None:
    srv, stats = server(leaf)
    cctx = client_ctx(ca, minimum_version=version, maximum_version=version)
    with pytest.raises(ssl.SSLError):
        cctx.set_ciphers("ALL:@SECLEVEL=0")
        p = Pair(srv, cctx, root)
        p.pump()
        p.c.do_handshake()
    assert stats.events == [("-", "error", False)]
    assert p.s.closed and not p.s.wants_input


def test_cbc_and_rsa_key_exchange_ciphers_are_refused(ca: CA, leaf: Leaf, root: Path) -> None:
    srv, stats = server(leaf)
    cctx = client_ctx(ca, maximum_version=ssl.TLSVersion.TLSv1_2)
    cctx.set_ciphers("ECDHE-ECDSA-AES128-SHA:AES128-GCM-SHA256:AES128-SHA")
    p = Pair(srv, cctx, root)
    with pytest.raises(ssl.SSLError):
        p.pump()
        p.c.do_handshake()
    assert stats.events == [("-", "error", False)]


def test_garbage_and_truncated_client_hellos_close_only_their_connection(
    ca: CA, leaf: Leaf, root: Path
) -> None:
    srv, stats = server(leaf)
    good = Pair(srv, client_ctx(ca), root)
    good.pump()
    garbage = srv.wrap(Connection(SiteConfig(root=root), 0.0), 0.0)
    garbage.receive(b"\x16\x03\x01\x00\x05\xff\xff\xff\xff\xff" + os.urandom(64), 1.0)
    assert garbage.closed and not garbage.wants_input
    # a ClientHello cut short, then the peer closes
    hello = ssl.MemoryBIO()
    cobj = client_ctx(ca).wrap_bio(ssl.MemoryBIO(), hello, server_hostname=NAME)
    with pytest.raises(ssl.SSLWantReadError):
        cobj.do_handshake()
    truncated = srv.wrap(Connection(SiteConfig(root=root), 0.0), 0.0)
    assert truncated.receive(hello.read()[:40], 1.0) == b""
    assert truncated.wants_input and not truncated.closed
    truncated.receive(b"", 1.5)
    assert truncated.closed
    # a ClientHello cut short that never goes on: the handshake deadline
    stalled = srv.wrap(Connection(SiteConfig(root=root), 0.0), 0.0)
    stalled.receive(b"\x16\x03\x01\x02\x00\x01", 0.5)
    assert stalled.deadline == 2.0
    stalled.timer(2.0)
    assert stalled.closed
    # plain HTTP on the TLS port: nginx's 400, then close
    plain = srv.wrap(Connection(SiteConfig(root=root), 0.0), 0.0)
    out = plain.receive(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 1.0)
    assert out.startswith(b"HTTP/1.1 400 Bad Request") and plain.closed
    assert [e[1] for e in stats.events] == ["ok", "error", "eof", "timeout", "error"]
    assert good.get().startswith(b"HTTP/1.1 200 OK")  # the good one never noticed


# ------------------------------------------------------------------ SNI, tickets, OCSP


def test_sni_selects_the_certificate_by_name(ca: CA, leaf: Leaf, root: Path) -> None:
    other = ca.issue("other.test", ["other.test"])
    wild = ca.issue("wild.test", ["*.wild.test"])
    srv, _ = server(
        leaf,
        by_name=(
            ("other.test", CertPair(other.cert, other.key)),
            ("*.wild.test", CertPair(wild.cert, wild.key)),
        ),
    )
    for name, cn in [
        (NAME, NAME),
        ("other.test", "other.test"),
        ("a.wild.test", "wild.test"),
        ("unknown.test", NAME),
    ]:
        cctx = client_ctx(ca)
        if name == "unknown.test":
            cctx.check_hostname = False
        p = Pair(srv, cctx, root, name=name)
        p.pump()
        assert p.peer_cn() == cn, name
    assert tls.name_matches("*.wild.test", "A.Wild.Test.")
    assert not tls.name_matches("*.wild.test", "a.b.wild.test")
    assert not tls.name_matches("*.wild.test", "wild.test")


def test_tickets_resume_on_another_worker_sharing_the_key_file(
    ca: CA, leaf: Leaf, root: Path, tmp_path: Path
) -> None:
    keys = tmp_path / "ticket-keys"
    tls.write_ticket_keys(keys, tls.new_ticket_keys())
    a, _ = server(leaf, keys=keys)
    cctx = client_ctx(ca)
    p = Pair(a, cctx, root)
    p.pump()
    p.get()  # the tickets come after the handshake
    session = p.c.session
    assert session is not None and session.has_ticket
    # another worker: a separate server (its own contexts) reading the same key file
    b, stats_b = server(leaf, keys=keys)
    q = Pair(b, cctx, root, session=session)
    q.pump()
    assert q.c.session_reused and q.s.session_reused
    assert stats_b.events == [("TLSv1.3", "ok", True)]
    # rotated: the old key still decrypts (the ticket is renewed), a foreign key does not
    tls.write_ticket_keys(keys, tls.new_ticket_keys(keys.read_bytes()))
    os.utime(keys, ns=(time.time_ns() + 10**9,) * 2)
    b.tick(1e9)
    r = Pair(b, cctx, root, session=session)
    r.pump()
    assert r.c.session_reused
    tls.write_ticket_keys(keys, tls.new_ticket_keys())  # the old key gone
    os.utime(keys, ns=(time.time_ns() + 2 * 10**9,) * 2)
    b.tick(2e9)
    s = Pair(b, cctx, root, session=session)
    s.pump()
    assert s.c.version() == "TLSv1.3" and not s.c.session_reused


def test_tls12_session_tickets_resume_too(ca: CA, leaf: Leaf, root: Path) -> None:
    srv, stats = server(leaf)
    cctx = client_ctx(ca, maximum_version=ssl.TLSVersion.TLSv1_2)
    p = Pair(srv, cctx, root)
    p.pump()
    p.get()
    q = Pair(srv, cctx, root, session=p.c.session)
    q.pump()
    assert q.c.session_reused
    assert stats.events[-1] == ("TLSv1.2", "ok", True)


def ocsp_response(ca: CA, leaf: Leaf, folder: Path) -> Path:
    """A real OCSP response for ``leaf``, signed by the CA (openssl ocsp)."""
    index = folder / "index.txt"
    serial = openssl("x509", "-in", str(leaf.cert), "-noout", "-serial").decode()
    serial = serial.strip().split("=", 1)[1]
    subject = openssl("x509", "-in", str(leaf.cert), "-noout", "-subject", "-nameopt", "compat")
    subject_s = subject.decode().strip().split("=", 1)[1].strip()
    index.write_text(f"V\t301231000000Z\t\t{serial}\tunknown\t{subject_s}\n")
    req, resp = folder / "req.der", folder / "resp.der"
    openssl(
        "ocsp", "-issuer", str(ca.cert), "-cert", str(leaf.cert), "-reqout", str(req), "-no_nonce"
    )
    openssl(
        "ocsp", "-index", str(index), "-rsigner", str(ca.cert), "-rkey", str(ca.key),
        "-CA", str(ca.cert), "-reqin", str(req), "-respout", str(resp), "-ndays", "2",
    )  # fmt: skip
    return resp


def test_ocsp_staple_is_sent_to_clients_that_ask(ca: CA, leaf: Leaf, tmp_path: Path) -> None:
    resp = ocsp_response(ca, leaf, tmp_path)
    # openssl s_client against a one-shot kernel-socket server running the real loop
    import threading

    from appliance.http.server import serve_linux
    from appliance.http.tls import TlsSettings as TS

    sock_port = _free_port()
    root = tmp_path / "site"
    root.mkdir()
    (root / "index.html").write_text("x\n")
    srv = TlsServer(TS(sock_port, CertPair(leaf.cert, leaf.key, resp)))
    stop, ready = threading.Event(), threading.Event()
    t = threading.Thread(
        target=serve_linux,
        args=("127.0.0.1", _free_port(), SiteConfig(root=root), stop),
        kwargs={"ready": ready, "tls": srv},
        daemon=True,
    )
    t.start()
    assert ready.wait(10)
    try:
        out = subprocess.run(
            ["openssl", "s_client", "-connect", f"127.0.0.1:{sock_port}", "-status",
             "-servername", NAME, "-CAfile", str(ca.cert)],
            input=b"", capture_output=True, timeout=20, check=False,
        ).stdout.decode()  # fmt: skip
        assert "OCSP Response Status: successful" in out, out
        assert "Cert Status: good" in out, out
        out = subprocess.run(
            ["openssl", "s_client", "-connect", f"127.0.0.1:{sock_port}",
             "-servername", NAME, "-CAfile", str(ca.cert), "-status", "-tls1_2"],
            input=b"", capture_output=True, timeout=20, check=False,
        ).stdout.decode()  # fmt: skip
        assert "Cert Status: good" in out, out
    finally:
        stop.set()
        t.join(5)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ------------------------------------------------------------------ reloads, errors


def test_reload_swaps_the_certificate_under_an_open_connection(
    ca: CA, root: Path, tmp_path: Path
) -> None:
    first = ca.issue(NAME, tag="-1")
    second = ca.issue(NAME, [NAME], tag="-2")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    shutil.copy(first.cert, cert)
    shutil.copy(first.key, key)
    srv, stats = server(Leaf(cert, key))
    cctx = client_ctx(ca)
    old = Pair(srv, cctx, root)
    old.pump()
    serial_old = old.c.getpeercert()["serialNumber"]  # type: ignore[index]
    # files changed: new connections get the new certificate, the open one keeps going
    shutil.copy(second.cert, cert)
    shutil.copy(second.key, key)
    srv.tick(100.0)
    assert stats.reloads == [True]
    new = Pair(srv, cctx, root)
    new.pump()
    assert new.c.getpeercert()["serialNumber"] != serial_old  # type: ignore[index]
    assert old.get().startswith(b"HTTP/1.1 200 OK")
    assert old.get().startswith(b"HTTP/1.1 200 OK")
    # a broken key: the reload fails, the last good certificate stays
    key.write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    srv.tick(200.0)
    assert stats.reloads == [True, False]
    again = Pair(srv, cctx, root)
    again.pump()
    assert again.c.getpeercert()["serialNumber"] == new.c.getpeercert()["serialNumber"]  # type: ignore[index]
    # SIGHUP with unchanged files reloads too
    shutil.copy(second.key, key)
    srv.tick(300.0)
    srv.request_reload()
    srv.tick(300.1)
    assert stats.reloads == [True, False, True, True]


def test_bad_files_are_named_with_the_reason(ca: CA, leaf: Leaf, tmp_path: Path) -> None:
    other = ca.issue("other.test")
    enc = tmp_path / "enc.key"
    openssl("pkey", "-in", str(leaf.key), "-aes256", "-passout", "pass:x", "-out", str(enc))
    junk = tmp_path / "junk.pem"
    junk.write_text("hello\n")
    cases = [
        (CertPair(tmp_path / "none.pem", leaf.key), "none.pem", "no such file"),
        (CertPair(junk, leaf.key), "junk.pem", "no PEM certificate"),
        (CertPair(leaf.cert, junk), "junk.pem", "no PEM private key"),
        (CertPair(leaf.cert, other.key), "other.test.key", "does not match the certificate"),
        (CertPair(leaf.cert, enc), "enc.key", "encrypted with a passphrase"),
        (CertPair(leaf.cert, leaf.key, junk), "junk.pem", "not a DER-encoded OCSP response"),
        (CertPair(tmp_path, leaf.key), str(tmp_path), "is a folder"),
    ]
    for pair, path, reason in cases:
        with pytest.raises(CertError) as ei:
            tls.make_context(pair)
        assert ei.value.path.endswith(path) and reason in ei.value.reason, str(ei.value)


def test_config_keys_and_their_errors(ca: CA, leaf: Leaf, tmp_path: Path) -> None:
    other = ca.issue("other.test")
    base = {"stack": "linux", "tls_port": "8443", "cert": str(leaf.cert), "key": str(leaf.key)}
    cfg = load(base, {})
    assert (
        cfg.tls_port == 8443 and cfg.cert == leaf.cert and cfg.tls_url == "https://127.0.0.1:8443/"
    )
    env = {
        "MTCP_APPLIANCE_TLS_PORT": "8443",
        "MTCP_APPLIANCE_CERT": str(leaf.cert),
        "MTCP_APPLIANCE_KEY": str(leaf.key),
        "MTCP_APPLIANCE_HSTS": "600",
        "MTCP_APPLIANCE_REDIRECT_HTTP": "true",
        "MTCP_APPLIANCE_SNI": f"other.test={other.cert}:{other.key}",
    }
    cfg = load({"stack": "linux"}, env)
    assert cfg.hsts == 600 and cfg.redirect_http
    assert cfg.sni == (("other.test", other.cert, other.key, None),)
    toml = tmp_path / "c.toml"
    toml.write_text(
        f'stack = "linux"\ntls_port = 8443\ncert = "{leaf.cert}"\nkey = "{leaf.key}"\n'
        f'[sni."other.test"]\ncert = "{other.cert}"\nkey = "{other.key}"\n'
    )
    assert load({}, {}, toml).sni[0][0] == "other.test"
    errors = [
        ({**base, "key": str(other.key)}, "key", "does not match the certificate"),
        ({**base, "cert": str(tmp_path / "x.pem")}, "cert", "no such file"),
        ({"stack": "linux", "tls_port": "8443"}, "cert", "needs a certificate"),
        ({"stack": "linux", "hsts": "60"}, "hsts", "only means something with tls_port"),
        ({**base, "tls_port": "8080"}, "tls_port", "also the plain HTTP port"),
        ({**base, "sni": "bad name=x:y"}, "sni", "NAME=CERT:KEY"),
        ({**base, "sni": f"o.test={other.cert}:{leaf.key}"}, "sni", "does not match"),
    ]
    for flags, key, reason in errors:
        with pytest.raises(ConfigError) as ei:
            load(flags, {})
        assert ei.value.key == key and reason in ei.value.reason, str(ei.value)


def test_cli_exits_2_naming_the_file(
    ca: CA, leaf: Leaf, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from appliance import cli

    for k in list(os.environ):
        if k.startswith("MTCP_APPLIANCE_"):
            monkeypatch.delenv(k)
    other = ca.issue("other.test")
    argv = ["serve", "--stack", "linux", "--tls-port", "8443", "--cert", str(leaf.cert)]
    assert cli.main([*argv, "--key", str(other.key)]) == 2
    err = capsys.readouterr().err
    assert f"config error: key (from --key): {other.key}: key: does not match" in err


# ------------------------------------------------------------------ HTTP: redirect, HSTS


def test_redirect_http_and_hsts(root: Path) -> None:
    site = SiteConfig(root=root, redirect_https_port=8443, hsts=b"max-age=600")
    plain = Connection(site, 0.0)
    out = plain.receive(b"GET /a?b=1 HTTP/1.1\r\nHost: site.test:8080\r\n\r\n", 0.0)
    assert out.startswith(b"HTTP/1.1 308 Permanent Redirect\r\n")
    assert b"\r\nLocation: https://site.test:8443/a?b=1\r\n" in out
    assert b"Strict-Transport-Security" not in out  # never over plain HTTP (RFC 6797 7.2)
    acme = Connection(site, 0.0)
    out = acme.receive(
        b"GET /.well-known/acme-challenge/tok HTTP/1.1\r\nHost: site.test\r\n\r\n", 0.0
    )
    assert out.startswith(b"HTTP/1.1 404")
    on443 = Connection(SiteConfig(root=root, redirect_https_port=443), 0.0)
    out = on443.receive(b"GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n", 0.0)
    assert b"\r\nLocation: https://[::1]/\r\n" in out
    bad = Connection(site, 0.0)
    out = bad.receive(b'GET / HTTP/1.1\r\nHost: a"b\r\n\r\n', 0.0)
    assert out.startswith(b"HTTP/1.1 400")
    secure = Connection(site, 0.0, secure=True)
    out = secure.receive(b"GET / HTTP/1.1\r\nHost: site.test\r\n\r\n", 0.0)
    assert (
        out.startswith(b"HTTP/1.1 200") and b"\r\nStrict-Transport-Security: max-age=600\r\n" in out
    )


def test_tls_block_counts(tmp_path: Path) -> None:
    b = TlsBlock.create(tmp_path / "tls-0", 0)
    b.handshake("TLSv1.3", "ok", True)
    b.handshake("TLSv1.2", "ok", False)
    b.handshake("-", "timeout", False)
    b.reload(False)
    snap = b.read()
    assert snap is not None
    assert snap["handshakes"][("TLSv1.3", "ok")] == 1
    assert snap["handshakes"][("-", "timeout")] == 1
    assert snap["resumptions"]["TLSv1.3"] == 1 and snap["reloads"]["failed"] == 1
    b.close()


def test_doctor_checks_the_certificates(ca: CA, leaf: Leaf, tmp_path: Path) -> None:
    from appliance.tls_doctor import tls_checks

    soon = ca.issue("soon.test", ["soon.test"], days=5)
    other = ca.issue("other.test")
    sni = f"soon.test={soon.cert}:{soon.key};missing.test={other.cert}:{other.key}"
    flags = {"stack": "linux", "tls_port": "8443", "cert": str(leaf.cert)}
    cfg = load({**flags, "key": str(other.key), "sni": sni}, {}, check_certs=False)
    got = [(c.level, c.what) for c in tls_checks(cfg)]
    text = "\n".join(f"{lv} {w}" for lv, w in got)
    assert ("FAIL", f"{other.key}: key: does not match the certificate {leaf.cert}") in got, text
    assert any(lv == "ok" and w.startswith(f"{leaf.cert}: valid until") for lv, w in got), text
    assert any(lv == "warn" and w.startswith(f"{soon.cert}: expires in ") for lv, w in got), text
    assert ("ok", f"{soon.cert}: covers soon.test") in got, text
    assert (
        "FAIL",
        f"{other.cert}: does not cover missing.test (it names other.test)",
    ) in got, text
    chain = [w for lv, w in got if "chain" in w]
    assert chain and all("does not verify against the system's trust store" in w for w in chain)
    assert all("unable to get local issuer certificate" in w for w in chain), chain  # a private CA
    # the CA in the system's place: the same chain verifies
    ok_cfg = load({**flags, "key": str(leaf.key)}, {}, check_certs=False)
    env = os.environ.copy()
    try:
        os.environ["SSL_CERT_FILE"] = str(ca.cert)
        got2 = [(c.level, c.what) for c in tls_checks(ok_cfg)]
    finally:
        os.environ.clear()
        os.environ.update(env)
    assert ("ok", f"{leaf.cert}: the chain verifies to a trusted root") in got2, got2
    assert all(lv == "ok" for lv, _ in got2), got2


# ------------------------------------------------------------------ fuzz

SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@SETTINGS
@given(st.lists(st.binary(max_size=400), max_size=6), st.booleans())
def test_fuzz_any_bytes_on_the_tls_port_never_raise(
    ca: CA, leaf: Leaf, root: Path, chunks: list[bytes], with_hello: bool
) -> None:
    """Random bytes (after a real ClientHello, or alone) into a TlsConnection: it never
    raises, and ends closed, aborted or still waiting, counted at most once."""
    srv, stats = server(leaf)
    conn = srv.wrap(Connection(SiteConfig(root=root), 0.0), 0.0)
    if with_hello:
        out = ssl.MemoryBIO()
        cobj = client_ctx(ca).wrap_bio(ssl.MemoryBIO(), out, server_hostname=NAME)
        with pytest.raises(ssl.SSLWantReadError):
            cobj.do_handshake()
        chunks = [out.read(), *chunks]
    t = 1.0
    for chunk in [*chunks, b""]:
        if not conn.wants_input:
            break
        conn.receive(chunk, t)
        while conn.has_output:
            conn.pull(t)
        t += 0.1
    conn.timer(100.0)
    conn.close(100.0)
    assert conn.closed or conn.abort or not conn.wants_input
    assert len(stats.events) <= 1


@SETTINGS
@given(st.binary(max_size=80))
def test_fuzz_redirect_host_header(root: Path, host: bytes) -> None:
    """Any Host header: a 308 whose Location is https:// plus a host of the safe grammar,
    or a 400; never a header injection."""
    site = SiteConfig(root=root, redirect_https_port=8443)
    conn = Connection(site, 0.0)
    clean = host.replace(b"\r", b"").replace(b"\n", b"")
    out = conn.receive(b"GET /x HTTP/1.1\r\nHost: " + clean + b"\r\n\r\n", 0.0)
    head = out.split(b"\r\n\r\n", 1)[0]
    status = head[9:12]
    assert status in (b"308", b"400"), head
    if status == b"308":
        (loc,) = [line for line in head.split(b"\r\n") if line.startswith(b"Location: ")]
        assert re.fullmatch(rb"Location: https://[A-Za-z0-9.\-\[\]:]+:8443/x", loc), loc


# ------------------------------------------------------------------ virtual hosts


def test_virtual_hosts_get_their_own_certificates_by_sni(
    ca: CA, leaf: Leaf, tmp_path: Path
) -> None:
    """[[sites]] with cert/key: a TLS client asking for a site's name gets that site's
    certificate and that site's files; a site without one gets the default certificate
    (which doctor checks covers it); redirect and HSTS apply to every site."""
    import socket
    import threading

    from appliance.http.server import serve_linux
    from appliance.sites import vhost_config
    from appliance.tls_doctor import tls_checks

    a = ca.issue("a.test", ["a.test", "*.a.test"])
    for name in ("a", "b", "c"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "index.html").write_text(f"site {name}\n")
    tls_port, port = _free_port(), _free_port()
    conf = tmp_path / "c.toml"
    conf.write_text(
        f'stack = "linux"\nport = {port}\ntls_port = {tls_port}\ncert = "{leaf.cert}"\n'
        f'key = "{leaf.key}"\nhsts = 600\nredirect_http = true\n'
        f'[[sites]]\nname = "a"\nserver_names = ["a.test", "*.a.test"]\nroot = "a"\n'
        f'cert = "{a.cert}"\nkey = "{a.key}"\n'
        f'[[sites]]\nname = "b"\nserver_names = ["b.test"]\nroot = "b"\ndefault = true\n'
        f'[[sites]]\nname = "c"\nserver_names = ["site.test"]\nroot = "c"\n'
    )
    cfg = load({}, {}, conf)
    assert {n for n, *_ in cfg.sni} == {"a.test", "*.a.test"}
    checks = [(c.level, c.what) for c in tls_checks(cfg)]
    assert (
        "FAIL",
        f"{leaf.cert}: does not cover b.test (it names site.test, www.site.test)",
    ) in checks
    assert ("ok", f"{a.cert}: covers a.test, *.a.test") in checks
    settings = TlsSettings(
        tls_port,
        CertPair(leaf.cert, leaf.key),
        tuple((n, CertPair(c, k, s)) for n, c, k, s in cfg.sni),
    )
    srv = TlsServer(settings)
    stop, ready = threading.Event(), threading.Event()
    t = threading.Thread(
        target=serve_linux,
        args=("127.0.0.1", port, vhost_config(cfg), stop),
        kwargs={"ready": ready, "tls": srv},
        daemon=True,
    )
    t.start()
    assert ready.wait(10)
    try:
        for host, cn, body in [
            ("a.test", "a.test", b"site a\n"),
            ("x.a.test", "a.test", b"site a\n"),
            ("site.test", NAME, b"site c\n"),
        ]:
            ctx = client_ctx(ca)
            with socket.create_connection(("127.0.0.1", tls_port), timeout=10) as raw:
                with ctx.wrap_socket(raw, server_hostname=host) as s:
                    assert dict(x[0] for x in s.getpeercert()["subject"])["commonName"] == cn
                    s.sendall(
                        f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
                    )
                    got = b""
                    while chunk := s.recv(65536):
                        got += chunk
            assert got.endswith(b"\r\n\r\n" + body), got
            assert b"\r\nStrict-Transport-Security: max-age=600\r\n" in got
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"GET /p HTTP/1.1\r\nHost: b.test\r\nConnection: close\r\n\r\n")
            got = b""
            while chunk := s.recv(65536):
                got += chunk
        assert got.startswith(b"HTTP/1.1 308 ")
        assert f"\r\nLocation: https://b.test:{tls_port}/p\r\n".encode() in got
    finally:
        stop.set()
        t.join(5)


def test_a_site_certificate_needs_tls_port_and_both_files(leaf: Leaf, tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    conf = tmp_path / "c.toml"
    base = '[[sites]]\nname = "a"\nserver_names = ["a.test"]\nroot = "a"\n'
    conf.write_text('stack = "linux"\n' + base + f'cert = "{leaf.cert}"\nkey = "{leaf.key}"\n')
    with pytest.raises(ConfigError) as ei:
        load({}, {}, conf)
    assert ei.value.key == "sites[0].cert" and "tls_port" in ei.value.reason
    conf.write_text(
        f'stack = "linux"\ntls_port = 8443\ncert = "{leaf.cert}"\nkey = "{leaf.key}"\n'
        + base
        + f'cert = "{leaf.cert}"\n'
    )
    with pytest.raises(ConfigError) as ei:
        load({}, {}, conf)
    assert ei.value.key == "sites[0].cert" and "both cert and key" in ei.value.reason


def test_the_supervisor_rotates_the_shared_ticket_keys(tmp_path: Path) -> None:
    """Every TICKET_ROTATE_S a new key goes first in the file the workers read; the two
    before it stay (they still decrypt tickets issued before)."""
    from appliance.config import Config
    from appliance.supervisor import Supervisor

    sup = Supervisor(Config(stack="linux"))
    sup._ticket_path = tmp_path / "tls-ticket-keys"
    sup._ticket_keys = tls.new_ticket_keys()
    tls.write_ticket_keys(sup._ticket_path, sup._ticket_keys)
    sup._ticket_rotated = time.monotonic()
    first = sup._ticket_path.read_bytes()
    sup._rotate_ticket_keys()
    assert sup._ticket_path.read_bytes() == first  # not due yet
    keys = [first[:80]]
    for _ in range(3):
        sup._ticket_rotated -= tls.TICKET_ROTATE_S + 1
        sup._rotate_ticket_keys()
        data = sup._ticket_path.read_bytes()
        assert data[80:160] == keys[-1] and data[:80] not in keys
        keys.append(data[:80])
    assert len(data) == 80 * tls.TICKET_KEYS_KEPT
    assert oct(sup._ticket_path.stat().st_mode & 0o777) == "0o600"
