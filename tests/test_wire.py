"""Wire formats (mtcp_core/src/wire): parse and emit of Ethernet, ARP, IPv4, ICMP, TCP.

Frames are literal bytes. Checksums in them were computed offline with an
RFC 1071 implementation independent of the C code (``rfc1071`` below is the
same algorithm, used to re-fix checksums after a deliberate corruption so that
exactly one thing is wrong with a frame).
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable
from typing import Any, NamedTuple

import pytest

from mtcp_core.testing.wire import cbuf, reason

try:
    from mtcp_core._native import ffi, lib  # type: ignore[import-not-found, unused-ignore]
except ImportError as exc:  # the cffi module is built by `pip install`
    pytest.skip(f"mtcp_core._native is not built ({exc})", allow_module_level=True)

# io_frame.flags (mtcp_core/src/io/io.h)
CSUM_PARTIAL = 0x1
CSUM_VALID = 0x2

ETH = 14  # untagged Ethernet header


def _hex(*lines: str) -> bytes:
    return bytes.fromhex("".join(lines))


# A Linux SYN: the capture LO_SYN_PARTIAL below (same ISN, IP id, TSval, option layout
# MSS, SACK_PERM, TS, NOP, WS) with the values Linux sends on a 1500-MTU Ethernet (MSS 1460,
# window 64240, WS 7), addresses 198.18.0.1:54228 -> 198.18.0.2:80, unicast MACs, and both
# checksums completed offline (IP 0x4984, TCP 0x1e48).
SYN = _hex(
    "0200c61200020200c612000108004500",
    "003c6510400040064984c6120001c612",
    "0002d3d40050217ade9800000000a002",
    "faf01e480000020405b40402080acec8",
    "ff9e0000000001030307",
)
SYN_SRC = 0xC6120001  # 198.18.0.1
SYN_DST = 0xC6120002  # 198.18.0.2

# A SYN captured from Linux 6.18 on lo with AF_PACKET, unchanged: TX checksum
# offload leaves the pseudo-header sum (0xfe30) in the TCP checksum field, as
# frames from veth/tap do (TP_STATUS_CSUMNOTREADY).
LO_SYN_PARTIAL = _hex(
    "00000000000000000000000008004500",
    "003c651040004006d7a97f0000017f00",
    "0001d3d4bb7f217ade9800000000a002",
    "ffd7fe3000000204ffd70402080acec8",
    "ff9e000000000103030a",
)

# The server's reply data segment: PSH|ACK, NOP NOP TS, NOP NOP SACK (2 blocks),
# 12 bytes of payload. 198.18.0.2:80 -> 198.18.0.1:54228.
DATA = _hex(
    "0200c61200010200c612000208004500",
    "0054b00c40004006fe6fc6120002c612",
    "00010050d3d40a0b0c0d217ade99d018",
    "01f6bfa500000101080a0000beefcec8",
    "ff9e01010512217ae000217ae5b4217a",
    "eb68217af11c68656c6c6f2c20776972",
    "650a",
)

# ARP request "who has 198.18.0.2, tell 198.18.0.1" (no link padding).
ARP_REQ = _hex(
    "ffffffffffff0200c612000108060001",
    "0800060400010200c6120001c6120001",
    "000000000000c6120002",
)

# ICMP echo request as iputils ping sends it: id 0x1c2b, seq 1, 56 data bytes.
ICMP_ECHO = _hex(
    "0200c61200020200c612000108004500",
    "00543a9c4000400173e5c6120001c612",
    "000208008aaa1c2b00015f3c8e670000",
    "0000a1b2030000000000101112131415",
    "161718191a1b1c1d1e1f202122232425",
    "262728292a2b2c2d2e2f303132333435",
    "3637",
)
ICMP_DATA = ICMP_ECHO[ETH + 20 + 8 :]

# The SYN with one 802.1Q tag (VLAN 5, PCP 0) after the MAC addresses.
VLAN_SYN = SYN[:12] + _hex("81000005") + SYN[12:]


# ---------------------------------------------------------------- helpers


def rfc1071(data: bytes) -> int:
    """Internet checksum, the plain way (RFC 1071 section 4.1)."""
    if len(data) % 2:
        data += b"\0"
    s: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def pseudo(src: int, dst: int, proto: int, length: int) -> bytes:
    return struct.pack("!IIBBH", src, dst, 0, proto, length)


def fix_ip(frame: bytes, eth: int = ETH) -> bytes:
    """Recompute the IPv4 header checksum (IHL as written, clipped to the frame)."""
    b = bytearray(frame)
    ihl = (b[eth] & 0xF) * 4
    b[eth + 10 : eth + 12] = b"\0\0"
    b[eth + 10 : eth + 12] = rfc1071(bytes(b[eth : eth + ihl])).to_bytes(2, "big")
    return bytes(b)


def fix_tcp(frame: bytes, eth: int = ETH) -> bytes:
    """Recompute the TCP checksum of the segment that IPv4 total_len delimits."""
    b = bytearray(frame)
    ihl = (b[eth] & 0xF) * 4
    total = int.from_bytes(b[eth + 2 : eth + 4], "big")
    src, dst = struct.unpack("!II", b[eth + 12 : eth + 20])
    t = eth + ihl
    b[t + 16 : t + 18] = b"\0\0"
    seg = bytes(b[t : eth + total])
    b[t + 16 : t + 18] = rfc1071(pseudo(src, dst, 6, len(seg)) + seg).to_bytes(2, "big")
    return bytes(b)


def set_byte(frame: bytes, off: int, value: int) -> bytes:
    return frame[:off] + bytes([value]) + frame[off + 1 :]


def set_u16(frame: bytes, off: int, value: int) -> bytes:
    return frame[:off] + value.to_bytes(2, "big") + frame[off + 2 :]


def syn_with_options(opts: bytes, payload: bytes = b"") -> bytes:
    """The literal SYN with its 20 option bytes replaced; lengths and checksums fixed."""
    assert len(opts) % 4 == 0
    assert len(opts) <= 40
    tcp_hdr = bytearray(SYN[ETH + 20 : ETH + 40])
    tcp_hdr[12] = ((20 + len(opts)) // 4) << 4
    frame = SYN[: ETH + 20] + bytes(tcp_hdr) + opts + payload
    frame = set_u16(frame, ETH + 2, 20 + 20 + len(opts) + len(payload))
    return fix_tcp(fix_ip(frame))


class Parsed(NamedTuple):
    reason: str
    info: Any  # struct wire_frame_info *
    buf: Any  # keeps the frame alive: info's payload pointers point into it


def parse(frame: bytes, flags: int = 0) -> Parsed:
    buf = cbuf(frame)
    info = ffi.new("struct wire_frame_info *")
    return Parsed(reason(lib.wire_parse_frame(buf, len(frame), flags, info)), info, buf)


def offset_in(ptr: Any, buf: Any) -> int:
    return int(ffi.cast("uintptr_t", ptr)) - int(ffi.cast("uintptr_t", buf))


def mac(b: Any) -> bytes:
    return bytes(ffi.buffer(b, 6))


# ---------------------------------------------------------------- checksum


def test_csum_rfc1071_example() -> None:
    # RFC 1071 section 3: the words 0001 f203 f4f5 f6f7 sum to ddf2.
    data = _hex("0001f203f4f5f6f7")
    assert lib.wire_csum_fold(lib.wire_csum_add(0, data, len(data))) == 0xFFFF & ~0xDDF2


def test_csum_matches_reference_random_lengths_and_alignments() -> None:
    rng = random.Random(1071)
    lengths = list(range(0, 80)) + [rng.randrange(80, 9000) for _ in range(300)]
    for n in lengths:
        off = rng.randrange(8)  # start at every alignment of an 8-byte load
        data = rng.randbytes(n)
        buf = cbuf(bytes(off) + data)
        got = lib.wire_csum_fold(lib.wire_csum_add(0, buf + off, n))
        assert got == rfc1071(data), (n, off)


def test_csum_all_ones_data_and_big_running_sums() -> None:
    rng = random.Random(7)
    for n in (1, 2, 7, 8, 31, 32, 33, 1500, 65535):
        data = b"\xff" * n
        assert lib.wire_csum_fold(lib.wire_csum_add(0, data, n)) == rfc1071(data)
    for _ in range(200):
        start = rng.choice([0xFFFFFFFF, 0xFFFF0000, 0xFFFFFFFE, rng.getrandbits(32)])
        data = rng.randbytes(rng.randrange(0, 200) * 2)
        got = lib.wire_csum_fold(lib.wire_csum_add(start, data, len(data)))
        # start is a 32-bit sum of 16-bit words: its two halves are two words.
        assert got == rfc1071(start.to_bytes(4, "big") + data)


def test_csum_chaining_even_pieces_then_odd_last() -> None:
    rng = random.Random(2)
    for _ in range(300):
        pieces = [rng.randbytes(2 * rng.randrange(0, 40)) for _ in range(rng.randrange(1, 5))]
        pieces.append(rng.randbytes(rng.randrange(0, 41)))  # the last may be odd
        s = 0
        for p in pieces:
            s = lib.wire_csum_add(s, p, len(p))
        assert lib.wire_csum_fold(s) == rfc1071(b"".join(pieces))


def test_csum_pseudo_header_matches_reference() -> None:
    rng = random.Random(3)
    for _ in range(300):
        src, dst = rng.getrandbits(32), rng.getrandbits(32)
        proto, length = rng.randrange(256), rng.randrange(65536)
        seg = rng.randbytes(rng.randrange(0, 64))
        s = lib.wire_csum_add(lib.wire_csum_pseudo(src, dst, proto, length), seg, len(seg))
        assert lib.wire_csum_fold(s) == rfc1071(pseudo(src, dst, proto, length) + seg)


def test_literal_frames_have_valid_checksums() -> None:
    # The offline checksums agree with the reference (guards the literals themselves).
    for frame in (SYN, DATA, ICMP_ECHO):
        assert rfc1071(frame[ETH : ETH + 20]) == 0
    for frame in (SYN, DATA):
        src, dst = struct.unpack("!II", frame[ETH + 12 : ETH + 20])
        seg = frame[ETH + 20 :]
        assert rfc1071(pseudo(src, dst, 6, len(seg)) + seg) == 0
    assert rfc1071(ICMP_ECHO[ETH + 20 :]) == 0


# ---------------------------------------------------------------- parse: the real SYN


def test_parse_real_syn_every_field() -> None:
    p = parse(SYN)
    assert p.reason == "ok"
    i = p.info
    assert (i.has_arp, i.has_ip, i.has_icmp, i.has_tcp) == (0, 1, 0, 1)
    assert mac(i.eth.dst) == _hex("0200c6120002")
    assert mac(i.eth.src) == _hex("0200c6120001")
    assert (i.eth.type, i.eth.hlen) == (lib.WIRE_ETHERTYPE_IPV4, 14)
    ip = i.ip
    assert (ip.hlen, ip.tos, ip.total_len, ip.id, ip.frag) == (20, 0, 60, 0x6510, 0x4000)
    assert (ip.ttl, ip.proto, ip.src, ip.dst) == (64, 6, SYN_SRC, SYN_DST)
    assert ip.payload_len == 40
    assert offset_in(ip.payload, p.buf) == ETH + 20
    t = i.tcp
    assert (t.sport, t.dport, t.seq, t.ack) == (54228, 80, 0x217ADE98, 0)
    assert (t.hlen, t.flags, t.win, t.urg) == (40, lib.WIRE_TCP_SYN, 64240, 0)
    o = t.opt
    assert (o.has_mss, o.mss) == (1, 1460)
    assert o.sack_ok == 1
    assert (o.has_ts, o.ts_val, o.ts_ecr) == (1, 0xCEC8FF9E, 0)
    assert (o.has_wscale, o.wscale) == (1, 7)
    assert o.nsack == 0
    assert t.payload_len == 0
    assert offset_in(t.payload, p.buf) == ETH + 20 + 40


def test_parse_data_segment_with_sack_and_payload() -> None:
    p = parse(DATA)
    assert p.reason == "ok"
    t = p.info.tcp
    assert (t.sport, t.dport, t.seq, t.ack) == (80, 54228, 0x0A0B0C0D, 0x217ADE99)
    assert (t.hlen, t.flags, t.win) == (52, lib.WIRE_TCP_PSH | lib.WIRE_TCP_ACK, 502)
    o = t.opt
    assert (o.has_mss, o.sack_ok, o.has_wscale) == (0, 0, 0)
    assert (o.has_ts, o.ts_val, o.ts_ecr) == (1, 0xBEEF, 0xCEC8FF9E)
    assert o.nsack == 2
    blocks = [(o.sack[k].left, o.sack[k].right) for k in range(o.nsack)]
    assert blocks == [(0x217AE000, 0x217AE5B4), (0x217AEB68, 0x217AF11C)]
    assert bytes(ffi.buffer(t.payload, t.payload_len)) == b"hello, wire\n"


def test_link_padding_after_total_len_is_excluded() -> None:
    # Padding bytes (as a 60-byte minimum frame or a NIC adds them) are not part
    # of the TCP segment: counting them would break the TCP checksum.
    p = parse(SYN + b"\xde\xad\xbe\xef\x00\x01")
    assert p.reason == "ok"
    assert (p.info.ip.total_len, p.info.ip.payload_len, p.info.tcp.payload_len) == (60, 40, 0)
    p = parse(ARP_REQ + bytes(18))
    assert p.reason == "ok"
    assert p.info.arp.tpa == SYN_DST


# ---------------------------------------------------------------- truncation


def _expect_truncated(frame: bytes, cuts: list[tuple[int, str]]) -> None:
    """cuts: (first length at which reason applies, reason), ascending."""
    for n in range(len(frame) + 1):
        want = "ok" if n == len(frame) else [r for start, r in cuts if n >= start][-1]
        assert parse(frame[:n]).reason == want, n


def test_syn_truncated_at_every_length() -> None:
    _expect_truncated(
        SYN, [(0, "drop_eth_short"), (14, "drop_ip_short"), (34, "drop_ip_total_len")]
    )


def test_vlan_syn_truncated_at_every_length() -> None:
    _expect_truncated(
        VLAN_SYN, [(0, "drop_eth_short"), (18, "drop_ip_short"), (38, "drop_ip_total_len")]
    )


def test_arp_truncated_at_every_length() -> None:
    _expect_truncated(ARP_REQ, [(0, "drop_eth_short"), (14, "drop_arp_malformed")])


def test_icmp_truncated_at_every_length() -> None:
    _expect_truncated(
        ICMP_ECHO, [(0, "drop_eth_short"), (14, "drop_ip_short"), (34, "drop_ip_total_len")]
    )


def test_layers_truncated_at_every_length() -> None:
    # The per-layer parsers on their own, each fed every prefix of its bytes.
    ip_bytes = SYN[ETH:]
    ipv = ffi.new("struct wire_ipv4 *")
    for n in range(len(ip_bytes) + 1):
        got = reason(lib.wire_ipv4_parse(cbuf(ip_bytes[:n]), n, ipv))
        want = "drop_ip_short" if n < 20 else "drop_ip_total_len" if n < 60 else "ok"
        assert got == want, n
    seg = SYN[ETH + 20 :]
    tcp = ffi.new("struct wire_tcp *")
    for n in range(len(seg) + 1):
        got = reason(lib.wire_tcp_parse(cbuf(seg[:n]), n, SYN_SRC, SYN_DST, 1, tcp))
        want = "drop_tcp_short" if n < 20 else "drop_tcp_hdr_len" if n < 40 else "ok"
        assert got == want, n
    icmp_bytes = ICMP_ECHO[ETH + 20 :]
    icmp = ffi.new("struct wire_icmp *")
    for n in range(len(icmp_bytes) + 1):
        got = reason(lib.wire_icmp_parse(cbuf(icmp_bytes[:n]), n, icmp))
        want = "drop_icmp_malformed" if n < 8 else "drop_icmp_checksum" if n < 64 else "ok"
        assert got == want, n
    eth = ffi.new("struct wire_eth *")
    for n in range(15):
        got = reason(lib.wire_eth_parse(cbuf(SYN[:n]), n, eth))
        assert got == ("ok" if n == 14 else "drop_eth_short"), n


# ---------------------------------------------------------------- Ethernet / VLAN


def test_vlan_tagged_frame_is_parsed_through_one_tag() -> None:
    p = parse(VLAN_SYN)
    assert p.reason == "ok"
    assert (p.info.eth.type, p.info.eth.hlen) == (lib.WIRE_ETHERTYPE_IPV4, 18)
    assert p.info.tcp.opt.mss == 1460
    assert p.info.ip.src == SYN_SRC


def test_double_vlan_tag_is_refused() -> None:
    qinq = VLAN_SYN[:16] + _hex("81000007") + VLAN_SYN[16:]
    assert parse(qinq).reason == "drop_eth_type"


def test_unknown_ethertype_is_refused() -> None:
    p = parse(set_u16(SYN, 12, 0x86DD))  # IPv6
    assert p.reason == "drop_eth_type"
    assert p.info.eth.type == 0x86DD
    assert p.info.has_ip == 0


def test_mac_classes() -> None:
    assert lib.wire_mac_is_broadcast(b"\xff" * 6) == 1
    assert lib.wire_mac_is_broadcast(b"\xff" * 5 + b"\xfe") == 0
    assert lib.wire_mac_is_multicast(_hex("01005e000001")) == 1
    assert lib.wire_mac_is_multicast(b"\xff" * 6) == 1
    assert lib.wire_mac_is_multicast(_hex("0200c6120001")) == 0


def test_eth_emit_roundtrip() -> None:
    buf = cbuf(bytes(14) + ARP_REQ[14:])
    n = lib.wire_eth_emit(buf, b"\xff" * 6, _hex("0200c6120001"), lib.WIRE_ETHERTYPE_ARP)
    assert n == 14
    assert bytes(ffi.buffer(buf, len(ARP_REQ))) == ARP_REQ
    eth = ffi.new("struct wire_eth *")
    assert reason(lib.wire_eth_parse(buf, len(ARP_REQ), eth)) == "ok"
    assert (mac(eth.dst), mac(eth.src)) == (b"\xff" * 6, _hex("0200c6120001"))
    assert (eth.type, eth.hlen) == (lib.WIRE_ETHERTYPE_ARP, 14)


def test_eth_emit_swaps_addresses_in_place() -> None:
    # A reply built in the request's buffer passes the request's own addresses.
    buf = cbuf(SYN)
    lib.wire_eth_emit(buf, buf + 6, buf, lib.WIRE_ETHERTYPE_IPV4)
    assert bytes(ffi.buffer(buf, 14)) == SYN[6:12] + SYN[0:6] + SYN[12:14]


# ---------------------------------------------------------------- ARP


def test_arp_request_parse() -> None:
    p = parse(ARP_REQ)
    assert p.reason == "ok"
    a = p.info.arp
    assert (p.info.has_arp, p.info.has_ip) == (1, 0)
    assert a.op == lib.WIRE_ARP_REQUEST
    assert (mac(a.sha), a.spa) == (_hex("0200c6120001"), SYN_SRC)
    assert (mac(a.tha), a.tpa) == (bytes(6), SYN_DST)


@pytest.mark.parametrize(
    ("off", "value"),
    [
        (ETH + 1, 6),  # htype 6 (IEEE 802), not Ethernet
        (ETH + 2, 0x86),  # ptype 0x8600
        (ETH + 4, 8),  # hlen 8
        (ETH + 5, 16),  # plen 16
        (ETH + 7, 0),  # op 0
        (ETH + 7, 3),  # op 3 (RARP request)
    ],
)
def test_arp_malformed(off: int, value: int) -> None:
    assert parse(set_byte(ARP_REQ, off, value)).reason == "drop_arp_malformed"


def test_arp_reply_accepted() -> None:
    p = parse(set_byte(ARP_REQ, ETH + 7, 2))
    assert p.reason == "ok"
    assert p.info.arp.op == lib.WIRE_ARP_REPLY


def test_arp_emit_matches_literal_and_roundtrips() -> None:
    a = ffi.new("struct wire_arp *")
    a.op = lib.WIRE_ARP_REQUEST
    a.sha = list(_hex("0200c6120001"))
    a.spa = SYN_SRC
    a.tha = [0] * 6
    a.tpa = SYN_DST
    buf = ffi.new("uint8_t[]", 28)
    assert lib.wire_arp_emit(buf, a) == lib.WIRE_ARP_LEN
    assert bytes(buf) == ARP_REQ[ETH:]
    back = ffi.new("struct wire_arp *")
    assert reason(lib.wire_arp_parse(buf, 28, back)) == "ok"
    assert (back.op, mac(back.sha), back.spa, mac(back.tha), back.tpa) == (
        1,
        _hex("0200c6120001"),
        SYN_SRC,
        bytes(6),
        SYN_DST,
    )


# ---------------------------------------------------------------- IPv4


IpMutation = Callable[[bytes], bytes]

_IP_DROPS: list[tuple[str, IpMutation, str]] = [
    ("version 6", lambda f: fix_ip(set_byte(f, ETH, 0x65)), "drop_ip_version"),
    ("version 0", lambda f: fix_ip(set_byte(f, ETH, 0x05)), "drop_ip_version"),
    ("ihl 4", lambda f: fix_ip(set_byte(f, ETH, 0x44)), "drop_ip_hdr_len"),
    ("ihl 0", lambda f: set_byte(f, ETH, 0x40), "drop_ip_hdr_len"),
    # IHL 15 (60 bytes) in a 56-byte datagram
    (
        "ihl > len",
        lambda f: set_u16(set_byte(f, ETH, 0x4F), ETH + 2, 56)[: ETH + 56],
        "drop_ip_hdr_len",
    ),
    ("total < ihl", lambda f: fix_ip(set_u16(f, ETH + 2, 19)), "drop_ip_total_len"),
    ("total > len", lambda f: fix_ip(set_u16(f, ETH + 2, 61)), "drop_ip_total_len"),
    ("header checksum", lambda f: set_byte(f, ETH + 4, f[ETH + 4] ^ 0x01), "drop_ip_checksum"),
    ("checksum field", lambda f: set_u16(f, ETH + 10, 0), "drop_ip_checksum"),
    ("MF", lambda f: fix_ip(set_u16(f, ETH + 6, 0x2000)), "drop_ip_fragment"),
    ("MF + DF", lambda f: fix_ip(set_u16(f, ETH + 6, 0x6000)), "drop_ip_fragment"),
    ("offset 1", lambda f: fix_ip(set_u16(f, ETH + 6, 0x0001)), "drop_ip_fragment"),
    ("last fragment", lambda f: fix_ip(set_u16(f, ETH + 6, 0x00B9)), "drop_ip_fragment"),
    ("UDP", lambda f: fix_ip(set_byte(f, ETH + 9, 17)), "drop_ip_proto"),
]


@pytest.mark.parametrize(("what", "mutate", "want"), _IP_DROPS, ids=[c[0] for c in _IP_DROPS])
def test_ipv4_drop_reasons(what: str, mutate: IpMutation, want: str) -> None:
    assert parse(mutate(SYN)).reason == want, what


def test_ip_short_datagram() -> None:
    assert parse(SYN[: ETH + 19]).reason == "drop_ip_short"


def test_ip_no_fragment_flags_accepted() -> None:
    p = parse(fix_ip(set_u16(SYN, ETH + 6, 0x0000)))  # DF clear: still a whole datagram
    assert p.reason == "ok"
    assert p.info.ip.frag == 0


def test_ip_options_are_skipped() -> None:
    # IHL 6: one word of options (NOP NOP NOP EOL), covered by the header checksum.
    opts = _hex("01010100")
    frame = SYN[: ETH + 20] + opts + SYN[ETH + 20 :]
    frame = set_u16(set_byte(frame, ETH, 0x46), ETH + 2, 64)
    frame = fix_ip(frame)
    p = parse(frame)
    assert p.reason == "ok"
    assert (p.info.ip.hlen, p.info.ip.payload_len) == (24, 40)
    assert p.info.tcp.opt.mss == 1460
    assert p.info.tcp.seq == 0x217ADE98
    assert parse(set_byte(frame, ETH + 21, 0x44)).reason == "drop_ip_checksum"


def test_ipv4_emit_matches_real_header_and_roundtrips() -> None:
    buf = ffi.new("uint8_t[]", 20)
    assert lib.wire_ipv4_emit(buf, SYN_SRC, SYN_DST, 6, 40, 0x6510, 64) == 20
    assert bytes(buf) == SYN[ETH : ETH + 20]  # byte for byte what Linux sent, checksum 0x4984
    data = cbuf(bytes(buf) + bytes(40))
    ip = ffi.new("struct wire_ipv4 *")
    assert reason(lib.wire_ipv4_parse(data, 60, ip)) == "ok"
    assert (ip.src, ip.dst, ip.proto, ip.id, ip.ttl, ip.frag) == (
        SYN_SRC,
        SYN_DST,
        6,
        0x6510,
        64,
        0x4000,
    )
    assert (ip.total_len, ip.payload_len) == (60, 40)


def test_ipv4_emit_refuses_oversized_payload() -> None:
    buf = ffi.new("uint8_t[]", 20)
    assert lib.wire_ipv4_emit(buf, 1, 2, 6, 65515, 0, 64) == 20
    assert int.from_bytes(bytes(buf[2:4]), "big") == 65535
    assert lib.wire_ipv4_emit(buf, 1, 2, 6, 65516, 0, 64) == 0


# ---------------------------------------------------------------- TCP


def test_tcp_short_segment() -> None:
    frame = fix_ip(set_u16(SYN, ETH + 2, 20 + 19))[: ETH + 20 + 19]
    assert parse(frame).reason == "drop_tcp_short"


@pytest.mark.parametrize("doff", [0, 4, 11, 15])
def test_tcp_bad_data_offset(doff: int) -> None:
    frame = fix_tcp(set_byte(SYN, ETH + 20 + 12, doff << 4))
    assert parse(frame).reason == "drop_tcp_hdr_len"


@pytest.mark.parametrize("off", [ETH + 20 + 4, ETH + 20 + 13, ETH + 20 + 39, ETH + 20 + 16])
def test_tcp_bad_checksum(off: int) -> None:
    assert parse(set_byte(SYN, off, SYN[off] ^ 0x80)).reason == "drop_tcp_checksum"


def test_tcp_checksum_covers_pseudo_header() -> None:
    # A different destination address (header checksum refixed) breaks the TCP checksum.
    assert parse(fix_ip(set_byte(SYN, ETH + 19, 3))).reason == "drop_tcp_checksum"


_BAD_OPTIONS = {
    "kind without length byte": "01010102",
    "unknown kind without length byte": "010101fe",
    "length 0": "fe000101",
    "length 1": "fe010101",
    "length past header": "fe080000",
    "MSS length 255": "02ff0000",
    "MSS length 3": "02030501",
    "MSS length 5": "020505b400010101",
    "WS length 2": "03020101",
    "WS length 4": "03040701",
    "SACK_PERM length 3": "04030001",
    "TS length 8": "0808000000010000",
    "TS length 12": "080c00000001000000020101",
    "SACK no block": "05020101",
    "SACK length 9": "050900000001000000010101",
    "SACK length 11": "050b00000001000000020001",
    "SACK past header": "051200000001000000020101",
}


@pytest.mark.parametrize("opts", list(_BAD_OPTIONS.values()), ids=list(_BAD_OPTIONS))
def test_tcp_malformed_options(opts: str) -> None:
    assert parse(syn_with_options(bytes.fromhex(opts))).reason == "drop_tcp_options"


def test_tcp_options_unknown_skipped_eol_ends_nop_skips() -> None:
    # unknown kind 254 (6 bytes), NOP NOP, MSS, then EOL followed by bytes that
    # would be malformed if they were parsed.
    p = parse(syn_with_options(_hex("fe06aabbccdd", "0101", "02040218", "00", "02ff01")))
    assert p.reason == "ok"
    o = p.info.tcp.opt
    assert (o.has_mss, o.mss, o.has_ts, o.sack_ok, o.has_wscale) == (1, 536, 0, 0, 0)
    assert p.info.tcp.hlen == 36


def test_tcp_four_sack_blocks_parsed() -> None:
    blocks = [(1000 * k, 1000 * k + 500) for k in range(1, 5)]
    raw = _hex("01010522") + b"".join(struct.pack("!II", a, b) for a, b in blocks)
    p = parse(syn_with_options(raw))
    assert p.reason == "ok"
    o = p.info.tcp.opt
    assert [(o.sack[k].left, o.sack[k].right) for k in range(o.nsack)] == blocks


@pytest.mark.parametrize(("wire_value", "parsed"), [(0, 0), (14, 14), (15, 14), (255, 14)])
def test_tcp_window_scale_clamped(wire_value: int, parsed: int) -> None:
    p = parse(syn_with_options(_hex("010303") + bytes([wire_value])))
    assert p.reason == "ok"
    assert (p.info.tcp.opt.has_wscale, p.info.tcp.opt.wscale) == (1, parsed)


def _opts(**kw: int) -> Any:
    o = ffi.new("struct wire_tcp_opts *")
    sack = kw.pop("sack", 0)
    for name, value in kw.items():
        setattr(o, name, value)
    o.nsack = sack
    for k in range(min(sack, 4)):
        o.sack[k].left = 0x1000 * (k + 1)
        o.sack[k].right = 0x1000 * (k + 1) + 0x100
    return o


def _emit_opts(o: Any) -> bytes:
    buf = ffi.new("uint8_t[]", 40)
    n = lib.wire_tcp_opts_emit(buf, o)
    return bytes(ffi.buffer(buf, n))


def _blocks(n: int) -> str:
    return "".join(f"{0x1000 * (k + 1):08x}{0x1000 * (k + 1) + 0x100:08x}" for k in range(n))


_EMIT_LAYOUTS = {
    "nothing": ({}, ""),
    "SYN, all (Linux)": (
        {
            "has_mss": 1,
            "mss": 1460,
            "sack_ok": 1,
            "has_ts": 1,
            "ts_val": 0xCEC8FF9E,
            "has_wscale": 1,
            "wscale": 7,
        },
        "020405b4 0402080acec8ff9e00000000 01030307",
    ),
    "SYN, no TS": (
        {"has_mss": 1, "mss": 1460, "sack_ok": 1, "has_wscale": 1, "wscale": 7},
        "020405b4 01010402 01030307",
    ),
    "SYN, TS no SACK": (
        {"has_mss": 1, "mss": 536, "has_ts": 1, "ts_val": 5, "ts_ecr": 0},
        "02040218 0101080a0000000500000000",
    ),
    "SYN, MSS only": ({"has_mss": 1, "mss": 1460}, "020405b4"),
    "WS 20 sent as 14": ({"has_wscale": 1, "wscale": 20}, "0103030e"),
    "TS only": ({"has_ts": 1, "ts_val": 1, "ts_ecr": 2}, "0101080a0000000100000002"),
    "TS + 1 SACK": (
        {"has_ts": 1, "ts_val": 1, "ts_ecr": 2, "sack": 1},
        "0101080a0000000100000002 0101050a" + _blocks(1),
    ),
    "TS + 4 SACK: 3 fit": (
        {"has_ts": 1, "ts_val": 1, "ts_ecr": 2, "sack": 4},
        "0101080a0000000100000002 0101051a" + _blocks(3),
    ),
    "4 SACK without TS": ({"sack": 4}, "01010522" + _blocks(4)),
    "nsack 9 is 4": ({"sack": 9}, "01010522" + _blocks(4)),
}


@pytest.mark.parametrize(("fields", "want"), list(_EMIT_LAYOUTS.values()), ids=list(_EMIT_LAYOUTS))
def test_tcp_opts_emit_layout(fields: dict[str, int], want: str) -> None:
    got = _emit_opts(_opts(**fields))
    assert got == bytes.fromhex(want.replace(" ", ""))
    assert len(got) % 4 == 0
    assert len(got) <= lib.WIRE_TCP_MAX_OPTLEN


def test_tcp_emit_syn_matches_real_syn() -> None:
    o = _opts(has_mss=1, mss=1460, sack_ok=1, has_ts=1, ts_val=0xCEC8FF9E, has_wscale=1, wscale=7)
    seg = ffi.new("uint8_t[]", 60)
    hlen = lib.wire_tcp_emit_hdr(seg, 54228, 80, 0x217ADE98, 0, lib.WIRE_TCP_SYN, 64240, o)
    assert hlen == 40
    assert bytes(ffi.buffer(seg, 40)) == SYN[ETH + 20 : ETH + 36] + b"\0\0" + SYN[ETH + 38 :]
    lib.wire_tcp_fill_csum(seg, 40, SYN_SRC, SYN_DST)
    assert bytes(ffi.buffer(seg, 40)) == SYN[ETH + 20 :]  # checksum 0x1e48, as computed offline


def test_tcp_fill_csum_overwrites_old_checksum() -> None:
    seg = cbuf(SYN[ETH + 20 : ETH + 36] + b"\xab\xcd" + SYN[ETH + 38 :])
    lib.wire_tcp_fill_csum(seg, 40, SYN_SRC, SYN_DST)
    assert bytes(ffi.buffer(seg, 40)) == SYN[ETH + 20 :]


def test_tcp_emit_without_options() -> None:
    seg = ffi.new("uint8_t[]", 20)
    assert lib.wire_tcp_emit_hdr(seg, 1, 2, 3, 4, lib.WIRE_TCP_ACK, 5, ffi.NULL) == 20
    assert bytes(seg) == _hex("00010002", "00000003", "00000004", "5010", "0005", "0000", "0000")


def _tcp_roundtrip(o: Any, flags: int, payload: bytes) -> tuple[str, Any, bytes, Any]:
    """Emit, checksum and parse one segment; returns seg too (t.payload points into it)."""
    seg = ffi.new("uint8_t[]", 60 + len(payload))
    hlen = lib.wire_tcp_emit_hdr(seg, 40000, 443, 0xFFFFFFF0, 0x12345678, flags, 0xFFFF, o)
    ffi.memmove(seg + hlen, payload, len(payload))
    n = hlen + len(payload)
    lib.wire_tcp_fill_csum(seg, n, SYN_DST, SYN_SRC)
    raw = bytes(ffi.buffer(seg, n))
    assert rfc1071(pseudo(SYN_DST, SYN_SRC, 6, n) + raw) == 0
    t = ffi.new("struct wire_tcp *")
    return reason(lib.wire_tcp_parse(seg, n, SYN_DST, SYN_SRC, 1, t)), t, raw, seg


def test_tcp_emit_parse_roundtrip_random() -> None:
    rng = random.Random(9293)
    for _ in range(500):
        fields = {
            "has_mss": rng.randrange(2),
            "mss": rng.randrange(65536),
            "sack_ok": rng.randrange(2),
            "has_ts": rng.randrange(2),
            "ts_val": rng.getrandbits(32),
            "ts_ecr": rng.getrandbits(32),
            "has_wscale": rng.randrange(2),
            "wscale": rng.randrange(15),
        }
        o = _opts(**fields)
        o.nsack = rng.randrange(5)
        for k in range(4):
            o.sack[k].left, o.sack[k].right = rng.getrandbits(32), rng.getrandbits(32)
        flags = rng.randrange(256)
        payload = rng.randbytes(rng.randrange(0, 100))
        got, t, raw, _seg = _tcp_roundtrip(o, flags, payload)
        assert got == "ok"
        assert (t.sport, t.dport, t.seq, t.ack, t.flags, t.win) == (
            40000,
            443,
            0xFFFFFFF0,
            0x12345678,
            flags,
            0xFFFF,
        )
        assert bytes(ffi.buffer(t.payload, t.payload_len)) == payload
        p = t.opt
        assert (p.has_mss, p.sack_ok, p.has_ts, p.has_wscale) == (
            fields["has_mss"],
            fields["sack_ok"],
            fields["has_ts"],
            fields["has_wscale"],
        )
        if fields["has_mss"]:
            assert p.mss == fields["mss"]
        if fields["has_ts"]:
            assert (p.ts_val, p.ts_ecr) == (fields["ts_val"], fields["ts_ecr"])
        if fields["has_wscale"]:
            assert p.wscale == fields["wscale"]
        used = t.hlen - 20 - (4 + 8 * p.nsack if p.nsack else 0)
        fit = max(0, (40 - used - 4) // 8)
        assert p.nsack == min(o.nsack, fit, 4)
        for k in range(p.nsack):
            assert (p.sack[k].left, p.sack[k].right) == (o.sack[k].left, o.sack[k].right)
        # flip any one bit of the segment: the checksum must catch it
        bit = rng.randrange(len(raw) * 8)
        bad = bytearray(raw)
        bad[bit // 8] ^= 1 << (bit % 8)
        t2 = ffi.new("struct wire_tcp *")
        code = lib.wire_tcp_parse(cbuf(bytes(bad)), len(bad), SYN_DST, SYN_SRC, 1, t2)
        assert reason(code) in ("drop_tcp_checksum", "drop_tcp_hdr_len")


def test_tcp_parse_without_verify_ignores_checksum() -> None:
    seg = bytearray(SYN[ETH + 20 :])
    seg[16:18] = b"\x12\x34"
    t = ffi.new("struct wire_tcp *")
    assert reason(lib.wire_tcp_parse(cbuf(bytes(seg)), 40, SYN_SRC, SYN_DST, 0, t)) == "ok"
    assert reason(lib.wire_tcp_parse(cbuf(bytes(seg)), 40, SYN_SRC, SYN_DST, 1, t)) == (
        "drop_tcp_checksum"
    )


# ---------------------------------------------------------------- partial checksums


def test_partial_checksum_real_capture() -> None:
    assert parse(LO_SYN_PARTIAL).reason == "drop_tcp_checksum"
    for flags in (CSUM_PARTIAL, CSUM_VALID, CSUM_PARTIAL | CSUM_VALID):
        p = parse(LO_SYN_PARTIAL, flags)
        assert p.reason == "ok", flags
        o = p.info.tcp.opt
        assert (p.info.ip.src, p.info.ip.dst) == (0x7F000001, 0x7F000001)
        assert (p.info.tcp.sport, p.info.tcp.dport, p.info.tcp.win) == (54228, 47999, 65495)
        assert (o.mss, o.sack_ok, o.ts_val, o.wscale) == (65495, 1, 0xCEC8FF9E, 10)


def test_partial_checksum_flag_still_verifies_ip_header() -> None:
    bad = set_byte(LO_SYN_PARTIAL, ETH + 8, 63)  # TTL changed, header checksum not
    for flags in (0, CSUM_PARTIAL, CSUM_VALID):
        assert parse(bad, flags).reason == "drop_ip_checksum"


def test_partial_checksum_flag_still_checks_tcp_structure() -> None:
    bad = syn_with_options(_hex("02050000", "00000000"))
    assert parse(bad, CSUM_PARTIAL).reason == "drop_tcp_options"
    assert parse(set_byte(SYN, ETH + 32, 0x40), CSUM_PARTIAL).reason == "drop_tcp_hdr_len"


def test_partial_checksum_flag_does_not_skip_icmp() -> None:
    bad = set_byte(ICMP_ECHO, len(ICMP_ECHO) - 1, 0)
    assert parse(bad, CSUM_PARTIAL | CSUM_VALID).reason == "drop_icmp_checksum"


# ---------------------------------------------------------------- ICMP


def test_icmp_echo_request_parse() -> None:
    p = parse(ICMP_ECHO)
    assert p.reason == "ok"
    assert (p.info.has_icmp, p.info.has_tcp) == (1, 0)
    i = p.info.icmp
    assert (i.type, i.code, i.id, i.seq) == (lib.WIRE_ICMP_ECHO_REQUEST, 0, 0x1C2B, 1)
    assert bytes(ffi.buffer(i.data, i.data_len)) == ICMP_DATA


def test_icmp_malformed_and_checksum() -> None:
    short = fix_ip(set_u16(ICMP_ECHO, ETH + 2, 20 + 7))[: ETH + 27]
    assert parse(short).reason == "drop_icmp_malformed"
    assert parse(set_byte(ICMP_ECHO, ETH + 20 + 30, 0xEE)).reason == "drop_icmp_checksum"
    assert parse(set_byte(ICMP_ECHO, ETH + 20 + 2, 0)).reason == "drop_icmp_checksum"


def _check_echo_reply(reply: bytes) -> None:
    req = ICMP_ECHO[ETH + 20 :]
    assert rfc1071(reply) == 0
    assert reply[:2] == b"\0\0"
    assert reply[4:] == req[4:]
    icmp = ffi.new("struct wire_icmp *")
    buf = cbuf(reply)  # icmp.data points into it
    assert reason(lib.wire_icmp_parse(buf, len(reply), icmp)) == "ok"
    assert (icmp.type, icmp.code, icmp.id, icmp.seq) == (lib.WIRE_ICMP_ECHO_REPLY, 0, 0x1C2B, 1)
    assert bytes(ffi.buffer(icmp.data, icmp.data_len)) == ICMP_DATA


def test_icmp_echo_reply_copy_and_in_place() -> None:
    req = ICMP_ECHO[ETH + 20 :]
    out = ffi.new("uint8_t[]", len(req))
    assert lib.wire_icmp_emit_echo_reply(out, cbuf(req), len(req)) == len(req)
    _check_echo_reply(bytes(out))
    buf = cbuf(req)
    assert lib.wire_icmp_emit_echo_reply(buf, buf, len(req)) == len(req)
    _check_echo_reply(bytes(buf))
    # the whole reply frame (emitted by layer) parses end to end
    frame = ffi.new("uint8_t[]", ETH + 20 + len(req))
    lib.wire_eth_emit(frame, ICMP_ECHO[6:12], ICMP_ECHO[0:6], lib.WIRE_ETHERTYPE_IPV4)
    lib.wire_ipv4_emit(frame + ETH, SYN_DST, SYN_SRC, lib.WIRE_IPPROTO_ICMP, len(req), 1, 64)
    lib.wire_icmp_emit_echo_reply(frame + ETH + 20, cbuf(req), len(req))
    p = parse(bytes(frame))
    assert p.reason == "ok"
    assert p.info.icmp.type == 0
    assert p.info.ip.dst == SYN_SRC


def test_icmp_echo_reply_odd_length_and_too_short() -> None:
    req = bytearray(ICMP_ECHO[ETH + 20 : -1])  # 63 bytes: odd
    req[2:4] = b"\0\0"
    req[2:4] = rfc1071(bytes(req)).to_bytes(2, "big")
    out = ffi.new("uint8_t[]", len(req))
    assert lib.wire_icmp_emit_echo_reply(out, cbuf(bytes(req)), len(req)) == 63
    assert rfc1071(bytes(out)) == 0
    assert bytes(out)[0] == 0
    assert lib.wire_icmp_emit_echo_reply(out, cbuf(bytes(req[:7])), 7) == 0


# ---------------------------------------------------------------- fuzz-like loop


def _summary(code: int, i: Any, buf: Any) -> tuple[int, ...]:
    o = i.tcp.opt
    head: tuple[int, ...] = (
        code,
        i.has_arp,
        i.has_ip,
        i.has_icmp,
        i.has_tcp,
        i.eth.type,
        i.eth.hlen,
    )
    ip = (
        i.ip.hlen,
        i.ip.total_len,
        i.ip.id,
        i.ip.frag,
        i.ip.ttl,
        i.ip.proto,
        i.ip.src,
        i.ip.dst,
        i.ip.payload_len,
        offset_in(i.ip.payload, buf) if i.has_ip else -1,
    )
    arp = (i.arp.op, i.arp.spa, i.arp.tpa)
    icmp = (i.icmp.type, i.icmp.code, i.icmp.id, i.icmp.seq, i.icmp.data_len)
    tcp = (
        i.tcp.sport,
        i.tcp.dport,
        i.tcp.seq,
        i.tcp.ack,
        i.tcp.hlen,
        i.tcp.flags,
        i.tcp.win,
        i.tcp.payload_len,
        offset_in(i.tcp.payload, buf) if i.has_tcp else -1,
    )
    opt = (
        o.has_mss,
        o.mss,
        o.has_wscale,
        o.wscale,
        o.sack_ok,
        o.has_ts,
        o.ts_val,
        o.ts_ecr,
        o.nsack,
        *(x for k in range(4) for x in (o.sack[k].left, o.sack[k].right)),
    )
    return head + ip + arp + icmp + tcp + opt


def _mutate(rng: random.Random, base: bytes) -> tuple[bytes, int]:
    kind = rng.randrange(6)
    b = bytearray(base)
    if kind == 0:  # one bit
        bit = rng.randrange(len(b) * 8)
        b[bit // 8] ^= 1 << (bit % 8)
    elif kind == 1:  # a few random bytes
        for _ in range(rng.randrange(1, 5)):
            b[rng.randrange(len(b))] = rng.randrange(256)
    elif kind == 2:  # truncated
        del b[rng.randrange(len(b)) :]
    elif kind == 3:  # trailing junk
        b += rng.randbytes(rng.randrange(1, 40))
    elif kind == 4 and base[12:14] == b"\x08\x00" and base[ETH + 9] == 6:
        # random TCP option bytes and data offset, checksums fixed: reaches the option parser
        doff = rng.randrange(5, 16)
        opts = rng.randbytes(doff * 4 - 20)
        if rng.randrange(2):  # bias toward known kinds
            for k in range(0, len(opts), 4):
                opts = opts[:k] + bytes([rng.choice([0, 1, 2, 3, 4, 5, 8])]) + opts[k + 1 :]
        seg = bytes(b[ETH + 20 : ETH + 40])
        seg = seg[:12] + bytes([doff << 4]) + seg[13:]
        b = bytearray(b[: ETH + 20] + seg + opts)
        b[ETH + 2 : ETH + 4] = (len(b) - ETH).to_bytes(2, "big")
        return fix_tcp(fix_ip(bytes(b))), rng.randrange(4)
    else:  # random bytes spliced in the middle
        at = rng.randrange(len(b))
        b[at:at] = rng.randbytes(rng.randrange(1, 8))
    return bytes(b), rng.randrange(4) if kind != 0 else 0


def test_fuzz_mutations_never_crash_and_depend_only_on_input() -> None:
    rng = random.Random(20_000)
    corpus = [SYN, DATA, VLAN_SYN, ARP_REQ, ICMP_ECHO, LO_SYN_PARTIAL]
    checksummed = {SYN, DATA, VLAN_SYN, ICMP_ECHO}
    info = ffi.new("struct wire_frame_info *")  # reused: stale fields would show
    cases: list[tuple[bytes, int]] = []
    first: list[tuple[int, ...]] = []
    seen_reasons: set[str] = set()
    for _ in range(20_000):
        base = rng.choice(corpus)
        frame, flags = _mutate(rng, base)
        buf = cbuf(frame)
        code = lib.wire_parse_frame(buf, len(frame), flags, info)
        seen_reasons.add(reason(code))  # 0 or a drop_* counter, never anything else
        cases.append((frame, flags))
        first.append(_summary(code, info, buf))
        eh = info.eth.hlen
        if code == 0 and info.has_ip:
            assert info.ip.total_len <= len(frame) - eh
            assert offset_in(info.ip.payload, buf) == eh + info.ip.hlen
            assert rfc1071(frame[eh : eh + info.ip.hlen]) == 0
        if code == 0 and info.has_tcp:
            assert info.tcp.hlen + info.tcp.payload_len == info.ip.payload_len
            assert 0 <= info.tcp.opt.nsack <= 4
            assert info.tcp.opt.wscale <= 14
            if flags == 0:
                seg = frame[eh + info.ip.hlen : eh + info.ip.total_len]
                assert rfc1071(pseudo(info.ip.src, info.ip.dst, 6, len(seg)) + seg) == 0
        if base in checksummed and len(frame) == len(base) and flags == 0:
            diff = int.from_bytes(frame, "big") ^ int.from_bytes(base, "big")
            at = len(frame) - 1 - (diff.bit_length() - 1) // 8
            vlan_tci = base is VLAN_SYN and at in (14, 15)
            if diff.bit_count() == 1 and at >= 12 and not vlan_tci:
                # one bit flipped past the MAC addresses: a checksum or the
                # EtherType check catches it (RFC 1071: every 1-bit error shows)
                assert code != 0, (base.hex(), at)
    # the loop reached deep into every layer
    assert {
        "ok",
        "drop_tcp_options",
        "drop_tcp_checksum",
        "drop_ip_checksum",
        "drop_eth_type",
        "drop_tcp_hdr_len",
        "drop_arp_malformed",
        "drop_icmp_checksum",
    } <= seen_reasons
    # same inputs in reverse order through the same info struct: same results
    for k in reversed(range(len(cases))):
        frame, flags = cases[k]
        buf = cbuf(frame)
        code = lib.wire_parse_frame(buf, len(frame), flags, info)
        assert _summary(code, info, buf) == first[k], k
