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


def _data_frames_before_synack(priority: bool, tmp_path: Path, flows: int = 4) -> int:
    """``flows`` bulk echoes through the shaped server while another connection opens: how
    many of the bulk's data frames the server sent between that SYN and its SYN-ACK."""
    pcap = tmp_path / f"server-{priority}-%u.pcap"
    n = make_net(time_wait_ms=100)
    n.server_stack.close()
    n.server_stack = m.Stack("pair", f"{SERVER}/24", pair=n.link, pair_side=1,
                             time_wait_ms=100, tx_rate_mbps=RATE_MBPS, priority=priority,
                             pcap=str(pcap))  # fmt: skip
    n.server = n.server_stack.context(0)
    peer = Peer(n.server).start()
    try:
        payload = b"b" * (256 << 10)  # flows x 256 KiB: 1 s of the link, queued while we look
        results: list[bytes] = []
        lock = threading.Lock()

        def run_bulk() -> None:
            ep = n.client.epoll()  # one epoll per thread
            with lock:
                c = connect(n.client, ep)
            got = transfer(ep, c, payload, len(payload))
            with lock:
                results.append(got)
                c.close()

        threads = [threading.Thread(target=run_bulk, daemon=True) for _ in range(flows)]
        for t in threads:
            t.start()
        time.sleep(0.3)
        assert len(results) == 0, "the bulk transfers ended before the second connection"
        with lock:
            ep2 = n.client.epoll()
            second = connect(n.client, ep2)
            second_port = second.getsockname()[1]
        for t in threads:
            t.join(60)
        assert results == [payload] * flows
        second.close()
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
    SYN-ACK leaves ahead of the data the long flows have queued. With one FIFO list (served
    round robin, a turn per connection) it waits for the turn of every flow ahead of it."""
    with_priority = _data_frames_before_synack(True, tmp_path)
    fifo = _data_frames_before_synack(False, tmp_path)
    assert with_priority == 0, with_priority
    assert fifo >= 3, fifo  # at least one frame from (nearly) each of the 4 flows ahead


def test_bad_rate_is_refused() -> None:
    link = m.PairLink(seed=1)
    try:
        with pytest.raises(ValueError, match="tx_rate_mbps"):
            m.Stack("pair", f"{CLIENT}/24", pair=link, pair_side=0, tx_rate_mbps=-1)
    finally:
        link.close()
