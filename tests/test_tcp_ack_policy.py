"""The core's ACK policy and receive window, segment by segment on the stepped clock: the
core on one side of a pair link (``Stack.stepped_context``, no thread), the test playing a
raw TCP peer on the other side (``PairLink.inject``/``take``), so that which frames arrive
in one round, and what the core answers, is exact.

- RFC 9293 3.8.6.3 / RFC 5681 4.2: an ACK for at least every second full-sized segment,
  also when many arrive in one round (no stretch ACKs);
- quick ACKs (Linux's quickack mode) at the start and after reordering: a lone segment is
  ACKed at once instead of after the delayed-ACK timer;
- receive-window auto-tuning: the window starts at 64 KiB and grows with what arrives per
  receiver RTT, up to the ring (``rcvbuf``), with the scale chosen for the ring.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from test_tcp_conformance import (
    ACK,
    PSH,
    SYN,
    Seg,
    build_frame,
    mac_bytes,
    parse_segment,
    tcp_options,
)

import mtcp_core

CORE_IP, PEER_IP = "198.18.0.2", "198.18.0.1"
PEER_MAC = "02:00:00:00:00:01"
PORT = 7
MSS = 1460
FULL = MSS - 12  # payload of a full segment with timestamps
MS = 1_000_000  # ns


@dataclass
class Peer:
    """The raw TCP peer on side 1 of the pair link, driving the core's stepped clock."""

    link: mtcp_core.PairLink
    stack: mtcp_core.Stack
    ctx: mtcp_core.SteppedContext
    listener: mtcp_core.Socket
    sport: int = 40000
    iss: int = field(default_factory=lambda: random.getrandbits(32))
    snd_nxt: int = 0
    rcv_nxt: int = 0
    ts_recent: int = 0
    conn: mtcp_core.Socket | None = None
    wscale: int = 0  # the core's window scale
    got: list[Seg] = field(default_factory=list)
    echo: int | None = None  # TSecr to send instead of the latest TSval seen

    def frame(self, flags: int, payload: bytes = b"", *, seq: int | None = None,
              options: bytes | None = None) -> bytes:  # fmt: skip
        if options is None:
            ecr = self.ts_recent if self.echo is None else self.echo
            options = tcp_options(ts=(self.tsval(), ecr))
        return build_frame(
            mac_bytes(self.stack.mac), mac_bytes(PEER_MAC), PEER_IP, CORE_IP, self.sport, PORT,
            self.snd_nxt if seq is None else seq, self.rcv_nxt if flags & ACK else 0, flags,
            options=options, payload=payload, window=65535,
        )  # fmt: skip

    def tsval(self) -> int:
        return (self.ctx.now_ns // MS) & 0xFFFFFFFF

    def send(self, *frames: bytes) -> None:
        """All frames arrive at the core at the current instant (one round takes them)."""
        for f in frames:
            self.link.inject(1, f, self.ctx.now_ns)

    def take(self) -> list[Seg]:
        """What the core sent that is due now."""
        out = []
        while (f := self.link.take(1, self.ctx.now_ns)) is not None:
            seg = parse_segment(f)
            if seg is None:
                continue
            if seg.ts is not None:
                self.ts_recent = seg.ts[0]
            out.append(seg)
        self.got += out
        return out

    def data(self, n: int, size: int = FULL) -> list[bytes]:
        """``n`` in-order data segments of ``size`` bytes; advances snd_nxt."""
        out = []
        for _ in range(n):
            out.append(self.frame(ACK | PSH, bytes(size)))
            self.snd_nxt = (self.snd_nxt + size) & 0xFFFFFFFF
        return out

    def round(self, *frames: bytes) -> list[Seg]:
        """The frames arrive together; the core runs the round(s) they take; returns what
        it sent."""
        self.send(*frames)
        self.ctx.settle()
        return self.take()

    def read_all(self) -> int:
        """The app reads what the core holds; returns the bytes."""
        assert self.conn is not None
        n = 0
        while True:
            try:
                b = self.conn.recv(1 << 20)
            except BlockingIOError:
                return n
            if not b:
                return n
            n += len(b)


def make_peer(**stack_kw: object) -> Iterator[Peer]:
    link = mtcp_core.PairLink()
    stack = mtcp_core.Stack("pair", f"{CORE_IP}/24", pair=link, pair_side=0, **stack_kw)
    try:
        ctx = stack.stepped_context()
        ls = ctx.socket()
        ls.bind(("0.0.0.0", PORT))
        ls.listen(16)
        p = Peer(link, stack, ctx, ls)
        p.snd_nxt = p.iss
        syn = p.frame(SYN, options=tcp_options(mss=MSS, sack_ok=True, wscale=7, ts=(1, 0)))
        p.snd_nxt = (p.iss + 1) & 0xFFFFFFFF
        (synack,) = p.round(syn)
        assert synack.has(SYN | ACK), synack
        p.wscale = synack.wscale or 0
        p.rcv_nxt = (synack.seq + 1) & 0xFFFFFFFF
        assert p.round(p.frame(ACK)) == []
        (p.conn,) = ls.accept_many()
        yield p
    finally:
        stack.close()
        link.close()


@pytest.fixture
def peer() -> Iterator[Peer]:
    yield from make_peer()


def acks(segs: list[Seg]) -> list[int]:
    return [s.ack for s in segs if s.has(ACK) and not s.payload]


def test_every_second_full_segment_is_acked_also_within_one_round(peer: Peer) -> None:
    """Ten full segments taken in one round: five ACKs, each for two more segments; then
    past the quick-ACK start, the same (delayed ACKs never make a stretch ACK either)."""
    base = peer.snd_nxt
    for _ in range(3):  # the start (quick ACKs), then later in the connection
        start = peer.snd_nxt
        got = acks(peer.round(*peer.data(10)))
        assert [(a - start) // FULL for a in got] == [2, 4, 6, 8, 10], (
            f"ACKs for segment counts {[(a - start) / FULL for a in got]}"
        )
        peer.read_all()
        peer.ctx.advance(50)
        peer.take()
    assert peer.snd_nxt - base == 30 * FULL


def test_quick_acks_at_the_start_and_after_reordering(peer: Peer) -> None:
    """At the start a lone segment is ACKed in its own round; once the quick-ACK budget
    is spent a lone segment waits for the delayed-ACK timer (40 ms); after an out-of-order
    segment the next ones are ACKed at once again."""
    # the start: every lone segment ACKed in its round
    for _ in range(4):
        assert len(acks(peer.round(*peer.data(1)))) == 1
    # spend the quick-ACK budget with pairs (every second segment is ACKed anyway)
    for _ in range(16):
        peer.round(*peer.data(2))
    # now a lone segment is delayed
    assert acks(peer.round(*peer.data(1))) == []
    peer.ctx.advance(45)
    assert acks(peer.take()) == [peer.snd_nxt], "no delayed ACK after 45 ms"
    # reordering: a segment past a hole gets a duplicate ACK at once, the hole's filling
    # an ACK at once, and the next lone segments are quick again
    hole = peer.snd_nxt
    later = peer.frame(ACK | PSH, bytes(FULL), seq=hole + FULL)
    dup = acks(peer.round(later))
    assert dup == [hole]
    peer.snd_nxt = hole
    fill = peer.data(1)
    peer.snd_nxt = (hole + 2 * FULL) & 0xFFFFFFFF
    assert acks(peer.round(*fill)) == [hole + 2 * FULL]
    for _ in range(3):
        assert len(acks(peer.round(*peer.data(1)))) == 1, "not quick after reordering"


def window(seg: Seg, wscale: int) -> int:
    return seg.window << wscale


def test_receive_window_starts_small_and_grows_to_the_ring() -> None:
    """rcvbuf 4 MiB: the window scale fits the ring, the window offered starts at 64 KiB;
    a sender doubling its flight every RTT (10 ms: each flight echoes the timestamp of the
    ACKs that clocked it out) while the app reads everything sees it grow ahead of its
    flight, up to the ring and no further."""
    for p in make_peer(rcvbuf=4 << 20):
        assert p.wscale >= 7  # 4 MiB needs a scale of at least 6; we asked for none less
        first = p.round(*p.data(1))
        assert window(first[-1], p.wscale) <= 64 * 1024
        flight = 8
        seen: list[int] = []
        for _rtt in range(12):
            segs: list[Seg] = []
            p.echo = p.ts_recent  # the ACKs of the last flight clocked this one out
            for i in range(0, flight, 16):  # a flight arrives in bursts of 16 segments
                segs += p.round(*p.data(min(16, flight - i)))
                p.read_all()
                p.ctx.settle()
                segs += p.take()
            win = max(window(s, p.wscale) for s in segs if s.has(ACK))
            seen.append(win)
            p.ctx.advance(10)  # the RTT: the next flight comes after the ACKs went back
            segs += p.take()
            flight = min(2 * flight, (win // FULL) or 1)
        st = p.ctx.stats()
        print(f"\nwindows per RTT (KiB): {[w >> 10 for w in seen]}; grows {st['rcv_space_grows']}")
        assert seen[0] <= 64 * 1024
        assert max(seen) > 1 << 20, "the window never grew past 1 MiB"
        assert max(seen) <= 4 << 20
        assert st["rcv_space_grows"] >= 3
