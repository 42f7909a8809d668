"""The link emulator's per-frame work on untrusted frames (mtcp_netem_complete_csum,
mtcp_netem_segment), fuzzed through the binding: arbitrary bytes never crash it, and valid
frames come out as a NIC's checksum and segmentation offload would make them."""

from __future__ import annotations

import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mtcp_core.netem import complete_checksum, segment

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FIN, PSH, CWR = 0x01, 0x08, 0x80


def csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s > 0xFFFF:
        s = (s & 0xFFFF) + (s >> 16)
    return s  # not complemented


def pseudo(src: bytes, dst: bytes, proto: int, length: int) -> int:
    return csum(src + dst + struct.pack("!BBH", 0, proto, length))


def frame(proto: int, l4: bytes, src: bytes = b"\xc6\x12\0\1", dst: bytes = b"\xc6\x12\0\2",
          ident: int = 7, opts: bytes = b"") -> bytes:  # fmt: skip
    ihl = 20 + len(opts)
    ip = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl // 4, 0, ihl + len(l4), ident, 0x4000, 64,
                     proto, 0, src, dst) + opts  # fmt: skip
    ip = ip[:10] + struct.pack("!H", ~csum(ip) & 0xFFFF) + ip[12:]
    return b"\x02\0\0\0\0\2\x02\0\0\0\0\1\x08\0" + ip + l4


def l4_ok(f: bytes) -> bool:
    ihl = (f[14] & 0x0F) * 4
    total = struct.unpack_from("!H", f, 16)[0]
    l4 = f[14 + ihl : 14 + total]
    return (csum(pseudo(f[26:30], f[30:34], f[23], len(l4)).to_bytes(2, "big") + l4)
            == 0xFFFF)  # fmt: skip


def ip_ok(f: bytes) -> bool:
    ihl = (f[14] & 0x0F) * 4
    return csum(f[14 : 14 + ihl]) == 0xFFFF


@SETTINGS
@given(st.binary(max_size=3000), st.integers(min_value=0, max_value=70000))
def test_arbitrary_bytes_never_crash(data: bytes, mtu: int) -> None:
    complete_checksum(data)
    pieces = segment(data, mtu)
    if pieces is not None:
        assert all(len(p) <= 14 + mtu for p in pieces)


@SETTINGS
@given(
    st.binary(max_size=20000),
    st.integers(min_value=0, max_value=10),  # TCP option words
    st.integers(min_value=0, max_value=0xFF),  # flags
    st.integers(min_value=0, max_value=0xFFFFFFFF),  # seq
    st.integers(min_value=0, max_value=0xFFFF),  # IP id
    st.integers(min_value=68, max_value=9000),  # mtu
)
def test_segments_are_what_tso_would_send(payload: bytes, words: int, flags: int, seq: int,
                                          ident: int, mtu: int) -> None:  # fmt: skip
    doff = 20 + 4 * words
    if mtu <= 20 + doff:
        return
    tcp = struct.pack("!HHIIBBHHH", 40000, 80, seq, 1, (doff // 4) << 4, flags, 65535, 0, 0)
    tcp += b"\x01" * (doff - 20) + payload
    f = frame(6, tcp, ident=ident)
    pieces = segment(f, mtu)
    assert pieces is not None
    mss = mtu - 20 - doff
    assert len(pieces) == max(1, -(-len(payload) // mss))
    joined = b""
    for k, p in enumerate(pieces):
        assert len(p) - 14 <= mtu
        assert ip_ok(p) and l4_ok(p)
        assert struct.unpack_from("!H", p, 16)[0] == len(p) - 14
        assert struct.unpack_from("!H", p, 18)[0] == (ident + k) & 0xFFFF
        assert struct.unpack_from("!I", p, 38)[0] == (seq + k * mss) & 0xFFFFFFFF
        fl = p[47]
        last = k == len(pieces) - 1
        assert fl & (FIN | PSH) == (flags & (FIN | PSH) if last else 0)
        assert fl & CWR == (flags & CWR if k == 0 else 0)
        assert fl & ~(FIN | PSH | CWR) == flags & ~(FIN | PSH | CWR)
        assert p[34 + 20 : 34 + doff] == tcp[20:doff]  # options copied
        joined += p[34 + doff :]
    assert joined == payload


@SETTINGS
@given(st.sampled_from([6, 17]), st.binary(max_size=3000))
def test_partial_checksum_completed(proto: int, payload: bytes) -> None:
    if proto == 6:
        l4 = struct.pack("!HHIIBBHHH", 1, 2, 3, 4, 5 << 4, 0x18, 100, 0, 0) + payload
        off = 16
    else:
        l4 = struct.pack("!HHHH", 1, 2, 8 + len(payload), 0) + payload
        off = 6
    f = frame(proto, l4)
    ps = pseudo(f[26:30], f[30:34], proto, len(l4))
    partial = bytearray(f)
    struct.pack_into("!H", partial, 34 + off, ps)  # what a sender with TX offload leaves
    done = complete_checksum(bytes(partial))
    assert done is not None and l4_ok(done)
    assert done[: 34 + off] == f[: 34 + off] and done[36 + off :] == f[36 + off :]
    if proto == 17:
        assert struct.unpack_from("!H", done, 34 + off)[0] != 0  # zero means "none" in UDP


def test_not_cut_or_completed() -> None:
    arp = b"\xff" * 6 + b"\x02" * 6 + b"\x08\x06" + b"\0" * 28
    assert complete_checksum(arp) is None and segment(arp, 1500) is None
    udp = frame(17, struct.pack("!HHHH", 1, 2, 8 + 3000, 0) + b"x" * 3000)
    assert segment(udp, 1500) is None  # only TCP is cut (the loop counts it as oversize)
    icmp = frame(1, b"\x08\0\0\0" + b"y" * 60)
    assert complete_checksum(icmp) is None
