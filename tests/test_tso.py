"""TCP segmentation offload on afpacket, against Linux's TCP.

Where the device can cut large segments (afpacket: a socket with ``PACKET_VNET_HDR``), the
core hands it TCP segments of up to 64 KiB, each behind a ``struct virtio_net_hdr`` (GSO
TCPV4, gso_size = MSS, partial checksum); a veth carries such a frame whole and the kernel
peer takes it as one unit. These tests check that bulk data really leaves that way (the
``tx_tso_frames`` counter, and frames larger than the MTU on average) and that it arrives
byte-exact, also over a lossy link:

- ``frames``: the loss rig of test_tcp_kernel_loss (a bridge in a "wire" namespace drops in
  its forward hook, where a TSO frame is still one packet: a drop loses up to 44 segments);
- ``segments``: the bridge's port toward the kernel has its TX offloads off, so the kernel
  cuts TSO frames there; a netdev ingress rule on the kernel's end then drops single
  segments out of them.
"""

from __future__ import annotations

import os
import shutil
import socket
import time

import pytest

from mtcp_core.testing import kernel, netns, pools_back
from mtcp_core.testing.echo_app import wait_stats

pytestmark = [pytest.mark.requires_root, pytest.mark.timeout(240)]

SIZE = 8 << 20
MTU_FRAME = 1514  # Ethernet header + a 1500-byte MTU


def kernel_sink(ns: netns.Namespace, ip: str) -> tuple[socket.socket, int]:
    with ns.entered():
        listener = socket.create_server((ip, 0))
    return listener, listener.getsockname()[1]


@pytest.mark.parametrize("afpacket_rx", ["ring", "copy"])
def test_bulk_data_leaves_as_tso_frames(netlab: netns.Lab, afpacket_rx: str) -> None:
    """8 MiB to a kernel sink over a plain veth: most of it leaves in frames larger than the
    MTU (TSO), and the kernel reads every byte unchanged."""
    for rig in kernel.make_afpacket_rig(netlab, afpacket_rx=afpacket_rx):
        payload = os.urandom(SIZE)
        listener, port = kernel_sink(rig.client, rig.client_ip)
        before = rig.ctx.stats()
        got, run = kernel.send_to_kernel(rig.ctx, listener, (rig.client_ip, port), payload)
        after = wait_stats(rig.ctx, pools_back)
        d = {k: after[k] - before[k] for k in after}
        frames, nbytes = d["tx_packets"], d["tx_bytes"]
        print(f"\n{SIZE >> 20} MiB in {run.elapsed:.3f}s: {d['tx_tso_frames']} TSO frames, "
              f"{frames} frames, {nbytes / max(frames, 1):.0f} B per frame, "
              f"{d['tcp_segs_tx']} segments")  # fmt: skip
        kernel.check_exact(got, payload)
        assert d["tx_tso_frames"] > 0, "no TSO frame left the core"
        # every TSO frame is at least two segments; most of the 8 MiB went in them
        assert d["tcp_segs_tx"] >= frames + d["tx_tso_frames"]
        assert nbytes / frames > 4 * MTU_FRAME, "frames no larger than the MTU on average"


# ---------------------------------------------------------------- under loss


def segment_drop_rules(percent: int, dev: str, core_ip: str) -> str:
    """Drops ``percent`` % of the core's TCP segments as the kernel's end receives them."""
    return f"""
table netdev mtsegloss {{
  chain ingress {{
    type filter hook ingress device "{dev}" priority 0; policy accept;
    ip saddr {core_ip} ip protocol tcp numgen random mod 100 < {percent} counter drop
  }}
}}
"""


@pytest.mark.parametrize("lost", ["frames", "segments"])
def test_tso_transfer_under_loss_is_byte_exact(lossrig: kernel.LossRig, lost: str) -> None:
    """8 MiB from the core to the kernel while whole TSO frames (5 % in the bridge, both
    directions) or single segments cut from them (3 % at the kernel's end) are lost: every
    byte arrives unchanged, and TSO frames kept leaving around the retransmissions."""
    rig = lossrig
    payload = os.urandom(SIZE)
    listener, port = kernel_sink(rig.peer, rig.peer_ip)
    # the kernel's end of its veth: the one link in its namespace besides lo
    links = [
        ln.split(":")[1].strip().split("@")[0]
        for ln in rig.peer.ip("-o", "link", "show").splitlines()
    ]
    (peer_dev,) = [name for name in links if name != "lo"]

    armed: list[str] = []

    def loss_on() -> None:
        if lost == "frames":
            rig.wire.nft(kernel.bridge_drop_rules(5, rig.ip, rig.peer_ip))
        else:
            rig.peer.nft(segment_drop_rules(3, peer_dev, rig.ip))
        armed.append(lost)

    before = rig.ctx.stats()
    try:
        got, run = kernel.send_to_kernel(
            rig.ctx, listener, (rig.peer_ip, port), payload, on_established=loss_on
        )
    finally:
        if armed and lost == "frames":
            rig.wire.nft("delete table bridge mtloss\n")
        elif armed:
            rig.peer.nft("delete table netdev mtsegloss\n")
    after = wait_stats(rig.ctx, pools_back)
    d = {k: after[k] - before[k] for k in after}
    mb_s = SIZE / run.elapsed / 1e6 if run.elapsed else 0.0
    print(f"\n{lost} lost: {run.elapsed:.2f}s ({mb_s:.1f} MB/s); {d['tx_tso_frames']} TSO "
          f"frames; retransmits {d['retransmits']}, fast {d['fast_retransmits']}, sack "
          f"{d['sack_retransmits']}, rto {d['rto_timeouts']}")  # fmt: skip
    kernel.check_exact(got, payload)
    assert d["tx_tso_frames"] > 0, "no TSO frame left the core"
    assert d["retransmits"] > 0, "nothing was lost: the rule did not bite"


# ---------------------------------------------------------------- no TSO on the device


def round_trips(addr: tuple[str, int], size: int, chunk: int, timeout: float = 20.0) -> bytes:
    """One kernel connection: ``size`` bytes in ``chunk``-sized round trips (send a chunk,
    read its echo whole, then the next); returns everything that came back."""
    data = os.urandom(size)
    got = bytearray()
    with socket.create_connection(addr, timeout=timeout) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for off in range(0, size, chunk):
            piece = data[off : off + chunk]
            sock.sendall(piece)
            want = len(got) + len(piece)
            while len(got) < want:
                b = sock.recv(want - len(got))
                assert b, f"the core closed after {len(got)} of {size} B"
                got.extend(b)
    assert bytes(got) == data, "the echo came back changed"
    return bytes(got)


def stack_iface(ns: netns.Namespace) -> str:
    """The one link besides lo in ``ns`` (the stack's end of its veth)."""
    links = [ln.split(":")[1].strip().split("@")[0] for ln in ns.ip("-o", "link").splitlines()]
    (dev,) = [name for name in links if name != "lo"]
    return dev


@pytest.mark.parametrize("when", ["at_start", "while_running"])
def test_no_tso_on_the_device_loses_nothing(netlab: netns.Lab, when: str) -> None:
    """``ethtool -K IF tx off`` on the stack's veth (no checksum offload, and so no TSO),
    before the stack starts or while it runs: multi-segment writes still leave at once. A
    1200 B echo and 1 MiB in 16 KiB round trips complete with no retransmission, tail probe
    or RTO, and nothing dropped at the device. Started without TSO the stack never builds
    TSO frames; losing it while running, the frames the kernel refuses are cut in the ring
    (counted in ``tx_tso_resegmented``) and the stack stops building them."""
    if shutil.which("ethtool") is None:
        pytest.skip("needs ethtool")
    for rig in kernel.make_afpacket_rig(netlab, afpacket_rx="copy", tx_offload=when != "at_start"):
        dev = stack_iface(rig.server_ns)
        if when == "while_running":
            rig.server_ns.run(["ethtool", "-K", dev, "tx", "off"])  # TSO was on at start
        assert "tx-tcp-segmentation: off" in rig.server_ns.run(["ethtool", "-k", dev]).stdout
        with rig.serve():
            before = rig.ctx.stats()
            t0 = time.monotonic()
            rig.client.call(round_trips, (rig.ip, kernel.ECHO), 1200, 1200)
            t1 = time.monotonic()
            rig.client.call(round_trips, (rig.ip, kernel.ECHO), 1 << 20, 16 << 10)
            t2 = time.monotonic()
        after = wait_stats(rig.ctx, pools_back)
        d = {k: after[k] - before[k] for k in after}
        print(f"\n1200 B echo (connect included) {(t1 - t0) * 1e3:.1f} ms, 1 MiB in 16 KiB "
              f"round trips {(t2 - t1) * 1e3:.1f} ms")  # fmt: skip
        print(f"retransmits {d['retransmits']}, loss probes {d['loss_probes']}, rto "
              f"{d['rto_timeouts']}, tx drops {d['drop_tx_device']}, tso {d['tx_tso_frames']}, "
              f"cut in the ring {d['tx_tso_resegmented']}")  # fmt: skip
        assert d["drop_tx_device"] == 0
        assert d["retransmits"] == 0 and d["loss_probes"] == 0 and d["rto_timeouts"] == 0
        if when == "at_start":
            assert d["tx_tso_frames"] == 0
        else:
            assert d["tx_tso_resegmented"] >= 1
            assert d["tx_tso_resegmented"] <= 8  # then the stack stopped building them
