"""Reading the stack's pcap captures in tests (no scapy): records, and the TCP frames in order."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path


def records(pcap: Path) -> Iterator[tuple[float, bytes]]:
    """(time in seconds, frame) of every record of a capture, in the order it was written."""
    data = pcap.read_bytes()
    pos = 24  # global header
    while pos + 16 <= len(data):
        sec, usec, incl = struct.unpack_from("<III", data, pos)
        yield sec + usec / 1e6, data[pos + 16 : pos + 16 + incl]
        pos += 16 + incl


def tcp_offsets(frame: bytes) -> tuple[int, int, int] | None:
    """Where a TCP/IPv4 frame's TCP header starts, its length and the payload's length;
    None for any other frame."""
    if len(frame) < 54 or frame[12:14] != b"\x08\x00" or frame[23] != 6:
        return None
    ihl = (frame[14] & 0x0F) * 4
    total = struct.unpack_from("!H", frame, 16)[0]
    tcp = 14 + ihl
    doff = (frame[tcp + 12] >> 4) * 4
    return tcp, doff, total - ihl - doff


def tcp_frames(pcap: Path) -> list[tuple[int, int, int, int]]:
    """(sport, dport, tcp flags, payload length) of every TCP/IPv4 frame in a capture, in
    the order it was written."""
    out = []
    for _t, frame in records(pcap):
        seg = tcp_offsets(frame)
        if seg is not None:
            tcp, _doff, length = seg
            sport, dport = struct.unpack_from("!HH", frame, tcp)
            out.append((sport, dport, frame[tcp + 13], length))
    return out


def record_times(pcap: Path) -> list[float]:
    """The time of every record of a capture, in seconds (the record header's clock)."""
    return [t for t, _frame in records(pcap)]
