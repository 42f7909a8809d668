"""The link-rate shaper (``Stack(tx_rate_mbps=N)``) and priority queueing behind it, on the
pair backend (no privileges).

A veth has no line rate, so the TX lists never hold a queue there; with a rate the stack
keeps what the link cannot take yet in its own lists, as a NIC queue would, and the order of
those lists (control, ACK, data with priority on; one FIFO with it off) decides who waits.
The checks are about bytes and order, not about how fast this machine is: the rate is an
upper bound any machine meets, and the order is read from a capture."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import pytest

import mtcp_core as m
from mtcp_core.testing.pairnet import CLIENT, SERVER, Peer, close_net, connect, make_net, transfer
from mtcp_core.testing.pcapfile import tcp_frames

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


def _shaped_capture(
    priority: bool, tmp_path: Path, flows: int
) -> tuple[list[tuple[int, int, int, int]], int]:
    """``flows`` bulk echoes through the shaped server while another connection opens and
    exchanges one short message: the server's capture and that connection's port."""
    pcap = tmp_path / f"server-{priority}-{flows}-%u.pcap"
    n = make_net(time_wait_ms=100)
    n.server_stack.close()
    n.server_stack = m.Stack("pair", f"{SERVER}/24", pair=n.link, pair_side=1,
                             time_wait_ms=100, tx_rate_mbps=RATE_MBPS, tx_priority=priority,
                             pcap=str(pcap))  # fmt: skip
    n.server = n.server_stack.context(0)
    peer = Peer(n.server).start()
    try:
        payload = b"b" * ((1 << 20) // flows)  # 1 s of the link, queued while we look
        # one thread drives every client connection: a context has one app thread
        ep = n.client.epoll()
        got: dict[int, bytearray] = {}
        sent: dict[int, int] = {}
        bulks = [connect(n.client, ep) for _ in range(flows)]
        for c in bulks:
            got[c.fd], sent[c.fd] = bytearray(), 0
        second: m.Socket | None = None
        start = time.monotonic()
        while (
            second is None
            or len(got[second.fd]) < 4
            or any(len(got[c.fd]) < len(payload) for c in bulks)
        ):
            assert time.monotonic() < start + 60, "stalled"
            if second is None and time.monotonic() - start > 0.3:
                assert all(len(got[c.fd]) < len(payload) for c in bulks), "bulk ended early"
                second = connect(n.client, ep)
                got[second.fd] = bytearray()
                second.send(b"ping")
            for c in bulks:
                if sent[c.fd] < len(payload):
                    with contextlib.suppress(BlockingIOError):
                        sent[c.fd] += c.send(memoryview(payload)[sent[c.fd] : sent[c.fd] + 65536])
            for sock, ev in ep.poll(0.01):
                while ev & m.EPOLLIN:
                    try:
                        data = sock.recv(65536)
                    except BlockingIOError:
                        break
                    if not data:
                        break
                    got[sock.fd] += data
        assert second is not None and bytes(got[second.fd]) == b"ping"
        assert all(bytes(got[c.fd]) == payload for c in bulks)
        second_port = second.getsockname()[1]
        for c in (*bulks, second):
            c.close()
    finally:
        peer.join()
        close_net(n)
    return tcp_frames(Path(str(pcap).replace("%u", "0"))), second_port


def _bulk_frames_between(
    frames: list[tuple[int, int, int, int]], port: int, first: int, then: int
) -> int:
    """Data frames of the other flows the server sent between the first frame from ``port``
    with flags ``first`` (or payload, when 0) and its first frame to ``port`` after it with
    flags ``then`` (or payload)."""

    def match(f: tuple[int, int, int, int], want: int) -> bool:
        return f[2] & want == want if want else f[3] > 0

    a = next(i for i, f in enumerate(frames) if f[0] == port and match(f, first))
    b = next(i for i, f in enumerate(frames) if i > a and f[1] == port and match(f, then))
    return sum(1 for f in frames[a:b] if f[0] == 80 and f[1] != port and f[3] > 0)


def test_priority_queueing_sends_a_syn_ack_ahead_of_queued_data(tmp_path: Path) -> None:
    """The paper's priority-based packet queueing: with a saturated link, a new connection's
    SYN-ACK leaves ahead of the data the long flows have queued. With one FIFO list (served
    round robin, a turn per connection) it waits for the turn of every flow ahead of it."""
    frames, port = _shaped_capture(True, tmp_path, flows=4)
    with_priority = _bulk_frames_between(frames, port, SYN, SYN | ACK)
    frames, port = _shaped_capture(False, tmp_path, flows=4)
    fifo = _bulk_frames_between(frames, port, SYN, SYN | ACK)
    assert with_priority == 0, with_priority
    assert fifo >= 3, fifo  # at least one frame from (nearly) each of the 4 flows ahead


def test_a_long_flow_does_not_keep_the_data_list_to_itself(tmp_path: Path) -> None:
    """The data list is served round robin across rounds: a short response queued behind
    one long flow whose window reopens every round goes out after that flow's next turn,
    not after the flow runs out of data (~700 frames here)."""
    frames, port = _shaped_capture(True, tmp_path, flows=1)
    waited = _bulk_frames_between(frames, port, 0, 0)
    assert waited <= 4, waited


def test_bad_rate_is_refused() -> None:
    link = m.PairLink(seed=1)
    try:
        with pytest.raises(ValueError, match="tx_rate_mbps"):
            m.Stack("pair", f"{CLIENT}/24", pair=link, pair_side=0, tx_rate_mbps=-1)
    finally:
        link.close()
