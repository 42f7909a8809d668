"""The core against Linux's TCP over a lossy link: 8 MiB each way under nftables random drop.

The kernel has no netem; loss comes from nftables (``numgen random mod 100 < N drop``). Where
the drop happens matters: the sending kernel's own output/postrouting hook sees its GSO
super-segments (up to 64 KiB) before they are split, so one drop there is a burst of lost
segments, and the sender's transmit call sees it fail. So the link has a middle: a "wire"
namespace that bridges the two veth pairs and drops at random in the bridge's forward hook, in
both directions, every frame (one segment: the kernel's TX offloads are off) on its own::

    kernel peer (.1/24, TSO off) --veth-- [br0 + nft bridge forward drop] --veth-- core (.2)

The rule goes in after the handshake (a lost SYN would only add a fixed 1 s) and stays until
the receiver has every byte and the end of the stream.

- core sends: the core (active open) writes 8 MiB to a kernel sink; its cwnd/ssthresh are
  sampled from ``Socket.tcp_info()`` during the transfer (the sender loop is the context's app
  thread), and a multiplicative decrease (RFC 5681 3.2: ssthresh = max(FlightSize / 2,
  2 SMSS), cwnd down with it) must show in that series; fast retransmits must happen.
- kernel sends: a kernel client writes 8 MiB to the core (passive open); the kernel retransmits,
  the core reassembles out-of-order data.

Both must be byte-exact and end within ``TRANSFER_LIMIT_S``.
"""

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
from itertools import pairwise
from typing import Any

import netns
import pytest
from echo_app import wait_stats

import mtcp_core
from mtcp_core.testing import pools_back

pytestmark = [pytest.mark.requires_root, pytest.mark.timeout(240)]

SIZE = 8 << 20
LOSS_PERCENT = 10
TRANSFER_LIMIT_S = 60.0
STACK_TIME_WAIT_MS = 100
CORE_PORT = 5001
INFINITE = 1 << 30  # an ssthresh above this is "not set yet"


# ---------------------------------------------------------------- nftables


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


# ---------------------------------------------------------------- the rig


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


@pytest.fixture
def lossrig(netlab: netns.Lab) -> Iterator[LossRig]:
    reason = nft_missing()
    if reason:
        pytest.skip(reason)
    yield from make_loss_rig(netlab)


def kernel_snmp(ns: netns.Namespace) -> dict[str, int]:
    """Tcp: and TcpExt: counters of ``ns`` (RetransSegs, TCPOFOQueue...)."""
    out: dict[str, int] = {}
    for path in ("/proc/net/snmp", "/proc/net/netstat"):
        lines = [ln.split() for ln in ns.run(["cat", path]).stdout.splitlines()]
        for head, vals in zip(lines[::2], lines[1::2], strict=True):
            if head and head[0] in ("Tcp:", "TcpExt:"):
                out.update({k: int(v) for k, v in zip(head[1:], vals[1:], strict=True)})
    return out


# ---------------------------------------------------------------- the core's side (app thread)


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


def _wait_event(ep: mtcp_core.Epoll, mask: int, timeout: float, what: str) -> int:
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
        ev = _wait_event(ep, mtcp_core.EPOLLOUT | mtcp_core.EPOLLERR, 10, "connect")
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


def core_receiver(ctx: mtcp_core.Context, port: int, ready: threading.Event,
                  run: CoreRun) -> None:  # fmt: skip
    """Listens on ``port``, accepts one connection, reads it to the end once ``run.go`` is
    set, then closes (the passive close)."""
    ep = ctx.epoll()
    lsock = ctx.socket()
    conn: mtcp_core.Socket | None = None
    try:
        lsock.bind(("0.0.0.0", port))
        lsock.listen(16)
        ep.register(lsock, mtcp_core.EPOLLIN)
        ready.set()
        _wait_event(ep, mtcp_core.EPOLLIN, 10, "accept")
        conn, _ = lsock.accept()
        ep.register(conn, mtcp_core.EPOLLIN | mtcp_core.EPOLLRDHUP)
        run.established.set()
        if not run.go.wait(10):
            raise TimeoutError("no go")
        t0 = time.monotonic()
        while True:
            if time.monotonic() - t0 > TRANSFER_LIMIT_S:
                raise TimeoutError(f"got {len(run.received)} B in {TRANSFER_LIMIT_S}s")
            try:
                chunk = conn.recv(256 * 1024)
            except BlockingIOError:
                ep.poll(0.05)
                continue
            if not chunk:
                break
            run.received += chunk
        run.elapsed = time.monotonic() - t0
    except BaseException as exc:  # noqa: BLE001 - handed to the test
        run.error = exc
    finally:
        if conn is not None:
            conn.close()
        lsock.close()
        ep.close()
        ready.set()
        run.established.set()
        run.done.set()


# ---------------------------------------------------------------- cwnd analysis


@dataclass
class Reduction:
    before: Sample
    after: Sample
    kind: str  # "fast" (cwnd ~ ssthresh) or "rto" (cwnd ~ 1 MSS)

    def __str__(self) -> str:
        b, a = self.before, self.after
        return (f"t={a.t:.3f}s {self.kind}: cwnd {b.cwnd}->{a.cwnd}, ssthresh "
                f"{'inf' if b.ssthresh >= INFINITE else b.ssthresh}->{a.ssthresh}, "
                f"flight before {b.flight}")  # fmt: skip


def reductions(samples: list[Sample]) -> list[Reduction]:
    """Multiplicative decreases in the series: ssthresh set to about half of the flight
    size (RFC 5681 (4)), and cwnd down with it."""
    out: list[Reduction] = []
    for b, a in pairwise(samples):
        if a.ssthresh >= INFINITE or a.ssthresh >= b.ssthresh or a.cwnd >= b.cwnd:
            continue
        if b.flight < 4 * b.mss:
            continue  # too little in flight for "half" to mean anything
        half = max(b.flight // 2, 2 * b.mss)
        if abs(a.ssthresh - half) > 0.25 * b.flight + 2 * b.mss:
            continue
        kind = "rto" if a.cwnd <= 2 * a.mss else "fast"
        out.append(Reduction(b, a, kind))
    return out


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


def check_exact(got: bytes, payload: bytes) -> None:
    assert len(got) == len(payload), f"{len(got)} B arrived of {len(payload)}"
    assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest(), "bytes changed"


# ---------------------------------------------------------------- the tests


def test_core_sends_8mib_to_the_kernel_under_loss(lossrig: LossRig) -> None:
    rig = lossrig
    payload = os.urandom(SIZE)
    with rig.peer.entered():
        listener = socket.create_server((rig.peer_ip, 0))
    port = listener.getsockname()[1]
    before = rig.ctx.stats()
    got, run = send_to_kernel(
        rig.ctx,
        listener,
        (rig.peer_ip, port),
        payload,
        on_established=lambda: rig.loss_on(LOSS_PERCENT),
    )
    drops = rig.loss_off()
    after = wait_stats(rig.ctx, pools_back)
    d = {k: after[k] - before[k] for k in after}
    red = reductions(run.samples)
    fast = [r for r in red if r.kind == "fast"]
    mb_s = SIZE / run.elapsed / 1e6 if run.elapsed else 0.0
    srtts = sorted(s.srtt_us for s in run.samples if s.srtt_us)
    srtt_ms = srtts[len(srtts) // 2] / 1000 if srtts else 0.0
    print(f"\ncore -> kernel, {LOSS_PERCENT}% drop each way: {run.elapsed:.2f}s ({mb_s:.1f} MB/s); "
          f"nft drops {drops}; retransmits {d['retransmits']}, fast {d['fast_retransmits']}, "
          f"sack {d['sack_retransmits']}, rto {d['rto_timeouts']}, recoveries "
          f"{d['recoveries']}; {len(run.samples)} samples, {len(red)} reductions "
          f"({len(fast)} fast); srtt p50 {srtt_ms:.2f} ms")  # fmt: skip
    for r in red[:5]:
        print("  ", r)
    check_exact(got, payload)
    assert run.elapsed < TRANSFER_LIMIT_S
    assert drops.get("to_kernel", 0) > 0 and drops.get("to_core", 0) > 0, drops
    assert d["retransmits"] > 0
    assert d["fast_retransmits"] + d["sack_retransmits"] > 0, "no loss was recovered fast"
    assert d["recoveries"] > 0
    assert fast, (
        "no multiplicative decrease (ssthresh ~ flight/2, cwnd down) in "
        f"{len(run.samples)} tcp_info samples; reductions seen: {[str(r) for r in red[:5]]}"
    )


def test_kernel_sends_8mib_to_the_core_under_loss(lossrig: LossRig) -> None:
    rig = lossrig
    payload = os.urandom(SIZE)
    ready = threading.Event()
    run = CoreRun()
    client_error: list[BaseException] = []
    client_done = threading.Event()
    before = rig.ctx.stats()
    ksnmp = kernel_snmp(rig.peer)

    def client() -> None:
        try:
            with rig.peer.entered():
                sock = socket.create_connection((rig.ip, CORE_PORT), timeout=10)
            with sock:
                if not run.go.wait(15):
                    raise TimeoutError("no go")
                sock.settimeout(TRANSFER_LIMIT_S)
                sock.sendall(payload)
                sock.shutdown(socket.SHUT_WR)
                while sock.recv(65536):  # until the core's FIN
                    pass
        except BaseException as exc:  # noqa: BLE001 - checked below
            client_error.append(exc)
        finally:
            client_done.set()

    app = threading.Thread(target=core_receiver, args=(rig.ctx, CORE_PORT, ready, run), daemon=True)
    app.start()
    assert ready.wait(10) and run.error is None, run.error
    kernel = threading.Thread(target=client, daemon=True)
    kernel.start()
    assert run.established.wait(15), "the core accepted nothing"
    assert run.error is None, run.error
    rig.loss_on(LOSS_PERCENT)
    run.go.set()
    assert run.done.wait(TRANSFER_LIMIT_S + 15), "the core's reader hung"
    assert client_done.wait(15), "the kernel client did not finish"
    drops = rig.loss_off()
    app.join(5)
    kernel.join(5)
    after = wait_stats(rig.ctx, pools_back)
    d = {k: after[k] - before[k] for k in after}
    k_after = kernel_snmp(rig.peer)
    k_retrans = k_after["RetransSegs"] - ksnmp["RetransSegs"]
    mb_s = SIZE / run.elapsed / 1e6 if run.elapsed else 0.0
    print(f"\nkernel -> core, {LOSS_PERCENT}% drop each way: {run.elapsed:.2f}s "
          f"({mb_s:.1f} MB/s); nft drops {drops}; kernel RetransSegs {k_retrans}; core "
          f"ooo_segments {d['ooo_segments']}, drop_tcp_ooo_full {d['drop_tcp_ooo_full']}, "
          f"delayed_acks {d['delayed_acks']}, drop_tcp_out_of_window "
          f"{d['drop_tcp_out_of_window']}")  # fmt: skip
    assert run.error is None, repr(run.error)
    assert client_error == [], client_error
    assert len(run.received) == len(payload), f"{len(run.received)} B arrived of {len(payload)}"
    assert hashlib.sha256(run.received).digest() == hashlib.sha256(payload).digest()
    assert run.elapsed < TRANSFER_LIMIT_S
    assert drops.get("to_kernel", 0) > 0 and drops.get("to_core", 0) > 0, drops
    assert k_retrans > 0
    assert d["ooo_segments"] > 0, "the core kept no out-of-order segment"
