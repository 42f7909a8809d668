"""The core's ACK policy and receive window, segment by segment on the stepped clock
(``mtcp_core.testing``: the stack on a stepped context, the test as the peer on a pair
link), so that which frames arrive in one round, and what the core answers, is exact.

- RFC 9293 3.8.6.3 / RFC 5681 4.2: an ACK for at least every second full-sized segment,
  also when many arrive in one round (no stretch ACKs);
- quick ACKs (Linux's quickack mode) at the start and after reordering: a lone segment is
  ACKed at once instead of after the delayed-ACK timer;
- receive-window auto-tuning: the window starts at 64 KiB and grows with what arrives per
  receiver RTT, up to the ring (``rcvbuf``), with the scale chosen for the ring.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from mtcp_core.testing import ACK, PSH, PeerConn, Rig, Seg

PORT = 7
FULL = 1460 - 12  # payload of a full segment with timestamps


def data_frames(c: PeerConn, n: int, size: int = FULL) -> list[bytes]:
    """``n`` in-order data segments of ``size`` bytes (advances snd_nxt)."""
    out = []
    for _ in range(n):
        out.append(c.frame(ACK | PSH, bytes(size)))
        c.snd_nxt = (c.snd_nxt + size) & 0xFFFFFFFF
    return out


def arrive(c: PeerConn, frames: list[bytes]) -> list[Seg]:
    """The frames reach the stack at the same instant (one round takes them all), the
    rounds that follow run; returns what the stack sent on the connection."""
    rig = c.rig
    for f in frames:
        rig.link.inject(1, f, rig.now_ns)
    rig.settle()
    return c.pending()


def acks(segs: list[Seg]) -> list[int]:
    return [s.ack for s in segs if s.has(ACK) and not s.payload]


def connect(rig: Rig, **syn_kw: object) -> PeerConn:
    rig.app.serve(PORT, "sink")
    c = rig.conn(PORT)
    c.handshake(**syn_kw)
    assert c.pending() == []
    return c


@pytest.fixture
def rig() -> Iterator[Rig]:
    with Rig() as r:
        yield r


def test_every_second_full_segment_is_acked_also_within_one_round(rig: Rig) -> None:
    """Ten full segments taken in one round: five ACKs, each for two more segments; the
    same at the start (quick ACKs) and later (delayed ACKs never make a stretch ACK)."""
    c = connect(rig)
    for _ in range(3):
        start = c.snd_nxt
        got = acks(arrive(c, data_frames(c, 10)))
        assert [(a - start) // FULL for a in got] == [2, 4, 6, 8, 10], (
            f"ACKs for segment counts {[(a - start) / FULL for a in got]}"
        )
        rig.advance(50)
        assert c.pending() == []


def test_quick_acks_at_the_start_and_after_reordering(rig: Rig) -> None:
    """At the start a lone segment is ACKed in its own round; once the quick-ACK budget is
    spent a lone segment waits for the delayed-ACK timer (40 ms); after an out-of-order
    segment the next ones are ACKed at once again."""
    c = connect(rig)
    for _ in range(4):  # the start: every lone segment ACKed in its round
        assert len(acks(arrive(c, data_frames(c, 1)))) == 1
    for _ in range(16):  # spend the quick-ACK budget (every second segment is ACKed anyway)
        arrive(c, data_frames(c, 2))
    assert acks(arrive(c, data_frames(c, 1))) == []  # now a lone segment is delayed
    rig.advance(39)
    assert c.pending() == []
    rig.advance(1)
    assert acks(c.pending()) == [c.snd_nxt], "no delayed ACK at 40 ms"
    # reordering: a segment past a hole gets a duplicate ACK at once, the hole's filling an
    # ACK at once, and the next lone segments are quick again
    hole = c.snd_nxt
    assert acks(arrive(c, [c.frame(ACK | PSH, bytes(FULL), seq=hole + FULL)])) == [hole]
    fill = data_frames(c, 1)
    c.snd_nxt = (hole + 2 * FULL) & 0xFFFFFFFF
    assert acks(arrive(c, fill)) == [c.snd_nxt]
    for _ in range(3):
        assert len(acks(arrive(c, data_frames(c, 1)))) == 1, "not quick after reordering"


def window(seg: Seg, wscale: int) -> int:
    return seg.window << wscale


def test_receive_window_starts_small_and_grows_to_the_ring() -> None:
    """rcvbuf 4 MiB: the window scale fits the ring, the window offered starts at 64 KiB;
    a sender doubling its flight every RTT (10 ms: each flight echoes the timestamp of the
    ACKs that clocked it out) while the app reads everything sees it grow ahead of its
    flight, up to the ring and no further."""
    with Rig(rcvbuf=4 << 20) as rig:
        c = connect(rig, wscale=7)
        assert c.synack is not None
        wscale = c.synack.wscale or 0
        assert wscale >= 6  # 4 MiB needs a scale of 6 at least
        first = arrive(c, data_frames(c, 1))
        assert window(first[-1], wscale) <= 64 * 1024
        flight = 8
        seen: list[int] = []
        for _rtt in range(12):
            segs: list[Seg] = []
            echo = c.ts_recent  # the ACKs of the last flight clocked this one out
            for i in range(0, flight, 16):  # a flight arrives in bursts of 16 segments
                burst = []
                for _ in range(min(16, flight - i)):
                    burst.append(c.frame(ACK | PSH, bytes(FULL), ts=(c.tsval(), echo)))
                    c.snd_nxt = (c.snd_nxt + FULL) & 0xFFFFFFFF
                segs += arrive(c, burst)
            seen.append(max(window(s, wscale) for s in segs if s.has(ACK)))
            rig.advance(10)  # the RTT: the next flight comes after the ACKs went back
            segs += c.pending()
            flight = min(2 * flight, (seen[-1] // FULL) or 1)
        st = rig.stats()
        print(f"\nwindows per RTT (KiB): {[w >> 10 for w in seen]}; grows {st['rcv_space_grows']}")
        assert seen[0] <= 64 * 1024
        assert max(seen) > 1 << 20, "the window never grew past 1 MiB"
        assert max(seen) <= 4 << 20
        assert st["rcv_space_grows"] >= 3
