"""appliance.http on mtcp_core with the static responder on or off, in a thread, and a client
that reads until the server closes or goes quiet: for the responder tests."""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mtcp_core
from appliance.http.config import RequestRecord, SiteConfig
from appliance.http.server import serve_mtcp
from appliance.testing.httpserver import PORT
from mtcp_core.testing import netns


@dataclass
class Srv:
    client: netns.Namespace
    ip: str
    root: Path
    ctx: Any
    stop: threading.Event
    draining: threading.Event
    thread: threading.Thread
    name: str
    records: list[RequestRecord] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)

    def connect(self, timeout: float = 5.0) -> socket.socket:
        with self.client.entered():
            return socket.create_connection((self.ip, PORT), timeout=timeout)

    def stats(self) -> dict[str, int]:
        return self.ctx.stats()


def start(lab: netns.Lab, config: SiteConfig, name: str, responder: bool) -> tuple[Srv, Any]:
    client, server_ns = lab.namespace("rcl"), lab.namespace("rsv")
    link = lab.veth(client, server_ns, address_b=False)
    ip = str(link.addr_b.ip)
    stop, draining, ready = threading.Event(), threading.Event(), threading.Event()
    mstack = server_ns.call(
        mtcp_core.Stack, "afpacket", str(link.addr_b), iface=link.if_b, time_wait_ms=100
    )
    ctx = mstack.context(0)
    records: list[RequestRecord] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            serve_mtcp(ctx, config, PORT, stop, records.append, draining, ready=ready,
                       responder=responder)  # fmt: skip
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            errors.append(exc)
        finally:
            ready.set()

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    assert ready.wait(10)
    assert not errors, errors
    srv = Srv(client, ip, Path(config.root), ctx, stop, draining, thread, name, records, errors)
    return srv, mstack


def finish(srv: Srv, mstack: Any) -> None:
    srv.stop.set()
    srv.thread.join(5)
    assert not srv.thread.is_alive()
    mstack.close()
    assert srv.errors == []


def read_all(
    sock: socket.socket, quiet: float = 0.4, limit: float = 8.0, first: float = 2.0
) -> tuple[bytes, bool]:
    """Everything the server sends until it closes (True) or is quiet for ``quiet`` s
    (``first`` s for the first byte: a loaded machine may take its time)."""
    buf = b""
    end = time.monotonic() + limit
    while time.monotonic() < end:
        sock.settimeout(quiet if buf else max(quiet, first))
        try:
            data = sock.recv(65536)
        except TimeoutError:
            return buf, False
        except ConnectionResetError:
            return buf, True
        if not data:
            return buf, True
        buf += data
    return buf, False


def fetch(srv: Srv, data: bytes, quiet: float = 0.4) -> tuple[bytes, bool]:
    with srv.connect() as s:
        s.sendall(data)
        return read_all(s, quiet)


def wait_for(cond: Any, timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.02)
