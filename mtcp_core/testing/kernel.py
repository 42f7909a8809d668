"""Rigs with the Linux kernel as the peer, in namespaces of a ``netns.Lab``: the core on an
afpacket veth end with the echo responder, and a bridge that drops frames with nftables."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import mtcp_core
from mtcp_core.testing import echo_app, netns

STACK_TIME_WAIT_MS = 100
ECHO, ONCE = 7, 8  # the responder's ports: echo (client closes first), once (core closes first)


@dataclass
class Rig:
    client: netns.Namespace  # where the kernel peer runs
    client_ip: str
    ip: str  # the stack's address
    stack: mtcp_core.Stack
    ctx: mtcp_core.Context
    server_ns: netns.Namespace

    def serve(self, **kw: Any) -> Responder:
        return Responder(self.ctx, **kw)


class Responder:
    """The echo_app responder on the core in a thread (the context's app thread)."""

    def __init__(self, ctx: mtcp_core.Context, **kw: Any) -> None:
        self.thread, self.stop_event, self.result = echo_app.serve_in_thread(
            lambda: echo_app.MtcpNet(ctx), {ECHO: "echo", ONCE: "once"}, **kw
        )

    def stop(self) -> echo_app.ServerReport:
        return echo_app.stop_server(self.thread, self.stop_event, self.result)

    def __enter__(self) -> Responder:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.thread.is_alive():
            self.stop()


def core_on_veth(
    lab: netns.Lab,
    peer_tag: str,
    core_tag: str,
    *,
    tx_offload: bool = True,
    peer_is_gateway: bool = False,
    **stack_kw: Any,
) -> tuple[netns.Namespace, netns.Namespace, netns.Veth, mtcp_core.Stack]:
    """A kernel peer's namespace and the core's, joined by a veth whose core end has no
    kernel address: the core takes it, on afpacket, with ``stack_kw`` (and the peer's
    address as its gateway if ``peer_is_gateway``). Returns the two namespaces, the veth and
    the stack (the caller closes it)."""
    peer, core_ns = lab.namespace(peer_tag), lab.namespace(core_tag)
    link = lab.veth(peer, core_ns, address_b=False, tx_offload=tx_offload)
    if peer_is_gateway:
        stack_kw["gateway"] = str(link.addr_a.ip)
    stack = core_ns.call(mtcp_core.Stack, "afpacket", str(link.addr_b), iface=link.if_b, **stack_kw)
    return peer, core_ns, link, stack


def make_afpacket_rig(
    lab: netns.Lab,
    *,
    tx_offload: bool = True,
    time_wait_ms: int = STACK_TIME_WAIT_MS,
    afpacket_rx: str = "ring",
) -> Iterator[Rig]:
    client, server, link, stack = core_on_veth(
        lab, "client", "server", tx_offload=tx_offload, time_wait_ms=time_wait_ms,
        afpacket_rx=afpacket_rx,
    )  # fmt: skip
    try:
        ctx = stack.context(0)  # from this thread, outside the server namespace
        yield Rig(client, str(link.addr_a.ip), str(link.addr_b.ip), stack, ctx, server)
    finally:
        stack.close()


TRANSFER_LIMIT_S = 60.0


def nft_missing() -> str | None:
    if shutil.which("nft") is None:
        return "needs nftables' nft for the random drop (apt-get install nftables)"
    return None


def bridge_drop_rules(percent: int, core_ip: str, peer_ip: str) -> str:
    """Drops ``percent`` % of the TCP frames in each direction across the bridge."""
    return f"""
table bridge mtloss {{
  chain forward {{
    type filter hook forward priority 0; policy accept;
    ip saddr {core_ip} ip daddr {peer_ip} ip protocol tcp numgen random mod 100 < {percent} counter drop comment "to_kernel"
    ip saddr {peer_ip} ip daddr {core_ip} ip protocol tcp numgen random mod 100 < {percent} counter drop comment "to_core"
  }}
}}
"""  # noqa: E501


def nft_drops(ns: netns.Namespace) -> dict[str, int]:
    """Packets each commented rule of table bridge mtloss dropped."""
    out = ns.run(["nft", "-j", "list", "table", "bridge", "mtloss"]).stdout
    drops: dict[str, int] = {}
    for item in json.loads(out)["nftables"]:
        rule = item.get("rule")
        if not rule or "comment" not in rule:
            continue
        for expr in rule["expr"]:
            if "counter" in expr:
                drops[rule["comment"]] = int(expr["counter"]["packets"])
    return drops


@dataclass
class LossRig:
    peer: netns.Namespace  # the kernel's TCP
    wire: netns.Namespace  # the bridge that drops
    core_ns: netns.Namespace
    stack: mtcp_core.Stack
    ctx: mtcp_core.Context
    peer_ip: str
    ip: str  # the core's address

    def loss_on(self, percent: int) -> None:
        self.wire.nft(bridge_drop_rules(percent, self.ip, self.peer_ip))

    def loss_off(self) -> dict[str, int]:
        """Removes the rule; returns what it dropped per direction."""
        drops = nft_drops(self.wire)
        self.wire.nft("delete table bridge mtloss\n")
        return drops


def make_loss_rig(lab: netns.Lab) -> Iterator[LossRig]:
    peer, wire, core_ns = lab.namespace("kpeer"), lab.namespace("wire"), lab.namespace("core")
    # kernel end: TX checksum offload (and with it TSO) off, so that the kernel's frames
    # cross the bridge one MSS each, with full checksums
    a = lab.veth(peer, wire, address_b=False, tx_offload=False)
    b = lab.veth(wire, core_ns, subnet=a.network, address_a=False, address_b=False)
    wire.ip("link", "add", "br0", "type", "bridge")
    for port in (a.if_b, b.if_a):
        wire.ip("link", "set", port, "master", "br0")
    wire.ip("link", "set", "br0", "up")
    try:
        wire.nft("add table bridge mtprobe\ndelete table bridge mtprobe\n")
    except netns.NetnsError as exc:
        import pytest  # here only: bench/loss_bench.py imports this module without pytest

        pytest.skip(f"nftables cannot filter bridged frames here: {exc}")
    stack = core_ns.call(
        mtcp_core.Stack,
        "afpacket",
        f"{a.addr_b.ip}/{a.network.prefixlen}",
        iface=b.if_b,
        time_wait_ms=STACK_TIME_WAIT_MS,
    )
    try:
        ctx = stack.context(0)
        yield LossRig(peer, wire, core_ns, stack, ctx, str(a.addr_a.ip), str(a.addr_b.ip))
    finally:
        stack.close()


@dataclass
class CoreRun:
    """What the core's app thread did; filled in by the thread."""

    established: threading.Event = field(default_factory=threading.Event)
    go: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    elapsed: float = 0.0
    received: bytearray = field(default_factory=bytearray)
    samples: list[Sample] = field(default_factory=list)
    error: BaseException | None = None


def core_sender(ctx: mtcp_core.Context, addr: tuple[str, int], payload: bytes,
                run: CoreRun) -> None:  # fmt: skip
    """Active open to ``addr``; once ``run.go`` is set, writes ``payload``, sampling
    cwnd/ssthresh about every millisecond; closes when all of it is acknowledged."""
    ep = ctx.epoll()
    sock = ctx.socket()
    try:
        with contextlib.suppress(BlockingIOError):
            sock.connect(addr)
        ep.register(sock, mtcp_core.EPOLLOUT)
        ev = wait_epoll(ep, mtcp_core.EPOLLOUT | mtcp_core.EPOLLERR, 10, "connect")
        err = sock.getsockopt(mtcp_core.SOL_SOCKET, mtcp_core.SO_ERROR)
        if err or ev & mtcp_core.EPOLLERR:
            raise OSError(err, f"connect to {addr}: {os.strerror(err)}")
        run.established.set()
        if not run.go.wait(10):
            raise TimeoutError("no go")
        t0 = time.monotonic()
        view = memoryview(payload)
        sent = 0
        last = -1.0
        interest = mtcp_core.EPOLLOUT
        while True:
            now = time.monotonic()
            if now - t0 > TRANSFER_LIMIT_S:
                raise TimeoutError(f"sent {sent} of {len(payload)} B in {TRANSFER_LIMIT_S}s")
            if sent < len(payload):
                with contextlib.suppress(BlockingIOError):
                    sent += sock.send(view[sent : sent + 256 * 1024])
            if now - last >= 0.001 and len(run.samples) < 100_000:
                s, info = sample(sock, t0)
                run.samples.append(s)
                last = now
                if sent == len(payload) and info["sndbuf_used"] == 0 and s.flight == 0:
                    break
            want = mtcp_core.EPOLLOUT if sent < len(payload) else 0
            if want != interest:
                ep.modify(sock, want)
                interest = want
            ep.poll(0.001)
        run.elapsed = time.monotonic() - t0
    except BaseException as exc:  # noqa: BLE001 - handed to the test
        run.error = exc
    finally:
        sock.close()
        ep.close()
        run.established.set()
        run.done.set()


def send_to_kernel(
    ctx: mtcp_core.Context,
    listener: socket.socket,
    addr: tuple[str, int],
    payload: bytes,
    *,
    on_established: Callable[[], None] | None = None,
) -> tuple[bytes, CoreRun]:
    """The core connects to ``addr`` (``listener`` in the kernel), writes ``payload`` and
    closes; returns what the kernel read up to the FIN, and the sender's record."""
    got = bytearray()
    sink_error: list[BaseException] = []
    sink_done = threading.Event()

    def sink() -> None:
        try:
            listener.settimeout(10)
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(TRANSFER_LIMIT_S)
                while chunk := conn.recv(1 << 20):
                    got.extend(chunk)
        except BaseException as exc:  # noqa: BLE001 - checked below
            sink_error.append(exc)
        finally:
            sink_done.set()

    run = CoreRun()
    with listener:
        sink_thread = threading.Thread(target=sink, daemon=True)
        sink_thread.start()
        app = threading.Thread(target=core_sender, args=(ctx, addr, payload, run), daemon=True)
        app.start()
        assert run.established.wait(15), "the core's connect did not finish"
        assert run.error is None, run.error
        if on_established is not None:
            on_established()
        run.go.set()
        assert run.done.wait(TRANSFER_LIMIT_S + 15), "the core's sender hung"
        assert sink_done.wait(15), "the kernel never saw the end of the stream"
        app.join(5)
        sink_thread.join(5)
    assert run.error is None, repr(run.error)
    assert sink_error == [], sink_error
    return bytes(got), run


@contextlib.contextmanager
def accept_one(
    ctx: mtcp_core.Context, port: int, ready: threading.Event, *, timeout: float = 15.0
) -> Iterator[tuple[mtcp_core.Socket, mtcp_core.Epoll]]:
    """For the app thread of a receiving core: listens on ``port``, sets ``ready``, accepts
    one connection within ``timeout`` seconds and hands it out (registered for IN and RDHUP)
    with its epoll. At the end closes them all and sets ``ready`` (also after a failure)."""
    ep, lsock = ctx.epoll(), ctx.socket()
    conn: mtcp_core.Socket | None = None
    try:
        lsock.bind(("0.0.0.0", port))
        lsock.listen(16)
        ep.register(lsock, mtcp_core.EPOLLIN)
        ready.set()
        wait_epoll(ep, mtcp_core.EPOLLIN, timeout, "accept")
        conn, _ = lsock.accept()
        ep.register(conn, mtcp_core.EPOLLIN | mtcp_core.EPOLLRDHUP)
        yield conn, ep
    finally:
        ready.set()
        if conn is not None:
            conn.close()
        lsock.close()
        ep.close()


def recv_to_end(conn: mtcp_core.Socket, ep: mtcp_core.Epoll, take: Callable[[bytes], object],
                t0: float, limit: float) -> None:  # fmt: skip
    """Reads ``conn`` (registered in ``ep``) up to the peer's FIN, each chunk to ``take``;
    TimeoutError once ``limit`` seconds have passed since ``t0``."""
    got = 0
    while True:
        if time.monotonic() - t0 > limit:
            raise TimeoutError(f"got {got} B in {limit:g}s")
        try:
            chunk = conn.recv(256 * 1024)
        except BlockingIOError:
            ep.poll(0.05)
            continue
        if not chunk:
            return
        got += len(chunk)
        take(chunk)


def check_exact(got: bytes, payload: bytes) -> None:
    assert len(got) == len(payload), f"{len(got)} B arrived of {len(payload)}"
    assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest(), "bytes changed"


@dataclass
class Sample:
    t: float
    cwnd: int
    ssthresh: int
    flight: int
    mss: int
    retransmits: int
    srtt_us: int
    in_recovery: int


def wait_epoll(ep: mtcp_core.Epoll, mask: int, timeout: float, what: str) -> int:
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        for _, ev in ep.poll(min(left, 0.2)):
            if ev & mask:
                return ev
    raise TimeoutError(f"{what}: nothing within {timeout}s")


def sample(sock: mtcp_core.Socket, t0: float) -> tuple[Sample, dict[str, Any]]:
    info = sock.tcp_info()
    s = Sample(
        time.monotonic() - t0,
        info["cwnd"],
        info["ssthresh"],
        (info["snd_nxt"] - info["snd_una"]) & 0xFFFFFFFF,
        info["mss"],
        info["retransmits"],
        info["srtt_us"],
        info.get("in_recovery", 0),
    )
    return s, info
