"""The link-rate shaper (``Stack(tx_rate_mbps=N)``) and priority queueing behind it, on the
pair backend (no privileges).

A veth has no line rate, so the TX lists never hold a queue there; with a rate the stack
keeps what the link cannot take yet in its own lists, as a NIC queue would, and the order of
those lists (control, ACK, data with priority on; one FIFO with it off) decides who waits.
The checks are about bytes and order, not about how fast this machine is: the rate is an
upper bound any machine meets, and the order is read from a capture."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from pcapfile import tcp_frames
from test_tcp_pair import CLIENT, SERVER, Peer, close_net, connect, make_net, transfer

import mtcp_core as m

RATE_MBPS = 8  # 1 MB/s: slow enough that any transfer below takes a measurable time
SYN, ACK = 0x02, 0x10


def test_a_shaped_stack_sends_no_faster_than_its_link() -> None:
    n = make_net(time_wait_ms=100)
    n.server_stack.close()  # the server side again, shaped
    n.server_stack = m.Stack("pair", f"{SERVER}/24", pair=n.link, pair_side=1,
                             time_wait_ms=100, tx_rate_mbps=RATE_MBPS)  # fmt: skip
    n.server = n.server_stack.context(0)
    peer = Peer(n.server).start()
    try:
        ep = n.client.epoll()
        c = connect(n.client, ep)
        payload = bytes(range(256)) * 2048  # 512 KiB echoed back through the shaped side
        t0 = time.monotonic()
        got = transfer(ep, c, payload, len(payload))
        elapsed = time.monotonic() - t0
        assert got == payload
        sent = n.server.stats()["tx_bytes"]
        link_bytes_per_s = RATE_MBPS * 1_000_000 / 8
        burst_s = 0.001  # the bucket saves up at most 1 ms of the link
        # the echo alone is len(payload) bytes of payload on the wire
        assert elapsed >= len(payload) / link_bytes_per_s - burst_s, (elapsed, sent)
        c.close()
    finally:
        peer.join()
        close_net(n)


def _data_frames_before_synack(priority: bool, tmp_path: Path) -> int:
    """A bulk echo through the shaped server while a second connection opens: how many of
    the bulk's data frames the server sent between the second SYN and its SYN-ACK."""
    pcap = tmp_path / f"server-{priority}-%u.pcap"
    n = make_net(time_wait_ms=100)
    n.server_stack.close()
    n.server_stack = m.Stack("pair", f"{SERVER}/24", pair=n.link, pair_side=1,
                             time_wait_ms=100, tx_rate_mbps=RATE_MBPS, priority=priority,
                             pcap=str(pcap))  # fmt: skip
    n.server = n.server_stack.context(0)
    peer = Peer(n.server).start()
    try:
        ep = n.client.epoll()
        bulk = connect(n.client, ep)
        payload = b"b" * (1 << 20)  # 1 s of the link: the queue is full while the SYN waits
        done = threading.Event()
        result: list[bytes] = []

        def run_bulk() -> None:
            result.append(transfer(ep, bulk, payload, len(payload)))
            done.set()

        # the client context is used from one thread at a time per epoll; the second
        # connection gets its own epoll
        t = threading.Thread(target=run_bulk, daemon=True)
        t.start()
        time.sleep(0.2)
        assert not done.is_set(), "the bulk transfer ended before the second connection"
        ep2 = n.client.epoll()
        second = connect(n.client, ep2)
        second_port = second.getsockname()[1]
        t.join(60)
        assert result and result[0] == payload
        second.close()
        bulk.close()
    finally:
        peer.join()
        close_net(n)
    frames = tcp_frames(Path(str(pcap).replace("%u", "0")))
    syn = next(i for i, f in enumerate(frames) if f[0] == second_port and f[2] & SYN)
    synack = next(
        i for i, f in enumerate(frames)
        if f[1] == second_port and f[2] & (SYN | ACK) == SYN | ACK
    )  # fmt: skip
    assert syn < synack
    return sum(1 for f in frames[syn:synack] if f[0] == 80 and f[3] > 0)


def test_priority_queueing_sends_a_syn_ack_ahead_of_queued_data(tmp_path: Path) -> None:
    """The paper's priority-based packet queueing: with a saturated link, a new connection's
    SYN-ACK leaves ahead of the data the long flow has queued; with one FIFO it waits
    behind it."""
    with_priority = _data_frames_before_synack(True, tmp_path)
    fifo = _data_frames_before_synack(False, tmp_path)
    assert with_priority <= 2, with_priority  # at most what one round had under way
    assert fifo > with_priority + 8, (fifo, with_priority)


def test_bad_rate_is_refused() -> None:
    link = m.PairLink(seed=1)
    try:
        with pytest.raises(ValueError, match="tx_rate_mbps"):
            m.Stack("pair", f"{CLIENT}/24", pair=link, pair_side=0, tx_rate_mbps=-1)
    finally:
        link.close()
