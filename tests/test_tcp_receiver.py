"""The core's TCP as a receiver, segment by segment on the stepped clock
(``mtcp_core.testing``: the stack on a stepped context, the test as the peer on a pair
link): SACK blocks in recency order (RFC 2018 4).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from mtcp_core.testing import ACK, PeerConn, Rig, Seg

ECHO = 7


@pytest.fixture
def rig() -> Iterator[Rig]:
    with Rig() as r:
        r.app.serve(ECHO, "echo")
        yield r


def next_ack(c: PeerConn) -> Seg:
    seg = c.recv()
    assert seg is not None, "no ACK"
    assert seg.has(ACK)
    return seg


def test_sack_blocks_in_recency_order(rig: Rig) -> None:
    """RFC 2018 4: the first block holds the segment that just arrived, the next ones the
    blocks of the previous ACKs, most recent first, so that each block is repeated in at
    least three successive ACKs. Six islands with timestamps on: three blocks fit."""
    c = rig.conn(ECHO)
    c.handshake()
    base = c.snd_nxt
    size = 100
    islands = [(base + (2 * k + 1) * size, base + (2 * k + 2) * size) for k in range(6)]
    reported: list[list[tuple[int, int]]] = []
    for k, (start, _end) in enumerate(islands):
        c.send(ACK, b"x" * size, seq=start)  # past the hole at base
        seg = next_ack(c)
        assert seg.ack == base, f"ACK {seg.ack} moved past the hole at {base}"
        reported.append(seg.sack)
        want = [islands[j] for j in range(k, max(k - 3, -1), -1)]
        assert seg.sack == want, f"after island {k}: blocks {seg.sack}, want {want}"
    # each island was reported in three successive ACKs (the last two in fewer: the run ends)
    for k, isl in enumerate(islands[:4]):
        assert all(isl in reported[j] for j in range(k, k + 3)), (k, reported)
    # an old island that grows (here into the next one) is the most recent again, then the
    # previous order follows
    start, end = islands[1]
    c.send(ACK, b"y" * size, seq=end)
    seg = next_ack(c)
    assert seg.sack == [(start, islands[2][1]), islands[5], islands[4]], seg.sack
    # fill the holes in order: the echo comes back whole, the islands' bytes included
    data = bytearray(b"h" * (12 * size))
    for k in range(6):
        data[(2 * k + 1) * size : (2 * k + 2) * size] = b"x" * size
    data[4 * size : 5 * size] = b"y" * size
    for k in range(6):
        if k != 2:  # island 1 grew into this hole
            c.send(ACK, bytes(data[2 * k * size : (2 * k + 1) * size]), seq=base + 2 * k * size)
    c.snd_nxt = base + 12 * size
    got = c.read(12 * size)
    assert got == bytes(data)
