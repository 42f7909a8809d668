"""IPv4 reassembly (RFC 791 3.2, RFC 815; RFC 1122 3.3.2 makes it a MUST) through the
binding: the core's reassembly table (mtcp_core/src/net/frag.c) fed fragments built here.
Whole datagrams come out byte-exact whatever the order; overlapping fragments (RFC 5722's
rule) drop the datagram; memory is bounded (slots) and freed by the timer; a fuzzer feeds
it arbitrary fragments (run under ./scripts/test-asan for the sanitizers). The end-to-end
case, a TCP segment in three fragments from a raw peer to the stack, is in
test_tcp_receiver.py."""

from __future__ import annotations

import random
import struct
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mtcp_core._native import ffi, lib
from mtcp_core.testing.wire import MF, SRC, cbuf, ip_header, reason


def fragment(ident: int, payload: bytes, off: int, n: int, more: bool, **kw: Any) -> bytes:
    """The fragment holding payload[off:off+n] (off a multiple of 8)."""
    assert off % 8 == 0
    return ip_header(ident, (MF if more else 0) | off // 8, n, **kw) + payload[off : off + n]


def split(payload: bytes, sizes: list[int]) -> list[tuple[int, int, bool]]:
    """Cuts payload into pieces of the given sizes (multiples of 8 but the last)."""
    out, off = [], 0
    for n in sizes:
        n = min(n, len(payload) - off)
        out.append((off, n, off + n < len(payload)))
        off += n
        if off >= len(payload):
            break
    if off < len(payload):
        out.append((off, len(payload) - off, False))
    return out


class Table:
    def __init__(self, slots: int = 8, timeout_ms: int = 30_000) -> None:
        self.ptr = lib.frag_table_new(slots, timeout_ms)
        assert self.ptr != ffi.NULL
        self.out = ffi.new("const uint8_t **")
        self.out_len = ffi.new("size_t *")

    def feed(self, frag: bytes, now_ms: int = 0) -> tuple[str, bytes | None]:
        buf = cbuf(frag)
        r = reason(lib.frag_input(self.ptr, buf, len(frag), now_ms, self.out, self.out_len))
        done = None
        if self.out[0] != ffi.NULL:
            done = bytes(ffi.buffer(self.out[0], self.out_len[0]))
        return r, done

    @property
    def pending(self) -> int:
        return int(lib.frag_pending(self.ptr))

    def close(self) -> None:
        lib.frag_table_free(self.ptr)


@pytest.fixture
def table() -> Iterator[Table]:
    t = Table()
    yield t
    t.close()


def check_datagram(dg: bytes, ident: int, payload: bytes, options: bytes = b"") -> None:
    hl = 20 + len(options)
    assert dg[hl:] == payload
    assert struct.unpack("!H", dg[2:4])[0] == len(dg)
    assert struct.unpack("!H", dg[4:6])[0] == ident
    assert struct.unpack("!H", dg[6:8])[0] == 0  # whole: no MF, no offset
    assert dg[20:hl] == options
    parsed = ffi.new("struct wire_ipv4 *")
    assert reason(lib.wire_ipv4_parse(cbuf(dg), len(dg), parsed)) == "ok"  # checksum right


@pytest.mark.parametrize("order", ["in_order", "reversed", "last_first", "shuffled"])
def test_three_fragments_in_any_order(table: Table, order: str) -> None:
    payload = bytes(random.getrandbits(8) for _ in range(3000))
    frags = [fragment(7, payload, o, n, m) for o, n, m in split(payload, [1480, 1480])]
    assert len(frags) == 3
    if order == "reversed":
        frags.reverse()
    elif order == "last_first":
        frags = [frags[2], frags[0], frags[1]]
    elif order == "shuffled":
        frags = [frags[1], frags[2], frags[0]]
    results = [table.feed(f) for f in frags]
    assert [r for r, _ in results] == ["ok"] * 3
    assert [d is None for _, d in results] == [True, True, False]
    check_datagram(results[-1][1] or b"", 7, payload)
    assert table.pending == 0


def test_first_fragments_header_and_options_are_kept(table: Table) -> None:
    payload = bytes(range(256)) * 4
    opts = b"\x01\x01\x01\x00"  # NOPs and an end of options
    a = ip_header(9, MF, 512, options=opts) + payload[:512]
    b = ip_header(9, 512 // 8, 512) + payload[512:]
    assert table.feed(b) == ("ok", None)
    r, dg = table.feed(a)
    assert r == "ok" and dg is not None
    check_datagram(dg, 9, payload, opts)


def test_overlap_with_other_bytes_drops_the_datagram(table: Table) -> None:
    payload = bytes(2000)
    assert table.feed(fragment(1, payload, 0, 1000, True)) == ("ok", None)
    evil = b"\xff" * 2000
    # rewrites bytes 992..1999 (overlaps the first by 8 bytes)
    assert table.feed(fragment(1, evil, 992, 1008, False))[0] == "drop_frag_overlap"
    assert table.pending == 0
    # the rest of the original does not complete it: the datagram is gone
    assert table.feed(fragment(1, payload, 1000, 1000, False)) == ("ok", None)
    assert table.pending == 1


def test_a_datagram_larger_than_65535_bytes_with_its_header_is_refused(table: Table) -> None:
    """The payload may reach 65515 bytes only behind a 20-byte header: with 40 bytes of
    options in the first fragment the whole would not fit IPv4's 16-bit total length."""
    opts = b"\x01" * 40
    tail_off = 65512  # the last 3 bytes: 65515 in all
    assert table.feed(ip_header(4, tail_off // 8, 3) + b"end") == ("ok", None)
    assert table.feed(ip_header(4, MF, 8, options=opts) + bytes(8)) == ("ok", None)
    # every byte between, in 1480-byte pieces
    off, verdict = 8, ("ok", None)
    while off < tail_off:
        n = min(1480, tail_off - off)
        verdict = table.feed(ip_header(4, MF | off // 8, n) + bytes(n))
        off += n
    assert verdict[0] == "drop_frag_malformed" and verdict[1] is None
    assert table.pending == 0


def test_exact_duplicate_is_dropped_alone(table: Table) -> None:
    payload = bytes(random.getrandbits(8) for _ in range(2000))
    first = fragment(2, payload, 0, 1000, True)
    assert table.feed(first) == ("ok", None)
    assert table.feed(first)[0] == "drop_frag_duplicate"
    r, dg = table.feed(fragment(2, payload, 1000, 1000, False))
    assert r == "ok" and dg is not None
    check_datagram(dg, 2, payload)


@pytest.mark.parametrize(
    "bad",
    [
        "mf_not_multiple_of_8",
        "past_64k",
        "empty",
        "two_last_fragments",
        "data_past_the_end",
    ],
)
def test_malformed_fragments(table: Table, bad: str) -> None:
    payload = bytes(4000)
    if bad == "mf_not_multiple_of_8":
        assert table.feed(fragment(3, payload, 0, 1001, True))[0] == "drop_frag_malformed"
        assert table.pending == 0
        return
    if bad == "past_64k":
        f = ip_header(3, 8189, 16) + bytes(16)  # offset 65512 + 16 > 65515
        assert table.feed(f)[0] == "drop_frag_malformed"
        return
    if bad == "empty":
        assert table.feed(ip_header(3, MF | 8, 0))[0] == "drop_frag_malformed"
        return
    assert table.feed(fragment(3, payload, 0, 1000, True)) == ("ok", None)
    if bad == "two_last_fragments":
        assert table.feed(fragment(3, payload, 2000, 1000, False)) == ("ok", None)
        assert table.feed(fragment(3, payload, 3000, 1000, False))[0] == "drop_frag_malformed"
    else:  # the last fragment said 3000 bytes; then one reaches past them
        assert table.feed(fragment(3, payload, 2000, 1000, False)) == ("ok", None)
        assert table.feed(fragment(3, payload, 3000, 1000, True))[0] == "drop_frag_malformed"
    assert table.pending == 0


def test_slots_are_bounded_and_the_timer_frees_them() -> None:
    t = Table(slots=4, timeout_ms=1000)
    try:
        payload = bytes(2000)
        for ident in range(4):
            assert t.feed(fragment(ident, payload, 0, 1000, True), now_ms=ident) == ("ok", None)
        assert t.pending == 4
        assert t.feed(fragment(99, payload, 0, 1000, True), now_ms=10)[0] == "drop_frag_no_slot"
        assert lib.frag_next_deadline(t.ptr) == 1000
        assert lib.frag_expire(t.ptr, 999) == 0
        assert lib.frag_expire(t.ptr, 1001) == 2  # the datagrams begun at 0 and 1 ms
        assert t.pending == 2
        # a fragment after its datagram timed out starts over; the table takes new ones
        assert t.feed(fragment(0, payload, 1000, 1000, False), now_ms=1002) == ("ok", None)
        assert t.feed(fragment(99, payload, 0, 1000, True), now_ms=1002) == ("ok", None)
        assert lib.frag_expire(t.ptr, 10_000) == 4
        assert t.pending == 0
        assert lib.frag_next_deadline(t.ptr) == 2**64 - 1
    finally:
        t.close()


def test_different_protocol_or_source_is_another_datagram(table: Table) -> None:
    payload = bytes(2000)
    assert table.feed(fragment(5, payload, 0, 1000, True)) == ("ok", None)
    assert table.feed(fragment(5, payload, 1000, 1000, False, proto=17)) == ("ok", None)
    assert table.feed(fragment(5, payload, 1000, 1000, False, src=SRC + 1)) == ("ok", None)
    assert table.pending == 3


def test_bad_header_is_refused_with_the_ip_reason(table: Table) -> None:
    f = bytearray(fragment(1, bytes(100), 0, 64, True))
    f[10] ^= 0xFF
    assert table.feed(bytes(f))[0] == "drop_ip_checksum"


# ---------------------------------------------------------------- properties and fuzzing

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(
    payload=st.binary(min_size=1, max_size=9000),
    cuts=st.lists(st.integers(min_value=1, max_value=200), min_size=0, max_size=40),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
    dup=st.booleans(),
)
def test_any_partition_in_any_order_reassembles(
    payload: bytes, cuts: list[int], seed: int, dup: bool
) -> None:
    pieces = split(payload, [8 * c for c in cuts])
    frags = [fragment(77, payload, o, n, m) for o, n, m in pieces]
    rng = random.Random(seed)
    rng.shuffle(frags)
    if dup and len(frags) > 1:
        i = rng.randrange(len(frags) - 1)
        frags.insert(i + 1, frags[i])  # the network copied one (not the one that completes)
    t = Table()
    try:
        done = [d for f in frags for r, d in [t.feed(f)] if r == "ok" and d is not None]
        if len(pieces) > 32:
            return  # may run out of range slots (counted), never overrun
        assert len(done) == 1
        check_datagram(done[0], 77, payload)
        assert t.pending == 0
    finally:
        t.close()


@FUZZ
@given(
    frags=st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=3),  # ident
            st.integers(min_value=0, max_value=0xFFFF),  # flags + offset, any
            st.binary(min_size=0, max_size=600),
            st.integers(min_value=0, max_value=40_000),  # now_ms
            st.integers(min_value=0, max_value=10),  # words of IP options (NOPs)
        ),
        max_size=30,
    ),
    slots=st.integers(min_value=1, max_value=4),
)
def test_arbitrary_fragments_never_break_the_table(
    frags: list[tuple[int, int, bytes, int, int]], slots: int
) -> None:
    t = Table(slots=slots, timeout_ms=10_000)
    try:
        for ident, fo, data, now, words in frags:
            hdr = ip_header(ident, fo, len(data), options=b"\x01" * (4 * words))
            r, dg = t.feed(hdr + data, now_ms=now)
            assert r == "ok" or r.startswith("drop_frag_") or r.startswith("drop_ip_")
            assert t.pending <= slots
            if dg is not None:
                assert len(dg) <= 65535
                parsed = ffi.new("struct wire_ipv4 *")
                assert reason(lib.wire_ipv4_parse(cbuf(dg), len(dg), parsed)) == "ok"
    finally:
        t.close()


@FUZZ
@given(raw=st.binary(max_size=200), now=st.integers(min_value=0, max_value=2**40))
def test_arbitrary_bytes_are_refused_or_taken(raw: bytes, now: int) -> None:
    t = Table(slots=2)
    try:
        r, _ = t.feed(raw, now_ms=now)
        assert r == "ok" or r.startswith("drop_")
    finally:
        t.close()
