"""Segment scripts: drive one stack frame by frame on a clock of the test's own.

In the spirit of smoltcp's ``send!``/``recv!`` socket tests and lwIP's test netif: the
stack under test runs on a ``SteppedContext`` (no mTCP thread) on side 0 of a
``PairLink``; the test plays the peer on side 1, building frames with the core's own wire
code (``include/mtcp_wire_cdef.h``), handing them in at a time it chooses and reading back
exactly the frames the stack sent, each stamped with the round's time. No threads, no
sleeps, no root; with ``secret_seed`` fixed a script repeats to the bit.

    rig = Rig(time_wait_ms=3000)                     # stack 198.18.0.2, peer 198.18.0.1
    rig.app.serve(7, "echo")                          # the app: an echo responder
    c = rig.conn(7)                                   # the peer's side of a connection
    c.handshake()                                     # SYN -> SYN-ACK -> ACK
    c.send_data(b"hi\\n")
    seg = c.expect(flags=ACK, seq=c.rcv_nxt, payload=b"hi\\n")
    rig.advance(200)                                  # 200 ms on, every timer on the way
    c.expect_none()

A ``Rig`` answers the stack's ARP requests for the peer's addresses by itself. A ``Duo``
puts two stacks on one stepped clock over a link with seeded faults. Everything
here is for tests: it is importable from the installed package so that tests and
benchmarks share it.
"""

from __future__ import annotations

import errno
import ipaddress
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Self

import mtcp_core as m
from mtcp_core._native import ffi, lib

__all__ = [
    "ACK",
    "FIN",
    "PSH",
    "RST",
    "SYN",
    "App",
    "Duo",
    "PeerConn",
    "Rig",
    "Seg",
    "arp_frame",
    "flag_names",
    "icmp_echo_frame",
    "parse_frame",
    "pools_back",
    "stack_client",
    "tcp_frame",
]

# TCP flags, from the wire code
FIN, SYN, RST, PSH, ACK = (lib.WIRE_TCP_FIN, lib.WIRE_TCP_SYN, lib.WIRE_TCP_RST,
                           lib.WIRE_TCP_PSH, lib.WIRE_TCP_ACK)  # fmt: skip
_CONTROL = FIN | SYN | RST | ACK  # what ``expect(flags=...)`` compares (PSH is the sender's)
_FLAG_LETTERS = ((FIN, "F"), (SYN, "S"), (RST, "R"), (PSH, "P"), (ACK, "A"))
_MAX_FRAME = 2048
_ETH = lib.WIRE_ETH_HLEN
_IP = lib.WIRE_IPV4_HLEN

MS = 1_000_000  # ns


def flag_names(flags: int) -> str:
    return "".join(n for bit, n in _FLAG_LETTERS if flags & bit) or "-"


def _mac(mac: str | bytes) -> bytes:
    return mac if isinstance(mac, bytes) else bytes(int(x, 16) for x in mac.split(":"))


def _ip(addr: str | int) -> int:
    return addr if isinstance(addr, int) else int(ipaddress.IPv4Address(addr))


# ---------------------------------------------------------------- frames


def tcp_frame(
    src_mac: str | bytes,
    dst_mac: str | bytes,
    src: str | int,
    dst: str | int,
    sport: int,
    dport: int,
    seq: int,
    ack: int,
    flags: int,
    *,
    window: int = 65535,
    mss: int | None = None,
    wscale: int | None = None,
    sack_ok: bool = False,
    ts: tuple[int, int] | None = None,
    sack: Iterable[tuple[int, int]] = (),
    payload: bytes = b"",
    bad_checksum: bool = False,
    ip_id: int = 0,
) -> bytes:
    """One Ethernet frame with an IPv4/TCP segment, emitted by the core's wire code with
    full checksums (a TCP checksum off by one when ``bad_checksum``)."""
    s, d = _ip(src), _ip(dst)
    o = ffi.new("struct wire_tcp_opts *")
    o.has_mss = mss is not None
    o.mss = mss or 0
    o.has_wscale = wscale is not None
    o.wscale = wscale or 0
    o.sack_ok = sack_ok
    o.has_ts = ts is not None
    if ts is not None:
        o.ts_val, o.ts_ecr = ts[0] & 0xFFFFFFFF, ts[1] & 0xFFFFFFFF
    blocks = list(sack)
    if len(blocks) > lib.WIRE_TCP_MAX_SACK:
        raise ValueError(f"at most {lib.WIRE_TCP_MAX_SACK} SACK blocks")
    o.nsack = len(blocks)
    for i, (left, right) in enumerate(blocks):
        o.sack[i].left, o.sack[i].right = left & 0xFFFFFFFF, right & 0xFFFFFFFF
    buf = ffi.new("uint8_t[]", _MAX_FRAME)
    tcp = buf + _ETH + _IP
    hlen = lib.wire_tcp_emit_hdr(
        tcp, sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, flags, window, o
    )
    if _ETH + _IP + hlen + len(payload) > _MAX_FRAME:
        raise ValueError("frame larger than the link's 2048 bytes")
    ffi.memmove(tcp + hlen, payload, len(payload))
    seg_len = hlen + len(payload)
    lib.wire_tcp_fill_csum(tcp, seg_len, s, d)
    if bad_checksum:
        tcp[16] ^= 0x01
    lib.wire_ipv4_emit(buf + _ETH, s, d, lib.WIRE_IPPROTO_TCP, seg_len, ip_id & 0xFFFF, 64)
    lib.wire_eth_emit(buf, _mac(dst_mac), _mac(src_mac), lib.WIRE_ETHERTYPE_IPV4)
    return ffi.unpack(ffi.cast("char *", buf), _ETH + _IP + seg_len)


def arp_frame(
    op: int,
    sha: str | bytes,
    spa: str | int,
    tha: str | bytes,
    tpa: str | int,
    dst_mac: str | bytes = b"\xff" * 6,
) -> bytes:
    """An ARP request (op 1) or reply (op 2), padded to the Ethernet minimum."""
    buf = ffi.new("uint8_t[]", 64)
    a = ffi.new("struct wire_arp *")
    a.op = op
    a.sha = list(_mac(sha))
    a.spa = _ip(spa)
    a.tha = list(_mac(tha))
    a.tpa = _ip(tpa)
    n = lib.wire_eth_emit(buf, _mac(dst_mac), _mac(sha), lib.WIRE_ETHERTYPE_ARP)
    n += lib.wire_arp_emit(buf + n, a)
    return ffi.unpack(ffi.cast("char *", buf), max(n, 60))


def icmp_echo_frame(
    src_mac: str | bytes, dst_mac: str | bytes, src: str | int, dst: str | int,
    ident: int = 1, seq: int = 1, data: bytes = b"ping",
) -> bytes:  # fmt: skip
    """An ICMP echo request (RFC 792) in an IPv4 frame."""
    icmp = bytearray(b"\x08\x00\x00\x00" + ident.to_bytes(2, "big") + seq.to_bytes(2, "big"))
    icmp += data
    icmp[2:4] = lib.wire_csum_fold(lib.wire_csum_add(0, bytes(icmp), len(icmp))).to_bytes(2, "big")
    buf = ffi.new("uint8_t[]", _ETH + _IP + len(icmp))
    lib.wire_eth_emit(buf, _mac(dst_mac), _mac(src_mac), lib.WIRE_ETHERTYPE_IPV4)
    lib.wire_ipv4_emit(buf + _ETH, _ip(src), _ip(dst), lib.WIRE_IPPROTO_ICMP, len(icmp), 0, 64)
    return ffi.unpack(ffi.cast("char *", buf), _ETH + _IP) + bytes(icmp)


@dataclass
class Seg:
    """A TCP segment the stack sent; ``at_ns``: when it reached the peer (the time of the
    round that sent it, plus the link's delay if it has one)."""

    src: str
    dst: str
    sport: int
    dport: int
    seq: int
    ack: int
    flags: int
    window: int
    payload: bytes
    mss: int | None = None
    wscale: int | None = None
    sack_ok: bool = False
    ts: tuple[int, int] | None = None
    sack: list[tuple[int, int]] = field(default_factory=list)
    at_ns: int = 0

    def has(self, flags: int) -> bool:
        return self.flags & flags == flags

    @property
    def at_ms(self) -> float:
        return self.at_ns / MS

    @property
    def seq_end(self) -> int:
        """SEG.SEQ + SEG.LEN (SYN and FIN count one)."""
        n = len(self.payload) + (1 if self.flags & SYN else 0) + (1 if self.flags & FIN else 0)
        return (self.seq + n) & 0xFFFFFFFF

    def __repr__(self) -> str:
        return (f"<{flag_names(self.flags)} {self.sport}->{self.dport} seq={self.seq} "
                f"ack={self.ack} win={self.window} len={len(self.payload)} ts={self.ts} "
                f"at={self.at_ms:.3f}ms>")  # fmt: skip


@dataclass
class Frame:
    """What ``parse_frame`` read: one of ``arp``/``tcp``/``icmp_type`` is set."""

    dst_mac: bytes
    src_mac: bytes
    tcp: Seg | None = None
    arp: tuple[int, bytes, int, bytes, int] | None = None  # op, sha, spa, tha, tpa
    icmp_type: int | None = None
    drop: str | None = None  # why the wire code refused it (a drop_* counter's name)


def parse_frame(frame: bytes, at_ns: int = 0) -> Frame:
    """Parses a frame with the core's own parser (``wire_parse_frame``), checksums
    verified."""
    info = ffi.new("struct wire_frame_info *")
    r = lib.wire_parse_frame(frame, len(frame), 0, info)
    out = Frame(bytes(info.eth.dst), bytes(info.eth.src))
    if r != 0:
        out.drop = ffi.string(lib.mtcp_stats_name(r)).decode()
        return out
    if info.has_arp:
        a = info.arp
        out.arp = (a.op, bytes(a.sha), a.spa, bytes(a.tha), a.tpa)
    elif info.has_icmp:
        out.icmp_type = info.icmp.type
    elif info.has_tcp:
        t, o = info.tcp, info.tcp.opt
        out.tcp = Seg(
            str(ipaddress.IPv4Address(info.ip.src)),
            str(ipaddress.IPv4Address(info.ip.dst)),
            t.sport, t.dport, t.seq, t.ack, t.flags, t.win,
            ffi.unpack(ffi.cast("char *", t.payload), t.payload_len) if t.payload_len else b"",
            mss=o.mss if o.has_mss else None,
            wscale=o.wscale if o.has_wscale else None,
            sack_ok=bool(o.sack_ok),
            ts=(o.ts_val, o.ts_ecr) if o.has_ts else None,
            sack=[(o.sack[i].left, o.sack[i].right) for i in range(o.nsack)],
            at_ns=at_ns,
        )  # fmt: skip
    return out


# ---------------------------------------------------------------- the app


@dataclass
class AppReport:
    accepted: int = 0
    resets: int = 0  # connections whose recv raised ECONNRESET
    bytes_in: int = 0


class App:
    """The stack's application, run by the rig after every round (the app thread's turn):
    responders on listening ports. ``echo``: every byte back; ``once``: the first line back,
    then the stack closes first; ``sink``: reads and keeps what arrives."""

    def __init__(self, ctx: m.SteppedContext) -> None:
        self.ctx = ctx
        self.report = AppReport()
        self._listeners: dict[int, tuple[m.Socket, str]] = {}
        self._conns: list[tuple[m.Socket, str, bytearray, bytearray]] = []
        self.received: dict[int, bytearray] = {}  # per accepted socket fd (sink)
        self.accepted: list[m.Socket] = []

    def serve(self, port: int, mode: str = "echo", backlog: int = 128) -> m.Socket:
        if mode not in ("echo", "once", "sink"):
            raise ValueError(f"mode: echo, once or sink, not {mode!r}")
        ls = self.ctx.socket()
        ls.bind(("0.0.0.0", port))
        ls.listen(backlog)
        self._listeners[port] = (ls, mode)
        return ls

    def run(self) -> bool:
        """One turn; True when it queued anything for the stack (a round must take it)."""
        acted = False
        for ls, mode in self._listeners.values():
            for s in ls.accept_many():
                self.report.accepted += 1
                self.accepted.append(s)
                self.received[s.fd] = bytearray()
                self._conns.append((s, mode, bytearray(), bytearray()))
        keep = []
        for s, mode, inbuf, outbuf in self._conns:
            done = False
            while not done:
                try:
                    data = s.recv(65536)
                except BlockingIOError:
                    break
                except ConnectionResetError:
                    self.report.resets += 1
                    done = True
                    break
                except OSError:
                    done = True
                    break
                if not data:  # the peer closed: close too
                    done = True
                    break
                self.report.bytes_in += len(data)
                self.received[s.fd] += data
                if mode == "echo":
                    outbuf += data
                elif mode == "once":
                    inbuf += data
            if mode == "once" and b"\n" in inbuf and not done:
                line = bytes(inbuf[: inbuf.index(b"\n") + 1])
                del inbuf[:]
                if s.send(line) != len(line):
                    raise AssertionError("once: the line did not fit the send buffer")
                s.close()
                acted = True
                continue
            if outbuf and not done:
                try:
                    n = s.send(bytes(outbuf))
                    del outbuf[:n]
                    acted = acted or n > 0
                except BlockingIOError:
                    pass
                except OSError:
                    done = True
            if done:
                if not s.closed:
                    s.close()
                    acted = True
                continue
            keep.append((s, mode, inbuf, outbuf))
        self._conns = keep
        return acted


# ---------------------------------------------------------------- the rig


class _Closing:
    """``with`` closes it."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Rig(_Closing):
    """One stack on a stepped context, side 0 of a pair link; the test is side 1.

    The stack has ``ip`` and, as its gateway, the peer's ``peer_ip``; a peer may speak from
    any address (off the stack's subnet through the gateway). Every frame the stack sends
    is taken after each round: ARP requests for the peer's addresses are answered at once,
    TCP segments are kept in ``inbox`` (``PeerConn.recv`` takes its own), anything else in
    ``other``. ``app`` runs after every round too."""

    PEER_MAC = "02:00:00:00:00:fe"

    def __init__(
        self,
        ip: str = "198.18.0.2/24",
        peer_ip: str = "198.18.0.1",
        *,
        faults: m.Faults | None = None,
        start_ns: int = 1_000 * MS,
        secret_seed: int = 1,
        answer_arp: bool = True,
        **stack_kw: Any,
    ) -> None:
        self.link = m.PairLink(faults or m.Faults())
        stack_kw.setdefault("gateway", peer_ip)
        self.stack = m.Stack(
            "pair", ip, pair=self.link, pair_side=0, secret_seed=secret_seed, **stack_kw
        )
        try:
            self.ctx = self.stack.stepped_context(0, start_ns)
        except BaseException:
            self.stack.close()
            self.link.close()
            raise
        self.ip = str(ipaddress.IPv4Interface(ip).ip)
        self.peer_ip = peer_ip
        self.mac = self.stack.mac
        self.answer_arp = answer_arp
        self.inbox: list[Seg] = []
        self.other: list[Frame] = []
        self.arp_requests = 0
        self.app = App(self.ctx)
        self._ports = iter(range(40000, 60000))
        self._rng = random.Random(secret_seed)

    # -- time

    @property
    def now_ns(self) -> int:
        return self.ctx.now_ns

    @property
    def now_ms(self) -> float:
        return self.ctx.now_ns / MS

    def settle(self) -> None:
        """Rounds at the current time until the stack, the app and the peer's ARP answers
        are all done."""
        self.ctx.settle(self._turn)

    def advance(self, ms: float = 0.0, *, ns: int = 0) -> None:
        """Time moves ``ms`` on; every round the stack asks for runs at its time."""
        self.ctx.advance(ms, ns=ns, on_round=self._turn)

    def _turn(self) -> bool:
        answered = self.pump()
        return self.app.run() or answered

    # -- frames

    def inject(self, frame: bytes) -> None:
        """Hands ``frame`` to the link now and runs the rounds that follow."""
        self.link.inject(1, frame, self.ctx.now_ns)
        self.settle()

    def pump(self) -> bool:
        """Takes every frame the stack sent that is due; True when it answered one."""
        answered = False
        while (f := self.link.take(1, self.ctx.now_ns)) is not None:
            p = parse_frame(f, self.ctx.now_ns)
            if p.tcp is not None:
                self.inbox.append(p.tcp)
            elif p.arp is not None and p.arp[0] == lib.WIRE_ARP_REQUEST:
                self.arp_requests += 1
                if self.answer_arp:
                    op, sha, spa, _tha, tpa = p.arp
                    reply = arp_frame(lib.WIRE_ARP_REPLY, self.PEER_MAC, tpa, sha, spa, sha)
                    self.link.inject(1, reply, self.ctx.now_ns)
                    answered = True
            else:
                self.other.append(p)
        return answered

    def tcp(self, src: str, sport: int, dport: int, seq: int, ack: int, flags: int,
            **kw: Any) -> bytes:  # fmt: skip
        """A frame from the peer's side to the stack."""
        return tcp_frame(self.PEER_MAC, self.mac, src, self.ip, sport, dport, seq, ack,
                         flags, **kw)  # fmt: skip

    def segments(self) -> list[Seg]:
        """Every TCP segment received and not taken yet (taken now)."""
        self.settle()
        out, self.inbox = self.inbox, []
        return out

    # -- connections

    def conn(self, dport: int, *, src: str | None = None, sport: int | None = None,
             **kw: Any) -> PeerConn:  # fmt: skip
        """The peer's side of a new connection to ``dport`` (from the peer's address, or
        ``src``), spoken one segment at a time by the test."""
        return PeerConn(self, src or self.peer_ip, sport or next(self._ports), dport,
                        iss=self._rng.getrandbits(32), **kw)  # fmt: skip

    def stats(self) -> dict[str, int]:
        return self.ctx.stats()

    def close(self) -> None:
        self.stack.close()
        self.link.close()


class PeerConn:
    """A TCP connection's peer side, spoken by the test one segment at a time. It keeps
    both sides' numbers and timestamps (TSval: the stepped clock in ms plus an offset)."""

    def __init__(self, rig: Rig, src: str, sport: int, dport: int, *, iss: int = 1000,
                 timestamps: bool = True, window: int = 65535,
                 mss: int = 1460) -> None:  # fmt: skip
        self.rig = rig
        self.src = src
        self.sport = sport
        self.dport = dport
        self.timestamps = timestamps
        self.window = window
        self.mss = mss
        self.iss = iss & 0xFFFFFFFF
        self.snd_nxt = self.iss
        self.rcv_nxt = 0
        self.ts_base = (iss * 7919) & 0x7FFFFFFF
        self.ts_recent = 0  # the stack's latest TSval
        self.received = bytearray()
        self.fin_received = False
        self.synack: Seg | None = None

    def tsval(self) -> int:
        return (self.ts_base + self.rig.ctx.now_ns // MS) & 0xFFFFFFFF

    def frame(self, flags: int, payload: bytes = b"", *, seq: int | None = None,
              ack: int | None = None, tsval: int | None = None,
              ts: bool | tuple[int, int] | None = None, **kw: Any) -> bytes:  # fmt: skip
        """One segment from the peer (default numbers: ours and the stack's next). ``ts``:
        None = timestamps as negotiated, False = none, True = ours, or (TSval, TSecr)."""
        if ts is None:
            ts = self.timestamps
        if ts is True:
            ts = (self.tsval() if tsval is None else tsval, self.ts_recent)
        if ts:
            kw["ts"] = ts
        kw.setdefault("window", self.window)
        return self.rig.tcp(
            self.src, self.sport, self.dport,
            self.snd_nxt if seq is None else seq,
            (self.rcv_nxt if ack is None else ack) if flags & ACK else 0,
            flags, payload=payload, **kw,
        )  # fmt: skip

    def send(self, flags: int, payload: bytes = b"", **kw: Any) -> None:
        """Hands one segment to the stack now (does not advance our numbers) and runs the
        rounds that follow."""
        self.rig.inject(self.frame(flags, payload, **kw))

    def syn(self, **kw: Any) -> None:
        opts: dict[str, Any] = {"mss": self.mss, "sack_ok": True}
        opts["ts"] = (self.tsval(), 0) if self.timestamps else False
        opts.update(kw)
        self.send(SYN, seq=self.iss, **opts)
        self.snd_nxt = (self.iss + 1) & 0xFFFFFFFF

    def handshake(self, **syn_kw: Any) -> Seg:
        """SYN, the stack's SYN-ACK (checked), our ACK: established."""
        self.syn(**syn_kw)
        seg = self.expect(flags=SYN | ACK, ack=self.snd_nxt)
        self.rcv_nxt = (seg.seq + 1) & 0xFFFFFFFF
        self.synack = seg
        self.timestamps = self.timestamps and seg.ts is not None  # RFC 7323 3.2
        self.send(ACK)
        return seg

    def send_data(self, data: bytes, **kw: Any) -> None:
        self.send(ACK | PSH, data, **kw)
        self.snd_nxt = (self.snd_nxt + len(data)) & 0xFFFFFFFF

    def send_fin(self) -> None:
        self.send(FIN | ACK)
        self.snd_nxt = (self.snd_nxt + 1) & 0xFFFFFFFF

    # -- what the stack sent

    def _mine(self, seg: Seg) -> bool:
        return seg.dst == self.src and seg.dport == self.sport and seg.sport == self.dport

    def recv(self) -> Seg | None:
        """The next segment the stack sent on this connection by now, or None."""
        self.rig.settle()
        for i, seg in enumerate(self.rig.inbox):
            if self._mine(seg):
                del self.rig.inbox[i]
                if seg.ts is not None:
                    self.ts_recent = seg.ts[0]
                return seg
        return None

    def pending(self) -> list[Seg]:
        """Every segment of this connection sent by now (taken)."""
        out = []
        while (seg := self.recv()) is not None:
            out.append(seg)
        return out

    def expect(self, *, flags: int | None = None, seq: int | None = None,
               ack: int | None = None, payload: bytes | None = None,
               window: int | None = None, at_ms: float | None = None) -> Seg:  # fmt: skip
        """The next segment of this connection, which must be there now and match: flags
        compare FIN, SYN, RST and ACK exactly (PSH is the sender's choice); the others
        exactly; ``at_ms``: it reached the peer at that time of the clock."""
        seg = self.recv()
        want = {"flags": flags, "seq": seq, "ack": ack, "payload": payload, "window": window,
                "at_ms": at_ms}  # fmt: skip
        desc = ", ".join(f"{k}={flag_names(v) if k == 'flags' else v!r}"
                         for k, v in want.items() if v is not None)  # fmt: skip
        assert seg is not None, f"no segment from the stack at {self.rig.now_ms} ms; want {desc}"
        bad = []
        if flags is not None and seg.flags & _CONTROL != flags & _CONTROL:
            bad.append("flags")
        if seq is not None and seg.seq != seq & 0xFFFFFFFF:
            bad.append("seq")
        if ack is not None and seg.ack != ack & 0xFFFFFFFF:
            bad.append("ack")
        if payload is not None and seg.payload != payload:
            bad.append("payload")
        if window is not None and seg.window != window:
            bad.append("window")
        if at_ms is not None and seg.at_ns != round(at_ms * MS):
            bad.append("at_ms")
        assert not bad, f"{seg}: {', '.join(bad)} differ; want {desc}"
        return seg

    def expect_none(self) -> None:
        """Nothing more from the stack on this connection by now."""
        extra = self.pending()
        assert extra == [], f"the stack sent {extra}"

    def take(self, seg: Seg, ack: bool = True) -> bool:
        """Accounts an in-order segment of the stack (data, FIN), and ACKs it unless told
        not to. True when it carried something new."""
        new = False
        if seg.payload and seg.seq == self.rcv_nxt:
            self.received += seg.payload
            self.rcv_nxt = (self.rcv_nxt + len(seg.payload)) & 0xFFFFFFFF
            new = True
        if seg.has(FIN) and (seg.seq + len(seg.payload)) & 0xFFFFFFFF == self.rcv_nxt:
            self.rcv_nxt = (self.rcv_nxt + 1) & 0xFFFFFFFF
            self.fin_received = True
            new = True
        if ack and (new or seg.payload):
            self.send(ACK)
        return new

    def read(self, n: int) -> bytes:
        """``n`` more bytes of data that the stack sent by now, in order (ACKed)."""
        start = len(self.received)
        while len(self.received) - start < n:
            seg = self.recv()
            if seg is None:
                raise AssertionError(
                    f"got {len(self.received) - start} of {n} bytes by {self.rig.now_ms} ms: "
                    f"{bytes(self.received[start:])!r}"
                )
            assert not seg.has(RST), f"the stack reset the connection: {seg}"
            self.take(seg)
        return bytes(self.received[start:])

    def echo(self, data: bytes) -> None:
        """Sends ``data`` and checks that exactly it comes back at once."""
        self.send_data(data)
        got = self.read(len(data))
        assert got == data, f"echo {got!r} != {data!r}"

    def wait_for(self, pred: Callable[[Seg], bool]) -> Seg:
        """The first segment sent by now that matches; the ones before it are taken."""
        seen = []
        while (seg := self.recv()) is not None:
            if pred(seg):
                return seg
            seen.append(seg)
            self.take(seg)
        raise AssertionError(f"no matching segment by {self.rig.now_ms} ms; saw {seen}")

    def is_challenge_ack(self, seg: Seg) -> bool:
        """<SEQ=SND.NXT><ACK=RCV.NXT><CTL=ACK> of the stack (RFC 5961 3.2)."""
        return (
            seg.flags & (SYN | RST | FIN) == 0
            and seg.has(ACK)
            and not seg.payload
            and seg.seq == self.rcv_nxt
            and seg.ack == self.snd_nxt
        )


def stack_client(rig: Rig, **sockopts: int) -> tuple[m.Socket, PeerConn]:
    """The stack opens a connection to the peer (the peer listens on 80)."""
    s = rig.ctx.socket()
    for name, value in sockopts.items():
        level = m.SOL_SOCKET if name.startswith("SO_") else m.IPPROTO_TCP
        s.setsockopt(level, getattr(m, name), value)
    assert s.connect_ex((rig.peer_ip, 80)) == errno.EINPROGRESS
    delay_ms = rig.link.faults.delay_us / 1000
    for _ in range(100):  # ARP there and back, the SYN there
        if rig.inbox:
            break
        rig.advance(1)
    syn = rig.inbox.pop()
    assert syn.has(SYN) and not syn.has(ACK), syn
    c = PeerConn(rig, rig.peer_ip, 80, syn.sport, iss=5000)  # the peer's port, then the stack's
    c.rcv_nxt = (syn.seq + 1) & 0xFFFFFFFF
    c.ts_recent = syn.ts[0] if syn.ts else 0
    c.timestamps = syn.ts is not None
    c.send(SYN | ACK, seq=c.iss, mss=1460, sack_ok=True, wscale=7)
    c.snd_nxt = (c.iss + 1) & 0xFFFFFFFF
    rig.advance(2 * delay_ms)  # the SYN-ACK there, the ACK back
    c.expect(flags=ACK, seq=c.rcv_nxt, ack=c.snd_nxt)
    return s, c


def pools_back(st: dict[str, int]) -> bool:
    """Every pool entry is free again and no flow is left (the counters of ``stats()``)."""
    return (
        st["pool_tcb_free"] == st["pool_tcb_total"]
        and st["pool_sndbuf_free"] == st["pool_sndbuf_total"]
        and st["pool_rcvbuf_free"] == st["pool_rcvbuf_total"]
        and st["flows"] == 0
    )


# ---------------------------------------------------------------- two stacks


class Duo(_Closing):
    """Two stacks on one pair link, both on stepped contexts that share one clock: the
    threaded pair tests' setting (loss, reordering, delay from the link's seeded faults),
    made deterministic. ``client`` is side 0 (``client_ip``), ``server`` side 1. The test
    drives both apps between steps; ``advance`` runs every round either stack, or a frame on
    the link, asks for."""

    def __init__(
        self,
        *,
        faults: m.Faults | None = None,
        client_ip: str = "198.18.0.1/24",
        server_ip: str = "198.18.0.2/24",
        start_ns: int = 1_000 * MS,
        secret_seed: int = 1,
        **stack_kw: Any,
    ) -> None:
        self.link = m.PairLink(faults or m.Faults())
        self.stacks: list[m.Stack] = []
        try:
            for side, ip in ((0, client_ip), (1, server_ip)):
                self.stacks.append(
                    m.Stack("pair", ip, pair=self.link, pair_side=side,
                            secret_seed=secret_seed + side, **stack_kw)
                )  # fmt: skip
            self.client = self.stacks[0].stepped_context(0, start_ns)
            self.server = self.stacks[1].stepped_context(0, start_ns)
        except BaseException:
            self.close()
            raise
        self.client_ip = str(ipaddress.IPv4Interface(client_ip).ip)
        self.server_ip = str(ipaddress.IPv4Interface(server_ip).ip)
        self.now_ns = start_ns

    @property
    def now_ms(self) -> float:
        return self.now_ns / MS

    def _both_at(self, t: int, on_round: Callable[[], object] | None) -> None:
        """Rounds at ``t`` on both stacks until neither has more to do at ``t``."""
        self.now_ns = t
        for _ in range(m.SteppedContext.MAX_ROUNDS_AT_ONCE):
            self.client.step(t)
            self.server.step(t)
            if on_round is not None:
                on_round()
            if self._next() > t:
                return
        raise RuntimeError("stacks still busy after many rounds at one instant")

    def _next(self) -> int:
        due = [self.client.deadline_ns, self.server.deadline_ns]
        due += [d for d in (self.link.next_due(0), self.link.next_due(1)) if d]
        return min(due)

    def settle(self, on_round: Callable[[], object] | None = None) -> None:
        self._both_at(self.now_ns, on_round)

    def advance(self, ms: float = 0.0, *, ns: int = 0,
                on_round: Callable[[], object] | None = None) -> None:  # fmt: skip
        """Time moves ``ms`` on, both stacks running every round due on the way;
        ``on_round()`` runs after each instant's rounds (the apps' turn)."""
        end = self.now_ns + round(ms * MS) + ns
        self.settle(on_round)
        while self.now_ns < end:
            self._both_at(min(max(self._next(), self.now_ns), end), on_round)

    def run_until(self, done: Callable[[], bool], *, limit_ms: float,
                  on_round: Callable[[], object] | None = None) -> None:  # fmt: skip
        """Advances (in steps of the stacks' own deadlines) until ``done()`` or ``limit_ms``
        of stack time have passed (an AssertionError then)."""
        end = self.now_ns + round(limit_ms * MS)
        self.settle(on_round)
        while not done():
            if self.now_ns >= end:
                raise AssertionError(f"not done after {limit_ms} ms of stack time")
            self._both_at(min(max(self._next(), self.now_ns + 1), end), on_round)

    def close(self) -> None:
        for st in self.stacks:
            st.close()
        self.stacks.clear()
        self.link.close()
