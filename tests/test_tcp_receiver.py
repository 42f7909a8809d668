"""The core's TCP as a receiver, segment by segment on the stepped clock
(``mtcp_core.testing``: the stack on a stepped context, the test as the peer on a pair
link): SACK blocks in recency order (RFC 2018 4), and IPv4 reassembly end to end (a TCP
segment in fragments, an overlap, a timeout).
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Iterator

import pytest

from mtcp_core.testing import ACK, PSH, PeerConn, Rig, Seg
from mtcp_core.testing.netns import inet_checksum
from mtcp_core.testing.wire import MF, ip_header

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


# ---------------------------------------------------------------- IPv4 reassembly

FRAG_TIMEOUT_MS = 400


@pytest.fixture
def frig() -> Iterator[Rig]:
    with Rig(frag_timeout_ms=FRAG_TIMEOUT_MS) as r:
        r.app.serve(ECHO, "echo")
        yield r


def data_fragments(c: PeerConn, data: bytes, sizes: list[int], ident: int) -> list[bytes]:
    """The frames of one TCP segment carrying ``data`` at the connection's next sequence
    number, cut into IPv4 fragments of ``sizes`` bytes of the datagram's payload (the TCP
    header and data)."""
    frame = c.frame(ACK | PSH)  # the headers, with the connection's numbers and options
    eth, ip = frame[:14], frame[14:]
    src, dst = struct.unpack("!II", ip[12:20])
    tcp = bytearray(ip[20:] + data)
    tcp[16:18] = b"\0\0"
    pseudo = ip[12:20] + struct.pack("!BBH", 0, 6, len(tcp))
    tcp[16:18] = struct.pack("!H", inet_checksum(pseudo + bytes(tcp)))
    out, off = [], 0
    for n in sizes:
        n = min(n, len(tcp) - off)
        more = off + n < len(tcp)
        hdr = ip_header(ident, (MF if more else 0) | off // 8, n, src=src, dst=dst)
        out.append(eth + hdr + bytes(tcp[off : off + n]))
        off += n
    assert off == len(tcp)
    return out


def inject_all(rig: Rig, frames: list[bytes]) -> None:
    for f in frames:
        rig.link.inject(1, f, rig.now_ns)
    rig.settle()


def test_tcp_segment_in_three_fragments_is_delivered(frig: Rig) -> None:
    """RFC 1122 3.3.2: one 2400-byte segment in three IPv4 fragments, the last first: the
    core reassembles it and echoes every byte; the counters say so."""
    c = frig.conn(ECHO)
    c.handshake()
    before = frig.stats()
    data = os.urandom(2400)
    frames = data_fragments(c, data, [1000, 1000, 1000], ident=0x4242)
    assert len(frames) == 3
    inject_all(frig, [frames[2], frames[0], frames[1]])
    c.snd_nxt = (c.snd_nxt + len(data)) & 0xFFFFFFFF
    assert c.read(len(data)) == data
    st = frig.stats()
    assert st["ip_reassembled"] - before["ip_reassembled"] == 1
    assert st["frag_pending"] == 0
    assert st["drop_ip_fragment"] == before["drop_ip_fragment"]


def test_overlapping_fragments_drop_the_datagram(frig: Rig) -> None:
    """A fragment that rewrites bytes another one brought drops the whole datagram
    (RFC 5722's rule), counted; the connection goes on with the data sent again whole."""
    c = frig.conn(ECHO)
    c.handshake()
    before = frig.stats()
    data = os.urandom(1000)
    good = data_fragments(c, data, [800, 800], ident=7)  # 1032 bytes: 800 + 232
    src, dst = (struct.unpack("!I", socket.inet_aton(a))[0] for a in (c.src, frig.ip))
    # bytes 792..1031 again, with other contents: overlaps the first fragment
    evil = good[1][:14] + ip_header(7, MF | 792 // 8, 240, src=src, dst=dst) + b"\xee" * 240
    inject_all(frig, [good[0], evil, good[1]])
    st = frig.stats()
    assert st["drop_frag_overlap"] - before["drop_frag_overlap"] == 1
    assert st["ip_reassembled"] == before["ip_reassembled"]
    assert [s for s in c.pending() if s.payload] == []  # nothing was delivered
    c.echo(data)  # the same bytes, unfragmented: the connection is fine


def test_fragments_that_never_complete_time_out(frig: Rig) -> None:
    """Two of three fragments: the datagram waits, then the timer (frag_timeout_ms)
    drops it and frees its slot, on time."""
    c = frig.conn(ECHO)
    c.handshake()
    before = frig.stats()
    frames = data_fragments(c, os.urandom(2400), [1000, 1000, 1000], ident=9)
    inject_all(frig, [frames[0], frames[2]])
    assert frig.stats()["frag_pending"] == 1
    frig.advance(FRAG_TIMEOUT_MS - 1)
    assert frig.stats()["frag_pending"] == 1
    frig.advance(1)
    st = frig.stats()
    assert st["drop_frag_timeout"] - before["drop_frag_timeout"] == 1
    assert st["frag_pending"] == 0 and st["ip_reassembled"] == before["ip_reassembled"]
    c.echo(b"still here")
