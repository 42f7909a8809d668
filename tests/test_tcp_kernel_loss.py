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

import hashlib
import os
import socket
import threading
import time
from dataclasses import dataclass
from itertools import pairwise

import pytest

import mtcp_core
from mtcp_core.testing import netns, pools_back
from mtcp_core.testing.echo_app import wait_stats
from mtcp_core.testing.kernel import (
    TRANSFER_LIMIT_S,
    CoreRun,
    LossRig,
    Sample,
    accept_one,
    check_exact,
    recv_to_end,
    send_to_kernel,
)

pytestmark = [pytest.mark.requires_root, pytest.mark.timeout(240)]

SIZE = 8 << 20
LOSS_PERCENT = 10
CORE_PORT = 5001
INFINITE = 1 << 30  # an ssthresh above this is "not set yet"


# ---------------------------------------------------------------- nftables


# ---------------------------------------------------------------- the rig


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


def core_receiver(ctx: mtcp_core.Context, port: int, ready: threading.Event,
                  run: CoreRun) -> None:  # fmt: skip
    """Listens on ``port``, accepts one connection, reads it to the end once ``run.go`` is
    set, then closes (the passive close)."""
    try:
        with accept_one(ctx, port, ready, timeout=10) as (conn, ep):
            run.established.set()
            if not run.go.wait(10):
                raise TimeoutError("no go")
            t0 = time.monotonic()
            recv_to_end(conn, ep, run.received.extend, t0, TRANSFER_LIMIT_S)
            run.elapsed = time.monotonic() - t0
    except BaseException as exc:  # noqa: BLE001 - handed to the test
        run.error = exc
    finally:
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
