"""An HTTP server (appliance.http on mtcp_core or the kernel) in a thread, for HTTP tests."""

from __future__ import annotations

import contextlib
import http.client
import re
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mtcp_core
from appliance.http.config import RequestRecord, SiteConfig
from appliance.http.server import serve_linux, serve_mtcp
from appliance.http.tls import CertPair, TlsServer, TlsSettings
from appliance.testing.tlsca import CA
from mtcp_core.testing import netns

PORT = 80
TLS_PORT = 443


@dataclass
class Server:
    stack: str
    client: netns.Namespace
    client_ip: str
    ip: str
    root: Path
    config: SiteConfig
    stop: threading.Event
    draining: threading.Event
    thread: threading.Thread
    records: list[RequestRecord] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)
    ca: Path | None = None  # HTTPS: the CA the clients trust

    @property
    def tls(self) -> bool:
        return self.ca is not None

    @property
    def port(self) -> int:
        return TLS_PORT if self.tls else PORT

    def url(self, path: str) -> str:
        return f"{'https' if self.tls else 'http'}://{self.ip}:{self.port}{path}"

    def client_context(self) -> ssl.SSLContext:
        assert self.ca is not None
        return ssl.create_default_context(cafile=str(self.ca))

    def connect(self, timeout: float = 5.0, rcvbuf: int = 0) -> socket.socket:
        """A connection to the site (over TLS for the +tls servers)."""
        with self.client.entered():
            s = socket.socket()
        try:
            if rcvbuf:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            s.settimeout(timeout)
            s.connect((self.ip, self.port))
            if self.tls:
                return self.client_context().wrap_socket(s, server_hostname=self.ip)
        except BaseException:
            s.close()
            raise
        return s

    def curl(self, path: str, *args: str) -> bytes:
        """curl's output (-i: the response head, then the body), as bytes."""
        argv = ["ip", "netns", "exec", self.client.name, "curl", "-sS", "--max-time", "10"]
        if self.ca is not None:
            argv += ["--cacert", str(self.ca)]
        proc = subprocess.run(
            [*argv, *args, self.url(path)], capture_output=True, timeout=20, check=False
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    def request(
        self, method: str, path: str, headers: dict[str, str] | None = None, body: bytes = b""
    ) -> tuple[int, dict[str, str], bytes]:
        """One request with http.client from the client namespace."""

        def go() -> tuple[int, dict[str, str], bytes]:
            conn: http.client.HTTPConnection
            if self.tls:
                conn = http.client.HTTPSConnection(
                    self.ip, self.port, timeout=10, context=self.client_context()
                )
            else:
                conn = http.client.HTTPConnection(self.ip, PORT, timeout=10)
            try:
                conn.request(method, path, body=body or None, headers=headers or {})
                r = conn.getresponse()
                return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
            finally:
                conn.close()

        return self.client.call(go)

    def exchange(self, data: bytes, methods: list[str] | None = None) -> list[bytes]:
        """Sends raw bytes on a new connection; returns the responses (one per entry of
        ``methods``, default one GET) and checks what follows them."""
        with self.connect() as s:
            s.sendall(data)
            return read_responses(s, methods or ["GET"])


def start_server(
    lab: netns.Lab, stack: str, config: SiteConfig, ca: CA | None = None
) -> tuple[Server, Any]:
    """The site on ``stack`` (``mtcp``, ``linux``; ``+tls``: HTTPS too, a certificate of
    ``ca`` for the server's address)."""
    stack, plus_tls = stack.removesuffix("+tls"), stack.endswith("+tls")
    client, server_ns = lab.namespace("hcl"), lab.namespace("hsv")
    link = lab.veth(client, server_ns, address_b=stack == "linux")
    ip = str(link.addr_b.ip)
    tls: TlsServer | None = None
    if plus_tls:
        assert ca is not None
        leaf = ca.issue(f"srv-{ip}", ["site.test"], [ip])
        tls = TlsServer(TlsSettings(TLS_PORT, CertPair(leaf.cert, leaf.key)))
    stop, draining, ready = threading.Event(), threading.Event(), threading.Event()
    mstack = None
    errors: list[BaseException] = []
    records: list[RequestRecord] = []
    target: Callable[[], None]
    if stack == "mtcp":
        mstack = server_ns.call(
            mtcp_core.Stack, "afpacket", str(link.addr_b), iface=link.if_b, time_wait_ms=100
        )
        ctx = mstack.context(0)

        def target() -> None:
            serve_mtcp(ctx, config, PORT, stop, records.append, draining, ready=ready, tls=tls)

    else:

        def target() -> None:
            with netns.entered(server_ns.name):
                serve_linux(ip, PORT, config, stop, records.append, draining, ready=ready, tls=tls)

    def run() -> None:
        try:
            target()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            errors.append(exc)
        finally:
            ready.set()

    thread = threading.Thread(target=run, name=f"http-{stack}", daemon=True)
    thread.start()
    assert ready.wait(10), "the server did not listen within 10 s"
    if errors:
        raise errors[0]
    srv = Server(
        stack, client, str(link.addr_a.ip), ip, Path(config.root), config, stop, draining, thread
    )
    srv.records, srv.errors = records, errors
    srv.ca = ca.cert if plus_tls and ca is not None else None
    return srv, mstack


def stop_server(srv: Server, mstack: Any) -> None:
    srv.stop.set()
    srv.thread.join(5)
    alive = srv.thread.is_alive()
    if mstack is not None and not alive:
        mstack.close()
    assert not alive, "serve did not return within 5 s of stop"
    assert srv.errors == []


@contextlib.contextmanager
def running_server(stack: str, config: SiteConfig, ca: CA | None = None) -> Iterator[Server]:
    """``start_server`` in a ``netns.Lab`` of its own; on exit the server is stopped (and
    ``stop_server`` checks that it returned without errors) and the Lab removed."""
    with netns.Lab() as lab:
        server, mstack = start_server(lab, stack, config, ca)
        try:
            yield server
        finally:
            stop_server(server, mstack)


def read_responses(sock: socket.socket, methods: list[str], timeout: float = 10.0) -> list[bytes]:
    """Reads one complete response per method (HEAD: no body) from ``sock``."""
    deadline = time.monotonic() + timeout
    buf = b""
    out: list[bytes] = []
    for method in methods:
        while True:
            end = buf.find(b"\r\n\r\n")
            if end >= 0:
                head = buf[: end + 4]
                m = re.search(rb"\r\ncontent-length: (\d+)\r\n", head, re.I)
                status = int(head.split(b" ", 2)[1])
                length = 0 if method == "HEAD" or status in (100, 304) or not m else int(m[1])
                if len(buf) >= end + 4 + length:
                    out.append(buf[: end + 4 + length])
                    buf = buf[end + 4 + length :]
                    break
            if time.monotonic() > deadline:
                raise TimeoutError(f"incomplete response: {buf[:200]!r}")
            data = sock.recv(65536)
            if not data:
                raise EOFError(f"closed after {len(out)} responses: {buf[:200]!r}")
            buf += data
    assert buf == b"", f"unexpected bytes after the responses: {buf[:100]!r}"
    return out
